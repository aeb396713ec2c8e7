"""QEMU's ``isa-debug-exit``: a guest write of value v ends the VMM with status (v << 1) | 1.

Test kernels written for ``qemu-system-x86_64 -device isa-debug-exit,iobase=0xf4,iosize=4``
leave through it; kvmlite keeps the same port, width and status so the same
binaries give the same exit status under both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kvmlite.devices.base import DeviceState, checked_state

DEFAULT_WIDTH = 4


@dataclass
class DebugExitState(DeviceState):
    """Nothing the guest can change: the port only ends the VM.  The record exists so that
    every device snapshots the same way."""


class DebugExit:
    """Calls ``on_exit(status)`` when the guest writes; reads return all ones like QEMU's."""

    def __init__(self, on_exit: Callable[[int], None], width: int = DEFAULT_WIDTH) -> None:
        self.on_exit = on_exit
        self.width = width

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        value &= (1 << (8 * min(size, self.width))) - 1
        self.on_exit((value << 1) | 1)

    def state(self) -> DebugExitState:
        return DebugExitState()

    @classmethod
    def from_state(cls, state: DebugExitState, /, **injected: Any) -> DebugExit:
        """Rebuild from :meth:`state`; the port width is configuration, passed in ``injected``."""
        checked_state(state, DebugExitState, "debug-exit")
        return cls(**injected)
