"""The vCPU loop through the library: hooks, stop from another thread, statistics."""

from __future__ import annotations

import threading
import time

from kvmlite.kvm import exits as E
from kvmlite.status import ExitStatus
from kvmlite.vmm.loop import LoopExtension, VcpuLoop
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import MULTIBOOT_HEADER, build_multiboot, requires_kvm
from tests.images import build_guest

pytestmark = requires_kvm


def test_stop_from_another_thread_ends_a_spinning_guest(tmp_path, asm):
    # a boot sector that spins forever in real mode
    sector = asm("1: jmp 1b", bits=16, org=0x7C00)
    image = tmp_path / "spin.img"
    image.write_bytes(sector + bytes(510 - len(sector)) + b"\x55\xaa")
    machine = Machine.build(MachineConfig(kernel=image, memory_mib=16))
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(machine.run()))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # still spinning
    started = time.monotonic()
    machine.control.stop(ExitStatus.INTERRUPTED, "test says stop")
    t.join(timeout=5)
    assert not t.is_alive() and result == [ExitStatus.INTERRUPTED]
    assert time.monotonic() - started < 2
    machine.close()


def test_hooks_see_every_exit_and_can_take_it_over(tmp_path):
    out = bytearray()
    machine = Machine(MachineConfig(kernel=build_guest(tmp_path, "exit"), serial_out=out.extend, stats=True))
    machine.attach_serial()
    machine.attach_debug_exit()
    machine.load()
    machine.create_vcpus(1)
    loop = machine.loops[0]
    runs = 0
    seen: list[type] = []
    swallowed: list[int] = []

    class Watcher(LoopExtension):
        every_exit = True

        def before_run(self, loop: VcpuLoop) -> None:
            nonlocal runs
            runs += 1

        def on_exit(self, loop: VcpuLoop, ex: E.Exit) -> bool:
            seen.append(type(ex))
            if isinstance(ex, E.IoOut) and ex.port == 0x3F8 and bytes(ex.data) == b"!":
                swallowed.append(ex.port)
                return True
            return False

    loop.add(Watcher())
    status = machine.run()
    assert status == 0x43
    assert runs == len(seen) and runs > 10
    assert out.startswith(b"hello from a multiboot guest: ")
    assert seen.count(E.IoIn) == 1  # the probe of the unclaimed port
    stats = machine.stats()
    assert stats.by_reason["IoOut"].count == seen.count(E.IoOut)
    assert stats.by_address[("pio", 0xF4)].count == 1  # per address: collected under --stats (stats=True)
    assert stats.by_address[("pio", 0x3F8)].count == seen.count(E.IoOut) - 1 - len(swallowed) - 1
    machine.close()


#: A guest that writes a test device's port with OUT of each width and a REP OUTSB, reads it back with
#: IN of each width, and leaves through debug-exit with 0x21 when every value read is what it expects.
WIDTHS_GUEST = r"""
.text
.globl _start
_start:
    mov $0x510, %dx
    mov $0xab, %al
    out %al, %dx
    mov $0x1234, %ax
    out %ax, %dx
    mov $0xdeadbeef, %eax
    out %eax, %dx
    mov $text, %esi
    mov $3, %ecx
    rep outsb
    mov $0x11, %ebx
    in %dx, %al
    cmp $0x5a, %al
    jne 1f
    in %dx, %ax
    cmp $0x5a5b, %ax
    jne 1f
    in %dx, %eax
    cmp $0x5a5b5c5d, %eax
    jne 1f
    mov $0x21, %ebx
1:  mov %ebx, %eax
    mov $0xf4, %dx
    out %eax, %dx
    hlt
text: .ascii "xyz"
"""


def test_port_io_of_every_width_reaches_the_device_and_back(tmp_path):
    # The loop's fast path (single IN/OUT straight from the kvm_run page, no exit object) must give
    # the device what the guest wrote and the guest what the device answered, at every width.
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[tuple[int, int, int]] = []

        def read(self, offset: int, size: int) -> int:
            return {1: 0x5A, 2: 0x5A5B, 4: 0x5A5B5C5D}[size]

        def write(self, offset: int, size: int, value: int) -> None:
            self.writes.append((offset, size, value))

    image = build_multiboot(tmp_path, "widths", MULTIBOOT_HEADER + WIDTHS_GUEST)
    machine = Machine(MachineConfig(kernel=image, serial="none"))
    machine.attach_debug_exit()
    recorder = Recorder()
    machine.pio.insert(recorder, 0x510, 1, "recorder")  # type: ignore[arg-type]
    machine.load()
    machine.create_vcpus(1)
    assert machine.loops[0]._fast_path_applies()
    status = machine.run()
    assert status == GUEST_STATUS_OK
    wide = [(0, 1, 0xAB), (0, 2, 0x1234), (0, 4, 0xDEADBEEF)]
    assert recorder.writes == wide + [(0, 1, c) for c in b"xyz"]
    stats = machine.stats()
    assert stats.by_reason["IoIn"].count == 3  # counted although no exit object was made
    # three OUTs, debug-exit and the REP OUTSB: one exit of count 3, or three (this host's KVM emulates
    # string I/O at CPL 0 one item per exit)
    assert stats.by_reason["IoOut"].count in (5, 7)
    machine.close()


GUEST_STATUS_OK = (0x21 << 1) | 1


#: A guest that polls port 0x510 until it reads 0x22 (at most 1,000 times): 0x21 at debug-exit if it did.
POLL_GUEST = r"""
.text
.globl _start
_start:
    mov $0x510, %dx
    mov $1000, %ecx
1:  in %dx, %al
    cmp $0x22, %al
    je 2f
    dec %ecx
    jnz 1b
    mov $0x11, %eax
    jmp 3f
2:  mov $0x21, %eax
3:  mov $0xf4, %dx
    out %eax, %dx
    hlt
"""


@requires_kvm
def test_a_polled_port_whose_device_moves_reaches_the_new_device(tmp_path):
    # The fast path keeps each port access's register function; a change of the bus map (a device
    # removed and another put in its place, as when a PCI BAR moves) must reach the next access.
    class Old:
        reads = 0

        def read(self, offset: int, size: int) -> int:
            self.reads += 1
            if self.reads == 50:  # under the bus lock, as a device access that moves a BAR would be
                machine.pio.remove(0x510)
                machine.pio.insert(new, 0x510, 1, "new")
            return 0x11

        def write(self, offset: int, size: int, value: int) -> None: ...

    class New(Old):
        def read(self, offset: int, size: int) -> int:
            self.reads += 1
            return 0x22

    old, new = Old(), New()
    image = build_multiboot(tmp_path, "poll", MULTIBOOT_HEADER + POLL_GUEST)
    machine = Machine(MachineConfig(kernel=image, serial="none"))
    machine.attach_debug_exit()
    machine.pio.insert(old, 0x510, 1, "old")  # type: ignore[arg-type]
    machine.load()
    machine.create_vcpus(1)
    assert machine.loops[0]._fast_path_applies()
    assert machine.run() == GUEST_STATUS_OK
    assert (old.reads, new.reads) == (50, 1)
    assert machine.stats().by_reason["IoIn"].count == 51
    machine.close()
