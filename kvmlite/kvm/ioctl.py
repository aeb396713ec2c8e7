"""The one place kvmlite calls ioctl(2) on a KVM file descriptor.

Every failure becomes :class:`KvmIoctlError` carrying the ioctl's name and errno.
"""

from __future__ import annotations

import ctypes
import fcntl
from typing import Any

from kvmlite.errors import KvmIoctlError
from kvmlite.kvm.constants import Ioctl

_libc = ctypes.CDLL(None, use_errno=True)
_libc_ioctl = _libc.ioctl
_libc_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc_ioctl.restype = ctypes.c_int
_INT_MAX = 0x7FFF_FFFF


def ioctl(fd: int, request: Ioctl, arg: Any = 0, detail: str = "") -> int:
    """``ioctl(fd, request, arg)``; ``arg`` is an int or a mutable ctypes object filled in place."""
    if isinstance(arg, int) and arg > _INT_MAX:
        # fcntl.ioctl takes a C int; addresses such as KVM_SET_TSS_ADDR's need an unsigned long.
        ret = _libc_ioctl(fd, int(request), arg)
        if ret < 0:
            raise KvmIoctlError(request.name, ctypes.get_errno(), detail)
        return int(ret)
    try:
        return int(fcntl.ioctl(fd, request, arg))
    except OSError as err:
        raise KvmIoctlError(request.name, err.errno or 0, detail) from None
