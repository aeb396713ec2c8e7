"""virtio-blk (virtio 1.2, 5.2) over a raw image file: read, write, flush, get-id, discard, write-zeroes.

Each request is a chain: a 16-byte device-readable header (type, reserved,
sector), the data buffers (device-readable for writes, device-writable for
reads and get-id), and one device-writable status byte at the very end.
Data moves straight between the file and guest RAM: ``os.preadv`` and
``os.pwritev`` on memoryviews of the guest's mapping, no copies.  A flush is
``fdatasync`` before the request completes, so nothing reported written is
lost if the host crashes afterwards.  A read-only disk offers
``VIRTIO_BLK_F_RO`` and answers writes with ``VIRTIO_BLK_S_IOERR``.

The image is locked (``flock``: exclusive when writable, shared when
read-only), so two kvmlite processes cannot both write one image.

Discard and write-zeroes (``VIRTIO_BLK_F_DISCARD``, ``VIRTIO_BLK_F_WRITE_ZEROES``)
carry an array of 16-byte segments (sector, number of sectors, flags).  A
discard punches a hole in the file (``fallocate(PUNCH_HOLE|KEEP_SIZE)``): the
host file system frees the blocks and the range reads as zeros; it is
offered only where the image's file system can punch holes.  Write-zeroes
is offered on every writable disk: with the guest's UNMAP flag (and hole
punching) it punches too, else ``fallocate(ZERO_RANGE|KEEP_SIZE)``, and where
the file system has neither it writes zeros.  An unknown flag, or UNMAP on a
discard, is ``VIRTIO_BLK_S_UNSUPP`` (5.2.6.2).

A malformed request (no room for the header or the status, a data range
past the end of the disk) fails that one request with IOERR and a warning;
a malformed chain (:class:`~kvmlite.virtio.queue.QueueError`) marks the
device NEEDS_RESET.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from kvmlite.devices.base import DeviceState, checked_state
from kvmlite.errors import ConfigError, DeviceError
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.device import COMMON_FEATURES, VirtioDevice
from kvmlite.virtio.queue import Buffer, Chain, QueueError, Virtqueue, write_buffers

log = logging.getLogger(__name__)

VIRTIO_ID_BLOCK = 2
SECTOR_SIZE = 512
QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2  # header and status take two descriptors
ID_BYTES = 20

VIRTIO_BLK_F_SEG_MAX = 1 << 2
VIRTIO_BLK_F_RO = 1 << 5
VIRTIO_BLK_F_BLK_SIZE = 1 << 6
VIRTIO_BLK_F_FLUSH = 1 << 9
VIRTIO_BLK_F_DISCARD = 1 << 13
VIRTIO_BLK_F_WRITE_ZEROES = 1 << 14

VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID = 0, 1, 4, 8
VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES = 11, 13
VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP = 0, 1, 2
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1

#: Discard and write-zeroes limits the device announces: sectors per segment, segments per request.
MAX_DWZ_SECTORS = 1 << 22  # 2 GiB
MAX_DWZ_SEGMENTS = 32

_HEADER = struct.Struct("<IIQ")
# capacity, size_max, seg_max, geometry (cylinders, heads, sectors), blk_size,
# topology (physical_block_exp, alignment_offset, min_io_size, opt_io_size), writeback, unused0,
# num_queues, max_discard_sectors, max_discard_seg, discard_sector_alignment,
# max_write_zeroes_sectors, max_write_zeroes_seg, write_zeroes_may_unmap, unused1[3]
_CONFIG = struct.Struct("<QIIHBBIBBHIBBHIIIIIB3x")
#: One discard / write-zeroes segment: sector, num_sectors, flags.
_SEGMENT = struct.Struct("<QII")

# fallocate(2) modes
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
ZERO_CHUNK = 1 << 20  # bytes of zeros written at a time where fallocate cannot zero

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (``os.posix_fallocate`` has none); OSError on failure."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@dataclass(frozen=True)
class DiskSpec:
    """``--disk PATH[,readonly=on][,serial=ID]``."""

    path: Path
    readonly: bool = False
    serial: str = ""

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        path, *options = text.split(",")
        if not path:
            raise ConfigError(f"--disk {text!r}: the image path is missing")
        readonly, serial = False, ""
        for option in options:
            key, _, value = option.partition("=")
            if key == "readonly" and value in ("on", "off"):
                readonly = value == "on"
            elif key == "serial" and len(value.encode()) <= ID_BYTES:
                serial = value
            else:
                choices = "readonly=on|off, serial=ID of up to 20 bytes"
                raise ConfigError(f"--disk {text!r}: unknown option {option!r} ({choices})")
        return cls(Path(path), readonly, serial)


class BlockImage:
    """A raw image file, opened and locked; the host side of a disk.

    With ``lock=False`` the image is opened but not locked yet: the target of
    a live migration takes the lock (:meth:`lock`) only once the source has
    given it up (:meth:`unlock`) with the VM's final state.
    """

    def __init__(self, spec: DiskSpec, lock: bool = True) -> None:
        flags = os.O_RDONLY if spec.readonly else os.O_RDWR
        self.path = spec.path
        try:
            self.fd = os.open(spec.path, flags | os.O_CLOEXEC)
        except OSError as err:
            raise ConfigError(f"--disk {spec.path}: {err.strerror}") from err
        self.size = os.fstat(self.fd).st_size
        self.readonly = spec.readonly
        if lock:
            try:
                self.lock()
            except ConfigError:
                os.close(self.fd)
                raise
        #: Whether the image's file system punches holes: tried on one byte past the end of the file,
        #: where a punch changes nothing.
        self.can_punch = not self.readonly and self._punch_probe()
        #: Whether fallocate(ZERO_RANGE) works: assumed until the file system says otherwise.
        self.can_zero_range = not self.readonly

    def _punch_probe(self) -> bool:
        try:
            self.discard(self.size, 1)
        except OSError as err:
            log.info("%s: no hole punching (%s): discard is not offered", self.path, err.strerror)
            return False
        return True

    def discard(self, offset: int, length: int) -> None:
        """Free the range: a hole reads as zeros."""
        fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def write_zeroes(self, offset: int, length: int, unmap: bool) -> None:
        """Make the range read as zeros, freeing its blocks when ``unmap`` and the file system can."""
        if unmap and self.can_punch:
            self.discard(offset, length)
            return
        if self.can_zero_range:
            try:
                fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as err:
                if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.can_zero_range = False  # e.g. a file system that only probes as capable
        zeros = bytes(min(length, ZERO_CHUNK))
        end = offset + length
        while offset < end:
            offset += os.pwrite(self.fd, zeros[: end - offset], offset)

    def lock(self) -> None:
        """Take the image's lock (exclusive when writable); a ConfigError when another process has it."""
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if self.readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"--disk {self.path}: the image is in use by another process") from err
            raise ConfigError(f"--disk {self.path}: cannot lock the image: {err.strerror}") from err

    def unlock(self) -> None:
        """Give the lock up (the VM moves to another process, which takes it)."""
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class VirtioBlkState(DeviceState):
    """What the driver read from the disk's configuration: a restore onto another size is refused."""

    capacity: int = 0
    readonly: bool = False


class VirtioBlk(VirtioDevice):
    device_id = VIRTIO_ID_BLOCK
    pci_class = 0x010000  # mass storage, SCSI: what QEMU's virtio-blk-pci shows

    def __init__(self, memory: GuestMemory, image: BlockImage, serial: str = "", name: str = "") -> None:
        features = COMMON_FEATURES | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_FLUSH
        if image.readonly:
            features |= VIRTIO_BLK_F_RO
        else:
            features |= VIRTIO_BLK_F_WRITE_ZEROES | (VIRTIO_BLK_F_DISCARD if image.can_punch else 0)
        super().__init__(memory, features, [QUEUE_SIZE], name or "virtio-blk")
        self.image = image
        self.serial = serial.encode()[:ID_BYTES]
        self.capacity = image.size // SECTOR_SIZE

    def config_bytes(self) -> bytes:
        discard = self.device_features & VIRTIO_BLK_F_DISCARD
        zeroes = self.device_features & VIRTIO_BLK_F_WRITE_ZEROES
        return _CONFIG.pack(
            self.capacity, 0, SEG_MAX, 0, 0, 0, SECTOR_SIZE,
            0, 0, 0, 0,  # topology: 512-byte blocks, no hints
            0, 0, 0,  # writeback, unused, num_queues (no VIRTIO_BLK_F_MQ)
            MAX_DWZ_SECTORS if discard else 0, MAX_DWZ_SEGMENTS if discard else 0, 1 if discard else 0,
            MAX_DWZ_SECTORS if zeroes else 0, MAX_DWZ_SEGMENTS if zeroes else 0,
            1 if zeroes and self.image.can_punch else 0,  # write_zeroes_may_unmap
        )  # fmt: skip

    def device_state(self) -> VirtioBlkState:
        return VirtioBlkState(capacity=self.capacity, readonly=self.image.readonly)

    def load_device_state(self, state: DeviceState | None) -> None:
        st = checked_state(state, VirtioBlkState, self.name)
        if st.capacity != self.capacity or st.readonly != self.image.readonly:
            saved = f"{st.capacity} sectors{' read-only' if st.readonly else ''}"
            here = f"{self.capacity} sectors{' read-only' if self.image.readonly else ''}"
            raise DeviceError(f"{self.name}: the snapshot's disk had {saved}, this one has {here}")

    def process_queue(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop(self.memory)) is not None:
            status, written = self._request(chain)
            status_buf = chain.writable[-1]
            self.memory.write_u8(status_buf.addr + status_buf.length - 1, status)
            self.complete(index, chain, written + 1)

    def _request(self, chain: Chain) -> tuple[int, int]:
        """Run one request; returns (status, data bytes written into the chain)."""
        if chain.readable_len < _HEADER.size or not chain.writable or chain.writable[-1].length == 0:
            raise QueueError(f"chain {chain.head}: a request without a 16-byte header or a status byte")
        header = bytearray()
        for b in chain.readable:
            header += self.memory.read(b.addr, min(b.length, _HEADER.size - len(header)))
            if len(header) == _HEADER.size:
                break
        kind, _, sector = _HEADER.unpack(header)
        data_in = _take(chain.readable, _HEADER.size, chain.readable_len - _HEADER.size)
        data_out = _take(chain.writable, 0, chain.writable_len - 1)
        try:
            if kind == VIRTIO_BLK_T_IN:
                return self._read(sector, data_out)
            if kind == VIRTIO_BLK_T_OUT:
                return self._write(sector, data_in), 0
            if kind == VIRTIO_BLK_T_FLUSH:
                if not self.image.readonly:
                    os.fdatasync(self.image.fd)
                return VIRTIO_BLK_S_OK, 0
            if kind == VIRTIO_BLK_T_GET_ID:
                written = write_buffers(self.memory, data_out, self.serial.ljust(ID_BYTES, b"\0"))
                return VIRTIO_BLK_S_OK, written
            if kind == VIRTIO_BLK_T_DISCARD and self.device_features & VIRTIO_BLK_F_DISCARD:
                return self._discard_write_zeroes(data_in, discard=True), 0
            if kind == VIRTIO_BLK_T_WRITE_ZEROES and self.device_features & VIRTIO_BLK_F_WRITE_ZEROES:
                return self._discard_write_zeroes(data_in, discard=False), 0
        except OSError as err:
            self._warn(f"host I/O error: {err}")
            return VIRTIO_BLK_S_IOERR, 0
        return VIRTIO_BLK_S_UNSUPP, 0

    def _range_ok(self, sector: int, length: int) -> bool:
        ok = sector * SECTOR_SIZE + length <= self.capacity * SECTOR_SIZE
        if not ok:
            self._warn("a request past the end of the disk failed")
        return ok

    def _views(self, buffers: list[Buffer]) -> list[memoryview]:
        return [v for b in buffers for v in self.memory.views(b.addr, b.length)]

    def _read(self, sector: int, buffers: list[Buffer]) -> tuple[int, int]:
        length = sum(b.length for b in buffers)
        if not self._range_ok(sector, length):
            return VIRTIO_BLK_S_IOERR, 0
        done = os.preadv(self.image.fd, self._views(buffers), sector * SECTOR_SIZE)
        for b in buffers:  # KVM's dirty log does not see the host's writes
            self.memory.mark_written(b.addr, b.length)
        return (VIRTIO_BLK_S_OK if done == length else VIRTIO_BLK_S_IOERR), done

    def _write(self, sector: int, buffers: list[Buffer]) -> int:
        length = sum(b.length for b in buffers)
        if self.image.readonly:
            self._warn("the guest wrote to a read-only disk; refused")
            return VIRTIO_BLK_S_IOERR
        if not self._range_ok(sector, length):
            return VIRTIO_BLK_S_IOERR
        done = os.pwritev(self.image.fd, self._views(buffers), sector * SECTOR_SIZE)
        return VIRTIO_BLK_S_OK if done == length else VIRTIO_BLK_S_IOERR


    def _discard_write_zeroes(self, buffers: list[Buffer], discard: bool) -> int:
        """Discard or write-zeroes: every segment checked first, then each applied in turn (5.2.6)."""
        size = sum(b.length for b in buffers)
        if not size or size % _SEGMENT.size or size // _SEGMENT.size > MAX_DWZ_SEGMENTS:
            self._warn(f"discard/write-zeroes data of {size} bytes is not 1 to {MAX_DWZ_SEGMENTS} segments")
            return VIRTIO_BLK_S_UNSUPP
        data = b"".join(self.memory.read(b.addr, b.length) for b in buffers)
        segments = [_SEGMENT.unpack_from(data, at) for at in range(0, len(data), _SEGMENT.size)]
        allowed = 0 if discard else VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        if any(flags & ~allowed for _, _, flags in segments):
            return VIRTIO_BLK_S_UNSUPP
        if self.image.readonly:
            self._warn("the guest wrote to a read-only disk; refused")
            return VIRTIO_BLK_S_IOERR
        for sector, count, _ in segments:
            if count > MAX_DWZ_SECTORS or not self._range_ok(sector, count * SECTOR_SIZE):
                return VIRTIO_BLK_S_IOERR
        for sector, count, flags in segments:
            offset, length = sector * SECTOR_SIZE, count * SECTOR_SIZE
            if length == 0:
                continue
            if discard:
                self.image.discard(offset, length)
            else:
                self.image.write_zeroes(offset, length, bool(flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP))
        return VIRTIO_BLK_S_OK


def _take(buffers: list[Buffer], skip: int, length: int) -> list[Buffer]:
    """The buffers covering ``length`` bytes after the first ``skip`` bytes of ``buffers``."""
    out: list[Buffer] = []
    for b in buffers:
        if skip >= b.length:
            skip -= b.length
            continue
        n = min(b.length - skip, length)
        if n > 0:
            out.append(Buffer(b.addr + skip, n, b.writable))
            length -= n
        skip = 0
    return out

