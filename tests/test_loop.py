"""The vCPU loop through the library: hooks, stop from another thread, statistics."""

from __future__ import annotations

import threading
import time

from kvmlite.kvm import exits as E
from kvmlite.status import ExitStatus
from kvmlite.vmm.loop import LoopExtension, VcpuLoop
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import requires_kvm
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
