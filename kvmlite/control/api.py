"""The machine's control commands, the same for the socket (:mod:`kvmlite.control.server`) and Python.

:class:`MachineApi` wraps a :class:`~kvmlite.vmm.machine.Machine`; every
command is a method named as in QMP with ``-`` as ``_`` and takes its
arguments as keywords::

    api = MachineApi(machine)
    api.execute("stop")
    regs = api.execute("query-regs", {"cpu": 0})
    api.execute("write-memory", {"addr": 0x2000, "data": "2a000000"})
    api.execute("cont")

:data:`SCHEMA` is the one description of the commands: their arguments
(name, type, required) and a line of documentation; the socket server
checks arguments against it and ``query-commands`` lists it.  Failures are
:class:`CommandError` with QMP's error classes (``GenericError``,
``CommandNotFound``, ``DeviceNotActive``...).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmlite.errors import KvmliteError
from kvmlite.vmm import seccomp

log = logging.getLogger(__name__)

GENERIC = "GenericError"
NOT_FOUND = "CommandNotFound"
NOT_ACTIVE = "DeviceNotActive"
_GPRS = (
    "rax",
    "rbx",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rsp",
    "rbp",
    *(f"r{i}" for i in range(8, 16)),
    "rip",
    "rflags",
)
_CRS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
_SEGS = ("cs", "ds", "es", "fs", "gs", "ss")
MAX_READ = 1 << 20


class CommandError(KvmliteError):
    """A command failed; ``error_class`` is QMP's class name."""

    def __init__(self, desc: str, error_class: str = GENERIC) -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


@dataclass(frozen=True)
class Arg:
    name: str
    type: type
    required: bool = True


@dataclass(frozen=True)
class Command:
    name: str
    doc: str
    args: tuple[Arg, ...] = ()


SCHEMA: dict[str, Command] = {
    c.name: c
    for c in (
        Command("query-status", "whether the VM runs: {running, status}"),
        Command("stop", "pause every vCPU (event STOP)"),
        Command("cont", "resume after stop (event RESUME)"),
        Command("system_reset", "reset the guest as its own reset would (--on-reset decides)"),
        Command("system_powerdown", "press the ACPI power button (the guest decides to power off)"),
        Command("quit", "end the VM at once (status 0)"),
        Command("query-cpus", "per vCPU: index, mode, pc"),
        Command("query-cpus-fast", "per vCPU without stopping it: cpu-index, thread-id (host TID), target"),
        Command("query-version", "QEMU's VersionInfo: {qemu: {major, minor, micro}, package} (kvmlite's)"),
        Command("query-kvm", "whether KVM is present on the host and used by this VM: {enabled, present}"),
        Command(
            "human-monitor-command",
            "an HMP command as text: info registers, info cpus, info status, info devices",
            (Arg("command-line", str), Arg("cpu-index", int, False)),
        ),
        Command("query-regs", "one vCPU's registers", (Arg("cpu", int, False),)),
        Command(
            "set-regs",
            'change registers, e.g. {"regs": {"rax": 1}}',
            (Arg("regs", dict), Arg("cpu", int, False)),
        ),
        Command(
            "read-memory",
            "bytes as hex; virtual: through the vCPU's page tables",
            (Arg("addr", int), Arg("size", int), Arg("virtual", bool, False), Arg("cpu", int, False)),
        ),
        Command(
            "write-memory",
            "write hex bytes; virtual: through the vCPU's page tables",
            (Arg("addr", int), Arg("data", str), Arg("virtual", bool, False), Arg("cpu", int, False)),
        ),
        Command("query-devices", "the device registry: name, type, bus ranges, IRQs, state"),
        Command("query-stats", "exit counts per reason (the --stats data, live)"),
        Command("inject-nmi", "an NMI to every vCPU"),
        Command("send-serial", "bytes into COM1's receiver", (Arg("data", str),)),
        Command(
            "dump-guest-memory",
            "write an ELF core of RAM and registers; paging: at virtual addresses",
            (Arg("file", str), Arg("paging", bool, False)),
        ),
        Command(
            "snapshot-save",
            'save the VM to a snapshot file (docs/snapshot-format.md): {"path": ..., "memory": "full" '
            'or "diff" (the pages written since the previous snapshot, which the file refers to), '
            '"paused": stay paused afterwards (cont resumes), "separate": memory in PATH.mem}',
            (
                Arg("path", str),
                Arg("memory", str, False),
                Arg("paused", bool, False),
                Arg("separate", bool, False),
            ),
        ),
        Command(
            "migrate",
            'send the running VM to a kvmlite waiting with --incoming: {"uri": "tcp:HOST:PORT"}; '
            "the VM stops (status 0) once the target has it; progress in query-migrate",
            (Arg("uri", str),),
        ),
        Command("query-migrate", "the last migration: status, rounds, pages, total and downtime (ms)"),
        Command("query-commands", "the commands this server knows"),
    )
}


def check_arguments(name: str, arguments: Any) -> dict[str, Any]:
    """``arguments`` checked against the schema of ``name``; a CommandError says what is wrong."""
    command = SCHEMA.get(name)
    if command is None:
        raise CommandError(f"The command {name} has not been found", NOT_FOUND)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise CommandError(f"{name}: 'arguments' must be an object")
    known = {a.name: a for a in command.args}
    for key, value in arguments.items():
        arg = known.get(key)
        if arg is None:
            raise CommandError(f"{name}: parameter '{key}' is unexpected")
        if not isinstance(value, arg.type) or (arg.type is int and isinstance(value, bool)):
            raise CommandError(f"{name}: parameter '{key}' expects {arg.type.__name__}")
    for arg in command.args:
        if arg.required and arg.name not in arguments:
            raise CommandError(f"{name}: parameter '{arg.name}' is missing")
    return dict(arguments)


class MachineApi:
    """The control commands over one machine (see the module docstring)."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.control = machine.control
        self._lock = threading.Lock()
        self._stopped = False  # this API holds one pause of the VM (stop without cont yet)
        self._migration: dict[str, Any] = {}  # query-migrate's answer
        #: Called with (event name, data) for QMP's asynchronous events.
        self.on_event: list[Callable[[str, dict[str, Any]], None]] = []

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        args = check_arguments(name, arguments)
        handler = getattr(self, name.replace("-", "_"))
        try:
            return handler(**{key.replace("-", "_"): value for key, value in args.items()})
        except CommandError:
            raise
        except KvmliteError as err:
            raise CommandError(str(err)) from err

    def _emit(self, event: str, data: dict[str, Any] | None = None) -> None:
        for callback in self.on_event:
            callback(event, data or {})

    def _paused(self, fn: Callable[[], Any]) -> Any:
        if self.control.stopping:
            return fn()
        return self.control.run_paused(fn)

    def _vcpu(self, cpu: int) -> Any:
        loops = self.machine.loops
        if not 0 <= cpu < len(loops):
            raise CommandError(f"no vCPU {cpu} (the machine has {len(loops)})")
        return loops[cpu].vcpu

    # --- run state ----------------------------------------------------------------------------
    def query_status(self) -> dict[str, Any]:
        if self.control.stopping:
            status = "shutdown"
        elif self.control.paused:
            status = "paused"
        else:
            status = "running"
        return {"running": status == "running", "status": status}

    def stop(self) -> dict[str, Any]:
        with self._lock:
            if not self._stopped and not self.control.stopping:
                self.control.pause()
                self._stopped = True
                self._emit("STOP")
        return {}

    def cont(self) -> dict[str, Any]:
        with self._lock:
            if self._stopped:
                self._stopped = False
                self._emit("RESUME")  # before the guest runs: its own events (SHUTDOWN...) come after
                self.control.resume()
        return {}

    def system_reset(self) -> dict[str, Any]:
        self.machine.request_reset()
        return {}

    def system_powerdown(self) -> dict[str, Any]:
        pm = self.machine.acpi_pm
        if pm is None:
            raise CommandError("the machine has no ACPI power button", NOT_ACTIVE)
        with self.machine.lock:
            pm.press_power_button()
        self._emit("POWERDOWN")
        return {}

    def quit(self) -> dict[str, Any]:
        from kvmlite.status import ExitStatus

        self.control.stop(ExitStatus.OK, "quit from the control socket")
        return {}

    def query_version(self) -> dict[str, Any]:
        from kvmlite import __version__

        parts = [int(p) if p.isdigit() else 0 for p in [*__version__.split("."), "0", "0"][:3]]
        major, minor, micro = parts
        return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": f"kvmlite {__version__}"}

    def query_kvm(self) -> dict[str, Any]:
        return {"enabled": self.machine.caps.name == "kvm", "present": os.path.exists("/dev/kvm")}

    # --- vCPU state -----------------------------------------------------------------------------
    def query_cpus_fast(self) -> list[dict[str, Any]]:
        return [
            {
                "cpu-index": loop.vcpu.id,
                "qom-path": f"/machine/unattached/device[{loop.vcpu.id}]",
                "thread-id": loop.native_thread_id if loop.native_thread_id is not None else os.getpid(),
                "target": "x86_64",
                "props": {"core-id": loop.vcpu.id, "thread-id": 0, "socket-id": 0},
            }
            for loop in self.machine.loops
        ]

    def human_monitor_command(self, command_line: str, cpu_index: int = 0) -> str:
        """HMP's text for the few ``info`` commands scripts send through QMP."""
        from kvmlite.vmm.dump import format_state

        words = command_line.split()
        if words in (["info", "registers"], ["info", "registers", "-a"]):
            self._vcpu(cpu_index)  # checked: "no vCPU N"
            loops = self.machine.loops if "-a" in words else [self.machine.loops[cpu_index]]

            def dump() -> str:
                return "".join(
                    f"CPU#{loop.vcpu.id}\n{format_state(loop.vcpu.get_regs(), loop.vcpu.get_sregs())}\n"
                    for loop in loops
                )

            return str(self._paused(dump))
        if words == ["info", "status"]:
            return f"VM status: {self.query_status()['status']}\n"
        if words == ["info", "cpus"]:
            lines = []
            for c in self.query_cpus_fast():
                mark = "*" if c["cpu-index"] == cpu_index else " "
                lines.append(f"{mark} CPU #{c['cpu-index']}: thread_id={c['thread-id']}\n")
            return "".join(lines)
        if words == ["info", "devices"]:
            return self.format_devices()
        raise CommandError(
            f"human-monitor-command: {command_line!r} is not supported (try: info registers, "
            "info cpus, info status, info devices)"
        )

    def query_cpus(self) -> list[dict[str, Any]]:
        from kvmlite.vmm.dump import cpu_mode

        def read() -> list[dict[str, Any]]:
            out = []
            for loop in self.machine.loops:
                regs, sregs = loop.vcpu.get_regs(), loop.vcpu.get_sregs()
                out.append(
                    {
                        "cpu-index": loop.vcpu.id,
                        "mode": cpu_mode(sregs),
                        "pc": regs.rip,
                        "cs": sregs.cs.selector,
                        "cpl": sregs.cs.dpl,
                    }
                )
            return out

        return list(self._paused(read))

    def query_regs(self, cpu: int = 0) -> dict[str, int]:
        vcpu = self._vcpu(cpu)

        def read() -> dict[str, int]:
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            out = {n: int(getattr(regs, n)) for n in _GPRS}
            out.update({n: int(getattr(sregs, n)) for n in _CRS})
            for s in _SEGS:
                out[s] = int(getattr(sregs, s).selector)
                out[f"{s}_base"] = int(getattr(sregs, s).base)
            return out

        return dict(self._paused(read))

    def set_regs(self, regs: dict[str, Any], cpu: int = 0) -> dict[str, Any]:
        vcpu = self._vcpu(cpu)
        for name, value in regs.items():
            if name not in _GPRS and name not in _CRS:
                raise CommandError(f"set-regs: unknown register '{name}' (general, rip, rflags, cr0-8, efer)")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
                raise CommandError(f"set-regs: '{name}' needs an integer from 0 to 2^64-1")

        def write() -> None:
            kregs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            for name, value in regs.items():
                setattr(kregs if name in _GPRS else sregs, name, value)
            if any(n in _CRS for n in regs):
                vcpu.set_sregs(sregs)
            vcpu.set_regs(kregs)

        self._paused(write)
        return {}

    # --- memory ---------------------------------------------------------------------------------
    def read_memory(self, addr: int, size: int, virtual: bool = False, cpu: int = 0) -> dict[str, Any]:
        if not 0 < size <= MAX_READ:
            raise CommandError(f"read-memory: size must be 1 to {MAX_READ}")
        if virtual:
            from kvmlite.vmm import vmem

            vcpu = self._vcpu(cpu)
            data = self._paused(lambda: vmem.read_virtual(vcpu, self.machine.memory, addr, size))
        else:
            data = self.machine.memory.read(addr, size)
        return {"data": bytes(data).hex()}

    def write_memory(self, addr: int, data: str, virtual: bool = False, cpu: int = 0) -> dict[str, Any]:
        try:
            raw = bytes.fromhex(data)
        except ValueError:
            raise CommandError("write-memory: 'data' must be hex bytes") from None
        if virtual:
            from kvmlite.vmm import vmem

            vcpu = self._vcpu(cpu)
            self._paused(lambda: vmem.write_virtual(vcpu, self.machine.memory, addr, raw))
        else:
            self.machine.memory.write(addr, raw)
        return {}

    # --- devices and statistics -------------------------------------------------------------------
    def query_devices(self) -> list[dict[str, Any]]:
        """The device registry: name, QEMU-style type, bus ranges, interrupt lines (GSIs), state."""
        out = []
        with self.machine.lock:
            for record in self.machine.devices:
                entry: dict[str, Any] = {
                    "name": record.name,
                    "type": record.type,
                    "pio": [{"base": s.base, "length": s.length, "name": s.name} for s in record.pio],
                    "mmio": [{"base": s.base, "length": s.length, "name": s.name} for s in record.mmio],
                    "irqs": list(record.irqs),
                }
                state = _state_of(record.device)
                if state is not None:
                    entry["state"] = state
                out.append(entry)
        return out

    def query_stats(self) -> dict[str, Any]:
        stats = self.machine.stats()
        return {
            "exits": {k: c.count for k, c in sorted(stats.by_reason.items())},
            "total": stats.total_exits,
            "rescues": dict(stats.rescues),
        }

    def inject_nmi(self) -> dict[str, Any]:
        vcpus = [loop.vcpu for loop in self.machine.loops]
        self._paused(lambda: [v.nmi() for v in vcpus])
        return {}

    def send_serial(self, data: str) -> dict[str, Any]:
        serial = self.machine.serial
        if serial is None:
            raise CommandError("the machine has no serial port", NOT_ACTIVE)
        with self.machine.lock:
            taken = serial.enqueue_input(data.encode())
        return {"sent": taken}

    def dump_guest_memory(self, file: str, paging: bool = False) -> dict[str, Any]:
        from kvmlite.vmm.coredump import write_core

        def dump() -> int:
            cpus = [(loop.vcpu.get_regs(), loop.vcpu.get_sregs()) for loop in self.machine.loops]
            return write_core(Path(file), self.machine.memory, cpus, paging)

        return {"size": self._paused(dump)}

    def snapshot_save(
        self, path: str, memory: str = "full", paused: bool = False, separate: bool = False
    ) -> dict[str, Any]:
        from kvmlite.snapshot.machine import save

        if memory not in ("full", "diff"):
            raise CommandError(f'snapshot-save: memory "{memory}": choose "full" or "diff"')
        with self._lock:
            if self.control.stopping:
                raise CommandError("snapshot-save: the VM is shutting down", NOT_ACTIVE)
            stay = paused and not self._stopped
            result = save(
                self.machine, Path(path), separate_memory=separate, stay_paused=stay, diff=memory == "diff"
            )
            if stay and result["paused"]:
                self._stopped = True
                self._emit("STOP")
        return result

    def migrate(self, uri: str) -> dict[str, Any]:
        from kvmlite.snapshot.migration import migrate, parse_tcp

        parse_tcp(uri, "migrate")
        with self._lock:
            if self._migration.get("status") == "active":
                raise CommandError("migrate: a migration is already running")
            if self.control.stopping:
                raise CommandError("migrate: the VM is shutting down", NOT_ACTIVE)
            self._migration = {"status": "active", "uri": uri}

        def run() -> None:
            try:
                stats = migrate(self.machine, uri)
            except KvmliteError as err:
                log.warning("%s", err)
                self._migration = {"status": "failed", "uri": uri, "error": str(err)}
            else:
                self._migration = {"status": "completed", "uri": uri, **dataclasses.asdict(stats)}
                log.warning("migrated to %s: %s", uri, stats.describe())
            self._emit("MIGRATION", dict(self._migration))

        seccomp.thread("migrate", run, "migrate").start()
        return {}

    def query_migrate(self) -> dict[str, Any]:
        return dict(self._migration)

    def query_commands(self) -> list[dict[str, Any]]:
        return [{"name": c.name, "doc": c.doc, "args": [a.name for a in c.args]} for c in SCHEMA.values()]

    def format_devices(self) -> str:
        """The registry as text, one device a line, for gdb's ``monitor info devices``."""
        return "\n".join(self.machine.devices.describe()) + "\n"


def _state_of(device: Any) -> Any:
    """A device's ``state()`` as JSON-ready data (None if it has none)."""
    state = getattr(device, "state", None)
    if not callable(state):
        return None
    try:
        value = state()
    except Exception:  # a device that cannot report its state now is listed without it
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return _jsonable(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    return str(value)
