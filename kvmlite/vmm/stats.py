"""Exit statistics: how many exits of each kind, and where the time went.

Counting is always on (a dict increment per exit); timing of the handlers is
on when the loop is built with ``timing=True`` (``kvmlite run --stats``),
since reading the clock twice per exit is measurable on the hot path.
"""

from __future__ import annotations

import collections
import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass(slots=True)
class Counter:
    count: int = 0
    ns: int = 0


@dataclass
class ExitStats:
    """Per reason and per (kind, port/address) counters of one vCPU or a whole VM."""

    by_reason: defaultdict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    by_address: defaultdict[tuple[str, int], Counter] = field(default_factory=lambda: defaultdict(Counter))
    run_ns: int = 0  # time inside KVM_RUN (guest + kernel)
    #: Instructions the host KVM failed to emulate and kvmlite emulated instead, per mnemonic.
    rescues: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Guest writes that went through the coalesced ring instead of exiting (kvmlite.kvm.coalesced).
    #: Per ("pio" or "mmio", port or address).
    coalesced: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    started_ns: int = field(default_factory=time.perf_counter_ns)
    ended_ns: int = 0

    def merge(self, other: ExitStats) -> None:
        for k, c in other.by_reason.items():
            mine = self.by_reason[k]
            mine.count += c.count
            mine.ns += c.ns
        for k2, c in other.by_address.items():
            mine = self.by_address[k2]
            mine.count += c.count
            mine.ns += c.ns
        self.run_ns += other.run_ns
        self.rescues.update(other.rescues)
        self.coalesced.update(other.coalesced)
        self.started_ns = min(self.started_ns, other.started_ns)
        self.ended_ns = max(self.ended_ns, other.ended_ns)

    @property
    def total_exits(self) -> int:
        return sum(c.count for c in self.by_reason.values())

    def format(self, top: int = 12) -> str:
        wall_s = max((self.ended_ns or time.perf_counter_ns()) - self.started_ns, 1) / 1e9
        total = self.total_exits
        header = f"{'count':>10} {'per s':>10} {'handler us':>11} {'avg us':>8}"

        def row(label: str, c: Counter) -> str:
            avg = c.ns / c.count / 1000 if c.count else 0.0
            return f"{label:<20} {c.count:>10} {c.count / wall_s:>10.0f} {c.ns / 1000:>11.0f} {avg:>8.2f}"

        lines = [
            f"exits: {total} in {wall_s:.3f} s ({total / wall_s:.0f}/s), "
            f"{self.run_ns / 1e9 / wall_s:.0%} of the time in KVM_RUN",
            f"{'reason':<20} {header}",
        ]
        lines += [row(name, c) for name, c in sorted(self.by_reason.items(), key=lambda kv: -kv[1].count)]
        if self.by_address:
            lines.append(f"{'where':<20} {header}")
            ranked = sorted(self.by_address.items(), key=lambda kv: -kv[1].count)
            lines += [row(f"{kind} {addr:#x}", c) for (kind, addr), c in ranked[:top]]
            if len(ranked) > top:
                lines.append(f"... and {len(ranked) - top} more addresses")
        if self.coalesced:
            lines.append(f"{'coalesced writes':<20} {'count':>10} (replayed without an exit)")
            ranked_writes = self.coalesced.most_common(top)
            lines += [f"{kind} {addr:#x}".ljust(20) + f" {n:>10}" for (kind, addr), n in ranked_writes]
        if self.rescues:
            lines.append(f"{'rescued by kvmlite':<20} {'count':>10}")
            lines += [f"{name:<20} {n:>10}" for name, n in self.rescues.most_common()]
        return "\n".join(lines)
