"""The fakes every device test injects: an interrupt line that records its levels, an output
sink, a settable clock and a callable that counts its calls."""

from __future__ import annotations


class Line:
    """An IrqLine that records every level it is driven to."""

    def __init__(self) -> None:
        self.levels: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.levels.append(level)

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    @property
    def raised(self) -> int:
        """How many times the line was driven high (the pulses of an edge-triggered user)."""
        return self.levels.count(True)


class Sink:
    """An output sink that keeps every byte written to it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def __call__(self, data: bytes) -> None:
        self.data += data


class FakeClock:
    """A monotonic nanosecond clock that moves only when a test moves it."""

    def __init__(self, start: int = 1_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


class Calls:
    """A callable with no arguments (a reset or power-off handler) that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
