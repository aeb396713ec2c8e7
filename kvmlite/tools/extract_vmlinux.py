"""Recover the ELF ``vmlinux`` from a bzImage, like the kernel tree's ``scripts/extract-vmlinux``.

A bzImage's protected-mode part is a small decompressor followed by the real
kernel, an ELF file (x86's decompressor parses it to place the segments),
compressed with one of the kernel's configured methods.  From boot protocol
2.08 the setup header says where that payload lies (``payload_offset`` from
the start of the protected-mode code, ``payload_length``); for older images
the payload is found by scanning for each format's magic number and keeping
the first candidate that decompresses to an ELF file.

The stdlib handles gzip, xz, lzma and bzip2.  zstd and lz4 (Debian's cloud
kernel uses lz4's legacy format) need the ``zstandard``/``lz4`` Python
packages or the ``zstd``/``lz4`` commands; lzo needs ``lzop``.  Without them
the error names what to install.

Every format but gzip is followed by a 4-byte little-endian copy of the
uncompressed size (the kernel build's ``size_append``); when the payload's
length is known that number checks the result.
"""

from __future__ import annotations

import argparse
import bz2
import importlib
import logging
import lzma
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from kvmlite.errors import STATUS_BAD_INPUT, BzImageError, KvmliteError
from kvmlite.files import read_bounded
from kvmlite.loaders import bootparams as B
from kvmlite.loaders import bzimage
from kvmlite.loaders.compression import MAGICS, compression_of
from kvmlite.loaders.elf import ELF_MAGIC

log = logging.getLogger(__name__)

LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"
LZ4_LEGACY_BLOCK = 8 << 20  # every legacy block but the last decompresses to 8 MiB
SIZE_TRAILER = 4
TOOL_TIMEOUT = 120  # seconds
#: The largest bzImage read: Linux images are tens of MiB; the bound stops /dev/zero and the like.
MAX_BZIMAGE = 256 << 20
#: The largest vmlinux decompressed (one with debug information is a few hundred MiB): a payload that
#: inflates past it (a compression bomb) is refused instead of exhausting memory.
MAX_VMLINUX = 1 << 30
MAX_SCAN_CANDIDATES = 64  # a scan gives up after this many false starts


def _optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _run_tool(argv: list[str], payload: bytes, what: str) -> bytes:
    """Decompress through a command; trailing bytes after the stream (the size trailer) may make it fail
    after it has written everything, so a non-zero exit with an ELF on stdout is accepted.  At most
    :data:`MAX_VMLINUX` bytes of output are taken: past that the command is killed."""
    with tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as errors:
        source.write(payload)
        source.seek(0)
        try:
            proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=errors)
        except OSError as err:
            raise BzImageError(f"{argv[0]} failed to decompress the {what} payload: {err}") from err
        timer = threading.Timer(TOOL_TIMEOUT, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            with proc.stdout:
                out = proc.stdout.read(MAX_VMLINUX + 1)
            if len(out) > MAX_VMLINUX:
                proc.kill()
            returncode = proc.wait()
        finally:
            timer.cancel()
        if len(out) > MAX_VMLINUX:
            raise _too_large()
        if returncode < 0:
            raise BzImageError(f"{argv[0]} did not decompress the {what} payload in {TOOL_TIMEOUT} s")
        errors.seek(0)
        stderr = errors.read(1 << 16)
    if returncode != 0:
        if out.startswith(ELF_MAGIC):
            log.debug("%s exited %d after writing an ELF (trailing data)", argv[0], returncode)
        else:
            msg = stderr.decode(errors="replace").strip().splitlines()
            raise BzImageError(f"{argv[0]} could not decompress the {what} payload: {msg[-1] if msg else ''}")
    return out


def _missing(what: str, module: str, command: str) -> BzImageError:
    return BzImageError(
        f"the kernel payload is {what}-compressed: install the Python package '{module}' "
        f"or the '{command}' command to extract it"
    )


def _too_large() -> BzImageError:
    return BzImageError(f"the payload decompresses to more than {MAX_VMLINUX >> 20} MiB: not a kernel")


def _gzip(payload: bytes) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(payload, MAX_VMLINUX)
    if inflater.unconsumed_tail:
        raise _too_large()
    return out


def _bounded(decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor, payload: bytes) -> bytes:
    out = decompressor.decompress(payload, MAX_VMLINUX)
    if len(out) >= MAX_VMLINUX and not decompressor.eof:
        raise _too_large()
    return out


def _xz(payload: bytes) -> bytes:
    return _bounded(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), payload)


def _lzma(payload: bytes) -> bytes:
    return _bounded(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), payload)


def _bzip2(payload: bytes) -> bytes:
    return _bounded(bz2.BZ2Decompressor(), payload)


def _zstd(payload: bytes) -> bytes:
    module = _optional_module("zstandard")
    if module is not None:
        return module.ZstdDecompressor().decompressobj().decompress(payload)
    if shutil.which("zstd"):
        return _run_tool(["zstd", "-d", "-c", "-q"], payload, "zstd")
    raise _missing("zstd", "zstandard", "zstd")


def _lz4_legacy_blocks(payload: bytes, decompress_block: Callable[[bytes], bytes]) -> bytes:
    """The legacy format: magic, then (u32 compressed size, block) pairs until a size that cannot be one."""
    out = bytearray()
    pos = len(LZ4_LEGACY_MAGIC)
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        if size == struct.unpack("<I", LZ4_LEGACY_MAGIC)[0] or size > len(payload) - pos - 4:
            break  # the size trailer, or a concatenated stream we do not follow
        out += decompress_block(payload[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return bytes(out)


def _lz4(payload: bytes) -> bytes:
    module = _optional_module("lz4.block")
    if module is not None and payload.startswith(LZ4_LEGACY_MAGIC):
        return _lz4_legacy_blocks(payload, lambda b: module.decompress(b, uncompressed_size=LZ4_LEGACY_BLOCK))
    frame = _optional_module("lz4.frame")
    if frame is not None and not payload.startswith(LZ4_LEGACY_MAGIC):
        return frame.LZ4FrameDecompressor().decompress(payload)
    if shutil.which("lz4"):
        return _run_tool(["lz4", "-d", "-c", "-q"], payload, "lz4")
    raise _missing("lz4", "lz4", "lz4")


def _lzo(payload: bytes) -> bytes:
    if shutil.which("lzop"):
        return _run_tool(["lzop", "-d", "-c", "-q"], payload, "lzo")
    raise BzImageError("the kernel payload is lzo-compressed: install the 'lzop' command to extract it")


DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gzip,
    "xz": _xz,
    "lzma": _lzma,
    "bzip2": _bzip2,
    "zstd": _zstd,
    "lz4": _lz4,
    "lzo": _lzo,
}
_STDLIB_ERRORS = (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError, RuntimeError)


def decompress(payload: bytes, method: str) -> bytes:
    """Decompress with ``method`` (a key of :data:`DECOMPRESSORS`); errors become :class:`BzImageError`."""
    try:
        return DECOMPRESSORS[method](payload)
    except BzImageError:
        raise
    except _STDLIB_ERRORS as err:
        raise BzImageError(f"the {method} payload does not decompress: {err}") from err
    except Exception as err:  # zstandard/lz4 raise their own error classes
        raise BzImageError(f"the {method} payload does not decompress: {err}") from err


def _from_header(data: bytes, image: bzimage.BzImage) -> bytes:
    hdr = image.header
    start = image.setup_size + hdr.payload_offset
    end = start + hdr.payload_length
    if end > len(data):
        raise BzImageError(
            f"the header's payload ({hdr.payload_length} bytes at {start:#x}) runs past the end of the "
            f"{len(data)}-byte file: truncated image?"
        )
    payload = data[start:end]
    method = compression_of(payload)
    if method is None:
        raise BzImageError(
            f"the payload at {start:#x} starts with {payload[:6].hex()}, no compression kvmlite knows"
        )
    log.info("%s payload of %d bytes at %#x", method, len(payload), start)
    vmlinux = decompress(payload, method)
    if method != "gzip" and len(payload) >= SIZE_TRAILER:
        (declared,) = struct.unpack_from("<I", payload, len(payload) - SIZE_TRAILER)
        if declared != len(vmlinux):
            log.warning(
                "the payload says it holds %d bytes but %d came out: the image may be damaged",
                declared,
                len(vmlinux),
            )
    return vmlinux


def _by_scanning(data: bytes, image: bzimage.BzImage) -> bytes:
    tried = 0
    last_error = "no compression magic number found"
    for name, magic in MAGICS:
        pos = data.find(magic, image.setup_size)
        while pos >= 0 and tried < MAX_SCAN_CANDIDATES:
            tried += 1
            try:
                out = decompress(data[pos:], name)
            except BzImageError as err:
                last_error = str(err)
                if "install" in last_error:
                    raise
            else:
                if out.startswith(ELF_MAGIC):
                    log.info("found a %s payload at %#x by scanning", name, pos)
                    return out
            pos = data.find(magic, pos + 1)
    raise BzImageError(f"no compressed ELF kernel found in the bzImage ({last_error})")


def extract_vmlinux(data: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage; :class:`BzImageError` says why not."""
    if data.startswith(ELF_MAGIC):
        log.info("the input is already an ELF file: returning it unchanged")
        return data
    image = bzimage.parse(data)
    if image.version >= B.PROTO_PAYLOAD and image.header.payload_length:
        vmlinux = _from_header(data, image)
    else:
        vmlinux = _by_scanning(data, image)
    if not vmlinux.startswith(ELF_MAGIC):
        raise BzImageError(
            f"the decompressed payload ({len(vmlinux)} bytes) is not an ELF file "
            f"(starts with {vmlinux[:4].hex()})"
        )
    return vmlinux


def main(argv: list[str] | None = None) -> int:
    """``kvmlite extract-vmlinux BZIMAGE -o OUT``."""
    parser = argparse.ArgumentParser(prog="kvmlite extract-vmlinux", description=__doc__.splitlines()[0])
    parser.add_argument("bzimage", type=Path, help="a Linux bzImage (vmlinuz)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the ELF vmlinux")
    args = parser.parse_args(argv)
    try:
        vmlinux = extract_vmlinux(read_bounded(args.bzimage, "bzImage", MAX_BZIMAGE, BzImageError))
        args.output.write_bytes(vmlinux)
    except KvmliteError as err:
        sys.stderr.write(f"kvmlite: {args.bzimage}: {err}\n")
        return STATUS_BAD_INPUT
    except OSError as err:
        sys.stderr.write(f"kvmlite: {err.filename}: {err.strerror}\n")
        return STATUS_BAD_INPUT
    log.info("wrote %s (%d bytes)", args.output, len(vmlinux))
    return 0


if __name__ == "__main__":
    sys.exit(main())
