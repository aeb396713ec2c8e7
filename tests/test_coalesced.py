"""Coalesced port writes: the guest's port 0x80 writes reach the POST port without an exit each."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvmlite.kvm.coalesced import _ENTRY, _HEADER, RING_ENTRIES, CoalescedRing
from kvmlite.kvm.constants import Cap, Ioctl
from kvmlite.kvm.structs import kvm_coalesced_mmio_zone
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_as, requires_kvm

ENTRY = ".text\n.globl _start\n_start:\n"
#: 5,000 POST codes (the last 0x88), then isa-debug-exit with 0x21.
POST_LOOP = (
    MULTIBOOT_HEADER
    + ENTRY
    + "    mov $1, %ecx\n1:  mov %cl, %al\n    out %al, $0x80\n"
    + "    inc %ecx\n    cmp $5001, %ecx\n    jne 1b\n"
    + "    mov $0xf4, %dx\n    mov $0x21, %eax\n    out %eax, %dx\n"
)


def test_binding_matches_linux_kvm_h() -> None:
    # struct kvm_coalesced_mmio_zone { __u64 addr; __u32 size; union { __u32 pad; __u32 pio; }; }
    assert struct.calcsize("<QII") == len(bytes(kvm_coalesced_mmio_zone())) == 16
    assert int(Ioctl.KVM_REGISTER_COALESCED_MMIO) == 0x4010AE67  # _IOW(KVMIO, 0x67, 16 bytes)
    assert int(Ioctl.KVM_UNREGISTER_COALESCED_MMIO) == 0x4010AE68
    assert (Cap.COALESCED_MMIO, Cap.COALESCED_PIO) == (15, 162)
    # struct kvm_coalesced_mmio { __u64 phys_addr; __u32 len; __u32 pio; __u8 data[8]; }: 24 bytes
    assert (_HEADER.size, _ENTRY.size, RING_ENTRIES) == (8, 24, 170)


def test_ring_replays_in_order_and_gives_slots_back() -> None:
    page = bytearray(2 * 4096)
    writes: list[tuple[str, int, int, int]] = []
    ring = CoalescedRing(
        page,  # type: ignore[arg-type]  # any writable buffer stands for the kvm_run mapping
        1,
        lambda a, n, v: writes.append(("pio", a, n, v)),
        lambda a, n, v: writes.append(("mmio", a, n, v)),
    )
    base = 4096
    for i, (addr, n, pio, value) in enumerate([(0x80, 1, 1, 0x12), (0xFED00000, 4, 0, 0xDEADBEEF)]):
        first = RING_ENTRIES - 1  # wraps around
        slot = (first + i) % RING_ENTRIES
        _ENTRY.pack_into(page, base + 8 + slot * 24, addr, n, pio, value.to_bytes(8, "little"))
    _HEADER.pack_into(page, base, RING_ENTRIES - 1, 1)
    assert ring.drain() == 2
    assert writes == [("pio", 0x80, 1, 0x12), ("mmio", 0xFED00000, 4, 0xDEADBEEF)]
    assert _HEADER.unpack_from(page, base) == (1, 1)
    assert ring.replayed == {("pio", 0x80): 1, ("mmio", 0xFED00000): 1}
    assert ring.drain() == 0
    ring.close()


@requires_kvm
@requires_as
def test_post_codes_arrive_without_an_exit_each(tmp_path: Path) -> None:
    kernel = build_multiboot(tmp_path, "post", POST_LOOP)
    machine = Machine.build(MachineConfig(kernel=kernel, memory_mib=16, serial_out=lambda b: None))
    try:
        if not machine.caps.coalesced_pio:
            pytest.skip("this host's KVM has no KVM_CAP_COALESCED_PIO")
        assert machine.run() == (0x21 << 1) | 1
        assert machine.post_code == 5000 & 0xFF  # the last write arrived, drained at the stop
        stats = machine.stats()
        pio_exits = stats.by_reason["IoOut"].count
        assert stats.coalesced["pio", 0x80] >= 4900, stats.format()
        assert pio_exits < 100, stats.format()  # 5,000 writes, a few ring-full exits at most
        assert "coalesced writes" in stats.format()
    finally:
        machine.close()




#: CMOS register 0x0f (shutdown status) set to 0x5a, then 2,000 rounds of: index 0x0f, read the data
#: port, index 0x0d (status D, which reads 0x80); exits with the OR of every value read: 0x5a when each
#: read saw the index written just before it, 0xda if a read saw a stale index.
CMOS_LOOP = (
    MULTIBOOT_HEADER
    + ENTRY
    + "    mov $0x0f, %al\n    out %al, $0x70\n    mov $0x5a, %al\n    out %al, $0x71\n"
    + "    mov $2000, %ecx\n    xor %ebx, %ebx\n"
    + "1:  mov $0x0f, %al\n    out %al, $0x70\n    in $0x71, %al\n    or %al, %bl\n"
    + "    mov $0x0d, %al\n    out %al, $0x70\n    loop 1b\n"
    + "    mov $0xf4, %dx\n    mov %ebx, %eax\n    out %eax, %dx\n"
)


@requires_kvm
@requires_as
def test_cmos_index_writes_arrive_in_order_without_an_exit_each(tmp_path: Path) -> None:
    kernel = build_multiboot(tmp_path, "cmos", CMOS_LOOP)
    machine = Machine.build(MachineConfig(kernel=kernel, memory_mib=16, serial_out=lambda b: None))
    try:
        if not machine.caps.coalesced_pio:
            pytest.skip("this host's KVM has no KVM_CAP_COALESCED_PIO")
        assert machine.run() == (0x5A << 1) | 1  # every data read saw the index written just before it
        stats = machine.stats()
        assert stats.coalesced["pio", 0x70] >= 3900, stats.format()  # two index writes per round
        assert stats.by_reason["IoIn"].count == 2000 and stats.by_reason["IoOut"].count < 100, stats.format()
    finally:
        machine.close()


#: 3,000 bytes to COM1 the way a polling driver sends them (wait for THRE in LSR, write THR), then exit.
SERIAL_POLLED = (
    MULTIBOOT_HEADER
    + ENTRY
    + "    mov $3000, %ecx\n    mov $0x3fd, %dx\n"
    + "1:  in %dx, %al\n    test $0x20, %al\n    jz 1b\n"
    + "    mov $0x3f8, %dx\n    mov %cl, %al\n    and $0x3f, %al\n    add $0x30, %al\n    out %al, %dx\n"
    + "    mov $0x3fd, %dx\n    loop 1b\n"
    + "    mov $0xf4, %dx\n    mov $0x21, %eax\n    out %eax, %dx\n"
)


@requires_kvm
@requires_as
def test_polled_serial_output_costs_one_exit_per_byte(tmp_path: Path) -> None:
    kernel = build_multiboot(tmp_path, "serial", SERIAL_POLLED)
    out = bytearray()
    machine = Machine.build(MachineConfig(kernel=kernel, memory_mib=16, serial_out=out.extend))
    try:
        if not machine.caps.coalesced_pio:
            pytest.skip("this host's KVM has no KVM_CAP_COALESCED_PIO")
        assert machine.run() == (0x21 << 1) | 1
        stats = machine.stats()
        assert bytes(out) == bytes(0x30 + (n & 0x3F) for n in range(3000, 0, -1))  # every byte, in order
        assert stats.by_reason["IoOut"].count < 10, stats.format()  # the THR writes did not exit
        assert stats.coalesced["pio", 0x3F8] == 3000, stats.format()
    finally:
        machine.close()
