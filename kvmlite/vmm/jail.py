"""Least privilege: ``--chroot DIR`` and ``--runas USER`` (QEMU's names; a part of Firecracker's jailer).

kvmlite needs privileges only to open things: ``/dev/kvm``, the kernel and
initrds, disk images, the sockets it listens on.  Once the machine is built and
those are open (just before it runs), :meth:`Jail.enter` changes the root
directory to ``DIR`` and drops to ``USER``'s uid and gid with no supplementary
groups, for good (a process that was root gives up its capabilities with its
uid).  What kvmlite opens *after* that is resolved inside ``DIR`` and checked
against ``USER``: snapshot and core-dump paths of control commands, the
``--profile`` report.  A guest reset under ``--on-reset restart`` would have to
open the kernel and ``/dev/kvm`` again, so the two options exclude it.

Both options need root (``CAP_SYS_CHROOT``, ``CAP_SETUID``/``CAP_SETGID``); a user
who already runs kvmlite unprivileged, with access to ``/dev/kvm`` only, needs
neither.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from kvmlite.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Jail:
    """Where to confine the process once set up; nothing when both are None."""

    chroot: Path | None = None
    uid: int | None = None
    gid: int | None = None
    user: str = ""

    @classmethod
    def from_options(cls, chroot: Path | None, runas: str | None, on_reset: str = "exit") -> Jail:
        """Check the options now, before anything is built (a :class:`ConfigError` naming the option)."""
        if chroot is None and runas is None:
            return cls()
        what = " and ".join(opt for opt, v in (("--chroot", chroot), ("--runas", runas)) if v is not None)
        if os.geteuid() != 0:
            raise ConfigError(f"{what} need root to drop privileges (kvmlite runs as uid {os.geteuid()})")
        if on_reset == "restart":
            raise ConfigError(
                f"{what} exclude --on-reset restart (a restart opens the kernel and /dev/kvm again)"
            )
        if chroot is not None and not chroot.is_dir():
            raise ConfigError(f"--chroot {chroot}: not a directory")
        uid = gid = None
        if runas is not None:
            try:
                entry = pwd.getpwuid(int(runas)) if runas.isdigit() else pwd.getpwnam(runas)
            except (KeyError, OverflowError):
                raise ConfigError(f"--runas {runas}: no such user") from None
            if entry.pw_uid == 0:
                raise ConfigError(f"--runas {runas}: that user is root; name an unprivileged one")
            uid, gid = entry.pw_uid, entry.pw_gid
        return cls(chroot.resolve() if chroot is not None else None, uid, gid, runas or "")

    @property
    def active(self) -> bool:
        return self.chroot is not None or self.uid is not None

    def enter(self) -> None:
        """chroot, then the unprivileged gid and uid; checks that root cannot be had back."""
        if self.chroot is not None:
            try:
                os.chroot(self.chroot)
                os.chdir("/")
            except OSError as err:
                raise ConfigError(f"--chroot {self.chroot}: {err.strerror}") from err
        if self.uid is not None and self.gid is not None:
            try:
                os.setgroups([])
                os.setresgid(self.gid, self.gid, self.gid)
                os.setresuid(self.uid, self.uid, self.uid)
            except OSError as err:
                raise ConfigError(f"--runas {self.user}: {err.strerror}") from err
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:  # pragma: no cover - the kernel would have to ignore setresuid
                raise ConfigError(f"--runas {self.user}: the process could become root again")
        log.info(
            "confined: root %s, uid %s, gid %s",
            self.chroot or "/",
            os.getuid(),
            os.getgid(),
        )
