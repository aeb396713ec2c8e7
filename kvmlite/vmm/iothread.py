"""One I/O thread per VM: an epoll loop over eventfds that devices are notified through.

With KVM, a virtqueue notification is a guest write that KVM turns into an
eventfd signal (KVM_IOEVENTFD) without leaving the kernel: the vCPU goes on
running and this thread, woken by epoll, runs the device.  Callbacks run with
the machine's device lock held, the same lock every bus access takes, so a
device never sees a register access and a queue run at once.

``watch(fd, callback)`` adds a file descriptor (the callback runs when it is
readable, or writable if asked); the thread starts with the machine and stops with it.  Nothing
here knows about virtio.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from collections.abc import Callable

from kvmlite.vmm import seccomp

log = logging.getLogger(__name__)


class IoThread:
    """An epoll loop calling each watched descriptor's callback under ``lock``."""

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self._selector = selectors.DefaultSelector()
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False

    def watch(self, fd: int, callback: Callable[[], None], writable: bool = False) -> None:
        """Call ``callback`` whenever ``fd`` is readable (``writable``: can take more data)."""
        self._selector.register(fd, selectors.EVENT_WRITE if writable else selectors.EVENT_READ, callback)
        self._poke()

    def unwatch(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except KeyError:
            return
        self._poke()

    @property
    def watching(self) -> int:
        return len(self._selector.get_map()) - 1

    def start(self) -> None:
        if self._thread is None and self.watching:
            self._thread = seccomp.thread("io", self._run, "io")
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._selector.close()
        os.close(self._wake)

    def _poke(self) -> None:
        os.eventfd_write(self._wake, 1)

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if key.data is None:
                    _drain(self._wake)
                    continue
                with self.lock:
                    try:
                        key.data()
                    except Exception:  # a device bug must not take the other devices down with it
                        log.exception("I/O thread: a device callback failed")


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass
