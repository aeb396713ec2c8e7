"""Facts about the host's KVM, measured once per host boot with a tiny VM.

Some hosts' KVM behaves unlike the hardware it stands for (this project's
kvm-pvm machines, docs/platform-notes.md).  kvmlite works around such a quirk
only where a probe finds it: a VM of a few bytes of code in long mode, at
CPL 0 or CPL 3, that reports what it saw with an ``out``.  :class:`HostProbe`
runs a probe the first time a guest needs the answer (not at start-up) and
remembers the answer for the process and, in :data:`CACHE_NAME` under the
user's cache directory, for later processes on the same host kernel: the
key is the boot ID, the kernel release and the time the ``kvm`` module was
loaded, so a reboot or a reloaded module probes again.  A probe can take a
while (the hypercall one waits 0.2 s for a hypercall that never returns
here), longer than the rest of a small guest's start-up.
``KVMLITE_PROBE_CACHE=off`` probes every time.  :func:`long_mode_vm` builds
the VM.  Users: kvmlite.vmm.syscall_fix, kvmlite.vmm.xstate_quirk,
kvmlite.vmm.host_quirks, kvmlite.vmm.hypercall.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from kvmlite.errors import KvmliteError
from kvmlite.kvm import exits as E
from kvmlite.memory.guest import GuestMemory
from kvmlite.vmm import seccomp
from kvmlite.vmm.cpu_setup import setup_cpu, write_identity_page_tables

log = logging.getLogger(__name__)

T = TypeVar("T")
NewVm = Callable[[], Any]  # VmBackend.new_vm: a fresh KVM VM
CODE = 0x10_0000
PORT = 0x10  # where probes report
GDT = 0x500
USER_STACK = 0x30_0000
USER_DATA, USER_CODE = 0x1B, 0x23  # the selectors of the two descriptors below, with RPL 3
USER_DESCRIPTORS = struct.pack("<QQ", 0x00CF_F200_0000_FFFF, 0x00AF_FA00_0000_FFFF)  # at 0x18: data, code
RFLAGS_FIXED, RFLAGS_IOPL3 = 1 << 1, 3 << 12
ProbeVm = Iterator[tuple[Any, Any, GuestMemory, Any, Any]]
RUNS = 4  # KVM_RUNs before a probe gives up (a signal may interrupt one)
#: The file of remembered answers, in ``$XDG_CACHE_HOME/kvmlite`` (``~/.cache/kvmlite``).
CACHE_NAME = "host-probes"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_KVM_MODULE = Path("/sys/module/kvm")


class HostProbe(Generic[T]):
    """``probe(new_vm)`` run at most once per host boot; ``default`` if it fails (a correct host assumed).

    ``what`` names the probe in the log and in the cache file; the answer is a bool or an int.
    """

    def __init__(self, what: str, probe: Callable[[NewVm], T], default: T) -> None:
        self.what = what
        self.probe = probe
        self.default = default
        self.result: T | None = None
        self._lock = threading.Lock()

    def __call__(self, new_vm: NewVm) -> T:
        with self._lock:
            if self.result is None:
                self.result = remembered(self.what)  # type: ignore[assignment]
            if self.result is None:
                try:
                    self.result = self.probe(new_vm)
                except KvmliteError as err:
                    log.debug("%s probe failed (%s): assuming a correct host", self.what, err)
                    self.result = self.default
                else:
                    remember(self.what, self.result)
            return self.result


def cache_path() -> Path | None:
    """The cache file, or None when ``KVMLITE_PROBE_CACHE=off`` or the calling thread is under a
    seccomp filter (a probe run after set-up, kvmlite.vmm.seccomp: its list has no file calls)."""
    if os.environ.get("KVMLITE_PROBE_CACHE", "").lower() in ("off", "0", "no") or seccomp.is_confined():
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvmlite" / CACHE_NAME


def host_key() -> str:
    """What identifies this host kernel's KVM: boot ID, kernel release, when the kvm module loaded."""
    try:
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        boot = "?"
    try:
        loaded = str(_KVM_MODULE.stat().st_mtime_ns)
    except OSError:
        loaded = "builtin"
    return f"{boot} {os.uname().release} {loaded}"


def _load(path: Path) -> dict[str, bool | int]:
    """The answers in ``path`` if it was written on this host kernel (else, or if unreadable, none).

    The file is lines of text (no json: its import costs more than the rest of the start-up's
    reading): ``host KEY`` first, then ``NAME bool 0|1`` or ``NAME int N`` per probe.
    """
    try:
        lines = path.read_text().splitlines()
    except (OSError, ValueError):
        return {}
    if not lines or lines[0] != f"host {host_key()}":
        return {}
    probes: dict[str, bool | int] = {}
    for line in lines[1:]:
        name, kind, value = [*line.split(" "), "", ""][:3]
        try:
            number = int(value)
        except ValueError:
            continue
        if kind == "bool" and number in (0, 1):
            probes[name] = bool(number)
        elif kind == "int":
            probes[name] = number
    return probes


def remembered(what: str) -> bool | int | None:
    """The answer a process on this host kernel found for probe ``what``, if one is in the cache."""
    path = cache_path()
    return _load(path).get(what) if path is not None else None


def remember(what: str, value: object) -> None:
    """Add ``what``'s answer to the cache (a cache that cannot be written is only logged)."""
    path = cache_path()
    if path is None or not isinstance(value, int) or " " in what:
        return
    probes = _load(path)
    probes[what] = value
    lines = [f"host {host_key()}"]
    lines += [f"{k} {'bool' if isinstance(v, bool) else 'int'} {int(v)}" for k, v in probes.items()]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as err:
        log.debug("cannot remember the %s probe's answer in %s: %s", what, path, err)


@contextmanager
def long_mode_vm(new_vm: NewVm, code: bytes, ring3: bool = False) -> ProbeVm:
    """(vm, vcpu, memory, regs, sregs) of a one-vCPU VM set to run ``code`` at :data:`CODE` in long mode.

    With ``ring3`` at CPL 3 (IOPL 3, so it may ``out``), with user-accessible identity page tables and
    user segments at 0x18/0x20.  The caller adjusts ``regs``/``sregs`` and sets them.
    """
    from kvmlite.loaders.base import EntryMode, LoadResult

    memory = GuestMemory([(0, 4 << 20)])
    vm = new_vm()
    try:
        vm.set_tss_addr()
        vm.register_memory(memory)
        memory.write(CODE, code)
        vcpu = vm.create_vcpu(0)
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
        setup_cpu(regs, sregs, memory, LoadResult("probe", CODE, EntryMode.LONG64, gdt=GDT))
        if ring3:
            write_identity_page_tables(memory, user=True)
            memory.write(GDT + 0x18, USER_DESCRIPTORS)
            sregs.gdt.limit = 0x28 - 1
            sregs.cs.selector, sregs.cs.dpl = USER_CODE, 3
            sregs.ss.selector, sregs.ss.dpl = USER_DATA, 3
            regs.rsp, regs.rflags = USER_STACK, RFLAGS_FIXED | RFLAGS_IOPL3
        yield vm, vcpu, memory, regs, sregs
    finally:
        vm.close()
        memory.close()


def run_to_exit(vcpu: Any) -> E.Exit:
    """The vCPU's first exit that is not an interruption (or the last one after :data:`RUNS` tries)."""
    ex: E.Exit = E.Interrupted()
    for _ in range(RUNS):
        ex = vcpu.run()
        if not isinstance(ex, E.Interrupted):
            break
    return ex


def reported(ex: E.Exit, port: int = PORT) -> int | None:
    """The value a probe wrote to ``port`` with its ``out``, or None if it ended any other way."""
    if isinstance(ex, E.IoOut) and ex.port == port:
        return int.from_bytes(ex.data[: ex.size], "little")
    return None
