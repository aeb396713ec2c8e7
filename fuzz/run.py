"""atheris (libFuzzer) campaigns over kvmlite's parsers and device models (issue 17).

    pip install -e '.[fuzz]'
    python3 fuzz/run.py TARGET [libFuzzer options]      # e.g. -max_total_time=600 CORPUS_DIR

TARGET is one of :data:`TARGETS`.  Each target holds the same contract as tests/test_fuzz.py (its
hypothesis twin in the default suite): hostile input is accepted or refused with a KvmliteError,
device registers answer any access, the control socket and the gdb stub answer any line.  Any
other exception is a crash: libFuzzer saves the input as ``crash-*``; it becomes a regression
test in tests/test_fuzz.py.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kvmlite.control.api import MachineApi
from kvmlite.control.server import ControlServer, _Client
from kvmlite.errors import KvmliteError
from kvmlite.gdb.packets import PacketReader
from kvmlite.gdb.stub import GdbStub
from kvmlite.guests import DEMO_GUEST
from kvmlite.loaders import load_kernel
from kvmlite.memory import GuestMemory
from kvmlite.tools import extract_vmlinux
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.gdb.fake_target import FakeTarget

_memory: GuestMemory | None = None
_machine: Machine | None = None


def _mem() -> GuestMemory:
    global _memory
    if _memory is None:
        _memory = GuestMemory.for_pc(64 << 20)
    return _memory


def _vm() -> Machine:
    global _machine
    if _machine is None:
        config = MachineConfig(
            kernel=DEMO_GUEST,
            backend="emu",
            memory_mib=16,
            serial="none",
            serial_out=lambda b: None,
            extra_devices=["virtio-rng-pci", "pc-testdev"],
        )
        _machine = Machine.build(config)
    return _machine


def kernel(data: bytes) -> None:
    """Any bytes as a kernel image (the format is detected from them)."""
    try:
        load_kernel(_mem(), Path("fuzz"), "console=ttyS0", [], data=data)
    except KvmliteError:
        pass


def vmlinux(data: bytes) -> None:
    """Any bytes as a bzImage to extract the vmlinux of."""
    try:
        extract_vmlinux.extract_vmlinux(data)
    except KvmliteError:
        pass


def devices(data: bytes) -> None:
    """A sequence of register accesses to every device on a real machine's PIO and MMIO buses."""
    fdp = atheris.FuzzedDataProvider(data)
    machine = _vm()
    while fdp.remaining_bytes() >= 8:
        pio = fdp.ConsumeBool()
        bus = machine.pio if pio else machine.mmio
        ranges = list(bus)
        r = ranges[fdp.ConsumeIntInRange(0, len(ranges) - 1)]
        size = fdp.PickValueInList([1, 2, 4] if pio else [1, 2, 4, 8])
        addr = r.base + fdp.ConsumeIntInRange(0, r.length + 3)
        if fdp.ConsumeBool():
            bus.write(addr, size, fdp.ConsumeInt(8 * size) & ((1 << (8 * size)) - 1))
        else:
            bus.read(addr, size)


_server: tuple[ControlServer, _Client] | None = None


def control(data: bytes) -> None:
    """Each line of the input as a control-socket request (after capability negotiation)."""
    global _server
    if _server is None:
        path = Path(f"/tmp/kvmlite-fuzz-{id(data)}.sock")
        server = ControlServer(str(path), MachineApi(_vm()))
        path.unlink()
        client = _Client(socket.socketpair()[0])
        server.handle_line(client, b'{"execute": "qmp_capabilities"}')
        _server = server, client
    server, client = _server
    for line in data.splitlines():
        if b"dump-guest-memory" in line or b"snapshot-save" in line:
            continue  # they write files at the paths they are given
        reply = server.handle_line(client, line)
        json.dumps(reply)
    if _vm().control.paused:
        _vm().control.resume()


def gdb(data: bytes) -> None:
    """The bytes as a stream from gdb: every packet parsed goes to a stub over a fake target."""
    stub = GdbStub(FakeTarget())
    for event in PacketReader().feed(data):
        payload = getattr(event, "payload", None)
        if payload is not None:
            stub.handle(payload)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "kernel": kernel,
    "vmlinux": vmlinux,
    "devices": devices,
    "control": control,
    "gdb": gdb,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    logging.disable(logging.CRITICAL)  # the guest-triggerable warnings would drown libFuzzer's output
    target = TARGETS[sys.argv[1]]
    atheris.instrument_all()  # coverage of every kvmlite function loaded (libFuzzer's guide)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
