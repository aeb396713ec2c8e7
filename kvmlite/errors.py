"""The exception tree of kvmlite.

Every error kvmlite raises on purpose derives from :class:`KvmliteError`, so a
caller (and the CLI) can catch one class and print one clear sentence::

    KvmliteError
     ├── KvmIoctlError (also OSError)   a /dev/kvm ioctl failed: name + errno
     ├── KvmUnavailableError            /dev/kvm missing or unusable
     ├── GuestMemoryError               access outside guest RAM, bad region
     ├── BusError                       overlapping or invalid bus insertion
     ├── LoaderError                    a kernel image could not be loaded
     │    ├── MultibootError
     │    ├── ElfError
     │    └── BzImageError
     ├── DeviceError                    a device model was misused
     ├── EmulatorError                  the instruction emulator gave up
     │    ├── DecodeError               bytes that are not an instruction we know
     │    └── UnsupportedInstruction    decoded but not implemented
     └── ConfigError                    bad user configuration (CLI arguments)

Lower-level errors are wrapped with ``raise ... from err`` so the cause stays
visible in a debugger while the message stays readable.

An expected error ends a command with one sentence on stderr and :data:`STATUS_BAD_INPUT`.
"""

from __future__ import annotations

import errno as _errno
import os

from kvmlite.status import ExitStatus

#: The exit status of a command that stops on a :class:`KvmliteError` (bad input): never 1,
#: which is Python's own status for an uncaught exception.
STATUS_BAD_INPUT = ExitStatus.BAD_INPUT


class KvmliteError(Exception):
    """Root of every error kvmlite raises on purpose."""


class KvmIoctlError(KvmliteError, OSError):
    """A KVM ioctl returned an error.

    Carries the ioctl's symbolic name in :attr:`ioctl` and the errno in
    :attr:`errno` (as every :class:`OSError` does).
    """

    def __init__(self, ioctl: str, err: int, detail: str = "") -> None:
        msg = f"{ioctl} failed: {os.strerror(err)} ({_errno.errorcode.get(err, err)})"
        if detail:
            msg += f": {detail}"
        OSError.__init__(self, err, msg)
        self.ioctl = ioctl

    def __str__(self) -> str:
        return str(self.strerror)


class KvmUnavailableError(KvmliteError):
    """/dev/kvm does not exist, cannot be opened, or speaks another API version."""


class GuestMemoryError(KvmliteError):
    """A guest-physical access fell outside guest RAM, or a region is invalid."""


class BusError(KvmliteError):
    """A device could not be placed on a bus (overlap, zero length, ...)."""


class LoaderError(KvmliteError):
    """A kernel or module image could not be loaded."""


class MultibootError(LoaderError):
    """A multiboot image is malformed or does not fit."""


class ElfError(LoaderError):
    """An ELF image is malformed or does not fit."""


class BzImageError(LoaderError):
    """A Linux bzImage is malformed or does not fit."""


class DeviceError(KvmliteError):
    """A device model was configured or driven in an invalid way."""


class EmulatorError(KvmliteError):
    """The instruction emulator could not go on."""


class DecodeError(EmulatorError):
    """The bytes at the instruction pointer do not decode."""


class UnsupportedInstruction(EmulatorError):
    """The instruction decoded but the emulator does not implement it."""


class ConfigError(KvmliteError):
    """The user's configuration (CLI arguments, options) is invalid."""
