"""The machine: guest memory, buses, devices, vCPUs and their loops, built in one place.

:class:`Machine` is the explicit builder (the Firecracker shape): ``attach_*``
methods put each device on its bus, nothing attaches itself at import time.
``Machine.run()`` starts one thread per vCPU and returns the exit status:

* 0 - the guest stopped cleanly (HLT with interrupts off, power-off event);
* (v << 1) | 1 - the guest wrote v to the debug-exit port (as under QEMU);
* 4 - the guest crashed (triple fault, failed entry, KVM internal error);
* 130 - interrupted from the host (Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvmlite.devices.debug_exit import DebugExit
from kvmlite.devices.serial import Serial16550
from kvmlite.errors import ConfigError, KvmUnavailableError
from kvmlite.loaders import LoadResult, load_kernel
from kvmlite.memory.bus import Bus
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm.cpu_setup import guest_cpuid, setup_cpu
from kvmlite.vmm.loop import STATUS_INTERRUPTED, VcpuLoop, VmControl
from kvmlite.vmm.stats import ExitStats

log = logging.getLogger(__name__)

COM1_PORT, COM1_IRQ = 0x3F8, 4
SERIAL_PORTS = 8
DEBUG_EXIT_PORT = 0xF4
MIB = 1 << 20
MIN_MEMORY_MIB = 2
MAX_MEMORY_MIB = 64 * 1024


def stdout_sink(data: bytes) -> None:
    """Write guest output to the host's stdout, all of it (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(sys.stdout.fileno(), view)
        except BlockingIOError:
            continue
        view = view[n:]


@dataclass
class MachineConfig:
    kernel: Path
    cmdline: str = ""
    initrds: list[Path] = field(default_factory=list)
    memory_mib: int = 128
    backend: str = "auto"  # "kvm", "emu" or "auto"
    stats: bool = False
    serial_out: Callable[[bytes], None] | None = None  # default: the host's stdout

    def validate(self) -> None:
        if not MIN_MEMORY_MIB <= self.memory_mib <= MAX_MEMORY_MIB:
            raise ConfigError(f"--memory must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB")
        if self.backend not in ("kvm", "emu", "auto"):
            raise ConfigError(f"unknown backend {self.backend!r} (choose kvm, emu or auto)")


class Machine:
    """A PC-like VM with one vCPU (SMP comes with the Linux boot work)."""

    def __init__(self, config: MachineConfig) -> None:
        config.validate()
        self.config = config
        self.control = VmControl()
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.memory = GuestMemory.for_pc(config.memory_mib * MIB)
        self.backend_name, self.vm = self._open_backend(config.backend)
        self.vm.register_memory(self.memory)
        self.loops: list[VcpuLoop] = []
        self.serial: Serial16550 | None = None
        self.load_result: LoadResult | None = None

    # --- construction -------------------------------------------------------------
    def _open_backend(self, choice: str):  # type: ignore[no-untyped-def]
        if choice in ("kvm", "auto"):
            from kvmlite.kvm import Kvm

            try:
                kvm = Kvm()
            except KvmUnavailableError as err:
                if choice == "kvm":
                    raise
                raise KvmUnavailableError(
                    f"{err}; the software backend (--backend emu) is not available yet"
                ) from err
            vm = kvm.create_vm()
            vm.set_tss_addr()
            vm.set_identity_map_addr()
            return "kvm", vm
        raise ConfigError("the software backend (--backend emu) is not available yet")

    def attach_serial(self, port: int = COM1_PORT, out: Callable[[bytes], None] | None = None) -> Serial16550:
        serial = Serial16550(out=out or self.config.serial_out or stdout_sink)
        self.pio.insert(serial, port, SERIAL_PORTS, name=f"serial@{port:#x}")
        self.serial = serial
        return serial

    def attach_debug_exit(self, port: int = DEBUG_EXIT_PORT) -> DebugExit:
        dev = DebugExit(lambda status: self.control.stop(status, "guest wrote to the debug-exit port"))
        self.pio.insert(dev, port, 1, name="isa-debug-exit")
        return dev

    def load(self) -> LoadResult:
        self.load_result = load_kernel(
            self.memory, self.config.kernel, self.config.cmdline, self.config.initrds
        )
        log.info(
            "loaded %s (%s), entry %#x", self.config.kernel, self.load_result.format, self.load_result.entry
        )
        for note in self.load_result.notes:
            log.warning("%s", note)
        return self.load_result

    def create_vcpus(self, count: int = 1) -> None:
        assert self.load_result is not None, "load() first"
        supported = self.vm.kvm.supported_cpuid() if self.backend_name == "kvm" else []
        for i in range(count):
            vcpu = self.vm.create_vcpu(i)
            if supported:
                vcpu.set_cpuid(guest_cpuid(supported, i, count))
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            setup_cpu(regs, sregs, self.memory, self.load_result)
            vcpu.set_sregs(sregs)
            vcpu.set_regs(regs)
            self.loops.append(VcpuLoop(vcpu, self.control, self.pio, self.mmio, timing=self.config.stats))

    @classmethod
    def build(cls, config: MachineConfig) -> Machine:
        """The standard machine: COM1, debug-exit, the kernel, one vCPU."""
        machine = cls(config)
        machine.attach_serial()
        machine.attach_debug_exit()
        machine.load()
        machine.create_vcpus(1)
        return machine

    # --- running --------------------------------------------------------------------
    def run(self) -> int:
        threads = [
            threading.Thread(target=loop.run, name=f"vcpu{loop.vcpu.id}", daemon=True) for loop in self.loops
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                self.control.stopped.wait(0.5)
                if self.control.stopping:
                    for t in threads:
                        t.join()
        except KeyboardInterrupt:
            self.control.stop(STATUS_INTERRUPTED, "interrupted from the host")
            for t in threads:
                t.join(timeout=5)
        info = self.control.stop_info
        return info.status if info else 0

    def stats(self) -> ExitStats:
        total = ExitStats()
        for loop in self.loops:
            total.merge(loop.stats)
        return total

    def close(self) -> None:
        self.vm.close()
        self.memory.close()
