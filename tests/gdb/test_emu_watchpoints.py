"""Data breakpoints on the software backend: the Debug exits KVM gives a debugger for DR0-3 watchpoints."""

from __future__ import annotations

from kvmlite.emulator.backend import EmuVm
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import GuestDebug as G
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.cpu_setup import setup_cpu

CODE = 0x100000
# nop; nop; int3; mov [0x2000], eax; nop; hlt
PROGRAM = bytes([0x90, 0x90, 0xCC, 0xA3, 0x00, 0x20, 0x00, 0x00, 0x90, 0xF4])


def _vcpu():  # type: ignore[no-untyped-def]
    memory = GuestMemory([(0, 4 << 20)])
    vm = EmuVm()
    vm.register_memory(memory)
    memory.write(CODE, PROGRAM)
    vcpu = vm.create_vcpu(0)
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    setup_cpu(regs, sregs, memory, LoadResult("test", CODE, EntryMode.PROTECTED32))
    vcpu.set_sregs(sregs)
    vcpu.set_regs(regs)
    return vcpu


def test_write_watchpoint_stops_after_the_write_with_the_slot_in_dr6() -> None:
    vcpu = _vcpu()
    regs = vcpu.get_regs()
    regs.rip, regs.rax = CODE + 3, 0x1234
    vcpu.set_regs(regs)
    dr7 = 2 << 2 | 1 << 20 | 3 << 22  # DR1: global, write, 4 bytes
    vcpu.set_guest_debug(G.ENABLE | G.USE_HW_BP, [0x5000, 0x2000], dr7)
    ex = vcpu.run()
    assert isinstance(ex, E.Debug) and ex.exception == 1 and ex.dr6 & 0b10
    assert vcpu.get_regs().rip == CODE + 8
    assert vcpu.vm.memory.read(0x2000, 4) == (0x1234).to_bytes(4, "little")
    vcpu.set_guest_debug(0)
    assert isinstance(vcpu.run(), E.Hlt)


def test_read_write_watchpoint_sees_reads_but_a_write_watchpoint_does_not() -> None:
    vcpu = _vcpu()
    memory = vcpu.vm.memory
    memory.write(CODE + 3, bytes([0xA1, 0x00, 0x20, 0x00, 0x00]))  # mov eax, [0x2000]
    regs = vcpu.get_regs()
    regs.rip = CODE + 3
    vcpu.set_regs(regs)
    vcpu.set_guest_debug(G.ENABLE | G.USE_HW_BP, [0x2000], 2 | 1 << 16 | 3 << 18)  # write only
    assert isinstance(vcpu.run(), E.Hlt)
    regs.rip = CODE + 3
    vcpu.set_regs(regs)
    vcpu.set_guest_debug(G.ENABLE | G.USE_HW_BP, [0x2000], 2 | 3 << 16 | 3 << 18)  # read or write
    ex = vcpu.run()
    assert isinstance(ex, E.Debug) and ex.dr6 & 1 and vcpu.get_regs().rip == CODE + 8
