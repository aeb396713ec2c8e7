"""The compressions Linux's build offers for its kernel and initramfs, told apart by magic number.

One table for the two readers of such data: :mod:`kvmlite.tools.extract_vmlinux` (a bzImage's
payload) and :mod:`kvmlite.loaders.initrd` (an initramfs's segments).
"""

from __future__ import annotations

#: (name, magic) of every compression the kernel build offers, in the order a scan tries them.
MAGICS: tuple[tuple[str, bytes], ...] = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
    ("lzo", b"\x89LZO\x00\r\n\x1a\n"),
    ("lz4", b"\x02\x21\x4c\x18"),  # legacy format, what the kernel build writes
    ("lz4", b"\x04\x22\x4d\x18"),  # frame format
    ("zstd", b"\x28\xb5\x2f\xfd"),
)


def compression_of(data: bytes) -> str | None:
    """The compression whose magic number starts ``data``, or None."""
    for name, magic in MAGICS:
        if data.startswith(magic):
            return name
    return None
