"""Per-thread system-call allow-lists (seccomp-bpf through libseccomp), as Firecracker confines its threads.

A guest is assumed hostile: whatever it makes a vCPU thread do, that thread
can then reach the host kernel only through the system calls its role needs.
Each kvmlite thread confines *itself* when it starts, before it runs guest-driven
code (:func:`confined` wraps a thread's target), with the list of its role from
:mod:`kvmlite.vmm.seccomp_lists`; the main thread confines itself just before the
machine runs (:func:`confine`).  A filter applies to the thread that loads it
(no ``TSYNC``) and to the threads it starts later, which add their own on top:
the kernel applies every filter of a thread and the strictest answer wins.

Modes (``kvmlite run --seccomp``):

- ``on`` (the default where libseccomp loads): a system call outside the
  thread's list is not made; the thread gets SIGSYS (``SECCOMP_RET_TRAP``),
  whose handler writes one sentence naming the thread, its list and the call,
  restores the terminal and ends the process with status 159 (128 + SIGSYS).
- ``log``: the same sentence (once per thread role and call), and the call fails
  with ENOSYS instead: how to find what a new code path needs (the note
  ``docs/seccomp.md`` says how to extend a list).
- ``off``: no filters.

The filters are compiled once per role by libseccomp (:func:`enable`), kept as
BPF bytes, and loaded per thread with two ``prctl`` calls (microseconds), so a
guest that resets under ``--on-reset restart`` pays nothing per restart.  Library
users (a :class:`~kvmlite.vmm.machine.Machine` built in-process) get no filters
unless they call :func:`enable`.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kvmlite.errors import ConfigError, KvmliteError
from kvmlite.status import signaled
from kvmlite.vmm import seccomp_lists as lists

log = logging.getLogger(__name__)

MODES = ("on", "log", "off")
#: The status of a process stopped for a forbidden system call: 128 + SIGSYS, as a shell reports it.
STATUS_SECCOMP = signaled(signal.SIGSYS)

# libseccomp's ABI (seccomp.h)
_ACT_TRAP = 0x0003_0000
_ACT_ALLOW = 0x7FFF_0000
_CMP = {"==": 4, "&==": 7}  # SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ
_PR_SET_NAME, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 15, 38, 22, 2
_SA_SIGINFO = 4
# siginfo_t for SIGSYS (x86-64): the system call number at byte 24; ucontext_t: RAX in gregs[13]
_SI_SYSCALL = 24
_UC_RAX = 40 + 13 * 8
_SYSCALL_NAMES = 512  # the numbers whose names are resolved in advance (the handler may not allocate)


class SeccompError(KvmliteError):
    """libseccomp is missing or refused a filter."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _Sigaction(ctypes.Structure):
    """glibc's ``struct sigaction`` on x86-64."""

    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("mask", ctypes.c_ulong * 16),
        ("flags", ctypes.c_int),
        ("restorer", ctypes.c_void_p),
    ]


_SigsysHandler = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")  # find_library would run ldconfig: 50 ms at every start
    except OSError:
        from ctypes.util import find_library  # only here: it imports subprocess (1.5 ms at every start)

        lib = _load(find_library("seccomp") or "libseccomp.so")
    return _declare(lib)


def _load(name: str) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(name)
    except OSError as err:
        raise SeccompError(
            f"libseccomp is not installed ({err}); install libseccomp2 or give --seccomp off"
        ) from err


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def available() -> tuple[bool, str]:
    """Whether filters can be used here: Linux with libseccomp (and a reason when not)."""
    if not sys.platform.startswith("linux"):
        return False, "seccomp exists only on Linux"
    try:
        _libseccomp()
    except SeccompError as err:
        return False, str(err)
    return True, ""


def compile_filter(lib: ctypes.CDLL, role: str) -> bytes:
    """The BPF program of ``role``'s allow-list (everything else traps), as libseccomp exports it."""
    ctx = lib.seccomp_init(_ACT_TRAP)
    if not ctx:
        raise SeccompError("seccomp_init failed")
    try:
        for rule in lists.rules(role):
            nr = lib.seccomp_syscall_resolve_name(rule.syscall.encode())
            if nr < 0:
                raise SeccompError(f"{role} allow-list: unknown system call {rule.syscall!r}")
            cmps = (_ArgCmp * max(len(rule.args), 1))()
            for i, (arg, op, mask, value) in enumerate(rule.args):
                # SCMP_CMP_EQ compares with datum_a; SCMP_CMP_MASKED_EQ takes (mask, value)
                a, b = (value, 0) if op == "==" else (mask, value)
                cmps[i] = _ArgCmp(arg, _CMP[op], a, b)
            rc = lib.seccomp_rule_add_array(ctx, _ACT_ALLOW, nr, len(rule.args), cmps)
            if rc < 0:
                raise SeccompError(f"{role} allow-list: libseccomp refused {rule}: {os.strerror(-rc)}")
        fd = os.memfd_create("kvmlite-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompError(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            return os.read(fd, 1 << 20)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


class _Policy:
    """The process-wide state: the mode, each role's compiled program, the SIGSYS handler's tables."""

    def __init__(self, mode: str, programs: dict[str, bytes], names: dict[int, str]) -> None:
        self.mode = mode
        self.programs = {role: ctypes.create_string_buffer(bpf, len(bpf)) for role, bpf in programs.items()}
        self.names = names
        self.logged: set[tuple[str, int]] = set()
        self.tty: list[Any] | None = None
        self.libc = _libc()
        self.handler = _SigsysHandler(self._on_sigsys)  # kept alive: the kernel calls it

    def _on_sigsys(self, signum: int, info: int, context: int) -> None:
        """SIGSYS from a filter: the sentence, then the end (``on``) or ENOSYS for the call (``log``).

        Runs in the offending thread, inside a signal handler: it only formats a
        string from tables made in advance and writes it with one ``write``
        (no logging: its locks may be held by the interrupted code).
        """
        nr = ctypes.c_int.from_address(info + _SI_SYSCALL).value
        role = getattr(_local, "role", None) or "its creator's"
        name = self.names.get(nr, str(nr))
        thread = threading.current_thread().name
        if self.mode == "log":
            if (role, nr) not in self.logged:
                self.logged.add((role, nr))
                line = (
                    f"kvmlite: seccomp: thread {thread} ({role} allow-list) made the system call {name} "
                    f"({nr}), which the list lacks; it fails with ENOSYS (--seccomp log)\n"
                )
                os.write(2, line.encode())
            ctypes.c_int64.from_address(context + _UC_RAX).value = -errno.ENOSYS
            return
        line = (
            f"kvmlite: seccomp: thread {thread} ({role} allow-list) made the forbidden system call "
            f"{name} ({nr}); kvmlite stops (status {STATUS_SECCOMP})\n"
        )
        os.write(2, line.encode())
        if self.tty is not None:
            try:
                termios.tcsetattr(0, termios.TCSAFLUSH, self.tty)
            except termios.error:
                pass
        os._exit(STATUS_SECCOMP)

    def install_handler(self) -> None:
        action = _Sigaction()
        action.handler = ctypes.cast(self.handler, ctypes.c_void_p).value
        action.flags = _SA_SIGINFO
        if self.libc.sigaction(int(signal.SIGSYS), ctypes.byref(action), None) != 0:
            raise SeccompError(f"sigaction(SIGSYS) failed: {os.strerror(ctypes.get_errno())}")

    def load(self, role: str) -> None:
        prog = self.programs[role]
        fprog = _SockFprog(len(prog) // 8, ctypes.addressof(prog))
        libc = self.libc
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(
            _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0
        ) != 0:
            raise SeccompError(f"loading the {role} filter failed: {os.strerror(ctypes.get_errno())}")


_policy: _Policy | None = None
_local = threading.local()


def enable(mode: str) -> None:
    """Turn filters on (``on``/``log``) or off for the threads this process starts from now on.

    Compiles every role's list once; fails with a :class:`ConfigError` where
    libseccomp is missing or the mode is unknown.
    """
    global _policy
    if mode not in MODES:
        raise ConfigError(f"--seccomp {mode!r}: choose on, log or off")
    if mode == "off":
        _policy = None
        return
    if _policy is not None and _policy.mode == mode:
        return
    ok, reason = available()
    if not ok:
        raise ConfigError(f"--seccomp {mode}: {reason}")
    lib = _libseccomp()
    try:
        programs = {role: compile_filter(lib, role) for role in lists.ROLES}
    except SeccompError as err:
        raise ConfigError(f"--seccomp {mode}: {err}") from err
    names: dict[int, str] = {}
    libc = _libc()
    for nr in range(_SYSCALL_NAMES):
        ptr = lib.seccomp_syscall_resolve_num_arch(0, nr)
        if ptr:
            names[nr] = ctypes.string_at(ptr).decode()
            libc.free(ctypes.c_void_p(ptr))
    policy = _Policy(mode, programs, names)
    if os.isatty(0):
        try:
            policy.tty = termios.tcgetattr(0)
        except termios.error:
            policy.tty = None
    policy.install_handler()
    _policy = policy
    sizes = ", ".join(f"{role} {len(bpf) // 8}" for role, bpf in programs.items())
    log.debug("seccomp %s: BPF instructions per list: %s", mode, sizes)


def mode() -> str:
    return "off" if _policy is None else _policy.mode


#: Overrides the default mode of ``kvmlite run`` (not an explicit ``--seccomp``): ``KVMLITE_SECCOMP=log
#: python3 -m pytest`` runs the whole suite naming every call a list lacks.
ENV_DEFAULT = "KVMLITE_SECCOMP"


def default_mode() -> str:
    """``$KVMLITE_SECCOMP`` if set, else ``on`` where filters are available (Linux with libseccomp)."""
    chosen = os.environ.get(ENV_DEFAULT)
    if chosen:
        return chosen
    return "on" if available()[0] else "off"


def name_thread(name: str) -> None:
    """The calling thread's name as the host shows it (``top -H``, ``/proc/PID/task/TID/comm``)."""
    _libc().prctl(_PR_SET_NAME, f"kvmlite:{name}"[:15].encode(), 0, 0, 0)


def confine(role: str) -> None:
    """Load ``role``'s filter into the calling thread (once per thread and role; nothing when off)."""
    policy = _policy
    if policy is None:
        return
    if role not in lists.ROLES:
        raise SeccompError(f"no seccomp allow-list for thread role {role!r}")
    done: set[str] = getattr(_local, "roles", set())
    if role in done:
        return
    policy.load(role)
    _local.roles = done | {role}
    _local.role = role


def is_confined() -> bool:
    """The calling thread runs under a filter (it may no longer touch files it did not open before)."""
    return bool(getattr(_local, "roles", ()))


T = TypeVar("T")


def confined(role: str, target: Callable[..., T]) -> Callable[..., T]:
    """``target`` run by a thread that first names itself and loads ``role``'s filter."""

    def run(*args: Any, **kwargs: Any) -> T:
        name_thread(threading.current_thread().name)
        confine(role)
        return target(*args, **kwargs)

    run.__name__ = getattr(target, "__name__", "run")
    return run


def thread(role: str, target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """A daemon thread ``name`` running ``target(*args)`` under ``role``'s filter (not started)."""
    return threading.Thread(target=confined(role, target), name=name, args=args, daemon=True)
