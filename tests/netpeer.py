"""A network peer for the virtio-net tests and bench: QEMU's ``-netdev stream`` framing on a UNIX socket.

It listens on a socket path, takes one connection (kvmlite ``--net stream=PATH`` or QEMU
``-netdev stream,server=off,addr.type=unix,addr.path=PATH``), answers ARP requests for
:data:`PEER_IP` with :data:`PEER_MAC`, and counts every frame it gets.  Each frame on the
socket is preceded by its length, 4 bytes big-endian.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

PEER_IP = bytes([10, 0, 2, 2])
PEER_MAC = bytes.fromhex("525500000202")
_LEN = struct.Struct(">I")


def arp_reply_to(frame: bytes, ip: bytes, mac: bytes) -> bytes | None:
    """The ARP reply ``frame`` (an ARP request for ``ip``) asks for, or None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[20:22] != b"\x00\x01" or frame[38:42] != ip:
        return None
    asker_mac, asker_ip = frame[22:28], frame[28:32]
    arp = b"\x00\x01\x08\x00\x06\x04\x00\x02" + mac + ip + asker_mac + asker_ip
    return asker_mac + mac + b"\x08\x06" + arp


class StreamPeer:
    """Serves one connection on ``path`` from a thread; ``frames`` counts what it received."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.frames = 0
        self.bytes = 0
        self.replies = 0
        self.thread = threading.Thread(target=self._serve, name="netpeer", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.server.accept()
        except OSError:
            return
        with conn:
            try:
                self._frames(conn)
            except OSError:  # the VMM went away with replies unread: a reset, not an error here
                pass

    def _frames(self, conn: socket.socket) -> None:
        inbox = bytearray()
        while data := conn.recv(1 << 20):
            inbox += data
            while len(inbox) >= 4 and len(inbox) >= 4 + (n := _LEN.unpack_from(inbox)[0]):
                frame = bytes(inbox[4 : 4 + n])
                del inbox[: 4 + n]
                self.frames += 1
                self.bytes += n
                reply = arp_reply_to(frame, PEER_IP, PEER_MAC)
                if reply is not None and self.frames <= 16:  # the bench's floods get no answers
                    conn.sendall(_LEN.pack(len(reply)) + reply)
                    self.replies += 1

    def close(self) -> None:
        self.server.close()
        self.thread.join(timeout=5)

    def __enter__(self) -> StreamPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
