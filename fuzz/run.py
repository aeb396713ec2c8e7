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

import struct
import tempfile
import zlib

from kvmlite.control.api import MachineApi
from kvmlite.control.server import ControlServer, _Client
from kvmlite.errors import KvmliteError
from kvmlite.gdb.packets import PacketReader
from kvmlite.gdb.stub import GdbStub
from kvmlite.guests import DEMO_GUEST
from kvmlite.loaders import load_kernel
from kvmlite.memory import GuestMemory
from kvmlite.snapshot import fileformat as F
from kvmlite.snapshot.machine import build_restored, save
from kvmlite.tools import extract_vmlinux
from kvmlite.virtio import pci as P
from kvmlite.virtio.blk import BlockImage, DiskSpec, VirtioBlk
from kvmlite.virtio.console import VirtioConsole
from kvmlite.virtio.device import VirtioDevice
from kvmlite.virtio.pci import VirtioPciFunction
from kvmlite.virtio.rng import VirtioRng
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


# --- snapshot files ----------------------------------------------------------------------------------
_snapshot: tuple[Path, bytes, list[int]] | None = None  # (work file, the good file, its header fields)


def _good_snapshot() -> tuple[Path, bytes, list[int]]:
    """A snapshot of a built (never run) emulator machine, made once (virtio devices have no saved
    state yet: the machine has none)."""
    global _snapshot
    if _snapshot is None:
        work = Path(tempfile.mkdtemp(prefix="kvmlite-fuzz-snapshot-"))
        config = MachineConfig(
            kernel=DEMO_GUEST, backend="emu", memory_mib=16, serial="none", extra_devices=["pc-testdev"]
        )
        machine = Machine.build(config)
        save(machine, work / "good.snap")
        machine.close()
        good = (work / "good.snap").read_bytes()
        _snapshot = work / "fuzz.snap", good, list(F._HEADER.unpack_from(good))
    return _snapshot


def _with_state(blob: bytes) -> bytes:
    """The good snapshot with ``blob`` as its state section (cut to fit), every checksum right."""
    _, good, fields = _good_snapshot()
    st_off, mem_off = fields[3], fields[6]
    blob = blob[: mem_off - st_off]
    data = bytearray(good)
    data[st_off : st_off + len(blob)] = blob
    fields = [*fields]
    fields[4], fields[5] = len(blob), zlib.crc32(blob)
    head = F._HEADER.pack(*fields)
    data[: len(head) + 4] = head + struct.pack("<I", zlib.crc32(head))
    return bytes(data)


def snapshot(data: bytes) -> None:
    """A snapshot file restored into a machine (emulator, never run): byte 0 chooses what the rest is.

    Even: the state section (JSON) with valid checksums around it, so the parser and every device's
    ``from_state`` see it; odd: the file's first bytes as they are (header, checksums, sizes).
    """
    if not data:
        return
    path, good, _ = _good_snapshot()
    if data[0] % 2 == 0:
        path.write_bytes(_with_state(data[1:]))
    else:
        path.write_bytes(data[1:] + good[len(data) - 1 :])
    config = MachineConfig(kernel=Path(), backend="emu", serial="none", extra_devices=["pc-testdev"])
    try:
        machine = build_restored(config, path)
    except KvmliteError:
        return
    machine.close()


def _snapshot_seeds() -> list[bytes]:
    _, good, fields = _good_snapshot()
    st_off, st_len = fields[3], fields[4]
    return [b"\0" + good[st_off : st_off + st_len], b"\1" + good[:st_off]]


# --- virtio devices through the virtio-pci transport -------------------------------------------------
VIRTIO_RAM = 0x10000
_virtio: tuple[GuestMemory, BlockImage] | None = None


def _virtio_env() -> tuple[GuestMemory, BlockImage]:
    global _virtio
    if _virtio is None:
        image = Path(tempfile.mkdtemp(prefix="kvmlite-fuzz-virtio-")) / "disk.img"
        image.write_bytes(bytes(64 * 512))
        _virtio = GuestMemory([(0, VIRTIO_RAM)]), BlockImage(DiskSpec(image))
    return _virtio


def virtio(data: bytes) -> None:
    """A driver's every move on a fresh virtio-blk, -rng or -console behind virtio-pci (with MSI-X):
    register accesses to the common, ISR, device and notify structures, bytes anywhere in guest RAM
    (descriptor tables, rings, request headers, indirect tables), queue notifications.

    The queues start set up through the registers (features, addresses in RAM, enabled, DRIVER_OK),
    so the input reaches the rings at once; any later access may undo that.
    """
    fdp = atheris.FuzzedDataProvider(data)
    memory, image = _virtio_env()
    memory.write(0, bytes(VIRTIO_RAM))
    kind = fdp.ConsumeIntInRange(0, 2)
    dev: VirtioDevice
    if kind == 0:
        dev = VirtioBlk(memory, image, "fuzz", "virtio-blk")
    elif kind == 1:
        dev = VirtioRng(memory)
    else:
        dev = VirtioConsole(memory, lambda b: None)
    fn = VirtioPciFunction(dev, lambda address, value: None)
    bar = fn.bar
    bar.write(P.DRIVER_FEATURE_SELECT, 4, 1)
    bar.write(P.DRIVER_FEATURE, 4, 1)  # VIRTIO_F_VERSION_1 (bit 32)
    bar.write(P.DEVICE_STATUS, 1, 1 | 2 | 8)  # ACKNOWLEDGE, DRIVER, FEATURES_OK
    for q in range(len(dev.queues)):
        base = 0x1000 + q * 0x3000
        bar.write(P.QUEUE_SELECT, 2, q)
        for i, offset in enumerate((P.QUEUE_DESC, P.QUEUE_DRIVER, P.QUEUE_DEVICE)):
            bar.write(offset, 8, base + i * 0x1000)
        bar.write(P.QUEUE_ENABLE, 2, 1)
    bar.write(P.DEVICE_STATUS, 1, 1 | 2 | 8 | 4)  # DRIVER_OK
    while fdp.remaining_bytes() >= 4:
        op = fdp.ConsumeIntInRange(0, 3)
        if op == 0:  # guest RAM: a table, a ring, a request
            addr = fdp.ConsumeIntInRange(0, VIRTIO_RAM - 1)
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
            memory.write(addr, chunk[: VIRTIO_RAM - addr])
        elif op == 1:
            dev.notify(fdp.ConsumeIntInRange(0, 3))
        else:
            offset = fdp.ConsumeIntInRange(0, P.BAR_SIZE - 1)
            size = fdp.PickValueInList([1, 2, 4, 8])
            if op == 2:
                bar.write(offset, size, fdp.ConsumeInt(8 * size) & ((1 << (8 * size)) - 1))
            else:
                bar.read(offset, size)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "kernel": kernel,
    "vmlinux": vmlinux,
    "devices": devices,
    "control": control,
    "gdb": gdb,
    "snapshot": snapshot,
    "virtio": virtio,
}
#: Inputs written into an empty corpus directory before a campaign starts.
SEEDS: dict[str, Callable[[], list[bytes]]] = {"snapshot": _snapshot_seeds}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    logging.disable(logging.CRITICAL)  # the guest-triggerable warnings would drown libFuzzer's output
    target = TARGETS[sys.argv[1]]
    for arg in sys.argv[2:]:  # libFuzzer's corpus directories: seed an empty one
        corpus = Path(arg)
        if not arg.startswith("-") and corpus.is_dir() and not any(corpus.iterdir()):
            for i, seed in enumerate(SEEDS.get(sys.argv[1], list)()):
                (corpus / f"seed-{i}").write_bytes(seed)
    atheris.instrument_all()  # coverage of every kvmlite function loaded (libFuzzer's guide)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
