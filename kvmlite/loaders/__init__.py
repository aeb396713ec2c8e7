"""Kernel loaders: detect an image's format and load it into guest memory.

One module per format (:mod:`multiboot`, :mod:`bzimage` (Linux boot
protocol), :mod:`pvh` (an ELF with Xen's PVH entry note, such as Linux's
vmlinux), :mod:`elf64`, :mod:`bootsector`), each with
``load(memory, image, ...) -> LoadResult``; :func:`load_kernel` detects the
format from the bytes, never from the file name.  The format modules are imported
when an image needs them (start-up imports only what the run loads).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from pathlib import Path

from kvmlite.errors import ElfError, LoaderError
from kvmlite.files import mib, read_bounded
from kvmlite.loaders import multiboot
from kvmlite.loaders.base import EntryMode, LoadResult, encode_cmdline
from kvmlite.loaders.elf import ELF_MAGIC, ELFCLASS64, is_elf, parse_elf
from kvmlite.memory.guest import GuestMemory

__all__ = ["EntryMode", "LoadResult", "detect_format", "kernel_format", "load_kernel"]

BZIMAGE_MAGIC_OFFSET = 0x202
BZIMAGE_MAGIC = b"HdrS"
#: An ELF kernel's file can hold far more than it loads: Debian's -dbg vmlinux is 563 MiB, nearly all
#: DWARF, for about 40 MiB of segments.  Such a file is read up to this bound (larger RAM raises it);
#: its loadable segments must still fit in RAM, which the format's loader checks.
ELF_FILE_LIMIT = 2 << 30


def detect_format(data: bytes) -> str:
    """'multiboot', 'bzimage', 'pvh', 'elf64', 'bootsector' or 'unknown'."""
    if multiboot.looks_like(data):
        return "multiboot"
    if data[BZIMAGE_MAGIC_OFFSET : BZIMAGE_MAGIC_OFFSET + 4] == BZIMAGE_MAGIC:
        return "bzimage"
    if is_elf(data):
        from kvmlite.loaders import pvh

        if pvh.has_pvh_note(data):
            return "pvh"
    if is_elf(data) and len(data) > 4 and data[4] == ELFCLASS64:
        return "elf64"
    from kvmlite.loaders import bootsector

    if bootsector.looks_like(data):
        return "bootsector"
    return "unknown"


def kernel_format(path: Path) -> str:
    """:func:`detect_format` of the file at ``path``, read through a mapping rather than whole.

    For the callers that only decide what a kernel is (a 600 MB ``vmlinux`` with debug information is
    otherwise copied into memory once per question); 'unknown' where the file cannot be read: the
    loader reports why.
    """
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return detect_format(view)  # type: ignore[arg-type]  # the parsers slice and unpack_from
    except (OSError, ValueError):  # unreadable, not a regular file, or empty
        return "unknown"


def _read_kernel(memory: GuestMemory, path: Path) -> bytes:
    """The kernel's bytes: no more than RAM holds, or :data:`ELF_FILE_LIMIT` for an ELF file."""
    try:
        with path.open("rb") as f:
            elf = f.read(len(ELF_MAGIC)) == ELF_MAGIC
    except OSError:
        elf = False  # read_bounded says why it cannot be read
    if elf and memory.size < ELF_FILE_LIMIT:
        bound = f"{mib(ELF_FILE_LIMIT)} (an ELF file)"
        return read_bounded(path, "kernel", ELF_FILE_LIMIT, LoaderError, bound)
    return read_bounded(path, "kernel", memory.size, LoaderError, f"the guest's {mib(memory.size)} of RAM")


def _loaded_size(data: bytes) -> int:
    """The bytes the kernel takes in RAM: an ELF's loadable segments, any other image's whole file."""
    if is_elf(data):
        try:
            return sum(segment.memsz for segment in parse_elf(data).load_segments())
        except ElfError:
            return len(data)  # the format's loader reports what is wrong with it
    return len(data)


def load_kernel(
    memory: GuestMemory,
    path: Path,
    cmdline: str = "",
    initrds: list[Path] | None = None,
    data: bytes | None = None,
    rsdp: int = 0,
    initramfs: Callable[[bytes], bytes] | None = None,
) -> LoadResult:
    """Load the kernel at ``path`` (its bytes may be given as ``data``) by its detected format.

    ``rsdp``: where the ACPI tables start, for the boot protocols that carry it (Linux also scans for it).
    ``initramfs``: applied to a Linux kernel's initrd (the ``--initrd`` files joined) before it is
    placed (the host-quirk workaround that unpacks its compressed archives on the host).
    """
    encode_cmdline(cmdline)  # every format below carries it as UTF-8: refuse it once, here
    if data is None:
        data = _read_kernel(memory, path)
    if not data:
        raise LoaderError(f"kernel {path} is empty")
    fmt = detect_format(data)
    modules: list[tuple[str, bytes]] = []
    room = max(memory.size - _loaded_size(data), 0)
    for initrd_path in initrds or []:
        bound = f"the {mib(room)} of guest RAM left by the kernel and earlier initrds"
        contents = read_bounded(initrd_path, "initrd", room, LoaderError, bound)
        modules.append((str(initrd_path), contents))
        room -= len(contents)
    if fmt == "multiboot":
        return multiboot.load(memory, data, str(path), cmdline, modules)
    # Linux takes one initrd; several cpio archives concatenated are one initrd to it
    initrd = b"".join(contents for _, contents in modules) if modules else None
    if initrd is not None and initramfs is not None and fmt in ("bzimage", "pvh"):
        initrd = initramfs(initrd)
    if fmt == "bzimage":
        from kvmlite.loaders import bzimage

        return bzimage.load(memory, data, cmdline, initrd, rsdp=rsdp)
    if fmt == "pvh":
        from kvmlite.loaders import pvh

        return pvh.load(memory, data, cmdline, initrd, rsdp=rsdp)
    if modules:
        raise LoaderError(f"--initrd needs a multiboot, bzImage or PVH kernel, not a {fmt} image")
    if fmt == "elf64":
        if cmdline:
            raise LoaderError("a plain ELF64 kernel has no way to receive a command line")
        from kvmlite.loaders import elf64

        return elf64.load(memory, data)
    if fmt == "bootsector":
        if cmdline:
            raise LoaderError("a boot sector takes no command line")
        from kvmlite.loaders import bootsector

        return bootsector.load(memory, data)
    raise LoaderError(
        f"{path}: unrecognised kernel format "
        "(expected a multiboot kernel, a Linux bzImage, a PVH or ELF64 kernel, or a boot sector)"
    )
