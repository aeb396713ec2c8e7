"""A sampling profiler for the guest: where does guest time go?

A sampler thread kicks each vCPU out of KVM_RUN (or the emulator) at a fixed
rate; the vCPU's loop sees the ``Interrupted`` exit, reads RIP and counts it.
Addresses are resolved to function names from a ``System.map`` or the kernel
ELF's own symbol table, so a slow boot can be read as "40 % in
clear_page_erms" instead of a wall of hex.  A vCPU that is halted is sampled
where it halted (the idle loop shows up as such).

The report is rewritten every few seconds while the guest runs, so a long
boot can be watched as it goes: the whole run's top functions, and those of
the last period alone.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

from kvmlite.errors import ConfigError, KvmliteError
from kvmlite.kvm import exits as E
from kvmlite.loaders.elf import elf_symbols, is_elf
from kvmlite.vmm import seccomp
from kvmlite.vmm.loop import LoopExtension, VcpuLoop

log = logging.getLogger(__name__)

DEFAULT_HZ = 100
MAX_HZ = 10_000
REPORT_EVERY_S = 10.0
TOP = 25


class SymbolTable:
    """Address → "function+offset", by binary search over sorted symbol starts."""

    def __init__(self, symbols: list[tuple[int, int, str]]) -> None:
        symbols = sorted(s for s in symbols if s[0])
        self._starts = [s[0] for s in symbols]
        self._entries = symbols

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> SymbolTable:
        """Read a ``System.map`` (``nm`` output) or an ELF's .symtab."""
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read symbols from {path}: {err.strerror}") from None
        if is_elf(data):
            return cls(elf_symbols(data))
        return cls.from_nm(data.decode(errors="replace"), str(path))

    @classmethod
    def from_nm(cls, text: str, origin: str = "symbol map") -> SymbolTable:
        symbols = []
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 3:
                raise ConfigError(f"{origin}, line {n}: expected 'address type name', got {line!r}")
            try:
                addr = int(fields[0], 16)
            except ValueError:
                raise ConfigError(f"{origin}, line {n}: {fields[0]!r} is not a hex address") from None
            if fields[1] in "tTwWaA" and addr:  # code (and absolute symbols, which label entry points)
                symbols.append((addr, 0, fields[2]))
        if not symbols:
            raise ConfigError(f"{origin}: no code symbols found (is it a System.map or nm output?)")
        return cls(symbols)

    def function(self, addr: int) -> str:
        """The enclosing symbol's name, or the address in hex where none encloses it."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return f"{addr:#x}"
        start, size, name = self._entries[i]
        if size and addr >= start + size:
            return f"{addr:#x}"
        return name


class Profiler(LoopExtension):
    """Samples every vCPU's RIP ``hz`` times a second; :meth:`report` ranks the functions."""

    exits = (E.Interrupted,)

    def __init__(
        self,
        loops: list[VcpuLoop],
        *,
        hz: int = DEFAULT_HZ,
        symbols: SymbolTable | None = None,
        output: Path | None = None,
    ) -> None:
        if not 1 <= hz <= MAX_HZ:
            raise ConfigError(f"--profile-hz must be between 1 and {MAX_HZ}, not {hz}")
        self.loops = loops
        self.period = 1.0 / hz
        self.symbols = symbols
        self.output = output
        self.total: Counter[str] = Counter()
        self.recent: Counter[str] = Counter()
        self.samples = 0
        self._wanted = dict.fromkeys(loops, False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        for loop in loops:
            loop.add(self)

    def on_exit(self, loop: VcpuLoop, ex: E.Exit) -> bool:
        """The sampler's kick: count where the vCPU was."""
        if self._wanted[loop]:
            self._wanted[loop] = False
            try:
                rip = loop.vcpu.get_regs().rip
            except KvmliteError:
                return False
            name = self.symbols.function(rip) if self.symbols else f"{rip:#x}"
            with self._lock:
                self.total[name] += 1
                self.recent[name] += 1
                self.samples += 1
        return False  # the loop's own handler still clears the kick

    # --- the sampler thread -----------------------------------------------------------
    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = seccomp.thread("profiler", self._run, "profiler")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.write()

    def _run(self) -> None:
        next_report = time.monotonic() + REPORT_EVERY_S
        while not self._stop.wait(self.period):
            for loop in self.loops:
                self._wanted[loop] = True
                loop.vcpu.kick()
            if self.output is not None and time.monotonic() >= next_report:
                next_report += REPORT_EVERY_S
                self.write()

    # --- the report ------------------------------------------------------------------
    def report(self, top: int = TOP) -> str:
        with self._lock:
            total, recent, samples = Counter(self.total), Counter(self.recent), self.samples
            self.recent.clear()
        elapsed = time.monotonic() - self._started
        lines = [f"guest profile: {samples} samples in {elapsed:.1f} s ({len(self.loops)} vCPUs)"]
        lines += _ranking("whole run", total, top)
        lines += _ranking("since the last report", recent, min(top, 10))
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        text = self.report()
        if self.output is None:
            log.warning("%s", text.rstrip())
            return
        tmp = self.output.with_name(self.output.name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.output)
        except OSError as err:
            log.warning("cannot write the profile to %s: %s", self.output, err.strerror)


def _ranking(title: str, counts: Counter[str], top: int) -> list[str]:
    n = sum(counts.values())
    lines = [f"-- {title}: {n} samples"]
    for name, count in counts.most_common(top):
        lines.append(f"{100.0 * count / n:6.1f} %  {count:8d}  {name}")
    return lines
