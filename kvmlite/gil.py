"""Turns for the server threads while a software-backend vCPU holds the GIL.

An emulated vCPU thread (``--backend emu``) runs Python without pause and lets go of the GIL only
for a moment at each of its system calls (a serial byte written, a disk sector read).  CPython
gives a waiting thread the GIL once it has waited ``sys.getswitchinterval()`` (5 ms) with no
switch, but every time the holder lets go the waiter is signalled and its wait starts again, and
the holder has the GIL back before the waiter's CPU has woken it up.  A server thread woken by its
socket then waits 5 to 100 ms for each of its own system calls, and a command that makes many
(``snapshot-save`` imports modules on its first use) took most of a second
(``docs/performance.md``, "The control socket while an emulated guest runs").

:class:`GilTurns` lets the servers ask for the GIL without running Python first: they name the
descriptors they wait on (:meth:`watch`) and say when they have work in hand (:meth:`busy`, the
first thing a server does once it has the GIL: it may have read its socket empty already), and a
vCPU calls :meth:`give_turn` every :data:`CHECK_S` of emulation.  When a server is busy or one of
those descriptors is readable the vCPU blocks for real (a condition wait: the server cannot lose
the GIL to it any more) until a server has been through its round (:meth:`served`), the vCPU is
kicked (a pause or a stop asked for by that very command), or :data:`MAX_WAIT_S` has passed: a
command holds the vCPUs for as long as it runs, as a QEMU monitor command holds the BQL.  A server
that does not come back within that bound costs the vCPU no more waits for :data:`BACKOFF_S`.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable

#: How often a running vCPU looks at the servers' descriptors (a poll(2) with no timeout).
CHECK_S = 0.002
#: The longest a vCPU waits for one round of a server (a command that pauses the VM kicks it sooner).
MAX_WAIT_S = 1.0
#: After a wait that ran out: no more waits for this long (a server that stopped serving).
BACKOFF_S = 1.0


class GilTurns:
    """Descriptors that server threads wait on, and their rounds (see the module docstring)."""

    def __init__(self) -> None:
        #: The watched descriptors; replaced, never changed in place (the vCPUs read it unlocked).
        self.fds: tuple[int, ...] = ()
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._round = 0
        self._quiet_until = 0.0
        #: How many times a vCPU waited for a server, and how many of those waits ran out.
        self.turns = 0
        self.timeouts = 0

    # --- the servers' side -------------------------------------------------------------------
    def watch(self, fd: int) -> None:
        with self._cond:
            if fd not in self.fds:
                self.fds = (*self.fds, fd)

    def unwatch(self, fd: int) -> None:
        """Call before closing ``fd`` (a number reused by another file would be watched too)."""
        with self._cond:
            self.fds = tuple(f for f in self.fds if f != fd)

    def busy(self) -> None:
        """A server woke up with work: the vCPUs wait for its :meth:`served` from their next look."""
        self._busy = True

    def served(self) -> None:
        """A server handled what its descriptors had and goes back to waiting on them."""
        with self._cond:
            self._busy = False
            self._round += 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every vCPU waiting here (it was kicked: it re-checks its ``interrupted``)."""
        with self._cond:
            self._cond.notify_all()

    # --- the vCPUs' side ---------------------------------------------------------------------
    def give_turn(self, interrupted: Callable[[], bool]) -> None:
        """If a watched descriptor is readable, wait for the server's round (at most MAX_WAIT_S)."""
        fds = self.fds
        if not fds or time.monotonic() < self._quiet_until:
            return
        start = self._round  # read first: a round that ends meanwhile ends the wait
        if not self._busy:
            poller = select.poll()
            try:
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                if not any(not events & select.POLLNVAL for _, events in poller.poll(0)):
                    return
            except (OSError, ValueError):  # a descriptor closed meanwhile: the server is going away
                return
        with self._cond:
            self.turns += 1
            done = self._cond.wait_for(lambda: self._round != start or interrupted(), MAX_WAIT_S)
            if not done:
                self.timeouts += 1
                self._quiet_until = time.monotonic() + BACKOFF_S
