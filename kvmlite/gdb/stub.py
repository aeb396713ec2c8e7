"""The GDB remote protocol's command dispatcher, kept apart from the target it drives.

:class:`GdbStub` takes one packet payload at a time and answers with the
reply payload, or with :data:`RESUMED` when the command set the target
running (the stop reply follows later, from :meth:`GdbStub.stop_reply`).
Framing, acks and sockets are elsewhere (:mod:`kvmlite.gdb.packets`,
:mod:`kvmlite.gdb.server`); the machine is behind :class:`~kvmlite.gdb.target.Target`.

Threads are vCPUs: gdb's thread id is the vCPU's index plus one.  Packets
handled: ``qSupported`` (with ``PacketSize``, ``qXfer:features:read+``,
``swbreak+``, ``hwbreak+``, ``vContSupported+``, ``QStartNoAckMode+``),
``qXfer:features:read:target.xml``, ``?``, ``g/G``, ``p/P``, ``m/M/X``,
``c/s``, ``vCont`` (``c``, ``s``, ``t``), ``Z0-Z4``/``z0-z4``, ``H``,
``T``, ``qfThreadInfo``/``qsThreadInfo``, ``qC``, ``qThreadExtraInfo``,
``qAttached``, ``qRcmd``, ``D`` and ``k``.  Anything else gets the empty
reply, which tells gdb the packet is not supported.  A malformed packet gets
``E22`` (EINVAL) and the session goes on.
"""

from __future__ import annotations

import logging
from typing import Final

from kvmlite.gdb import registers as R
from kvmlite.gdb.packets import MAX_PACKET, PacketError, escape, unescape
from kvmlite.gdb.target import BreakKind, StopEvent, Target, TargetError

log = logging.getLogger(__name__)

#: Returned by :meth:`GdbStub.handle` when the target now runs: no reply until it stops.
RESUMED: Final = object()
#: Returned after ``k`` (and after ``D``'s ``OK``): the session is over.
CLOSE: Final = object()

EINVAL = 22
SUPPORTED = (
    f"PacketSize={MAX_PACKET:x};qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+"
)


def _hex(text: str) -> bytes:
    return text.encode().hex().encode()


def _decode(layout: tuple[R.Reg, ...], data: bytes) -> dict[str, int]:
    """Register values from a ``G`` or ``P`` packet; anything but hex (or ``xx``) is a bad packet."""
    try:
        return R.decode(layout, data)
    except (ValueError, UnicodeDecodeError):
        raise PacketError("register data is not hex") from None


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _int(field: bytes) -> int:
    """A field of hex digits (``int(x, 16)`` alone also takes a sign, blanks and underscores)."""
    if not field or not _HEX_DIGITS.issuperset(field):
        raise PacketError(f"{field!r} is not a hex number")
    return int(field, 16)


class GdbStub:
    """One gdb session's protocol state over a :class:`Target`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.no_ack = False
        self.running = False
        self.detached = False
        self.g_cpu = 0  # the vCPU of g/p/m (Hg)
        self.c_cpu: int | None = None  # the vCPU of c/s (Hc); None: any
        self.last_stop = StopEvent(0)
        self.layout = R.LAYOUTS[target.arch()]

    # --- entry points --------------------------------------------------------------
    def handle(self, payload: bytes) -> bytes | object:
        """The reply to one packet (bytes), :data:`RESUMED` or :data:`CLOSE`."""
        try:
            return self._dispatch(payload)
        except PacketError as err:
            log.info("gdb: bad packet %r: %s", payload[:40], err)
            return b"E%02x" % EINVAL
        except TargetError as err:
            log.debug("gdb: %r: %s", payload[:40], err)
            return b"E%02x" % (err.errno & 0xFF)

    def stop_reply(self, event: StopEvent) -> bytes:
        """The ``T``/``W`` packet for a stop, remembered for ``?``."""
        self.running = False
        if event.exit_status is not None:
            return b"W%02x" % (event.exit_status & 0xFF)
        self.last_stop = event
        self.g_cpu = event.cpu
        reply = b"T%02xthread:%x;" % (event.signal, event.cpu + 1)
        if event.reason in ("watch", "rwatch", "awatch"):
            reply += b"%s:%x;" % (event.reason.encode(), event.addr)
        elif event.reason in ("swbreak", "hwbreak"):
            reply += event.reason.encode() + b":;"
        return reply

    # --- dispatch ----------------------------------------------------------------------
    def _dispatch(self, p: bytes) -> bytes | object:
        if not p:
            return b""
        cmd = p[:1]
        if cmd == b"?":
            return self.stop_reply(self.last_stop)
        if cmd == b"g":
            return R.encode(self.layout, self.target.read_registers(self.g_cpu))
        if cmd == b"G":
            self.target.write_registers(self.g_cpu, _decode(self.layout, p[1:]))
            return b"OK"
        if cmd == b"p":
            return self._read_register(_int(p[1:]))
        if cmd == b"P":
            return self._write_register(p[1:])
        if cmd == b"m":
            addr, length = self._addr_len(p[1:])
            return self.target.read_memory(self.g_cpu, addr, length).hex().encode()
        if cmd in (b"M", b"X"):
            return self._write_memory(p)
        if cmd in (b"c", b"s"):
            return self._resume({self._resume_cpu(): cmd.decode()})
        if cmd == b"H":
            return self._set_thread(p[1:2], p[2:])
        if cmd == b"T":
            return b"OK" if self._cpu_of(p[1:]) in self.target.cpus() else b"E01"
        if cmd in (b"Z", b"z"):
            return self._breakpoint(cmd == b"Z", p[1:])
        if cmd == b"D":
            self.target.detach()
            self.detached = True
            return b"OK"
        if cmd == b"k":
            self.target.kill()
            return CLOSE
        if cmd == b"v":
            return self._v_packet(p)
        if cmd == b"q":
            return self._query(p)
        if p == b"QStartNoAckMode":
            self.no_ack = True
            return b"OK"
        return b""

    def _read_register(self, regnum: int) -> bytes:
        if regnum >= len(self.layout):
            return b"E%02x" % EINVAL
        reg = self.layout[regnum]
        return R.encode((reg,), self.target.read_registers(self.g_cpu))

    def _write_register(self, body: bytes) -> bytes:
        num, sep, value = body.partition(b"=")
        if not sep:
            raise PacketError("P without '='")
        regnum = _int(num)
        if regnum >= len(self.layout):
            return b"E%02x" % EINVAL
        self.target.write_registers(self.g_cpu, _decode((self.layout[regnum],), value))
        return b"OK"

    @staticmethod
    def _addr_len(body: bytes) -> tuple[int, int]:
        addr, sep, length = body.partition(b",")
        if not sep:
            raise PacketError("expected ADDR,LENGTH")
        return _int(addr), _int(length)

    def _write_memory(self, p: bytes) -> bytes:
        head, sep, data = p[1:].partition(b":")
        if not sep:
            raise PacketError("expected ADDR,LENGTH:DATA")
        addr, length = self._addr_len(head)
        if p[:1] == b"M":
            try:
                raw = bytes.fromhex(data.decode())
            except ValueError:
                raise PacketError("M data is not hex") from None
        else:
            raw = unescape(data)
        if len(raw) != length:
            raise PacketError(f"{length} bytes announced, {len(raw)} sent")
        if raw:
            self.target.write_memory(self.g_cpu, addr, raw)
        return b"OK"

    # --- threads ---------------------------------------------------------------------------
    def _cpu_of(self, tid: bytes) -> int:
        """gdb's thread id (hex, from 1) to a vCPU index; -1 for "all", and 0 ("any") to the current one."""
        value = _int(tid) if tid != b"-1" else -1
        if value == -1:
            return -1
        return self.g_cpu if value == 0 else value - 1

    def _set_thread(self, op: bytes, tid: bytes) -> bytes:
        cpu = self._cpu_of(tid)
        if cpu != -1 and cpu not in self.target.cpus():
            return b"E01"
        if op == b"g":
            self.g_cpu = self.g_cpu if cpu == -1 else cpu
        elif op == b"c":
            self.c_cpu = None if cpu == -1 else cpu
        else:
            raise PacketError(f"H{op!r}")
        return b"OK"

    def _resume_cpu(self) -> int:
        return self.last_stop.cpu if self.c_cpu is None else self.c_cpu

    # --- run control -------------------------------------------------------------------------
    def _resume(self, actions: dict[int, str]) -> object:
        """Resume; a step steps only its vCPUs (the others stay stopped, so the step is what gdb sees)."""
        steps = {cpu: a for cpu, a in actions.items() if a == "s"}
        self.target.resume(steps or actions)
        self.running = True
        return RESUMED

    def _v_packet(self, p: bytes) -> bytes | object:
        if p == b"vCont?":
            return b"vCont;c;C;s;S;t"
        if p.startswith(b"vCont;"):
            return self._vcont(p[6:])
        if p.startswith(b"vKill"):
            self.target.kill()
            return CLOSE
        return b""

    def _vcont(self, body: bytes) -> bytes | object:
        cpus = self.target.cpus()
        actions: dict[int, str] = {}
        for item in body.split(b";"):
            action, _, tid = item.partition(b":")
            # C/S carry a signal gdb wants delivered: ignored here (latin-1: any byte, then refused below)
            kind = action[:1].lower().decode("latin-1")
            if kind not in ("c", "s", "t"):
                raise PacketError(f"vCont action {action!r}")
            targets = cpus if not tid or tid == b"-1" else [self._cpu_of(tid)]
            for cpu in targets:
                if cpu not in cpus:
                    raise PacketError(f"no thread {tid!r}")
                actions.setdefault(cpu, kind)  # the leftmost action that applies to a thread wins
        actions = {cpu: a for cpu, a in actions.items() if a != "t"}
        if not actions:
            return b"OK"
        return self._resume(actions)

    # --- breakpoints ---------------------------------------------------------------------------
    def _breakpoint(self, insert: bool, body: bytes) -> bytes:
        fields = body.split(b";")[0].split(b",")
        if len(fields) != 3:
            raise PacketError("expected TYPE,ADDR,KIND")
        try:
            kind = BreakKind(_int(fields[0]))
        except ValueError:
            return b""
        addr, length = _int(fields[1]), _int(fields[2])
        if insert:
            self.target.add_breakpoint(kind, addr, length)
        else:
            self.target.remove_breakpoint(kind, addr, length)
        return b"OK"

    # --- queries -------------------------------------------------------------------------------
    def _query(self, p: bytes) -> bytes:
        name, _, args = p.partition(b":")
        if name == b"qSupported":
            return SUPPORTED.encode()
        if name == b"qXfer" and args.startswith(b"features:read:"):
            return self._xfer_features(args[len(b"features:read:") :])
        if p == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (c + 1) for c in self.target.cpus())
        if p == b"qsThreadInfo":
            return b"l"
        if p == b"qC":
            return b"QC%x" % (self.g_cpu + 1)
        if p == b"qAttached":
            return b"1"
        if p.startswith(b"qThreadExtraInfo,"):
            cpu = self._cpu_of(p.split(b",", 1)[1])
            return _hex(f"vCPU {cpu}")
        if p.startswith(b"qRcmd,"):
            try:
                command = bytes.fromhex(p[6:].decode()).decode(errors="replace")
            except ValueError:
                raise PacketError("qRcmd is not hex") from None
            out = self.target.monitor(command.strip())
            return _hex(out if out.endswith("\n") or not out else out + "\n") if out else b"OK"
        return b""

    def _xfer_features(self, args: bytes) -> bytes:
        annex, _, span = args.partition(b":")
        if annex != b"target.xml":
            return b"E00"
        offset, length = self._addr_len(span)
        doc = R.target_xml(self.target.arch()).encode()
        chunk = doc[offset : offset + length]
        return (b"l" if offset + length >= len(doc) else b"m") + escape(chunk)
