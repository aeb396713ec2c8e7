"""The host side of virtio-net: ``--net tap=NAME``, ``--net user`` (passt), ``--net stream=PATH``.

Options in cloud-hypervisor's key=value style, with QEMU's names for the backends:

* ``tap=NAME[,mac=MAC]``: an existing or new TAP interface opened with
  ``IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`` (the frames carry the virtio-net header,
  so checksum and segmentation offloads pass straight through);
* ``user[,mac=MAC]``: networking without privileges through passt (Debian
  package ``passt``), which kvmlite starts on one end of a socket pair;
* ``stream=PATH[,mac=MAC]``: connect to a UNIX socket that speaks QEMU's
  ``-netdev stream`` framing (what passt speaks too): each frame preceded by
  its length, 4 bytes big-endian.

A :class:`NetHost` binds a backend to its :class:`~kvmlite.virtio.net.VirtioNet`
and the machine's I/O thread: it reads frames only while the guest has given
receive buffers (else it stops watching the descriptor and the kernel queues
or drops), holds at most one frame the guest had no room for, and a stream
backend keeps at most one partly sent frame, waiting for the socket to become
writable before the device transmits more.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmlite.errors import ConfigError
from kvmlite.virtio import net as N

if TYPE_CHECKING:
    from kvmlite.vmm.iothread import IoThread

log = logging.getLogger(__name__)

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
IFNAMSIZ = 16
TUN_DEVICE = "/dev/net/tun"
PASST = "passt"
#: Frames read from the host per I/O-thread wake-up before other descriptors get their turn.
RX_BATCH = 64
STREAM_CHUNK = 256 << 10
_LEN = struct.Struct(">I")

NET_HELP = "tap=NAME[,mac=MAC], user[,mac=MAC] or stream=PATH[,mac=MAC]"


@dataclass(frozen=True)
class NetSpec:
    """One ``--net`` option."""

    kind: str  # "tap", "user" or "stream"
    target: str  # the TAP name or the socket path ("" for user)
    mac: bytes

    @classmethod
    def parse(cls, text: str, index: int = 0) -> NetSpec:
        kind, target, mac = "", "", b""
        for option in text.split(","):
            key, eq, value = option.partition("=")
            if key in ("tap", "stream") and eq and value and not kind:
                kind, target = key, value
            elif key == "user" and not eq and not kind:
                kind = key
            elif key == "mac" and eq and not mac:
                mac = N.parse_mac(value)
            else:
                raise ConfigError(f"--net {text!r}: unexpected {option!r} (give {NET_HELP})")
        if not kind:
            raise ConfigError(f"--net {text!r}: no backend (give {NET_HELP})")
        if kind == "tap" and len(target.encode()) >= IFNAMSIZ:
            raise ConfigError(f"--net {text!r}: an interface name has at most {IFNAMSIZ - 1} bytes")
        if not mac:  # QEMU's default addresses: 52:54:00:12:34:56, then :57, ...
            mac = N.parse_mac(N.DEFAULT_MAC)[:5] + bytes([0x56 + index & 0xFF])
        return cls(kind, target, mac)


class TapBackend:
    """A TAP interface with the virtio-net header on every frame."""

    vnet_hdr = True

    def __init__(self, name: str) -> None:
        try:
            self.fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            raise ConfigError(f"--net tap={name}: cannot open {TUN_DEVICE}: {err.strerror}") from err
        try:
            features = struct.unpack("I", fcntl.ioctl(self.fd, TUNGETFEATURES, bytes(4)))[0]
            if not features & IFF_VNET_HDR:
                raise ConfigError(f"--net tap={name}: this kernel's TAP has no IFF_VNET_HDR")
            ifreq = struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(self.fd, TUNSETIFF, ifreq)
            fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", N.HDR_LEN))
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, 0)
        except OSError as err:
            os.close(self.fd)
            why = "needs CAP_NET_ADMIN or a TAP owned by this user" if err.errno == 1 else err.strerror
            raise ConfigError(f"--net tap={name}: cannot attach to the TAP: {why}") from err
        except ConfigError:
            os.close(self.fd)
            raise
        self.name = name
        self.buffer = bytearray(N.MAX_FRAME)

    def fileno(self) -> int:
        return self.fd

    def transmit(self, parts: list[memoryview]) -> bool:
        try:
            os.writev(self.fd, parts)
        except OSError as err:  # the kernel refused it (bad GSO header, link down): dropped, as by a NIC
            log.debug("tap %s: a frame was dropped: %s", self.name, err)
        return True

    def set_offloads(self, guest_features: int) -> None:
        flags = 0
        if guest_features & N.VIRTIO_NET_F_GUEST_CSUM:
            flags |= TUN_F_CSUM
            if guest_features & N.VIRTIO_NET_F_GUEST_TSO4:
                flags |= TUN_F_TSO4
            if guest_features & N.VIRTIO_NET_F_GUEST_TSO6:
                flags |= TUN_F_TSO6
            if guest_features & N.VIRTIO_NET_F_GUEST_ECN and flags & (TUN_F_TSO4 | TUN_F_TSO6):
                flags |= TUN_F_TSO_ECN
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as err:
            log.warning("tap %s: cannot set offloads %#x: %s", self.name, flags, err.strerror)

    closed = False

    def pull(self) -> bool:
        """Frames are read one at a time by read_frame()."""
        return False

    def read_frame(self) -> memoryview | None:
        try:
            n = os.readv(self.fd, [self.buffer])
        except (BlockingIOError, InterruptedError):
            return None
        return memoryview(self.buffer)[:n]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StreamBackend:
    """Frames over a stream socket, each after its 4-byte big-endian length (QEMU's ``-netdev stream``)."""

    vnet_hdr = False

    def __init__(self, sock: socket.socket, what: str) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.what = what
        self.inbox = bytearray()
        self.unsent = b""  # the rest of a frame the socket did not take at once
        #: Set by NetHost: the socket is full (True: wait until writable) or drained again (False).
        self.on_blocked: Callable[[bool], None] = lambda blocked: None
        self.closed = False

    @classmethod
    def connect(cls, path: str) -> StreamBackend:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
        except OSError as err:
            sock.close()
            raise ConfigError(f"--net stream={path}: cannot connect: {err.strerror}") from err
        return cls(sock, path)

    def fileno(self) -> int:
        return self.sock.fileno()

    def transmit(self, parts: list[memoryview]) -> bool:
        if self.unsent or self.closed:
            return self.closed  # a closed peer: frames are dropped; a full socket: wait
        length = sum(len(p) for p in parts)
        try:
            sent = self.sock.sendmsg([_LEN.pack(length), *parts])
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as err:
            self._closed(err.strerror or str(err))
            return True
        if sent < length + _LEN.size:
            self.unsent = (_LEN.pack(length) + b"".join(parts))[sent:]
            self.on_blocked(True)
        return True

    def flush(self) -> bool:
        """Send what the socket did not take; True when nothing is left."""
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            self._closed(err.strerror or str(err))
            sent = len(self.unsent)
        self.unsent = self.unsent[sent:]
        return not self.unsent

    def set_offloads(self, guest_features: int) -> None:
        """No offloads are offered over a frame socket."""

    def pull(self) -> bool:
        """Read what the socket has (at most one chunk); False when nothing came."""
        if self.closed:
            return False
        try:
            data = self.sock.recv(STREAM_CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:
            self._closed(err.strerror or str(err))
            return False
        if not data:
            self._closed("the peer closed the connection")
            return False
        self.inbox += data
        return True

    def read_frame(self) -> memoryview | None:
        """The next whole frame already read, if any."""
        if len(self.inbox) < _LEN.size:
            return None
        (length,) = _LEN.unpack_from(self.inbox)
        if length > N.MAX_FRAME:
            self._closed(f"a frame of {length} bytes: not the stream format")
            return None
        if len(self.inbox) < _LEN.size + length:
            return None
        frame = memoryview(bytes(self.inbox[_LEN.size : _LEN.size + length]))
        del self.inbox[: _LEN.size + length]
        return frame

    def _closed(self, why: str) -> None:
        if not self.closed:
            log.warning("net %s: %s; the link is down", self.what, why)
        self.closed = True
        self.inbox.clear()
        self.unsent = b""

    def close(self) -> None:
        self.sock.close()


class PasstBackend(StreamBackend):
    """passt started by kvmlite on one end of a socket pair (``passt --fd``), frames on the other."""

    def __init__(self) -> None:
        passt = shutil.which(PASST)
        if passt is None:
            raise ConfigError("--net user needs passt, which is not installed (Debian package passt)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [passt, "--foreground", "--one-off", "--quiet", "--fd", str(theirs.fileno())]
        # passt's own messages (even with --quiet: dropping root, no syslog) go to the log, not the console
        self.messages = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(
                cmd, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=self.messages,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        except OSError as err:
            ours.close()
            self.messages.close()
            raise ConfigError(f"--net user: cannot start {passt}: {err.strerror}") from err
        finally:
            theirs.close()
        super().__init__(ours, "user (passt)")

    def _closed(self, why: str) -> None:
        if not self.closed and self.process.poll() is not None:
            why = f"passt exited with status {self.process.returncode}: {self._messages() or why}"
        super()._closed(why)

    def _messages(self) -> str:
        self.messages.seek(0)
        return " ".join(self.messages.read(4096).decode(errors="replace").split())

    def close(self) -> None:
        super().close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        log.debug("passt said: %s", self._messages())
        self.messages.close()


def open_backend(spec: NetSpec) -> TapBackend | StreamBackend:
    if spec.kind == "tap":
        return TapBackend(spec.target)
    if spec.kind == "stream":
        return StreamBackend.connect(spec.target)
    return PasstBackend()


class NetHost:
    """Moves frames between a backend and a VirtioNet from the machine's I/O thread."""

    def __init__(self, backend: TapBackend | StreamBackend, iothread: IoThread) -> None:
        self.backend = backend
        self.iothread = iothread
        self.device: N.VirtioNet | None = None
        self.held: memoryview | None = None  # a frame the guest had no room for yet
        self.reading = False
        self._write_fd = -1
        if isinstance(backend, StreamBackend):
            backend.on_blocked = self._blocked

    def bind(self, device: N.VirtioNet) -> None:
        self.device = device
        device.on_rx_space = self.resume
        self.resume()

    def resume(self) -> None:
        """Read from the host again (the guest gave receive buffers)."""
        if not self.reading:
            self.reading = True
            self.iothread.watch(self.backend.fileno(), self._readable)
            self._readable()  # a held frame, or frames a stream already read, wait for no new data

    def _pause(self) -> None:
        if self.reading:
            self.reading = False
            self.iothread.unwatch(self.backend.fileno())

    def _readable(self) -> None:
        self._deliver()  # the held frame, what a stream already read, or a batch from a TAP
        if self.reading and self.backend.pull():
            self._deliver()
        if self.backend.closed:
            self._pause()

    def _deliver(self) -> None:
        """Frames to the guest while it has room: a batch from a TAP (epoll calls again while more wait),
        everything a stream already read (bounded by one read; its socket may not wake us again)."""
        device = self.device
        assert device is not None
        limit = RX_BATCH if isinstance(self.backend, TapBackend) else None
        count = 0
        while limit is None or count < limit:
            count += 1
            frame = self.held if self.held is not None else self.backend.read_frame()
            if frame is None:
                return
            if not device.receive(frame):
                self.held = memoryview(bytes(frame)) if self.held is None else self.held
                self._pause()
                return
            self.held = None

    # --- a stream socket that is full -----------------------------------------------------------------
    def _blocked(self, blocked: bool) -> None:
        if blocked and self._write_fd < 0:
            self._write_fd = os.dup(self.backend.fileno())  # its own registration, for writability
            self.iothread.watch(self._write_fd, self._writable, writable=True)

    def _writable(self) -> None:
        backend = self.backend
        assert isinstance(backend, StreamBackend) and self.device is not None
        if backend.flush():
            self.iothread.unwatch(self._write_fd)
            os.close(self._write_fd)
            self._write_fd = -1
            self.device.resume_tx()

    def close(self) -> None:
        """After the I/O thread closed (Machine.close): only the descriptors are left to close."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        self.backend.close()
