"""The system calls each kvmlite thread may make once set up: the one place the allow-lists live.

Every list is made of named groups, each with the reason kvmlite needs it.  They
were derived by tracing the real paths (``strace -f`` over the whole test suite:
KVM and the emulator, virtio with the I/O thread, gdb, the control socket,
snapshots and migration, the console backends) and are checked by running the
suite with filters on (the default of ``kvmlite run``).  ``docs/seccomp.md`` says
how to extend a list when new code needs a call: run with ``--seccomp log``,
which names every call a list lacks, and add it here to the smallest group that
explains it.

Roles (the thread that loads each list):

=========  ================================================================
vcpu       a vCPU thread: KVM_RUN and exit handling, every device register
           access, the emulator backend, synchronous virtio on the emulator
io         the I/O thread: virtqueues woken by ioeventfds, their disk I/O and
           interrupts (eventfd writes to irqfds, KVM_SET_GSI_ROUTING; KVM_IRQ_LINE,
           KVM_SIGNAL_MSI where KVM has no irqfd)
timers     the timer service: ticks time-driven devices, the halt watchdog
console    the console threads (serial-in, serial-out, serial-accept)
control    the control socket's thread and the commands it runs (snapshots,
           core dumps: files it creates)
gdb        the gdb stub's thread
profiler   the ``--profile`` sampler (kicks vCPUs, rewrites its report file)
migrate    a ``migrate`` command's thread: a TCP connection to the target
main       the main thread once the machine runs: it waits, drains the
           coalesced ring, closes the machine and, under ``--on-reset restart``,
           builds the next one (so it keeps what building needs)
=========  ================================================================

Arguments are checked where that is cheap and meaningful: ``ioctl`` only with
KVM's requests (type 0xAE) and the terminal's get/set attributes (never
``TIOCSTI``, which would type into the user's shell), ``clone`` only for
threads, ``socket`` only for Unix and TCP/IP sockets.
"""

from __future__ import annotations

# The C module: ``socket`` would build its enums at start-up (about 1.5 ms) for three numbers.
from _socket import AF_INET, AF_INET6, AF_UNIX
from dataclasses import dataclass
from signal import SIGKILL, SIGTERM

ROLES = ("vcpu", "io", "timers", "console", "control", "gdb", "profiler", "migrate", "main")

#: (argument index, comparison, mask, value); comparisons: "==" (value), "&==" ((arg & mask) == value)
ArgCheck = tuple[int, str, int, int]


@dataclass(frozen=True)
class Rule:
    """One allowed system call, optionally only with some argument values (several rules are ORed)."""

    syscall: str
    args: tuple[ArgCheck, ...] = ()


@dataclass(frozen=True)
class Group:
    reason: str
    rules: tuple[Rule, ...]


def _calls(*names: str) -> tuple[Rule, ...]:
    return tuple(Rule(name) for name in names)


KVM_IOCTL_TYPE = 0xAE
TCGETS, TCSETS, TCSETSW, TCSETSF = 0x5401, 0x5402, 0x5403, 0x5404
FIONBIO, FIOCLEX = 0x5421, 0x5451
TUNSETOFFLOAD = 0x400454D0
CLONE_THREAD = 0x10000
PR_SET_NAME, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 15, 22, 38
#: open(2) flags that write: O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND
WRITING_OPEN_FLAGS = 0x1 | 0x2 | 0x40 | 0x200 | 0x400
U32 = 0xFFFF_FFFF


GROUPS: dict[str, Group] = {
    "memory": Group(
        "the interpreter's allocator (pymalloc arenas, large objects), glibc's malloc, thread stacks",
        _calls("mmap", "munmap", "mremap", "madvise", "brk", "mprotect"),
    ),
    "sync": Group(
        "locks, conditions, events and the GIL are futexes; a futex wait a signal interrupted is resumed "
        "by the kernel through restart_syscall; a waiting thread may yield",
        _calls("futex", "restart_syscall", "sched_yield"),
    ),
    "signals": Group(
        "a vCPU is kicked out of KVM_RUN by SIGUSR1 (pthread_kill: getpid, tgkill) and returns from the "
        "no-op handler (rt_sigreturn); Python blocks signals around some calls",
        _calls("rt_sigprocmask", "rt_sigreturn", "tgkill", "getpid", "gettid"),
    ),
    "time": Group(
        "clocks (the vDSO answers; the system calls are its fallback) and timed waits",
        _calls("clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday"),
    ),
    "exit": Group(
        "a thread ends (exit); the process ends (exit_group: also the SIGSYS handler's way out)",
        _calls("exit", "exit_group"),
    ),
    "fd_io": Group(
        "descriptors kvmlite already holds: log lines on stderr, console output, eventfds, wake-up pipes, "
        "the trace file; Python duplicates a descriptor now and then (fcntl F_DUPFD_CLOEXEC)",
        _calls("read", "write", "readv", "writev", "close", "lseek", "fstat", "newfstatat", "fcntl", "dup"),
    ),
    "ioctl": Group(
        "KVM's own ioctls (type 0xAE: KVM_RUN, register state, KVM_IRQ_LINE, KVM_SIGNAL_MSI, ioeventfds, "
        "dirty logs, ...), the terminal's attributes (raw mode set and restored) and non-blocking sockets "
        "(FIONBIO); no other ioctl: never TIOCSTI, which types into the user's shell",
        (
            Rule("ioctl", ((1, "&==", 0xFF00, KVM_IOCTL_TYPE << 8),)),
            *(Rule("ioctl", ((1, "==", U32, req),)) for req in (TCGETS, TCSETS, TCSETSW, TCSETSF)),
            *(Rule("ioctl", ((1, "==", U32, req),)) for req in (FIONBIO, FIOCLEX)),
        ),
    ),
    "net": Group(
        "virtio-net's TAP backend: the offloads follow the features the guest accepts (TUNSETOFFLOAD, "
        "from the vCPU or I/O thread); passt (--net user) is a child kvmlite ends when the machine closes "
        "(kill with SIGTERM or SIGKILL, wait4)",
        (
            Rule("ioctl", ((1, "==", U32, TUNSETOFFLOAD),)),
            *(Rule("kill", ((1, "==", U32, sig),)) for sig in (SIGTERM, SIGKILL)),
            Rule("wait4"),
        ),
    ),
    "poll": Group(
        "waiting for descriptors: the console's select(), the I/O thread's and the servers' epoll (the gdb "
        "stub makes one per connection), the emulated vCPU's look at the control socket (kvmlite.gil)",
        _calls(
            *("select", "pselect6", "poll", "ppoll"),
            *("epoll_create1", "epoll_wait", "epoll_pwait", "epoll_ctl"),
        ),
    ),
    "disk": Group(
        "virtio-blk (on the I/O thread with KVM, on the vCPU's with the emulator): reads and writes at "
        "offsets straight into guest memory, flushes, discard and write-zeroes (fallocate: punch a hole, "
        "zero a range)",
        _calls(
            *("pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2", "fdatasync", "fsync"),
            "fallocate",
        ),
    ),
    "entropy": Group("virtio-rng's bytes, and Python's own randomness", _calls("getrandom")),
    "disk_handover": Group(
        "a live migration gives the disk images' locks to the target with the final state (and takes "
        "them back if the target fails)",
        _calls("flock"),
    ),
    "read_files": Group(
        "Python imports modules when first used and reads source lines for a logged traceback: files are "
        "opened read-only (no write, create, truncate or append flag) and directories listed",
        (
            Rule("openat", ((2, "&==", WRITING_OPEN_FLAGS, 0),)),
            *_calls("getdents64", "statx", "readlink", "getcwd", "faccessat2", "access"),
        ),
    ),
    "write_files": Group(
        "creating and replacing files: snapshots and core dumps (control commands), the --profile report; "
        "(main) the console file and the serial socket of a restarted machine",
        _calls("openat", "unlink", "unlinkat", "rename", "renameat", "renameat2", "ftruncate", "fallocate"),
    ),
    "sockets": Group(
        "connections kvmlite serves (console, control, gdb) or made (migration): accept, send, receive, "
        "close; a control event is sent from whichever thread stops the VM",
        _calls(
            "accept",
            "accept4",
            "recvfrom",
            "recvmsg",
            "sendto",
            "sendmsg",
            "shutdown",
            "getsockname",
            "getpeername",
            "setsockopt",
            "getsockopt",
        ),
    ),
    "new_sockets": Group(
        "opening sockets: Unix (console, control, name service) and TCP (gdb, migration); never raw, "
        "packet or netlink sockets",
        (
            *(Rule("socket", ((0, "==", U32, family),)) for family in (AF_UNIX, AF_INET, AF_INET6)),
            *_calls("bind", "listen", "connect", "uname"),
        ),
    ),
    "threads": Group(
        "starting threads (clone3: glibc's pthread_create; clone only with CLONE_THREAD) and what a new "
        "thread does under its creator's list before it loads its own (prctl: its name, no_new_privs, "
        "the filter)",
        (
            Rule("clone3"),
            Rule("clone", ((0, "&==", CLONE_THREAD, CLONE_THREAD),)),
            *(Rule("prctl", ((0, "==", U32, op),)) for op in (PR_SET_NAME, PR_SET_NO_NEW_PRIVS)),
            Rule("prctl", ((0, "==", U32, PR_SET_SECCOMP),)),
            *_calls("set_robust_list", "rseq", "sigaltstack"),
        ),
    ),
    "build": Group(
        "building the next machine after a guest reset (main, --on-reset restart): eventfds for "
        "ioeventfds, pipes, epoll, the kick signal's handler, locks on disk images, what Python asks of "
        "the host",
        _calls(
            "eventfd2",
            "pipe2",
            "rt_sigaction",
            "memfd_create",
            "flock",
            "sysinfo",
            "getuid",
            "geteuid",
            "getgid",
            "getegid",
            "sched_getaffinity",
            "prlimit64",
        ),
    ),
}

#: What every kvmlite thread needs.
_COMMON = (
    *("memory", "sync", "signals", "time", "exit", "fd_io"),
    *("ioctl", "poll", "entropy", "read_files", "sockets"),
)

#: Each role's groups.
ROLE_GROUPS: dict[str, tuple[str, ...]] = {
    "vcpu": (*_COMMON, "disk", "net"),
    "io": (*_COMMON, "disk", "net"),
    "timers": _COMMON,
    "console": _COMMON,
    "control": (*_COMMON, "write_files", "threads", "new_sockets", "disk_handover"),  # starts migrate
    "gdb": _COMMON,
    "profiler": (*_COMMON, "write_files"),
    "migrate": (*_COMMON, "new_sockets", "disk_handover"),
    "main": tuple(GROUPS),
}


def rules(role: str) -> list[Rule]:
    """Every rule of ``role``'s list (each once)."""
    return list(dict.fromkeys(rule for group in ROLE_GROUPS[role] for rule in GROUPS[group].rules))
