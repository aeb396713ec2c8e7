"""The /dev/kvm binding driven directly: guests in real, 32-bit and 64-bit mode, typed exits, errors."""

from __future__ import annotations

import os
import select
import threading
import time

import pytest

from kvmlite.errors import KvmIoctlError
from kvmlite.kvm import Kvm, Vcpu, Vm
from kvmlite.kvm import exits as E
from kvmlite.kvm.constants import Cap, GuestDebug, MsrExitReason
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.memory import GuestMemory
from kvmlite.vmm.cpu_setup import guest_cpuid, setup_cpu, write_identity_page_tables
from tests.conftest import requires_kvm

pytestmark = requires_kvm

CODE = 0x10_0000


@pytest.fixture
def kvm():
    with Kvm() as k:
        yield k


def make_vm(kvm: Kvm, code: bytes, mode: EntryMode, log_dirty: bool = False) -> tuple[Vm, Vcpu, GuestMemory]:
    mem = GuestMemory([(0, 4 << 20)])
    vm = kvm.create_vm()
    vm.set_tss_addr()
    vm.register_memory(mem, log_dirty=log_dirty)
    entry = 0x7C00 if mode is EntryMode.REAL else CODE
    mem.write(entry, code)
    vcpu = vm.create_vcpu(0)
    vcpu.set_cpuid(guest_cpuid(kvm.supported_cpuid(), 0))
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    setup_cpu(regs, sregs, mem, LoadResult("test", entry, mode))
    vcpu.set_sregs(sregs)
    vcpu.set_regs(regs)
    return vm, vcpu, mem


def test_api_version_and_required_capabilities(kvm):
    assert kvm.api_version() == 12
    assert kvm.check_extension(Cap.USER_MEMORY) >= 1
    assert kvm.vcpu_mmap_size() >= 4096
    leaves = {e.function for e in kvm.supported_cpuid()}
    assert {0, 1, 0x8000_0001} <= leaves


def test_real_mode_io_in_and_out_round_trip(kvm, asm):
    code = asm(
        """
        mov al, 0x42
        out 0x10, al
        in al, 0x11
        add al, 1
        mov dx, 0x500
        out dx, al
        hlt
        """,
        bits=16,
    )
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.REAL)
    ex = vcpu.run()
    assert isinstance(ex, E.IoOut) and (ex.port, ex.size, ex.count, bytes(ex.data)) == (0x10, 1, 1, b"\x42")
    ex = vcpu.run()
    assert isinstance(ex, E.IoIn) and ex.port == 0x11
    ex.data[0] = 0x99  # the answer goes straight into the kvm_run page
    ex = vcpu.run()
    assert isinstance(ex, E.IoOut) and ex.port == 0x500 and bytes(ex.data) == b"\x9a"
    assert isinstance(vcpu.run(), E.Hlt)
    vm.close()


def test_protected_mode_string_output_arrives_as_one_exit(kvm, asm):
    code = asm(
        """
        lea esi, [msg]
        mov ecx, 5
        mov dx, 0x3f8
        rep outsb
        mov eax, 0x11223344
        mov dx, 0x504
        out dx, eax
        hlt
        msg: .ascii "hello"
        """,
        bits=32,
        org=CODE,
    )
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.PROTECTED32)
    # A normal KVM host hands over all five bytes in one exit (count=5); a host that emulates ring 0
    # instruction by instruction (this project's nested one) may split them.  Either way: same bytes.
    text = b""
    ex = vcpu.run()
    while isinstance(ex, E.IoOut) and ex.port == 0x3F8:
        assert ex.size == 1 and len(ex.data) == ex.count
        text += bytes(ex.data)
        ex = vcpu.run()
    assert text == b"hello"
    assert isinstance(ex, E.IoOut) and ex.size == 4 and bytes(ex.data) == bytes.fromhex("44332211")
    assert isinstance(vcpu.run(), E.Hlt)
    vm.close()


def test_long_mode_mmio_read_and_write(kvm, asm):
    code = asm(
        """
        mov rbx, 0xd0000000
        mov rax, 0x0102030405060708
        mov [rbx], rax
        mov ecx, [rbx + 0x10]
        hlt
        """,
        bits=64,
        org=CODE,
    )
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.LONG64)
    ex = vcpu.run()
    assert isinstance(ex, E.MmioWrite) and ex.addr == 0xD000_0000
    assert bytes(ex.data) == bytes.fromhex("0807060504030201")
    ex = vcpu.run()
    assert isinstance(ex, E.MmioRead) and ex.addr == 0xD000_0010 and len(ex.data) == 4
    ex.data[:] = b"\xef\xbe\xad\xde"
    assert isinstance(vcpu.run(), E.Hlt)
    assert vcpu.get_regs().rcx == 0xDEADBEEF
    sregs = vcpu.get_sregs()
    assert sregs.efer & 0x400 and sregs.cs.l == 1  # really in 64-bit mode
    vm.close()


def test_failed_ioctl_names_itself_and_carries_errno(kvm):
    vm = kvm.create_vm()
    vm.create_vcpu(0)
    with pytest.raises(KvmIoctlError) as info:
        vm.create_vcpu(0)
    assert info.value.ioctl == "KVM_CREATE_VCPU"
    assert info.value.errno == 17  # EEXIST
    assert isinstance(info.value, OSError)
    vm.close()


def enter_ring3(vcpu: Vcpu, mem: GuestMemory) -> None:
    """Turn the long-mode set-up of make_vm into CPL 3: user pages, DPL-3 code and stack, IOPL 3."""
    write_identity_page_tables(mem, user=True)
    sregs = vcpu.get_sregs()
    sregs.cs.dpl, sregs.cs.selector = 3, 0x1B
    sregs.ss.dpl, sregs.ss.selector = 3, 0x23
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rflags |= 3 << 12
    regs.rsp = 0x30_0000
    vcpu.set_regs(regs)


def test_single_step_reports_each_instruction(kvm, asm):
    code = asm("nop\nnop\nmov dx, 0x500\nout dx, al", bits=32, org=CODE)
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.PROTECTED32)
    vcpu.set_guest_debug(GuestDebug.ENABLE | GuestDebug.SINGLESTEP)
    pcs = []
    for _ in range(2):
        ex = vcpu.run()
        if isinstance(ex, E.InternalErrorExit) and ex.suberror == 1:
            pytest.skip(
                "the host KVM failed to emulate a single-stepped ring-0 instruction (nested-host quirk)"
            )
        assert isinstance(ex, E.Debug)
        pcs.append(ex.pc)
    assert pcs == [CODE + 1, CODE + 2]
    vm.close()


def test_dirty_log_reports_pages_the_guest_wrote(kvm, asm):
    code = asm("mov dword ptr [0x200000], 1\nmov dword ptr [0x203000], 2\nhlt", bits=32, org=CODE)
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.PROTECTED32, log_dirty=True)
    vm.dirty_pages(0)  # clear what set-up wrote
    assert isinstance(vcpu.run(), E.Hlt)
    dirty = vm.dirty_pages(0)
    assert 0x200000 in dirty and 0x203000 in dirty and 0x201000 not in dirty
    vm.close()


def test_ioeventfd_turns_a_write_into_an_event_without_an_exit(kvm, asm):
    code = asm("mov dx, 0x600\nmov al, 7\nout dx, al\nmov dx, 0x601\nout dx, al\nhlt", bits=32, org=CODE)
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.PROTECTED32)
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    vm.ioeventfd(efd, 0x600, 1, pio=True)
    ex = vcpu.run()
    assert isinstance(ex, E.IoOut) and ex.port == 0x601  # the write to 0x600 never reached userspace
    assert select.select([efd], [], [], 0)[0] == [efd]
    assert os.eventfd_read(efd) == 1
    os.close(efd)
    vm.close()


def test_unknown_msr_goes_to_userspace_when_asked(kvm, asm):
    code = asm("mov ecx, 0x4b564dff\nrdmsr\nmov ebx, eax\nhlt", bits=32, org=CODE)
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.PROTECTED32)
    if not kvm.check_extension(Cap.X86_USER_SPACE_MSR):
        pytest.skip("KVM_CAP_X86_USER_SPACE_MSR not offered by this host")
    vm.enable_cap(Cap.X86_USER_SPACE_MSR, int(MsrExitReason.UNKNOWN | MsrExitReason.INVAL))
    ex = vcpu.run()
    assert isinstance(ex, E.RdMsr) and ex.index == 0x4B564DFF
    ex.reply(0xCAFE)
    assert isinstance(vcpu.run(), E.Hlt)
    assert vcpu.get_regs().rbx == 0xCAFE
    vm.close()


def test_in_kernel_irqchip_and_pit_come_up(kvm):
    vm = kvm.create_vm()
    vm.create_irqchip()
    vm.create_pit2()
    vm.irq_line(4, True)
    vm.irq_line(4, False)
    pit = vm.get_pit2()
    assert len(pit.channels) == 3
    vm.close()


def test_kick_from_another_thread_interrupts_a_spinning_guest(kvm, asm):
    from kvmlite.kvm.vcpu import install_kick_handler

    install_kick_handler()
    code = asm("1: jmp 1b", bits=32, org=CODE)
    vm, vcpu, _ = make_vm(kvm, code, EntryMode.PROTECTED32)
    got: list[E.Exit] = []

    def runner() -> None:
        vcpu.bind_thread()
        got.append(vcpu.run())

    t = threading.Thread(target=runner)
    t.start()
    time.sleep(0.2)
    vcpu.kick()
    t.join(timeout=5)
    assert not t.is_alive()
    assert isinstance(got[0], E.Interrupted)
    vcpu.clear_kick()
    vm.close()


def test_ring3_fault_without_an_idt_is_a_shutdown_exit(kvm, asm):
    code = asm("ud2", bits=64, org=CODE)
    vm, vcpu, mem = make_vm(kvm, code, EntryMode.LONG64)
    enter_ring3(vcpu, mem)
    sregs = vcpu.get_sregs()
    sregs.idt.base, sregs.idt.limit = 0, 0
    vcpu.set_sregs(sregs)
    assert isinstance(vcpu.run(), E.Shutdown)  # #UD -> #GP -> #DF -> triple fault
    vm.close()
