"""The x86 instruction emulator: decoder, executor, CPU state and the ops interface.

Layers, from data to behaviour::

    opcodes.py   opcode maps as data (SDM operand notation, flags, groups)
    decoder.py   decode(code, mode) -> Instruction          (no CPU state)
    cpu.py       CpuState: registers, segments.Segment caches, CRs; <-> kvm_regs/kvm_sregs
    ops.py       EmulatorOps: memory (linear), ports, MSRs, CPUID, halt;
                 PagedOps: the same over physical accessors + mmu.Mmu
    alu.py       arithmetic with exact flags
    executor.py  Executor.step()/run(n): fetch, decode (cached), execute
    system.py    descriptors, exceptions/interrupts, far transfers, CR/MSR...
    faults.py    GuestFault (#DE #UD #GP #PF ...), TripleFault
    mmu.py       page walks and the software TLB (used through ops)
    segments.py  descriptors, gates, segment loads and per-access checks (Segment)

Typical use::

    cpu = CpuState.from_kvm(regs, sregs)
    ex = Executor(cpu, PagedOps(read_phys, write_phys))
    ex.run(1000)
"""
