"""virtio-net: the device alone, its host backends, and the bare-metal guest under kvmlite and QEMU.

The guest (guests/virtio/vnet.c) sends ARP requests for 10.0.2.2 and prints the replies.  Three
peers answer without any host network configuration:

* a Python peer on a UNIX socket speaking QEMU's ``-netdev stream`` framing (kvmlite
  ``--net stream=PATH``, QEMU ``-netdev stream``): identical output from both VMMs;
* the kernel, through a TAP interface in a network namespace the test creates with ``unshare``
  (root only; nothing of the host's own network is touched);
* passt (``--net user``), where it is installed.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.errors import ConfigError
from kvmlite.memory.guest import GuestMemory
from kvmlite.virtio import net as N
from kvmlite.virtio import pci as P
from kvmlite.virtio.device import STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1
from kvmlite.virtio.queue import VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from kvmlite.vmm import netdev as D
from kvmlite.vmm.iothread import IoThread
from tests.guest_expectations import debug_exit_status
from tests.netpeer import PEER_MAC, StreamPeer
from tests.virtio_runs import QEMU, build, kvmlite_run, qemu_run, requires_qemu, skip_without_kvm

RINGS = {N.RECEIVEQ: (0x1000, 0x2000, 0x3000), N.TRANSMITQ: (0x5000, 0x6000, 0x7000)}
QSIZE = 8
BUF = 0x10000
WRITE, NEXT = VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_NEXT
ARP_REQUEST = (
    b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x08\x06"
    + bytes.fromhex("0001080006040001525400123456") + bytes([10, 0, 2, 15]) + bytes(6) + bytes([10, 0, 2, 2])
)  # fmt: skip


class FakeBackend:
    """What the device hands the host: frames (as bytes) and the offloads it was told about."""

    def __init__(self, vnet_hdr: bool = False, busy: bool = False) -> None:
        self.vnet_hdr = vnet_hdr
        self.busy = busy
        self.sent: list[bytes] = []
        self.offloads = -1

    def transmit(self, parts: list[memoryview]) -> bool:
        if self.busy:
            return False
        self.sent.append(b"".join(bytes(p) for p in parts))
        return True

    def set_offloads(self, guest_features: int) -> None:
        self.offloads = guest_features


def nic(backend: FakeBackend | None = None, features: int = 0) -> tuple[N.VirtioNet, GuestMemory, list[int]]:
    memory = GuestMemory([(0, 1 << 20)])
    interrupts: list[int] = []
    dev = N.VirtioNet(memory, bytes.fromhex("525400123456"), backend or FakeBackend())
    dev.interrupt_queue = interrupts.append
    dev.driver_features = VIRTIO_F_VERSION_1 | features
    for index, (desc, avail, used) in RINGS.items():
        q = dev.queues[index]
        q.size, q.desc_addr, q.avail_addr, q.used_addr, q.ready = QSIZE, desc, avail, used, True
    dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    return dev, memory, interrupts


def offer(memory: GuestMemory, queue: int, descs: list[tuple[int, int, int]], slot: int = 0) -> None:
    """Make the chain of (addr, len, flags) descriptors starting at ``slot`` available."""
    desc, avail, _ = RINGS[queue]
    for i, (addr, length, flags) in enumerate(descs):
        nxt = slot + i + 1 if i + 1 < len(descs) else 0
        memory.write(
            desc + 16 * (slot + i), struct.pack("<QIHH", addr, length, flags | (NEXT if nxt else 0), nxt)
        )
    idx = memory.read_u16(avail + 2)
    memory.write_u16(avail + 4 + 2 * (idx % QSIZE), slot)
    memory.write_u16(avail + 2, idx + 1)


def used(memory: GuestMemory, queue: int) -> list[tuple[int, int]]:
    base = RINGS[queue][2]
    return [
        struct.unpack_from("<II", memory.read(base + 4 + 8 * i, 8)) for i in range(memory.read_u16(base + 2))
    ]


# --- the device ---
def test_config_space_holds_the_mac_and_link_up() -> None:
    dev, memory, _ = nic()
    assert dev.read_config(0, 4) == 0x005452 | 0x12 << 24 and dev.read_config(4, 2) == 0x5634
    assert dev.read_config(6, 2) == N.VIRTIO_NET_S_LINK_UP
    assert dev.device_features & N.VIRTIO_NET_F_MAC and dev.device_features & N.VIRTIO_NET_F_MRG_RXBUF
    assert not dev.device_features & N.OFFLOAD_FEATURES  # a plain frame socket passes no header through
    memory.close()


def test_offloads_are_offered_over_a_vnet_header_and_the_accepted_ones_reach_the_backend() -> None:
    backend = FakeBackend(vnet_hdr=True)
    dev, memory, _ = nic(backend, N.VIRTIO_NET_F_GUEST_CSUM | N.VIRTIO_NET_F_GUEST_TSO4 | N.VIRTIO_NET_F_CSUM)
    assert dev.device_features & N.OFFLOAD_FEATURES == N.OFFLOAD_FEATURES
    assert backend.offloads == N.VIRTIO_NET_F_GUEST_CSUM | N.VIRTIO_NET_F_GUEST_TSO4
    memory.close()


def test_a_transmitted_frame_loses_its_header_and_may_span_descriptors() -> None:
    backend = FakeBackend()
    dev, memory, interrupts = nic(backend)
    memory.write(BUF, bytes(N.HDR_LEN) + ARP_REQUEST[:20])
    memory.write(BUF + 0x1000, ARP_REQUEST[20:])
    offer(memory, N.TRANSMITQ, [(BUF, N.HDR_LEN + 20, 0), (BUF + 0x1000, len(ARP_REQUEST) - 20, 0)])
    dev.notify(N.TRANSMITQ)
    assert backend.sent == [ARP_REQUEST]
    assert used(memory, N.TRANSMITQ) == [(0, 0)] and interrupts == [N.TRANSMITQ]
    memory.close()


def test_a_busy_backend_leaves_the_frame_in_the_ring_until_it_resumes() -> None:
    backend = FakeBackend(busy=True)
    dev, memory, _ = nic(backend)
    memory.write(BUF, bytes(N.HDR_LEN) + ARP_REQUEST)
    offer(memory, N.TRANSMITQ, [(BUF, N.HDR_LEN + len(ARP_REQUEST), 0)])
    dev.notify(N.TRANSMITQ)
    assert backend.sent == [] and used(memory, N.TRANSMITQ) == []
    backend.busy = False
    dev.resume_tx()
    assert backend.sent == [ARP_REQUEST] and used(memory, N.TRANSMITQ) == [(0, 0)]
    memory.close()


def test_a_frame_waits_for_receive_buffers_and_then_fills_one() -> None:
    dev, memory, interrupts = nic()
    wakeups: list[int] = []
    dev.on_rx_space = lambda: wakeups.append(1)
    assert not dev.rx_room() and not dev.receive(ARP_REQUEST)  # no buffer: the host keeps the frame
    offer(memory, N.RECEIVEQ, [(BUF, 2048, WRITE)])
    dev.notify(N.RECEIVEQ)
    assert wakeups == [1] and dev.rx_room()
    assert dev.receive(ARP_REQUEST)
    assert used(memory, N.RECEIVEQ) == [(0, N.HDR_LEN + len(ARP_REQUEST))] and interrupts == [N.RECEIVEQ]
    header = memory.read(BUF, N.HDR_LEN)
    assert header == bytes(10) + b"\x01\x00"  # num_buffers is 1 even without MRG_RXBUF (5.1.6.4)
    assert memory.read(BUF + N.HDR_LEN, len(ARP_REQUEST)) == ARP_REQUEST
    memory.close()


def test_merged_receive_buffers_take_a_large_frame_and_count_themselves() -> None:
    dev, memory, _ = nic(features=N.VIRTIO_NET_F_MRG_RXBUF)
    for slot in range(3):
        offer(memory, N.RECEIVEQ, [(BUF + 0x1000 * slot, 1000, WRITE)], slot)
    dev.notify(N.RECEIVEQ)
    frame = bytes(range(256)) * 9  # 2304 bytes + the header: three 1000-byte buffers
    assert dev.receive(frame)
    assert used(memory, N.RECEIVEQ) == [(0, 1000), (1, 1000), (2, N.HDR_LEN + len(frame) - 2000)]
    assert memory.read_u16(BUF + 10) == 3
    assert memory.read(BUF + N.HDR_LEN, 988) + memory.read(BUF + 0x1000, 1000) == frame[:1988]
    memory.close()


def test_without_merging_a_frame_too_large_for_the_buffer_is_dropped_and_the_buffer_returned() -> None:
    dev, memory, _ = nic()
    offer(memory, N.RECEIVEQ, [(BUF, 64, WRITE)])
    dev.notify(N.RECEIVEQ)
    assert dev.receive(bytes(100)) and used(memory, N.RECEIVEQ) == [(0, 0)] and dev.dropped == 1
    memory.close()


@pytest.mark.parametrize(
    ("queue", "descs", "problem"),
    [
        (N.RECEIVEQ, [(BUF, 2048, 0)], "device-writable"),
        (N.RECEIVEQ, [(BUF, 8, WRITE)], "12 bytes"),
        (N.TRANSMITQ, [(BUF, 100, WRITE)], "device-readable only"),
    ],
)
def test_a_chain_of_the_wrong_kind_needs_a_reset(
    queue: int, descs: list[tuple[int, int, int]], problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    dev, memory, _ = nic()
    offer(memory, queue, descs)
    dev.notify(queue)
    assert dev.status & STATUS_NEEDS_RESET and problem in caplog.text
    assert not dev.rx_room() and not dev.receive(ARP_REQUEST)
    memory.close()


def test_a_runt_transmit_chain_fails_alone() -> None:
    backend = FakeBackend()
    dev, memory, _ = nic(backend)
    offer(memory, N.TRANSMITQ, [(BUF, 4, 0)])
    memory.write(BUF + 0x100, bytes(N.HDR_LEN) + ARP_REQUEST)
    offer(memory, N.TRANSMITQ, [(BUF + 0x100, N.HDR_LEN + len(ARP_REQUEST), 0)], slot=1)
    dev.notify(N.TRANSMITQ)
    assert backend.sent == [ARP_REQUEST] and dev.dropped == 1 and not dev.status & STATUS_NEEDS_RESET
    assert used(memory, N.TRANSMITQ) == [(0, 0), (1, 0)]
    memory.close()


# --- options and backends ---
def test_net_options_parse_in_key_value_style() -> None:
    assert D.NetSpec.parse("tap=tap0,mac=02:00:00:00:00:01") == D.NetSpec(
        "tap", "tap0", bytes([2, 0, 0, 0, 0, 1])
    )
    assert D.NetSpec.parse("user", 1).mac == bytes.fromhex("525400123457")  # QEMU's second NIC
    assert D.NetSpec.parse("stream=/tmp/s").target == "/tmp/s"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mac=02:00:00:00:00:01", "no backend"),
        ("tap=", "unexpected"),
        ("tap=a,user", "unexpected"),
        ("user,mac=zz", "six hex bytes"),
        ("user,mac=01:00:00:00:00:00", "multicast"),
        ("tap=" + "x" * 16, "at most 15"),
        ("bridge=br0", "unexpected"),
    ],
)
def test_bad_net_options_are_one_sentence(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        D.NetSpec.parse(text)


def test_user_networking_without_passt_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match=r"needs passt.*Debian package passt"):
        D.PasstBackend()


def test_a_passt_that_exits_takes_the_link_down_with_its_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "passt"
    fake.write_text("#!/bin/sh\necho 'No routable interface' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    backend = D.PasstBackend()
    try:
        backend.process.wait(timeout=30)
        assert not backend.pull() and backend.closed and backend.read_frame() is None
        assert "passt exited with status 1: No routable interface" in caplog.text
        assert backend.transmit([memoryview(ARP_REQUEST)])  # frames to a dead link are dropped, not held
    finally:
        backend.close()


def test_the_cli_refuses_a_bad_net_option_without_a_traceback() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--net", "tap=a,speed=10"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "unexpected 'speed=10'" in r.stderr


def stream_nic() -> tuple[N.VirtioNet, GuestMemory, D.NetHost, socket.socket, IoThread]:
    ours, theirs = socket.socketpair()
    iothread = IoThread(threading.RLock())
    host = D.NetHost(D.StreamBackend(ours, "test"), iothread)
    memory = GuestMemory([(0, 1 << 20)])
    dev = N.VirtioNet(memory, bytes(6), host.backend)
    dev.driver_features = VIRTIO_F_VERSION_1
    for index, (desc, avail, usedq) in RINGS.items():
        q = dev.queues[index]
        q.size, q.desc_addr, q.avail_addr, q.used_addr, q.ready = QSIZE, desc, avail, usedq, True
    dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
    host.bind(dev)
    return dev, memory, host, theirs, iothread


def test_a_stream_backend_reads_only_while_the_guest_has_buffers() -> None:
    dev, memory, host, peer, iothread = stream_nic()
    frames = [bytes([i]) * 60 for i in range(3)]
    peer.sendall(b"".join(struct.pack(">I", len(f)) + f for f in frames))
    host._readable()  # the I/O thread's call: no receive buffer yet
    assert not host.reading and host.held is not None and iothread.watching == 0  # stopped watching
    offer(memory, N.RECEIVEQ, [(BUF, 2048, WRITE)])
    dev.notify(N.RECEIVEQ)  # room for one: delivered from what was read, then waiting again
    assert used(memory, N.RECEIVEQ) == [(0, N.HDR_LEN + 60)] and not host.reading
    for slot in (1, 2):
        offer(memory, N.RECEIVEQ, [(BUF + 0x1000 * slot, 2048, WRITE)], slot)
    dev.notify(N.RECEIVEQ)
    assert [memory.read_u8(BUF + 0x1000 * s + N.HDR_LEN) for s in range(3)] == [0, 1, 2]
    assert host.reading and iothread.watching == 1  # all delivered: watching the socket again
    host.close()
    peer.close()
    iothread.close()
    memory.close()


def test_every_frame_a_stream_already_read_goes_to_the_guest_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(D, "RX_BATCH", 2)  # a TAP's batch: a stream must not stop at it
    dev, memory, host, peer, iothread = stream_nic()
    for slot in range(QSIZE):
        offer(memory, N.RECEIVEQ, [(BUF + 0x1000 * slot, 2048, WRITE)], slot)
    dev.notify(N.RECEIVEQ)
    peer.sendall(b"".join(struct.pack(">I", 60) + bytes([i]) * 60 for i in range(6)))
    host._readable()  # one wake-up: the socket will not be readable again for frames already read
    assert [memory.read_u8(BUF + 0x1000 * s + N.HDR_LEN) for s in range(6)] == list(range(6))
    assert len(used(memory, N.RECEIVEQ)) == 6 and not host.backend.inbox
    host.close()
    peer.close()
    iothread.close()
    memory.close()


def test_a_stream_backend_sends_length_prefixed_frames_and_stops_when_the_socket_is_full() -> None:
    dev, memory, host, peer, iothread = stream_nic()
    big = 60000
    memory.write(BUF, bytes(N.HDR_LEN) + bytes(range(256)) * (big // 256) + bytes(big % 256))
    for slot in range(QSIZE):
        offer(memory, N.TRANSMITQ, [(BUF, N.HDR_LEN + big, 0)], slot)
    dev.notify(N.TRANSMITQ)  # the socket buffer fills: the device stops, at most one frame held back
    sent = len(used(memory, N.TRANSMITQ))
    assert 0 < sent < QSIZE and dev.tx_blocked and len(host.backend.unsent) <= big + 4
    peer.setblocking(False)
    received = bytearray()
    while len(used(memory, N.TRANSMITQ)) < QSIZE or host.backend.unsent:
        try:
            received += peer.recv(1 << 20)
        except BlockingIOError:
            pass
        host._writable()  # the I/O thread's call once the socket drains
    peer.setblocking(True)
    while len(received) < QSIZE * (big + 4):
        received += peer.recv(1 << 20)
    assert struct.unpack_from(">I", received)[0] == big and received[4:260] == bytes(range(256))
    assert len(received) == QSIZE * (big + 4)
    host.close()
    peer.close()
    iothread.close()
    memory.close()


# --- fuzz ---
descriptor = st.tuples(
    st.one_of(st.integers(0, 0x21000), st.integers(0, (1 << 64) - 1)),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)


@settings(max_examples=100, deadline=None)
@given(
    stream=st.lists(
        st.one_of(
            st.binary(max_size=200).map(lambda f: struct.pack(">I", len(f)) + f),  # a well-formed frame
            st.binary(max_size=64),  # anything at all: torn frames, huge lengths
        ),
        max_size=8,
    ),
    buffers=st.integers(0, QSIZE),
)
def test_random_bytes_from_a_stream_peer_never_raise(stream: list[bytes], buffers: int) -> None:
    dev, memory, host, peer, iothread = stream_nic()
    try:
        for slot in range(buffers):
            offer(memory, N.RECEIVEQ, [(BUF + 0x1000 * slot, 2048, WRITE)], slot)
        dev.notify(N.RECEIVEQ)
        peer.sendall(b"".join(stream))
        for _ in range(3):
            host._readable()
        assert len(used(memory, N.RECEIVEQ)) <= buffers
        assert len(host.backend.inbox) <= D.STREAM_CHUNK + D.N.MAX_FRAME + 4  # bounded host buffering
    finally:
        host.close()
        peer.close()
        iothread.close()
        memory.close()


@settings(max_examples=150, deadline=None)
@given(
    rx_table=st.lists(descriptor, min_size=QSIZE, max_size=QSIZE),
    tx_table=st.lists(descriptor, min_size=QSIZE, max_size=QSIZE),
    rings=st.lists(st.integers(0, 0xFFFF), min_size=2 * QSIZE, max_size=2 * QSIZE),
    avail=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
    frames=st.lists(st.binary(max_size=3000), max_size=5),
    mergeable=st.booleans(),
)
def test_random_net_rings_never_escape_the_device(
    rx_table: list[tuple[int, int, int, int]],
    tx_table: list[tuple[int, int, int, int]],
    rings: list[int],
    avail: tuple[int, int],
    frames: list[bytes],
    mergeable: bool,
) -> None:
    memory = GuestMemory([(0, 0x20000)])  # unmapped space all around: GuestMemory refuses it
    dev = N.VirtioNet(memory, bytes(6), FakeBackend())
    other, other_mem, _ = nic()
    try:
        dev.driver_features = VIRTIO_F_VERSION_1 | (N.VIRTIO_NET_F_MRG_RXBUF if mergeable else 0)
        for index, (desc, avail_addr, used_addr) in RINGS.items():
            q = dev.queues[index]
            q.size, q.desc_addr, q.avail_addr, q.used_addr, q.ready = QSIZE, desc, avail_addr, used_addr, True
        dev.set_status(STATUS_FEATURES_OK | STATUS_DRIVER_OK)
        for queue, table in ((N.RECEIVEQ, rx_table), (N.TRANSMITQ, tx_table)):
            desc, avail_addr, _ = RINGS[queue]
            for i, d in enumerate(table):
                memory.write(desc + 16 * i, struct.pack("<QIHH", *d))
            for i in range(QSIZE):
                memory.write_u16(avail_addr + 4 + 2 * i, rings[queue * QSIZE + i])
            memory.write_u16(avail_addr + 2, avail[queue])
        dev.notify(N.TRANSMITQ)
        dev.notify(N.RECEIVEQ)
        for frame in frames:
            dev.receive(frame)
        dev.notify(5)  # a queue that does not exist
        for queue in RINGS:
            assert memory.read_u16(RINGS[queue][2] + 2) <= QSIZE or dev.status & STATUS_NEEDS_RESET
        offer(other_mem, N.RECEIVEQ, [(BUF, 2048, WRITE)])  # another NIC on other memory works on
        other.notify(N.RECEIVEQ)
        assert other.receive(ARP_REQUEST) and used(other_mem, N.RECEIVEQ)[0][1] == N.HDR_LEN + len(
            ARP_REQUEST
        )
    finally:
        memory.close()
        other_mem.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=st.lists(
        st.tuples(
            st.integers(0, P.BAR_SIZE - 1), st.sampled_from([1, 2, 4, 8]), st.integers(0, (1 << 64) - 1)
        ),
        max_size=40,
    ),
    frames=st.lists(st.binary(max_size=200), max_size=3),
)
def test_random_transport_writes_to_a_nic_never_raise(
    writes: list[tuple[int, int, int]], frames: list[bytes]
) -> None:
    memory = GuestMemory([(0, 0x20000)])
    dev = N.VirtioNet(memory, bytes(6), FakeBackend())
    fn = P.VirtioPciFunction(dev, lambda address, data: None)
    try:
        for offset, size, value in writes:
            fn.bar.write(offset, size, value & ((1 << (8 * size)) - 1))
            fn.bar.read(offset, size)
            for frame in frames:
                dev.receive(frame)
    finally:
        memory.close()


# --- the bare-metal guest ---
EXIT_OK = debug_exit_status(0x47)
MAC = "52:54:00:12:34:56"
HEAD = [
    "vnet: found 1af4:1041 revision 1 class 020000 subsystem 1af4:1100",
    "vnet: capabilities common=1 notify=1 isr=1 device=1 pci_cfg=1",
    "vnet: VIRTIO_F_VERSION_1 offered",
    f"vnet: mac {MAC}, status 1",
    "vnet: queue 0 offers 256 entries; using 8",
    "vnet: queue 1 offers 256 entries; using 8",
    "vnet: status 0f",
]


def exchange(peer_mac: str) -> list[str]:
    reply = f"vnet: ARP reply: 10.0.2.2 is-at {peer_mac}, flags 0"
    return [
        "vnet: sent an ARP request in 1 descriptor, used.len 0",
        reply,
        "vnet: sent an ARP request in 2 descriptors, used.len 0",
        reply,
        "vnet: done",
    ]


EXPECTED = HEAD + exchange(":".join(f"{b:02x}" for b in PEER_MAC))


@pytest.fixture(scope="module")
def vnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("vnet", tmp_path_factory)


@pytest.fixture(scope="module")
def vnet_mmio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("vnet-mmio", tmp_path_factory)


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_the_net_guest_talks_to_a_stream_peer_under_kvmlite(vnet: Path, tmp_path: Path, backend: str) -> None:
    skip_without_kvm(backend)
    with StreamPeer(tmp_path / "peer.sock") as peer:
        args = ("--backend", backend, "--kernel", str(vnet), "--net", f"stream={peer.path},mac={MAC}")
        r = kvmlite_run(*args, "--stats")
    assert r.stdout.splitlines() == EXPECTED, r.stderr
    assert r.returncode == EXIT_OK and peer.frames == 2 and peer.replies == 2
    without_exit = 2 if backend == "kvm" else 0
    assert f"virtio-net0 queue 1: 2 notifications ({without_exit} without an exit), 2 requests" in r.stderr
    assert "virtio-net0 queue 0: 2 notifications" in r.stderr and "108 bytes" in r.stderr  # 2 x (12 + 42)


@requires_qemu
def test_the_net_guest_under_qemu_prints_the_same(vnet: Path, tmp_path: Path) -> None:
    with StreamPeer(tmp_path / "qemu.sock") as peer:
        netdev = f"stream,id=n0,server=off,addr.type=unix,addr.path={peer.path}"
        r = qemu_run(
            vnet, "-netdev", netdev, "-device", f"virtio-net-pci,disable-legacy=on,netdev=n0,mac={MAC}"
        )
    assert r.stdout.splitlines() == EXPECTED, r.stderr
    assert r.returncode == EXIT_OK and peer.frames == 2


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_the_net_guest_finds_a_virtio_mmio_nic(vnet_mmio: Path, tmp_path: Path, backend: str) -> None:
    skip_without_kvm(backend)
    with StreamPeer(tmp_path / "mmio.sock") as peer:
        args = ("--backend", backend, "--kernel", str(vnet_mmio), "--net", f"stream={peer.path}")
        r = kvmlite_run(*args, "--virtio-transport", "mmio")
    found = "vnet: found virtio-mmio version 2 device 1 vendor 554d4551"
    assert r.stdout.splitlines() == [found, *EXPECTED[2:]], r.stderr
    assert r.returncode == EXIT_OK


TAP = "kvmltap0"
TAP_MAC = "52:55:0a:00:02:02"
#: Run inside a new network namespace: a TAP with the peer's address, IPv6 off (no neighbour discovery noise).
NETNS_SETUP = f"""set -e
ip link set lo up
ip tuntap add dev {TAP} mode tap
ip addr add 10.0.2.2/24 dev {TAP}
ip link set {TAP} address {TAP_MAC}
sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
ip link set {TAP} up
exec "$@"
"""


def in_netns(*cmd: str) -> subprocess.CompletedProcess[str]:
    """``cmd`` in a network namespace of its own with a configured TAP; the host's network is untouched."""
    if os.geteuid() != 0:
        pytest.skip("a TAP in a new network namespace needs root")
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    if missing or not os.path.exists(D.TUN_DEVICE):
        pytest.skip(f"needs {', '.join(missing) or D.TUN_DEVICE}")
    full = ["unshare", "--net", "sh", "-c", NETNS_SETUP, "netns", *cmd]
    return subprocess.run(full, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("backend", ["kvm", "emu"])
def test_the_net_guest_reaches_the_kernel_over_a_tap(vnet: Path, backend: str) -> None:
    skip_without_kvm(backend)
    r = in_netns(sys.executable, "-m", "kvmlite", "run", "--backend", backend, "--kernel", str(vnet),
                 "--net", f"tap={TAP},mac={MAC}")  # fmt: skip
    assert r.stdout.splitlines() == HEAD + exchange(TAP_MAC), r.stderr
    assert r.returncode == EXIT_OK


@requires_qemu
def test_the_net_guest_over_a_tap_under_qemu_prints_the_same(vnet: Path) -> None:
    r = in_netns(QEMU, "-accel", "tcg", "-m", "128", "-display", "none", "-no-reboot", "-serial", "stdio",
                 "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                 "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                 "-device", f"virtio-net-pci,disable-legacy=on,netdev=n0,mac={MAC}",
                 "-kernel", str(vnet))  # fmt: skip
    assert r.stdout.splitlines() == HEAD + exchange(TAP_MAC), r.stderr
    assert r.returncode == EXIT_OK


@pytest.mark.skipif(shutil.which("passt") is None, reason="passt is not installed (Debian package passt)")
def test_the_net_guest_reaches_passt_over_user_networking(vnet: Path) -> None:
    r = kvmlite_run("--backend", "emu", "--kernel", str(vnet), "--net", "user")
    lines = r.stdout.splitlines()
    assert lines[:7] == HEAD and lines[-1] == "vnet: done", r.stderr
    replies = [line for line in lines if line.startswith("vnet: ARP reply: 10.0.2.2 is-at ")]
    assert len(replies) == 2 and r.returncode == EXIT_OK  # passt answers for the gateway with its own MAC
