"""The timer service: one thread that ticks time-driven devices when their deadlines fall due.

Devices never sleep or own threads; they say when they next need attention
(``next_deadline()``) and are advanced with ``tick(now)``.  This thread sleeps
on a condition until the earliest deadline, so an idle guest waiting for a
slow timer costs the host next to nothing.  A guest that reprograms a device
changes its deadline; the bus wrapper :class:`Rescheduling` pokes the service
after every write so it recomputes.

The condition shares the machine's device lock, so ticks never race with the
vCPU's register accesses.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kvmlite.devices.base import Clock, TimedDevice, monotonic_ns
from kvmlite.vmm import seccomp

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000


class TimerService:
    def __init__(self, lock: threading.RLock, clock: Clock = monotonic_ns) -> None:
        self.cond = threading.Condition(lock)
        self.clock = clock
        self.devices: list[TimedDevice] = []
        #: (interval ns, callback, next due) for periodic housekeeping (e.g. a halt watchdog).
        self._periodic: list[list] = []
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, device: TimedDevice) -> None:
        self.devices.append(device)
        self.poke()

    def every(self, interval_s: float, callback: Callable[[], None]) -> None:
        interval = int(interval_s * NS_PER_S)
        self._periodic.append([interval, callback, self.clock() + interval])

    def poke(self) -> None:
        """A deadline may have changed: recompute (cheap; callable from any thread)."""
        with self.cond:
            self.cond.notify()

    def start(self) -> None:
        self._thread = seccomp.thread("timers", self._run, "timers")
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        with self.cond:
            while not self._stopping:
                now = self.clock()
                nearest: int | None = None
                for dev in self.devices:
                    deadline = dev.next_deadline()
                    if deadline is not None and deadline <= now:
                        dev.tick(now)
                        deadline = dev.next_deadline()
                    if deadline is not None and (nearest is None or deadline < nearest):
                        nearest = deadline
                for entry in self._periodic:
                    if entry[2] <= now:
                        entry[1]()
                        entry[2] = now + entry[0]
                    if nearest is None or entry[2] < nearest:
                        nearest = entry[2]
                timeout = None if nearest is None else max(nearest - self.clock(), 0) / NS_PER_S
                self.cond.wait(timeout)


class Rescheduling:
    """A bus-side wrapper for a timed device: pokes the timer service when an access moved its deadline.

    Reads count too: reading the RTC's register C acknowledges its interrupt
    and re-arms the next one.  Comparing deadlines (instead of poking on every
    access) keeps a guest that polls a counter from waking the timer thread
    thousands of times.
    """

    def __init__(self, device: TimedDevice, timers: TimerService) -> None:
        self.device = device
        self.timers = timers

    def read(self, offset: int, size: int) -> int:
        before = self.device.next_deadline()
        value: int = self.device.read(offset, size)  # type: ignore[attr-defined]
        if self.device.next_deadline() != before:
            self.timers.poke()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        before = self.device.next_deadline()
        self.device.write(offset, size, value)  # type: ignore[attr-defined]
        if self.device.next_deadline() != before:
            self.timers.poke()
