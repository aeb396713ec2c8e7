"""The snapshot file: a checked header, a JSON state section, a sparse memory image.

``docs/snapshot-format.md`` is the description; in short::

    0     header (64 bytes): magic "KVMLSNAP", version, flags, the state section's
          offset/length/CRC-32, the memory image's offset/length, the header's own CRC-32
    64    state section: UTF-8 JSON (vCPUs, in-kernel devices, devices, memory index)
    M     memory image (M page aligned): the RAM regions back to back, zero pages
          left as holes (the file is sparse), or in a separate memory file

The memory index in the state lists runs of non-zero pages with a CRC-32
each.  A full read checks every run; a lazy restore maps the image
``MAP_PRIVATE`` and reads pages when the guest first touches them (their
CRCs are then not checked: Firecracker's trade-off).  Every problem with a
file is a :class:`~kvmlite.snapshot.SnapshotError` of one sentence, raised
before anything of it reaches a machine that could run.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmlite.memory.guest import GuestMemory
from kvmlite.snapshot import SnapshotError
from kvmlite.snapshot.codec import decode, encode

MAGIC = b"KVMLSNAP"
MEMORY_MAGIC = b"KVMLMEM\0"
VERSION = 1
PAGE = 4096
#: Pages per memory run at most (each run has its CRC-32): a bad run names 1 MiB of RAM at most.
RUN_PAGES = 256
FLAG_SEPARATE_MEMORY = 1 << 0
#: A diff snapshot: its image holds only the pages written since its base snapshot (named in the state).
FLAG_DIFF = 1 << 1
#: How many diff snapshots a chain may hold before its full snapshot (a loop in a chain ends there).
MAX_CHAIN = 256
#: magic, version, flags, state offset, state length, state crc, memory offset, memory length
_HEADER = struct.Struct("<8sIIQQIQQ")
HEADER_SIZE = 64
_MEMORY_HEADER = struct.Struct("<8sI16sQ")  # magic, version, snapshot id, image length (+ crc32)
_ZERO_PAGE = bytes(PAGE)
_ZERO_CHUNK = bytes(PAGE * 64)  # PAGE-aligned regions: chunks and pages align
assert _HEADER.size + 4 <= HEADER_SIZE


@dataclass
class MemoryRun:
    """Non-zero pages at ``offset`` in the memory image (``length`` bytes) and their CRC-32."""

    offset: int
    length: int
    crc: int


@dataclass
class SnapshotFile:
    """A snapshot read from disk: its state (decoded) and where its memory image is."""

    path: Path
    state: dict[str, Any]
    memory_path: Path
    memory_offset: int
    memory_length: int
    runs: list[MemoryRun] = field(default_factory=list)
    regions: list[tuple[int, int]] = field(default_factory=list)
    #: This snapshot's memory id (hex); with a diff snapshot also its base's id and file name.
    id: str = ""
    base_id: str | None = None
    base_file: str | None = None


# --- memory scanning --------------------------------------------------------------------------
def nonzero_runs(memory: GuestMemory) -> Iterator[tuple[int, memoryview]]:
    """(image offset, view) of each run of non-zero pages, region by region, at most RUN_PAGES long."""
    image = 0
    for region in memory:
        for lo, hi in _nonzero_spans(region.view, region.size):
            for start in range(lo, hi, RUN_PAGES * PAGE):
                yield image + start, region.view[start : min(hi, start + RUN_PAGES * PAGE)]
        image += region.size


def _nonzero_spans(view: memoryview, size: int) -> Iterator[tuple[int, int]]:
    """The [start, end) spans of ``view`` whose pages all hold a non-zero byte, in order.

    Comparing a memoryview with bytes goes element by element (a 512 MiB guest
    took seconds); ``bytes.startswith`` takes any buffer and is one ``memcmp``,
    which stops at the first non-zero byte.  64 pages are tested at once, and
    only the pages of a chunk that is not all zero one by one.
    """
    start: int | None = None  # of the span being collected
    for chunk in range(0, size, len(_ZERO_CHUNK)):
        end = min(chunk + len(_ZERO_CHUNK), size)
        if _ZERO_CHUNK.startswith(view[chunk:end]):
            if start is not None:
                yield start, chunk
                start = None
            continue
        for page in range(chunk, end, PAGE):
            if _ZERO_PAGE.startswith(view[page : page + PAGE]):
                if start is not None:
                    yield start, page
                    start = None
            elif start is None:
                start = page
    if start is not None:
        yield start, size


def page_runs(memory: GuestMemory, pages: list[tuple[int, int]]) -> Iterator[tuple[int, memoryview]]:
    """(image offset, view) of runs of the given (region index, offset) pages, zero or not."""
    regions = list(memory)
    starts = _image_starts(memory)
    run: tuple[int, int, int] | None = None  # region index, first offset, end offset
    for i, off in sorted(set(pages)):
        if run is not None and run[0] == i and run[2] == off and run[2] - run[1] < RUN_PAGES * PAGE:
            run = (i, run[1], off + PAGE)
            continue
        if run is not None:
            yield starts[run[0]] + run[1], regions[run[0]].view[run[1] : run[2]]
        run = (i, off, off + PAGE)
    if run is not None:
        yield starts[run[0]] + run[1], regions[run[0]].view[run[1] : run[2]]


# --- writing --------------------------------------------------------------------------------------
def write_snapshot(
    path: Path,
    state: dict[str, Any],
    memory: GuestMemory,
    separate_memory: bool = False,
    diff: tuple[SnapshotFile | DiffBase, list[tuple[int, int]]] | None = None,
) -> tuple[int, str]:
    """Write ``state`` and ``memory`` to ``path`` (and ``path``.mem); returns (bytes of data written, id).

    With ``diff`` = (base, pages) only those (region index, offset) pages are
    written, zero or not, and the state names ``base`` (a snapshot in the same
    directory or given by its path) as the snapshot they apply to.  Written to
    a temporary name and renamed, so ``path`` is either the old file or the whole new one.
    """
    if diff is not None and separate_memory:
        raise SnapshotError("a diff snapshot keeps its pages in its own file (no separate memory file)")
    snap_id = uuid.uuid4().bytes
    image_length = sum(r.size for r in memory)
    mem_path = path.with_name(path.name + ".mem")
    tmp = path.with_name(path.name + ".tmp")
    mem_tmp = mem_path.with_name(mem_path.name + ".tmp")
    written = 0
    try:
        runs: list[MemoryRun] = []
        mem_file = open(mem_tmp if separate_memory else tmp, "wb")
        with mem_file:
            base = PAGE if separate_memory else 0  # embedded: fixed up once the state's size is known
            pending: list[tuple[int, memoryview]] = []
            for offset, view in nonzero_runs(memory) if diff is None else page_runs(memory, diff[1]):
                runs.append(MemoryRun(offset, len(view), zlib.crc32(view)))
                pending.append((offset, view))
            full_state = dict(state)
            full_state["memory"] = {
                "id": snap_id.hex(),
                "regions": [[int(r.start), r.size] for r in memory],
                "runs": [[r.offset, r.length, r.crc] for r in runs],
                "file": mem_path.name if separate_memory else None,
            }
            if diff is not None:
                parent = diff[0]
                same_dir = parent.path.parent.resolve() == path.parent.resolve()
                full_state["memory"]["base"] = {
                    "id": parent.id,
                    "file": parent.path.name if same_dir else str(parent.path.resolve()),
                }
            blob = json.dumps(encode(full_state), separators=(",", ":")).encode()
            if not separate_memory:
                base = _align(HEADER_SIZE + len(blob))
            for offset, view in pending:
                mem_file.seek(base + offset)
                mem_file.write(view)
                written += len(view)
            mem_file.truncate(base + image_length)  # the zero pages stay holes
            if separate_memory:
                mem_file.seek(0)
                head = _MEMORY_HEADER.pack(MEMORY_MAGIC, VERSION, snap_id, image_length)
                mem_file.write(head + struct.pack("<I", zlib.crc32(head)))
        mode = "wb" if separate_memory else "r+b"
        with open(tmp, mode) as f:
            flags = (FLAG_SEPARATE_MEMORY if separate_memory else 0) | (FLAG_DIFF if diff is not None else 0)
            mem_offset = 0 if separate_memory else base
            head = _HEADER.pack(
                MAGIC, VERSION, flags, HEADER_SIZE, len(blob), zlib.crc32(blob), mem_offset, image_length
            )
            f.write(head + struct.pack("<I", zlib.crc32(head)) + bytes(HEADER_SIZE - len(head) - 4))
            f.write(blob)
            written += HEADER_SIZE + len(blob)
        if separate_memory:
            os.replace(mem_tmp, mem_path)
        os.replace(tmp, path)
    except OSError as err:
        for leftover in (tmp, mem_tmp):
            leftover.unlink(missing_ok=True)
        raise SnapshotError(f"cannot write snapshot {path}: {err.strerror or err}") from None
    return written, snap_id.hex()


@dataclass
class DiffBase:
    """What a diff snapshot needs of its base: the base's path and memory id."""

    path: Path
    id: str


def _align(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


# --- reading ----------------------------------------------------------------------------------------
def read_snapshot(path: Path) -> SnapshotFile:
    """Read and check a snapshot's header and state (memory is checked by :func:`load_memory`)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_SIZE)
            if len(head) < 8 or head[:8] != MAGIC:
                raise SnapshotError(f"{path} is not a kvmlite snapshot (no KVMLSNAP magic)")
            if len(head) < HEADER_SIZE:
                raise SnapshotError(f"snapshot {path} is truncated (its header is incomplete)")
            fields = _HEADER.unpack_from(head)
            (crc,) = struct.unpack_from("<I", head, _HEADER.size)
            _, version, flags, st_off, st_len, st_crc, mem_off, mem_len = fields
            if version != VERSION:
                raise SnapshotError(
                    f"snapshot {path} has format version {version}; this kvmlite reads {VERSION}"
                )
            if crc != zlib.crc32(head[: _HEADER.size]):
                raise SnapshotError(f"snapshot {path} is corrupted (header checksum mismatch)")
            if st_off + st_len > size:
                raise SnapshotError(f"snapshot {path} is truncated (the state section ends past the file)")
            f.seek(st_off)
            blob = f.read(st_len)
    except OSError as err:
        raise SnapshotError(f"cannot read snapshot {path}: {err.strerror or err}") from None
    if zlib.crc32(blob) != st_crc:
        raise SnapshotError(f"snapshot {path} is corrupted (state section checksum mismatch)")
    try:
        state = decode(json.loads(blob))
    except (ValueError, RecursionError) as err:
        raise SnapshotError(f"snapshot {path} has an unreadable state section ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("memory"), dict):
        raise SnapshotError(f"snapshot {path} has no memory index")
    mem = state["memory"]
    try:
        runs = [MemoryRun(int(o), int(n), int(c)) for o, n, c in mem["runs"]]
        regions = [(int(s), int(n)) for s, n in mem["regions"]]
        snap_id = bytes.fromhex(mem["id"])
        separate = mem["file"]
        base = mem.get("base") if flags & FLAG_DIFF else None
        base_id = bytes.fromhex(base["id"]).hex() if base is not None else None
        base_file = str(base["file"]) if base is not None else None
    except (KeyError, TypeError, ValueError) as err:
        raise SnapshotError(f"snapshot {path} has a malformed memory index ({err!r})") from None
    if sum(n for _, n in regions) != mem_len or any(
        r.offset < 0 or r.length <= 0 or r.offset + r.length > mem_len for r in runs
    ):
        raise SnapshotError(f"snapshot {path} has a memory index that does not fit its memory image")
    if flags & FLAG_SEPARATE_MEMORY:
        if not isinstance(separate, str) or "/" in separate:
            raise SnapshotError(f"snapshot {path} names no valid memory file")
        mem_path = path.with_name(separate)
        mem_off = PAGE
        _check_memory_file(mem_path, snap_id, mem_len)
    else:
        mem_path = path
        if mem_off % PAGE or mem_off + mem_len > size:
            raise SnapshotError(f"snapshot {path} is truncated (the memory image ends past the file)")
    if flags & FLAG_DIFF and (separate is not None or not base_id or not base_file):
        raise SnapshotError(f"snapshot {path} is a diff snapshot without a valid base")
    ids = (snap_id.hex(), base_id, base_file)
    return SnapshotFile(path, state, mem_path, mem_off, mem_len, runs, regions, *ids)


def read_chain(path: Path) -> list[SnapshotFile]:
    """The snapshot at ``path`` and, for a diff, its bases down to a full one: the full one first.

    Each base must be the very snapshot the one above it was taken against (its
    memory id) with the same RAM layout; a missing, other or looping base is one sentence.
    """
    chain = [read_snapshot(path)]
    while chain[0].base_id is not None:
        top = chain[0]
        if len(chain) > MAX_CHAIN:
            raise SnapshotError(f"snapshot {path} has a chain of more than {MAX_CHAIN} diff snapshots")
        base_path = top.path.parent / str(top.base_file)
        try:
            base = read_snapshot(base_path)
        except SnapshotError as err:
            raise SnapshotError(f"diff snapshot {top.path} needs its base {base_path}: {err}") from None
        if base.id != top.base_id:
            raise SnapshotError(
                f"diff snapshot {top.path}: {base_path} is not the snapshot it was taken against"
            )
        if base.regions != top.regions:
            raise SnapshotError(f"diff snapshot {top.path}: its base {base_path} has another RAM layout")
        chain.insert(0, base)
    return chain


def _check_memory_file(path: Path, snap_id: bytes, length: int) -> None:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(_MEMORY_HEADER.size + 4)
    except OSError as err:
        raise SnapshotError(f"cannot read the snapshot's memory file {path}: {err.strerror or err}") from None
    if len(head) < _MEMORY_HEADER.size + 4 or head[:8] != MEMORY_MAGIC:
        raise SnapshotError(f"{path} is not a kvmlite snapshot memory file")
    _, version, got_id, got_len = _MEMORY_HEADER.unpack_from(head)
    (crc,) = struct.unpack_from("<I", head, _MEMORY_HEADER.size)
    if crc != zlib.crc32(head[: _MEMORY_HEADER.size]) or version != VERSION:
        raise SnapshotError(f"memory file {path} is corrupted or of another version")
    if got_id != snap_id or got_len != length:
        raise SnapshotError(f"memory file {path} belongs to another snapshot")
    if size < PAGE + length:
        raise SnapshotError(f"memory file {path} is truncated")


def check_regions(snap: SnapshotFile, memory: GuestMemory) -> None:
    have = [(int(r.start), r.size) for r in memory]
    if have != snap.regions:
        raise SnapshotError(
            f"snapshot {snap.path} holds {sum(n for _, n in snap.regions) >> 20} MiB of RAM in "
            f"{len(snap.regions)} regions; the machine has {sum(n for _, n in have) >> 20} MiB in {len(have)}"
        )


def read_memory_runs(snap: SnapshotFile) -> list[tuple[int, bytes]]:
    """Every run's bytes, each checked against its CRC-32 (before any of it reaches a machine)."""
    out = []
    try:
        with open(snap.memory_path, "rb") as f:
            for run in snap.runs:
                f.seek(snap.memory_offset + run.offset)
                data = f.read(run.length)
                if len(data) != run.length:
                    raise SnapshotError(f"snapshot {snap.path} is truncated (memory ends early)")
                if zlib.crc32(data) != run.crc:
                    raise SnapshotError(
                        f"snapshot {snap.path} is corrupted "
                        f"(memory checksum mismatch at image offset {run.offset:#x})"
                    )
                out.append((run.offset, data))
    except OSError as err:
        raise SnapshotError(
            f"cannot read snapshot memory {snap.memory_path}: {err.strerror or err}"
        ) from None
    return out


def load_memory(memory: GuestMemory, runs: list[tuple[int, bytes]]) -> None:
    """Zero ``memory`` and write the (checked) runs into it."""
    zero_memory(memory)
    for offset, data in runs:
        write_image(memory, offset, data)


def write_image(memory: GuestMemory, offset: int, data: bytes | memoryview) -> None:
    """Write ``data`` at ``offset`` of the memory image (within one region; else a SnapshotError)."""
    for region, start in zip(memory, _image_starts(memory), strict=True):
        if start <= offset and offset + len(data) <= start + region.size:
            region.view[offset - start : offset - start + len(data)] = data
            return
    where = f"image offset {offset:#x} (+{len(data):#x})"
    raise SnapshotError(f"memory data at {where} lies outside the RAM regions")


def image_offset(memory: GuestMemory, region_index: int, offset: int) -> int:
    """The image offset of ``offset`` in region number ``region_index``."""
    return _image_starts(memory)[region_index] + offset


def zero_memory(memory: GuestMemory) -> None:
    for region in memory:
        region.mm.madvise(mmap.MADV_DONTNEED)  # private anonymous pages read as zero again


def _image_starts(memory: GuestMemory) -> list[int]:
    starts, pos = [], 0
    for region in memory:
        starts.append(pos)
        pos += region.size
    return starts


def map_memory(memory: GuestMemory, snap: SnapshotFile) -> None:
    """Map the memory image over the guest's RAM, ``MAP_PRIVATE``: pages are read at first touch."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    map_fixed = 0x10
    try:
        fd = os.open(snap.memory_path, os.O_RDONLY)
    except OSError as err:
        raise SnapshotError(f"cannot open snapshot memory {snap.memory_path}: {err.strerror}") from None
    try:
        for region, start in zip(memory, _image_starts(memory), strict=True):
            got = libc.mmap(
                region.host_addr,
                region.size,
                mmap.PROT_READ | mmap.PROT_WRITE,
                mmap.MAP_PRIVATE | map_fixed,
                fd,
                snap.memory_offset + start,
            )
            if got != region.host_addr:
                errno_ = ctypes.get_errno()
                raise SnapshotError(f"cannot map snapshot memory {snap.memory_path}: {os.strerror(errno_)}")
    finally:
        os.close(fd)
