"""Live migration over TCP: ``kvmlite run --incoming tcp:HOST:PORT`` and the control command ``migrate``.

The source sends, on one TCP connection, messages of ``<kind u8><length u64><payload>``:

1. ``HELLO``: the state's ``machine`` record and device list (JSON).  The target
   builds the machine with its own command line's device backends (the
   device set must match, as for ``--restore``) and answers ``READY`` or
   ``ERROR`` with a sentence.
2. ``PAGES`` (pre-copy, the guest still running): ``u32 n``, ``n`` times
   ``(u64 image offset, u32 length)``, then the data.  Round 0 sends every
   non-zero page; each next round the pages KVM's dirty log reports since the
   previous one, until few are left (:data:`DIRTY_PAGES_TO_STOP`) or
   :data:`MAX_ROUNDS`.  The software backend has no dirty log: it skips
   pre-copy (stop and copy).
3. The source pauses the guest (downtime starts), sends the last dirty pages and
   ``STATE`` (the snapshot state of :func:`~kvmlite.snapshot.machine.capture_state`).
4. The target loads it, answers ``DONE``, and runs the guest; the source, once
   it has read ``DONE``, stops with status 0.  If anything fails before that the
   source resumes its guest and the target exits with a sentence.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmlite.errors import ConfigError
from kvmlite.snapshot import SnapshotError
from kvmlite.snapshot import fileformat as F
from kvmlite.snapshot.codec import decode, encode
from kvmlite.snapshot.machine import MALFORMED, DirtyLog, build_empty, capture_state, load_into

if TYPE_CHECKING:
    from kvmlite.vmm.machine import Machine, MachineConfig

log = logging.getLogger(__name__)

MAGIC = b"KVMLMIG1"
HELLO, READY, PAGES, STATE, DONE, ERROR = 1, 2, 3, 4, 5, 6
_HEAD = struct.Struct("<BQ")
_CHUNK = struct.Struct("<QI")
MAX_MESSAGE = 64 << 20
BATCH_BYTES = 1 << 20
MAX_ROUNDS = 30
DIRTY_PAGES_TO_STOP = 256
CONNECT_TIMEOUT_S = 10.0
CONFIRM_TIMEOUT_S = 120.0


def parse_tcp(uri: str, what: str) -> tuple[str, int]:
    """``tcp:HOST:PORT`` -> (host, port); anything else is a :class:`ConfigError`."""
    kind, _, rest = uri.partition(":")
    host, _, port = rest.rpartition(":")
    if kind != "tcp" or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} {uri!r}: expected tcp:HOST:PORT")
    return host, int(port)


@dataclass
class MigrationStats:
    rounds: int = 0
    pages: int = 0
    total_ms: float = 0.0
    downtime_ms: float = 0.0

    def describe(self) -> str:
        return (
            f"{self.rounds} pre-copy rounds, {self.pages} pages, total {self.total_ms:.1f} ms, "
            f"downtime {self.downtime_ms:.1f} ms"
        )


class _Channel:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer

    def send(self, kind: int, payload: bytes | memoryview = b"") -> None:
        self.sock.sendall(_HEAD.pack(kind, len(payload)))
        if payload:
            self.sock.sendall(payload)

    def send_json(self, kind: int, value: Any) -> None:
        self.send(kind, json.dumps(encode(value), separators=(",", ":")).encode())

    def recv(self) -> tuple[int, bytes]:
        kind, length = _HEAD.unpack(self._exact(_HEAD.size))
        if length > MAX_MESSAGE:
            raise SnapshotError(f"migration from {self.peer}: a message of {length} bytes is too large")
        return kind, self._exact(length)

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                raise SnapshotError(f"migration: {self.peer} closed the connection")
            buf += chunk
        return bytes(buf)


def _json(payload: bytes, what: str) -> Any:
    try:
        return decode(json.loads(payload))
    except (ValueError, RecursionError) as err:
        raise SnapshotError(f"migration: unreadable {what} ({err})") from None


# --- the source -------------------------------------------------------------------------------------
def migrate(machine: Machine, uri: str) -> MigrationStats:
    """Send the running ``machine`` to ``uri``; on success it is stopped with status 0."""
    host, port = parse_tcp(uri, "migrate")
    start = time.monotonic()
    stats = MigrationStats()
    control = machine.control
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except OSError as err:
        raise SnapshotError(f"migrate: cannot connect to {uri}: {err.strerror or err}") from None
    paused = unlocked = done = False
    dirty_log: DirtyLog | None = None
    try:
        sock.settimeout(CONFIRM_TIMEOUT_S)
        chan = _Channel(sock, uri)
        record = control.run_paused(lambda: capture_state(machine))  # what the target must build
        sock.sendall(MAGIC)
        chan.send_json(HELLO, {"machine": record["machine"], "devices": _names(record["devices"])})
        kind, payload = chan.recv()
        if kind != READY:
            raise SnapshotError(f"migrate: the target refused the VM: {payload.decode(errors='replace')}")
        if DirtyLog.available(machine):
            dirty_log = control.run_paused(lambda: DirtyLog(machine))
            stats.pages += _send_all(chan, machine)
            for _ in range(MAX_ROUNDS):
                stats.rounds += 1
                dirty = dirty_log.take()
                if len(dirty) <= DIRTY_PAGES_TO_STOP:
                    control.pause()
                    paused, down = True, time.monotonic()
                    stats.pages += _send_pages(chan, machine, dirty)  # the rest below, under the lock
                    break
                stats.pages += _send_pages(chan, machine, dirty)
        if not paused:
            control.pause()
            paused, down = True, time.monotonic()
        # Under the device lock to the end: the I/O thread writes no page and completes no request
        # once the final state is taken, and after DONE the VM is stopping, so it takes none at all.
        with machine.lock:
            if dirty_log is not None:
                stats.pages += _send_pages(chan, machine, dirty_log.take())
            else:
                stats.pages += _send_all(chan, machine)
            state = capture_state(machine)
            for image in machine.disk_images:
                image.unlock()  # the target takes the disks over with the state
            unlocked = True
            chan.send_json(STATE, state)
            kind, payload = chan.recv()
            if kind != DONE:
                why = payload.decode(errors="replace")
                raise SnapshotError(f"migrate: the target failed to load the VM: {why}")
            done = True
            now = time.monotonic()
            stats.downtime_ms = (now - down) * 1e3
            stats.total_ms = (now - start) * 1e3
            control.stop(0, f"migrated to {uri}: {stats.describe()}")
    except BaseException as err:
        if unlocked and not done:
            _relock(machine)
        if paused:
            control.resume()
        if isinstance(err, OSError):
            raise SnapshotError(f"migrate to {uri}: {err.strerror or err}") from None
        raise
    finally:
        if dirty_log is not None:
            dirty_log.close()
        sock.close()
    control.resume()
    return stats


def _relock(machine: Machine) -> None:
    """The migration failed after the disks were given up: the source takes them back to go on."""
    for image in machine.disk_images:
        try:
            image.lock()
        except ConfigError as err:
            log.error("after the failed migration: %s", err)


def _names(devices: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"name": d["name"], "type": d["type"]} for d in devices]


def _send_all(chan: _Channel, machine: Machine) -> int:
    batch: list[tuple[int, memoryview]] = []
    pages = 0
    for offset, view in F.nonzero_runs(machine.memory):
        batch.append((offset, view))
        pages += len(view) // F.PAGE
        if sum(len(v) for _, v in batch) >= BATCH_BYTES:
            _send_batch(chan, batch)
            batch = []
    _send_batch(chan, batch)
    return pages


def _send_pages(chan: _Channel, machine: Machine, dirty: list[tuple[int, int]]) -> int:
    regions = list(machine.memory)
    batch: list[tuple[int, memoryview]] = []
    for i, off in sorted(set(dirty)):
        batch.append((F.image_offset(machine.memory, i, off), regions[i].view[off : off + F.PAGE]))
        if len(batch) * F.PAGE >= BATCH_BYTES:
            _send_batch(chan, batch)
            batch = []
    _send_batch(chan, batch)
    return len(set(dirty))


def _send_batch(chan: _Channel, batch: list[tuple[int, memoryview]]) -> None:
    if not batch:
        return
    head = struct.pack("<I", len(batch)) + b"".join(_CHUNK.pack(o, len(v)) for o, v in batch)
    chan.send(PAGES, head + b"".join(bytes(v) for _, v in batch))


# --- the target -------------------------------------------------------------------------------------
def incoming(config: MachineConfig, uri: str) -> Machine:
    """Wait on ``uri`` for one VM, build it with ``config``'s devices and load it; ready to run."""
    host, port = parse_tcp(uri, "--incoming")
    try:
        server = socket.create_server((host, port))
    except OSError as err:
        raise SnapshotError(f"--incoming {uri}: cannot listen: {err.strerror or err}") from None
    log.info("waiting for a migration on %s", uri)
    with server:
        conn, peer = server.accept()
    with conn:
        return _receive(config, _Channel(conn, f"{peer[0]}:{peer[1]}"))


def _receive(config: MachineConfig, chan: _Channel) -> Machine:
    if chan._exact(len(MAGIC)) != MAGIC:
        raise SnapshotError(f"migration from {chan.peer}: not a kvmlite migration stream")
    kind, payload = chan.recv()
    if kind != HELLO:
        raise SnapshotError(f"migration from {chan.peer}: expected HELLO, got message {kind}")
    hello = _json(payload, "machine description")
    source = "the migration source"
    try:
        if not isinstance(hello, dict):
            raise SnapshotError(f"{source} sent a malformed machine description")
        machine = build_empty(config, hello.get("machine"), hello.get("devices"), source, lock_disks=False)
    except SnapshotError as err:
        chan.send(ERROR, str(err).encode())
        raise
    try:
        chan.send(READY)
        start = None
        pages = 0
        while True:
            kind, payload = chan.recv()
            if kind == PAGES:
                pages += _write_batch(machine, payload)
                continue
            if kind != STATE:
                raise SnapshotError(f"migration from {chan.peer}: unexpected message {kind}")
            start = time.monotonic()
            for image in machine.disk_images:
                image.lock()  # the source gave the disks up with the state
            state = _json(payload, "VM state")
            if not isinstance(state, dict):
                raise SnapshotError(f"{source} sent a malformed VM state")
            try:
                load_into(machine, state)
            except MALFORMED as err:
                if isinstance(err, SnapshotError):
                    raise
                why = f"{type(err).__name__}: {err}"
                raise SnapshotError(f"{source} sent a malformed VM state ({why})") from None
            chan.send(DONE)
            break
    except BaseException as err:
        try:
            chan.send(ERROR, str(err).encode())
        except OSError:
            pass
        machine.close()
        if isinstance(err, OSError):
            raise SnapshotError(f"migration from {chan.peer}: {err.strerror or err}") from None
        raise
    elapsed = (time.monotonic() - start) * 1e3
    log.info("migration from %s: %d pages, state loaded in %.1f ms", chan.peer, pages, elapsed)
    return machine


def _write_batch(machine: Machine, payload: bytes) -> int:
    if len(payload) < 4:
        raise SnapshotError("migration: a truncated PAGES message")
    (n,) = struct.unpack_from("<I", payload)
    pos = 4 + n * _CHUNK.size
    if pos > len(payload):
        raise SnapshotError("migration: a truncated PAGES message")
    for i in range(n):
        offset, length = _CHUNK.unpack_from(payload, 4 + i * _CHUNK.size)
        if pos + length > len(payload):
            raise SnapshotError("migration: a truncated PAGES message")
        F.write_image(machine.memory, offset, payload[pos : pos + length])
        pos += length
    return n
