"""A Linux initramfs with its compressed archives unpacked on the host.

Linux reads its initramfs as a series of segments (``init/initramfs.c``,
``unpack_to_rootfs``): a cpio archive in the "newc" format (magic ``070701``
or ``070702``), or a compressed stream whose contents are such archives, each
segment followed by zero padding, the whole possibly several such segments
(Debian's: an uncompressed one with CPU microcode, then the compressed
rest).  The kernel decompresses each compressed segment itself, at ring 0;
where the host emulates ring 0 (about 1 µs an instruction on this project's
machines) gzip's inflate takes minutes for a megabyte.

:func:`decompress_initramfs` gives the same series with every segment it can
decompress (gzip, xz, lzma, bzip2: what Python's standard library reads)
replaced by its contents: Linux unpacks the same files from either.  A
segment it cannot decompress (zstd, lz4, lzo), one that does not decompress
to a cpio archive (an old-style compressed disk image), a truncated or
corrupt one, and anything after it are kept as they are, for the kernel to
take or refuse as before.  The result is bounded: past ``limit`` bytes the
input is returned unchanged.
"""

from __future__ import annotations

import bz2
import logging
import lzma
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from kvmlite.loaders.compression import compression_of

log = logging.getLogger(__name__)

CPIO_MAGICS = (b"070701", b"070702")
CPIO_HEADER = 110
TRAILER = b"TRAILER!!!\0"
CHUNK = 1 << 20
_HEX = re.compile(rb"[0-9A-Fa-f]{8}")


@dataclass(frozen=True)
class Unpacked:
    """The initramfs to give the kernel and what was done to it (``compressed``: the formats unpacked)."""

    data: bytes
    compressed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.compressed)


def _cpio_end(data: bytes | memoryview, start: int) -> int | None:
    """Where the newc archive at ``start`` ends (after its trailer), or None if it is malformed."""
    pos = start
    while True:
        header = bytes(data[pos : pos + CPIO_HEADER])
        if len(header) < CPIO_HEADER or header[:6] not in CPIO_MAGICS:
            return None
        fields = [header[6 + 8 * i : 14 + 8 * i] for i in range(13)]
        if not all(_HEX.fullmatch(f) for f in fields):
            return None
        filesize, namesize = int(fields[6], 16), int(fields[11], 16)
        name_end = pos + CPIO_HEADER + namesize
        name = bytes(data[pos + CPIO_HEADER : name_end])
        body = (name_end + 3) & ~3
        pos = (body + filesize + 3) & ~3
        if pos > len(data):
            return None
        if name == TRAILER:
            return pos


class _TooLarge(Exception):
    pass


Stream = Union["zlib._Decompress", lzma.LZMADecompressor, bz2.BZ2Decompressor]
ZLIB_STREAM = type(zlib.decompressobj())  # zlib's class has no public name


def _inflate(decompressor: Stream, data: bytes, room: int) -> tuple[bytes, bytes] | None:
    """(contents, what follows the stream) of the stream at the start of ``data``; None if corrupt or
    truncated; raises _TooLarge past ``room`` bytes of contents."""
    out = bytearray()
    try:
        if isinstance(decompressor, ZLIB_STREAM):
            pending = data
            while True:
                chunk = decompressor.decompress(pending, CHUNK)
                out += chunk
                if len(out) > room:
                    raise _TooLarge
                pending = decompressor.unconsumed_tail
                if decompressor.eof or not (pending or chunk):
                    break
            if not decompressor.eof:
                return None
            return bytes(out), decompressor.unused_data
        chunk = decompressor.decompress(data, CHUNK)
        while True:
            out += chunk
            if len(out) > room:
                raise _TooLarge
            if decompressor.eof or decompressor.needs_input:
                break
            chunk = decompressor.decompress(b"", CHUNK)
        if not decompressor.eof:
            return None
        return bytes(out), decompressor.unused_data
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError):
        return None


#: A fresh decompressor for each compression Python's standard library reads (by the names of
#: :data:`kvmlite.loaders.compression.MAGICS`).
STREAMS: dict[str, Callable[[], Stream]] = {
    "gzip": lambda: zlib.decompressobj(wbits=31),
    "xz": lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ),
    "lzma": lambda: lzma.LZMADecompressor(format=lzma.FORMAT_ALONE),
    "bzip2": bz2.BZ2Decompressor,
}


def decompress_initramfs(data: bytes, limit: int) -> Unpacked:
    """``data`` with its compressed cpio segments decompressed (see the module docstring).

    Alignment: the kernel takes an uncompressed archive only where its running count of bytes is a
    multiple of 4 (zero bytes between segments count too; a compressed segment starts a count of its
    own).  Each piece copied as it was keeps its offset modulo 4, each decompressed archive starts at
    a multiple of 4, with zero bytes added before them where needed.
    """
    out = bytearray()
    formats: list[str] = []

    def emit(piece: bytes, offset: int) -> None:
        out.extend(b"\0" * ((offset - len(out)) % 4))
        out.extend(piece)

    pos = 0
    while pos < len(data) and len(out) <= limit:
        if data[pos] == 0:  # padding between segments, which the kernel skips
            end = pos
            while end < len(data) and data[end] == 0:
                end += 1
            emit(data[pos:end], pos)
            pos = end
            continue
        if data[pos : pos + 6] in CPIO_MAGICS:
            archive_end = _cpio_end(data, pos)
            if archive_end is None:
                break  # malformed: the rest goes to the kernel as it is
            emit(data[pos:archive_end], pos)
            pos = archive_end
            continue
        name = compression_of(data[pos : pos + 16])
        if name not in STREAMS:
            break  # not a compression Python reads (zstd, lz4, lzo), or not compressed data at all
        try:
            result = _inflate(STREAMS[name](), data[pos:], limit - len(out))
        except _TooLarge:
            log.info("initramfs: its %s segment at byte %d unpacks to more than %d bytes: left compressed",
                     name, pos, limit)  # fmt: skip
            break
        if result is None:
            log.info("initramfs: its %s segment at byte %d is truncated or corrupt: kept", name, pos)
            break
        contents, rest = result
        if contents[:6] not in CPIO_MAGICS or _cpio_end(contents, 0) is None:
            break  # not an initramfs archive (an old-style compressed initrd image?): leave it alone
        emit(contents, 0)
        formats.append(name)
        pos = len(data) - len(rest)
    if not formats:
        return Unpacked(data)
    if pos < len(data):
        emit(data[pos:], pos)
    if len(out) > limit:
        return Unpacked(data)
    return Unpacked(bytes(out), tuple(formats))
