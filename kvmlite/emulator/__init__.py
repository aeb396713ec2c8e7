"""The x86 instruction emulator: decoder, executor, CPU state and the ops interface.

Layers, from data to behaviour::

    opcodes.py     opcode maps as data: one Row per form (SDM operand notation,
    opcodes_0f.py  flags, the handler, the checks and CPUID feature it needs);
                   groups and mandatory-prefix tables hang off rows
    instruction.py Instruction / Operand records (what the decoder produces)
    decoder.py     decode(code, mode) -> Instruction: prefixes, opcode map,
                   ModRM/SIB, operands                        (no CPU state)
    cpu.py         CpuState: registers, segment caches, CRs; <-> kvm_regs/kvm_sregs
    segments.py    descriptors, gates, segment loads and per-access checks (Segment)
    ops.py         EmulatorOps: memory (linear), ports, MSRs, CPUID, halt;
                   PagedOps: the same over physical accessors + mmu.Mmu
    mmu.py         page walks and the software TLB (used through ops)
    shadow.py      ShadowMmu: TLB contexts per address space, tracked page-table
                   pages and a reverse map (the software backend's MMU)
    alu.py         arithmetic with exact flags
    executor.py    Executor.step()/run(n): fetch, decode (cached), the row's
                   generic checks, the handler; operand access and the stack;
                   Executor.run_blocks(n): the same through translation blocks
    tb.py          translation blocks: decode once per basic block, caches,
                   chaining, invalidation on code writes
    fastops.py     lazy flags and the handlers specialised per operand form
    handlers/      the handlers, one module per family (arith, data, control,
                   string, segment, interrupt, privileged, fastcall, xsave, sse, x87)
    faults.py      GuestFault (#DE #UD #GP ...), PageFault, TripleFault
    xstate.py      the XSAVE area's layout and the XSAVE/XRSTOR semantics

Typical use::

    cpu = CpuState.from_kvm(regs, sregs)
    ex = Executor(cpu, PagedOps(read_phys, write_phys))
    ex.run(1000)
"""
