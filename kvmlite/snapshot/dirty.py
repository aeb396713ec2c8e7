"""Which pages of guest RAM were written: KVM's dirty log plus what kvmlite's own code wrote.

KVM_GET_DIRTY_LOG reports the pages the guest's vCPUs wrote, and reading it
clears it.  Pages written by kvmlite itself (virtio DMA from the I/O thread,
the software backend's emulator, a debugger) never pass through KVM's page
tables: :class:`~kvmlite.memory.guest.GuestMemory` records those while
tracking is on.  Several users want the pages since *their* last look (a
diff snapshot: since the previous snapshot; a live migration: since the last
round; reset-to-snapshot: since the reset point), so one :class:`DirtyTracker`
per machine reads both sources and hands every page to each subscribed
:class:`DirtyLog`; logging is on while at least one log is open.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from kvmlite.kvm.constants import MemFlag

if TYPE_CHECKING:
    from kvmlite.vmm.machine import Machine

PAGE = 4096
Page = tuple[int, int]  # (region index, offset in the region)


class DirtyTracker:
    """The machine's one reader of the dirty sources, fanning pages out to its open logs."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.kvm = hasattr(machine.vm, "get_dirty_log")
        self.logs: list[DirtyLog] = []
        self.lock = threading.Lock()

    @classmethod
    def of(cls, machine: Machine) -> DirtyTracker:
        tracker: DirtyTracker | None = getattr(machine, "dirty_tracker", None)
        if tracker is None:
            tracker = machine.dirty_tracker = cls(machine)  # type: ignore[attr-defined]
        return tracker

    def open(self, log: DirtyLog) -> None:
        with self.lock:
            if not self.logs:
                self._enable(True)
                self._collect()  # start from a clean log
            else:
                self._distribute(self._collect())
            self.logs.append(log)

    def close(self, log: DirtyLog) -> None:
        with self.lock:
            if log in self.logs:
                self.logs.remove(log)
            if not self.logs:
                self._enable(False)

    def take(self, log: DirtyLog) -> list[Page]:
        with self.lock:
            self._distribute(self._collect())
            pages, log.pending = log.pending, set()
        return sorted(pages)

    def _distribute(self, pages: set[Page]) -> None:
        if pages:
            for other in self.logs:
                other.pending |= pages

    def _collect(self) -> set[Page]:
        out: set[Page] = set()
        if self.kvm:
            vm: Any = self.machine.vm
            for slot, _region in enumerate(self.machine.memory):
                bits = int.from_bytes(vm.get_dirty_log(slot), "little")
                while bits:
                    low = bits & -bits
                    out.add((slot, (low.bit_length() - 1) * PAGE))
                    bits ^= low
        out.update(self.machine.memory.take_written())
        return out

    def _enable(self, on: bool) -> None:
        memory = self.machine.memory
        memory.track_writes(on)
        for loop in self.machine.loops:  # the emulator writes its cached RAM pages directly
            drop = getattr(loop.vcpu, "drop_write_views", None)
            if callable(drop):
                drop()
        if not self.kvm:
            return
        vm: Any = self.machine.vm
        for slot, region in enumerate(memory):
            flags = (MemFlag.LOG_DIRTY_PAGES if on else 0) | (MemFlag.READONLY if region.readonly else 0)
            vm.set_user_memory_region(slot, region.start, region.size, region.host_addr, int(flags))


class DirtyLog:
    """The pages written since this log was opened, or since its last :meth:`take`.

    On KVM: the dirty log and kvmlite's own writes; on the software backend the
    emulator's writes (it writes RAM through :class:`~kvmlite.memory.guest.GuestMemory`).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.pending: set[Page] = set()
        self.tracker = DirtyTracker.of(machine)
        self.tracker.open(self)

    @staticmethod
    def available(machine: Machine) -> bool:
        """Whether KVM's dirty log is there (pre-copy migration and reset-to-snapshot rely on it)."""
        return hasattr(machine.vm, "get_dirty_log")

    def take(self) -> list[Page]:
        """(region index, offset) of every page written since the last call, sorted; clears them."""
        return self.tracker.take(self)

    def close(self) -> None:
        self.tracker.close(self)
