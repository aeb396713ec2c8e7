"""Rescue of KVM emulation failures: kvmlite emulates what the host KVM gives up on."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import InternalError
from kvmlite.vmm.machine import Machine, MachineConfig
from kvmlite.vmm.rescue import Rescuer
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_kvm

pytestmark = requires_kvm

# Five int3 traps at CPL 0 to a handler that counts and IRETs; then the count goes to COM1.
# On this project's nested host KVM cannot emulate either int3 or the 32-bit IRET at CPL 0.
TRAPS = (
    MULTIBOOT_HEADER
    + r"""
.text
.code32
.globl _start
_start:
    mov $stack_top, %esp
    mov $handler, %eax
    mov %ax, idt+24
    shr $16, %eax
    mov %ax, idt+30
    movw $0x08, idt+26
    movw $0x8e00, idt+28
    lidt idtr
    mov $5, %ecx
1:  int3
    loop 1b
    mov count, %eax
    add $0x30, %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0x0a, %al
    out %al, %dx
    mov $0xf4, %dx
    mov $0x10, %eax
    out %eax, %dx
handler:
    incl count
    iret
.align 8
idt: .fill 4, 8, 0
idtr: .word 4*8-1
      .long idt
count: .long 0
.bss
.skip 4096
stack_top:
"""
)


def test_guest_trapping_at_cpl0_runs_to_its_end(tmp_path: Path) -> None:
    elf = build_multiboot(tmp_path, "traps", TRAPS)
    r = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--backend", "kvm", "--stats", "--kernel", str(elf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.stdout == "5\n"
    assert r.returncode == 0x21
    # where the host failed, the rescues are listed; a normal host needs none
    if "rescued by kvmlite" in r.stderr:
        assert "int3" in r.stderr or "iretd" in r.stderr


def machine_at(tmp_path: Path, source: str) -> Machine:
    elf = build_multiboot(tmp_path, "g", source)
    machine = Machine(MachineConfig(kernel=elf, backend="kvm", memory_mib=16, serial_out=lambda b: None))
    machine.attach_debug_exit()
    machine.load()
    machine.create_vcpus(1)
    return machine


def emulation_failure() -> E.InternalErrorExit:
    return E.InternalErrorExit(int(InternalError.EMULATION), (), b"")


def test_rescuer_emulates_the_instruction_and_writes_the_state_back(tmp_path: Path) -> None:
    machine = machine_at(tmp_path, TRAPS)
    loop, mem = machine.loops[0], machine.memory
    vcpu = loop.vcpu
    int3_at, idt, handler, stack = 0x80000, 0x81000, 0x82000, 0x90000
    mem.write(int3_at, b"\xcc")
    mem.write(idt + 3 * 8, struct.pack("<HHBBH", handler & 0xFFFF, 0x08, 0, 0x8E, handler >> 16))
    regs = vcpu.get_regs()
    regs.rip, regs.rsp = int3_at, stack
    vcpu.set_regs(regs)
    sregs = vcpu.get_sregs()
    sregs.idt.base, sregs.idt.limit = idt, 4 * 8 - 1
    vcpu.set_sregs(sregs)

    rescuer = Rescuer(loop, mem)
    assert rescuer.on_exit(loop, emulation_failure()) is True
    after = vcpu.get_regs()
    assert after.rip == handler
    assert after.rsp == stack - 12  # EIP, CS, EFLAGS pushed
    assert mem.read_u32(stack - 12) == int3_at + 1  # int3 is a trap: it returns past itself
    assert mem.read_u32(stack - 8) == 0x08
    assert loop.stats.rescues["int3"] == 1
    # other exits are not its business: it is given internal errors only, and takes emulation failures only
    assert Rescuer.exits == (E.InternalErrorExit,)
    assert rescuer.on_exit(loop, E.InternalErrorExit(int(InternalError.DELIVERY_EV), (), b"")) is False
    machine.close()


def test_instruction_the_emulator_cannot_do_stops_the_vm_with_its_name(tmp_path: Path, caplog) -> None:
    source = TRAPS.replace(
        "    mov $stack_top, %esp\n", "    mov $stack_top, %esp\n    addps %xmm1, %xmm0\n", 1
    )
    machine = machine_at(tmp_path, source)
    loop = machine.loops[0]
    regs = loop.vcpu.get_regs()
    regs.rip += 5  # past `mov $stack_top, %esp`: RIP is on addps
    loop.vcpu.set_regs(regs)
    assert Rescuer(loop, machine.memory).on_exit(loop, emulation_failure()) is True
    info = machine.control.stop_info
    assert info is not None and info.status == 4
    assert "addps" in info.message and "kvmlite cannot either" in info.message
    assert "RIP=" in caplog.text  # the register dump
    machine.close()


def test_rescued_xrstor_loads_the_vcpus_sse_state(tmp_path: Path) -> None:
    machine = machine_at(tmp_path, TRAPS)
    loop, mem = machine.loops[0], machine.memory
    vcpu = loop.vcpu
    code, image = 0x80000, 0x81000
    mem.write(code, bytes.fromhex("0fae2f"))  # xrstor [edi]
    legacy = bytearray(512)
    legacy[0:2] = (0x037F).to_bytes(2, "little")
    legacy[24:28] = (0x1F80).to_bytes(4, "little")
    xmm = bytes((0x40 + i) & 0xFF for i in range(16 * 16))
    legacy[160:416] = xmm
    mem.write(image, bytes(legacy) + (0x3).to_bytes(8, "little") + bytes(56))  # XSTATE_BV: x87 | SSE
    sregs = vcpu.get_sregs()
    sregs.cr4 |= 1 << 18  # OSXSAVE
    vcpu.set_sregs(sregs)
    xcrs = vcpu.get_xcrs()
    xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 1, 0, 0x3
    vcpu.set_xcrs(xcrs)
    regs = vcpu.get_regs()
    regs.rip, regs.rdi, regs.rax, regs.rdx = code, image, 0x3, 0
    vcpu.set_regs(regs)

    assert Rescuer(loop, mem).on_exit(loop, emulation_failure()) is True
    area = bytes(vcpu.get_xsave())
    assert area[160:416] == xmm  # XMM0-15 now hold the image's values, in the vCPU itself
    assert vcpu.get_regs().rip == code + 3
    assert loop.stats.rescues["xrstor"] == 1
    machine.close()
