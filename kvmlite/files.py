"""Reading a user's file whole, with a bound: a huge, sparse or endless file (``/dev/zero``, a
pipe) is refused with one sentence before it costs memory."""

from __future__ import annotations

import os
from pathlib import Path

from kvmlite.errors import KvmliteError

MIB = 1 << 20


def read_bounded(
    path: Path, what: str, limit: int, error: type[KvmliteError] = KvmliteError, bound: str = ""
) -> bytes:
    """The bytes of ``path``, or ``error`` naming ``what`` when there are more than ``limit`` (said
    as ``bound`` if given, e.g. "the guest's 128 MiB of RAM") or it cannot be read.  The size is
    checked before reading; a file without one (a device, a pipe) is read one byte past the limit
    and no further."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror}") from None
    if size > limit or len(data) > limit:
        shown = f" ({size / MIB:.0f} MiB)" if size > limit else ""
        raise error(f"{what} {path} is larger than {bound or mib(limit)}{shown}")
    return data


def mib(n: int) -> str:
    """``n`` bytes for a message: in MiB from one MiB up."""
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n} bytes"
