"""Exit tracing: ``--trace [FILTER]`` to the log, ``--trace-file FILE`` as JSON lines.

A filter is a comma-separated list of terms; an exit is traced if any term
matches it::

    all                    every exit (what a bare --trace means)
    pio, io                port I/O; pio:0x3f8 one port, pio:0x70-0x71 a range (inclusive)
    mmio                   MMIO; mmio:0xfee00000-0xfee00fff a range
    hlt, debug, msr, irq-window, interrupted, system, error
                           HLT, debug exits, RDMSR/WRMSR, interrupt windows, kicks,
                           system events, crashes (shutdown, failed entry, internal error)

``--trace-file`` writes one JSON object per traced exit, with the time in
seconds since the tracer started, the vCPU and the exit's fields::

    {"t": 0.001234, "vcpu": 0, "exit": "IoOut", "port": 1016, "size": 1, "count": 1, "data": "68"}

so a trace of a long boot can be read with ``jq``, ``grep`` or pandas.  The
hook runs before the exit is handled: an ``IoIn``/``MmioRead`` carries the
request, not yet the answer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from kvmlite.errors import ConfigError
from kvmlite.kvm import exits as E

log = logging.getLogger(__name__)

_KINDS: dict[str, tuple[type[E.Exit], ...]] = {
    "pio": (E.IoIn, E.IoOut),
    "mmio": (E.MmioRead, E.MmioWrite),
    "hlt": (E.Hlt,),
    "debug": (E.Debug,),
    "msr": (E.RdMsr, E.WrMsr),
    "irq-window": (E.IrqWindowOpen,),
    "interrupted": (E.Interrupted,),
    "system": (E.SystemEventExit,),
    "error": (E.Shutdown, E.FailEntry, E.InternalErrorExit, E.Unsupported),
}
_ALIASES = {"io": "pio"}


@dataclass(frozen=True)
class Term:
    classes: tuple[type[E.Exit], ...]
    low: int = 0
    high: int = (1 << 64) - 1

    def matches(self, ex: E.Exit) -> bool:
        if not isinstance(ex, self.classes):
            return False
        where = getattr(ex, "port", None)
        if where is None:
            where = getattr(ex, "addr", None)
        return where is None or self.low <= where <= self.high


def _number(text: str, spec: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"--trace {spec!r}: {text!r} is not a number") from None


def parse_trace_filter(spec: str) -> list[Term]:
    """The terms of a filter (see the module docstring); a ConfigError names a bad one."""
    terms: list[Term] = []
    for raw in spec.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item == "all":
            terms.append(Term(tuple(c for group in _KINDS.values() for c in group)))
            continue
        kind, _, where = item.partition(":")
        kind = _ALIASES.get(kind, kind)
        if kind not in _KINDS:
            known = ", ".join(["all", "io", *_KINDS])
            raise ConfigError(f"--trace: unknown exit kind {kind!r} (known: {known})")
        if not where:
            terms.append(Term(_KINDS[kind]))
            continue
        if kind not in ("pio", "mmio"):
            raise ConfigError(f"--trace {item!r}: only pio and mmio take an address")
        low, dash, high = where.partition("-")
        lo = _number(low, spec)
        hi = _number(high, spec) if dash else lo
        if hi < lo:
            raise ConfigError(f"--trace {item!r}: the range ends before it starts")
        terms.append(Term(_KINDS[kind], lo, hi))
    if not terms:
        raise ConfigError("--trace: empty filter")
    return terms


def exit_record(ex: E.Exit) -> dict[str, Any]:
    """An exit's fields as JSON-ready data (bytes as hex)."""
    out: dict[str, Any] = {"exit": type(ex).__name__}
    for f in fields(ex):
        value = getattr(ex, f.name)
        if isinstance(value, memoryview | bytes | bytearray):
            value = bytes(value).hex()
        elif isinstance(value, tuple):
            value = list(value)
        elif not isinstance(value, int | str | float | bool | list) and value is not None:
            continue  # the kvm_run reference of MSR exits and the like
        out[f.name] = value
    return out


def _show(value: Any) -> str:
    return f"{value:#x}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


class ExitTracer:
    """One tracer for every vCPU of a machine: ``hook(vcpu_id)`` goes into each loop's ``after_exit``."""

    def __init__(self, spec: str = "all", path: Path | None = None) -> None:
        self.terms = parse_trace_filter(spec or "all")
        self._file: IO[str] | None = None
        if path is not None:
            try:
                self._file = open(path, "w", buffering=1 << 16)
            except OSError as err:
                raise ConfigError(f"--trace-file {path}: {err.strerror or err}") from None
        else:
            log.setLevel(min(log.getEffectiveLevel(), logging.INFO))  # --trace shows without -v
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()

    def hook(self, vcpu_id: int) -> Callable[[E.Exit], bool]:
        terms, out = self.terms, self._file

        def trace(ex: E.Exit) -> bool:
            if not any(t.matches(ex) for t in terms):
                return False
            if out is None:
                record = exit_record(ex)
                name = record.pop("exit")
                log.info(
                    "vcpu %d %s %s", vcpu_id, name, " ".join(f"{k}={_show(v)}" for k, v in record.items())
                )
                return False
            record = {"t": round(time.perf_counter() - self._t0, 6), "vcpu": vcpu_id, **exit_record(ex)}
            line = json.dumps(record) + "\n"
            with self._lock:
                out.write(line)
            return False

        return trace

    def close(self) -> None:
        if self._file is not None:
            with self._lock:
                self._file.close()
                self._file = None
