"""GDB remote serial protocol framing: ``$data#cc``, acks, escapes, run-length encoding, Ctrl-C.

The byte stream from gdb holds four kinds of things: packets
(``$payload#checksum``), acknowledgements (``+`` and ``-``, until no-ack mode
is negotiated) and the interrupt byte ``\\x03`` (Ctrl-C) sent while the target
runs.  :class:`PacketReader` turns bytes as they arrive into those events and
checks every checksum; :func:`frame` builds an outgoing packet.  Nothing here
knows what a packet means (that is :mod:`kvmlite.gdb.stub`).
"""

from __future__ import annotations

from dataclasses import dataclass

INTERRUPT = 0x03
#: Bytes escaped inside a packet (``#``, ``$``, ``}``, ``*``): sent as ``}`` + (byte ^ 0x20).
ESCAPED = frozenset(b"#$}*")
ESCAPE = 0x7D
RLE = 0x2A
#: The largest packet payload accepted from gdb (advertised as PacketSize).
MAX_PACKET = 0x4000


def checksum(data: bytes) -> int:
    """The protocol's checksum: the sum of the payload's bytes modulo 256."""
    return sum(data) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data for a packet (``X`` writes, ``qXfer`` replies): the special bytes escaped."""
    out = bytearray()
    for b in data:
        if b in ESCAPED:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """The inverse of :func:`escape` (for ``X`` packets' binary data)."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ESCAPE:
            nxt = next(it, None)
            if nxt is None:
                raise PacketError("binary data ends in an escape byte")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def expand_rle(data: bytes) -> bytes:
    """Undo run-length encoding (``X*n``: repeat X n-29 more times); gdb may send it in theory."""
    if RLE not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == RLE and out and i + 1 < len(data):
            out += bytes((out[-1],)) * (data[i + 1] - 29)
            i += 2
            continue
        out.append(b)
        i += 1
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """``$payload#cc``; the payload must already be escaped where it carries binary data."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


class PacketError(ValueError):
    """A packet's contents do not parse (answered with an ``E`` reply, never fatal)."""


@dataclass(frozen=True, slots=True)
class Packet:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    ok: bool  # "+" or "-"


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Ctrl-C (0x03) outside a packet."""


@dataclass(frozen=True, slots=True)
class BadPacket:
    """A packet whose checksum did not match (answered with ``-`` until no-ack mode)."""

    payload: bytes


Event = Packet | Ack | Interrupt | BadPacket


class PacketReader:
    """Incremental parser of the byte stream from gdb: ``feed(bytes)`` returns the complete events."""

    def __init__(self) -> None:
        self._payload = bytearray()
        self._digits: bytearray | None = None  # the checksum digits, once '#' was seen
        self._in_packet = False

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        for b in data:
            if not self._in_packet:
                if b == 0x24:  # '$'
                    self._in_packet = True
                    self._payload.clear()
                    self._digits = None
                elif b == 0x2B:  # '+'
                    events.append(Ack(True))
                elif b == 0x2D:  # '-'
                    events.append(Ack(False))
                elif b == INTERRUPT:
                    events.append(Interrupt())
                # anything else between packets is line noise: ignored, as gdb's own stubs do
            elif self._digits is not None:
                self._digits.append(b)
                if len(self._digits) == 2:
                    events.append(self._finish())
            elif b == 0x23:  # '#'
                self._digits = bytearray()
            else:
                self._payload.append(b)
        return events

    def _finish(self) -> Event:
        payload, digits = bytes(self._payload), bytes(self._digits or b"")
        self._in_packet = False
        self._payload.clear()
        self._digits = None
        try:
            ok = int(digits, 16) == checksum(payload)
        except ValueError:
            ok = False
        if not ok or len(payload) > MAX_PACKET:
            return BadPacket(payload)
        return Packet(payload)
