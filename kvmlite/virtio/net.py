"""virtio-net (virtio 1.2, 5.1): one receive and one transmit queue over a thin host backend.

Every frame in either direction starts with the 12-byte ``virtio_net_hdr``
(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers:
with VIRTIO_F_VERSION_1 the ``num_buffers`` field is always there).

The host side (:mod:`kvmlite.vmm.netdev`: a TAP device, a QEMU ``-netdev
stream`` socket, passt) is reached through a :class:`NetBackend`:

* transmit: each chain on the transmitq (device-readable only) is handed to
  :meth:`NetBackend.transmit` as memoryviews of guest RAM (a TAP takes them
  with one ``writev``, header included, no copy).  A backend that cannot take
  a frame now returns False; the chain waits in the ring, transmission stops,
  and the backend calls :meth:`VirtioNet.resume_tx` once it can take more.
* receive: the host wrapper calls :meth:`VirtioNet.receive` with one frame
  (header included) while :meth:`VirtioNet.rx_room` says the guest has given
  buffers; when it has none the wrapper stops reading its descriptor (the
  kernel's socket or TAP queue holds, or drops, what comes meanwhile) and
  :attr:`on_rx_space` tells it when the driver added buffers: no busy loop,
  no host-side queue beyond the one frame a wrapper may hold.

With VIRTIO_NET_F_MRG_RXBUF a frame larger than one receive chain spreads
over several and ``num_buffers`` says how many; without it a frame larger
than the chain it lands in is dropped (counted, warned once), as the
specification has the device do.  The receive chains are popped from the
ring and held until a frame fills them, so a frame never waits on a
half-taken chain.

Offloads are offered only where the backend passes the header through (a TAP
with IFF_VNET_HDR): checksum offload both ways and TSO4/TSO6/ECN both ways;
the TAP is told which the driver accepted (``TUNSETOFFLOAD``) when it sets
DRIVER_OK.  Over a plain frame socket no offload is offered, and the device
adds and strips a zero header.

Errors: a receive chain with a device-readable buffer or a transmit chain with
a device-writable one marks the device NEEDS_RESET (a malformed queue); a
transmit chain shorter than the header, or a frame larger than
:data:`MAX_FRAME`, fails that one request (returned unsent, warned once).
"""

from __future__ import annotations

import collections
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kvmlite.devices.base import DeviceState, checked_state
from kvmlite.errors import ConfigError, DeviceError
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio.device import COMMON_FEATURES, STATUS_DRIVER_OK, STATUS_NEEDS_RESET, VirtioDevice
from kvmlite.virtio.queue import (
    Buffer,
    Chain,
    QueueError,
    Virtqueue,
    chain_from_record,
    chain_record,
    write_buffers,
)

log = logging.getLogger(__name__)

VIRTIO_ID_NET = 1
QUEUE_SIZE = 256  # QEMU's rx_queue_size and tx_queue_size
RECEIVEQ, TRANSMITQ = 0, 1

# --- feature bits (5.1.3) ----------------------------------------------------------------------
VIRTIO_NET_F_CSUM = 1 << 0
VIRTIO_NET_F_GUEST_CSUM = 1 << 1
VIRTIO_NET_F_MAC = 1 << 5
VIRTIO_NET_F_GUEST_TSO4 = 1 << 7
VIRTIO_NET_F_GUEST_TSO6 = 1 << 8
VIRTIO_NET_F_GUEST_ECN = 1 << 9
VIRTIO_NET_F_HOST_TSO4 = 1 << 11
VIRTIO_NET_F_HOST_TSO6 = 1 << 12
VIRTIO_NET_F_HOST_ECN = 1 << 13
VIRTIO_NET_F_MRG_RXBUF = 1 << 15
VIRTIO_NET_F_STATUS = 1 << 16
#: What a backend passing the virtio-net header through (TAP with IFF_VNET_HDR) lets the device offer.
OFFLOAD_FEATURES = (
    VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_ECN
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_ECN
)
#: The guest-side offloads a TAP must be told about (what it may send the guest).
GUEST_OFFLOADS = (
    VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_ECN
)

VIRTIO_NET_S_LINK_UP = 1
HDR_LEN = 12  # struct virtio_net_hdr with num_buffers (VERSION_1)
_NUM_BUFFERS = 10  # offset of num_buffers in the header
#: The largest frame either way: 64 KiB of GSO payload behind an Ethernet header with a VLAN tag, plus the
#: virtio-net header.
MAX_FRAME = HDR_LEN + 18 + 65536
ZERO_HDR = bytes(HDR_LEN)
# mac[6], status
_CONFIG = struct.Struct("<6sH")
DEFAULT_MAC = "52:54:00:12:34:56"  # QEMU's first NIC
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def parse_mac(text: str) -> bytes:
    """``52:54:00:12:34:56`` as 6 bytes; a ConfigError for anything else or a multicast address."""
    if not _MAC.match(text):
        raise ConfigError(f"MAC address {text!r}: give six hex bytes as 52:54:00:12:34:56")
    mac = bytes(int(b, 16) for b in text.split(":"))
    if mac[0] & 1:
        raise ConfigError(f"MAC address {text!r} is a multicast address (bit 0 of its first byte is set)")
    return mac


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class NetBackend(Protocol):
    """The host side of one NIC, as the device sees it (implemented in :mod:`kvmlite.vmm.netdev`)."""

    #: Whether frames carry the 12-byte virtio-net header on the host side (TAP with IFF_VNET_HDR).
    vnet_hdr: bool

    def transmit(self, parts: list[memoryview]) -> bool:
        """Send one frame made of ``parts``; False: cannot take it now (call resume_tx later)."""
        ...

    def set_offloads(self, guest_features: int) -> None:
        """The driver accepted these GUEST_* offloads: the host may hand it such frames."""
        ...


@dataclass
class VirtioNetState(DeviceState):
    """The NIC's MAC (a restore onto another is refused) and the receive chains it holds.

    Frames the host had not delivered yet are the network's, not the guest's: not saved.
    A transmit chain the backend could not take stayed in the ring and is sent after a restore.
    """

    mac: bytes = b""
    rx_chains: list[Any] = field(default_factory=list)


class VirtioNet(VirtioDevice):
    device_id = VIRTIO_ID_NET
    pci_class = 0x020000  # network, Ethernet: what QEMU's virtio-net-pci shows

    def __init__(self, memory: GuestMemory, mac: bytes, backend: NetBackend, name: str = "") -> None:
        features = COMMON_FEATURES | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_MRG_RXBUF
        if backend.vnet_hdr:
            features |= OFFLOAD_FEATURES
        super().__init__(memory, features, [QUEUE_SIZE, QUEUE_SIZE], name or "virtio-net")
        self.mac = mac
        self.backend = backend
        #: Called when the driver added receive buffers (the host wrapper resumes reading).
        self.on_rx_space: Callable[[], None] = lambda: None
        self.rx_chains: collections.deque[Chain] = collections.deque()
        self.tx_blocked = False
        self.dropped = 0

    def config_bytes(self) -> bytes:
        return _CONFIG.pack(self.mac, VIRTIO_NET_S_LINK_UP)

    def activate(self) -> None:
        self.backend.set_offloads(self.driver_features & GUEST_OFFLOADS)

    def device_reset(self) -> None:
        self.rx_chains.clear()
        self.tx_blocked = False

    def device_state(self) -> VirtioNetState:
        return VirtioNetState(mac=bytes(self.mac), rx_chains=[chain_record(c) for c in self.rx_chains])

    def load_device_state(self, state: DeviceState | None) -> None:
        st = checked_state(state, VirtioNetState, self.name)
        if bytes(st.mac) != bytes(self.mac):
            saved, here = format_mac(bytes(st.mac)), format_mac(bytes(self.mac))
            raise DeviceError(f"{self.name}: the snapshot's NIC had MAC {saved}, this one has {here}")
        self.rx_chains = collections.deque(chain_from_record(r, self.memory) for r in st.rx_chains)
        self.tx_blocked = False
        if self.status & STATUS_DRIVER_OK:
            self.backend.set_offloads(self.driver_features & GUEST_OFFLOADS)
        if self.rx_chains:
            self.on_rx_space()

    def format_stats(self) -> list[str]:
        lines = super().format_stats()
        return lines + ([f"{self.name}: {self.dropped} frames dropped"] if self.dropped else [])

    @property
    def _mergeable(self) -> bool:
        return bool(self.driver_features & VIRTIO_NET_F_MRG_RXBUF)

    # --- queues ---------------------------------------------------------------------------------------
    def process_queue(self, index: int, queue: Virtqueue) -> None:
        if index == RECEIVEQ:
            if self._take_rx_chains(queue):
                self.on_rx_space()
            return
        self._transmit(queue)

    def _take_rx_chains(self, queue: Virtqueue) -> bool:
        took = False
        while (chain := queue.pop(self.memory)) is not None:
            if chain.readable or chain.writable_len < HDR_LEN:
                what = "a receive buffer must be device-writable, 12 bytes or more"
                raise QueueError(f"chain {chain.head}: {what}")
            self.rx_chains.append(chain)
            took = True
        return took

    def _transmit(self, queue: Virtqueue) -> None:
        sent = False
        while not self.tx_blocked:
            head = queue.last_avail
            chain = queue.pop(self.memory)
            if chain is None:
                break
            if chain.writable:
                raise QueueError(f"chain {chain.head}: a transmit buffer must be device-readable only")
            length = chain.readable_len
            if not HDR_LEN <= length <= MAX_FRAME:
                self._drop(f"a transmitted frame of {length} bytes (header included) was dropped")
            elif not self.backend.transmit(self._views(chain.readable)):
                queue.last_avail = head  # not taken: it stays in the ring until the backend can
                self.tx_blocked = True
                break
            self.push_used(TRANSMITQ, chain, 0)
            sent = True
        if sent:
            self.signal_used(TRANSMITQ)

    def _views(self, buffers: list[Buffer]) -> list[memoryview]:
        views = [v for b in buffers for v in self.memory.views(b.addr, b.length)]
        if self.backend.vnet_hdr:
            return views
        return _skip(views, HDR_LEN)

    def resume_tx(self) -> None:
        """The backend can take frames again: send what waited in the ring."""
        if self.tx_blocked:
            self.tx_blocked = False
            self.notify(TRANSMITQ)

    # --- receive, driven by the host wrapper -------------------------------------------------------
    def rx_room(self) -> bool:
        """Whether the driver has given receive buffers (takes any it made available since)."""
        if not self.rx_chains and self._live(RECEIVEQ):
            try:
                self._take_rx_chains(self.queues[RECEIVEQ])
            except QueueError as err:
                self.needs_reset(f"queue {RECEIVEQ}: {err}")
        return bool(self.rx_chains) and self._live(RECEIVEQ)

    def receive(self, frame: bytes | bytearray | memoryview) -> bool:
        """Deliver one frame (with its virtio-net header when the backend has one).

        True when it was delivered or dropped; False when it needs more receive
        buffers than the driver has given (the caller keeps it and retries after
        :attr:`on_rx_space`).
        """
        data = bytearray(ZERO_HDR) + frame if not self.backend.vnet_hdr else bytearray(frame)
        if not HDR_LEN <= len(data) <= MAX_FRAME:
            self._drop(f"a received frame of {len(data)} bytes (header included) was dropped")
            return True
        if not self.rx_room():
            return False
        chains = self._chains_for(len(data))
        if chains is None:
            return False
        if not chains:  # more than every buffer the ring can hold
            chain = self.rx_chains.popleft()
            self.push_used(RECEIVEQ, chain, 0)
            self.signal_used(RECEIVEQ)
            self._drop(f"a received frame of {len(data)} bytes did not fit the driver's buffers; dropped")
            return True
        data[_NUM_BUFFERS : _NUM_BUFFERS + 2] = chains.to_bytes(2, "little")  # 1 without MRG_RXBUF (5.1.6.4)
        view = memoryview(data)
        done = 0
        for _ in range(chains):
            chain = self.rx_chains.popleft()
            written = write_buffers(self.memory, chain.writable, view[done:])
            done += written
            self.push_used(RECEIVEQ, chain, written)
        self.signal_used(RECEIVEQ)
        return True

    def _chains_for(self, length: int) -> int | None:
        """How many held receive chains ``length`` bytes take; None: wait for more; 0: it never fits."""
        if not self._mergeable:
            return 1 if self.rx_chains[0].writable_len >= length else 0
        while True:
            room = 0
            for count, chain in enumerate(self.rx_chains, 1):
                room += chain.writable_len
                if room >= length:
                    return count
            if len(self.rx_chains) >= self.queues[RECEIVEQ].size:
                return 0
            try:
                if not self._take_rx_chains(self.queues[RECEIVEQ]):
                    return None
            except QueueError as err:
                self.needs_reset(f"queue {RECEIVEQ}: {err}")
                return None

    def _live(self, index: int) -> bool:
        live = self.status & STATUS_DRIVER_OK and not self.status & STATUS_NEEDS_RESET
        return bool(live) and self.queues[index].ready

    def _drop(self, what: str) -> None:
        self.dropped += 1
        self._warn(what)


def _skip(views: list[memoryview], n: int) -> list[memoryview]:
    """``views`` without their first ``n`` bytes."""
    out: list[memoryview] = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:])
        n = 0
    return out
