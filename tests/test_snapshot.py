"""Snapshots (issue 16): a guest counting PIT ticks is saved mid-run and continued in another machine
or another process, with no tick lost or repeated and the same result; bad files get one sentence."""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from kvmlite.control.client import execute
from kvmlite.snapshot import SnapshotError
from kvmlite.snapshot import fileformat as F
from kvmlite.snapshot.machine import ResetPoint, build_restored, save
from kvmlite.vmm.machine import Machine, MachineConfig
from tests.conftest import KVM_OK, requires_kvm
from tests.snapshot_guests import (
    build_ticks_guest,
    expected_output,
    free_port,
    kvmlite,
    ticks_cmdline,
    wait_for,
)

CONFIGS = [
    pytest.param("kvm", "kernel", False, id="kvm-kernel-irqchip", marks=requires_kvm),
    pytest.param("kvm", "userspace", False, id="kvm-userspace-irqchip", marks=requires_kvm),
    pytest.param("kvm", "split", False, id="kvm-split-irqchip", marks=requires_kvm),
    pytest.param("kvm", "kernel", True, id="kvm-lazy-memory", marks=requires_kvm),
    pytest.param("emu", "userspace", False, id="emu"),
]
BACKEND = "kvm" if KVM_OK else "emu"



def start(
    elf: Path, backend: str, irqchip: str, out: bytearray, cpus: int = 1, cmdline: str = ""
) -> tuple[Machine, threading.Thread]:
    config = MachineConfig(
        kernel=elf, backend=backend, irqchip=irqchip, memory_mib=16, cpus=cpus, serial_out=out.extend,
        cmdline=cmdline or ticks_cmdline(smp=cpus > 1),
    )  # fmt: skip
    machine = Machine.build(config)
    thread = threading.Thread(target=machine.run, daemon=True)
    thread.start()
    return machine, thread


@pytest.mark.parametrize(("backend", "irqchip", "lazy"), CONFIGS)
def test_a_restored_machine_continues_the_count_where_it_was(
    tmp_path: Path, backend: str, irqchip: str, lazy: bool
) -> None:
    elf = build_ticks_guest(tmp_path)
    out = bytearray()
    machine, thread = start(elf, backend, irqchip, out)
    try:
        wait_for(lambda: out.count(b"\n") >= 20, "20 ticks")
        result = save(machine, tmp_path / "vm.snap", separate_memory=lazy, stay_paused=True)
        assert result["paused"]
        before = bytes(out)
        machine.control.stop(0, "the test ends the original")
        thread.join(10)
    finally:
        machine.close()
    assert b"sum=" not in before
    after = bytearray()
    config = MachineConfig(kernel=Path(), backend=backend, serial_out=after.extend)
    restored = build_restored(config, tmp_path / "vm.snap", lazy=lazy)
    try:
        status = restored.run()
    finally:
        restored.close()
    expected, expected_status = expected_output()
    assert before + bytes(after) == expected
    assert status == expected_status


@requires_kvm
@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_a_two_vcpu_guest_is_restored_with_its_ap_mid_computation(tmp_path: Path, irqchip: str) -> None:
    from kvmlite.kvm.constants import MpState

    elf = build_ticks_guest(tmp_path)
    out = bytearray()
    machine, thread = start(elf, "kvm", irqchip, out, cpus=2)
    try:
        wait_for(lambda: out.count(b"\n") >= 5, "5 ticks")
        save(machine, tmp_path / "vm.snap", stay_paused=True)
        ap_cpl = machine.loops[1].vcpu.get_sregs().cs.selector & 3
        ap_state = machine.loops[1].vcpu.get_mp_state()
        before = bytes(out)
        machine.control.stop(0, "the test ends the original")
        thread.join(10)
    finally:
        machine.close()
    assert ap_cpl == 3 and ap_state == MpState.RUNNABLE  # the AP was computing in ring 3 when saved
    after = bytearray()
    restored = build_restored(MachineConfig(kernel=Path(), serial_out=after.extend), tmp_path / "vm.snap")
    try:
        assert len(restored.loops) == 2
        status = restored.run()
    finally:
        restored.close()
    expected, expected_status = expected_output(smp=True)
    assert before + bytes(after) == expected
    assert status == expected_status


def test_a_snapshot_file_is_sparse_and_checked(tmp_path: Path) -> None:
    elf = build_ticks_guest(tmp_path)
    out = bytearray()
    machine, thread = start(elf, BACKEND, "auto", out)
    try:
        wait_for(lambda: out.count(b"\n") >= 3, "3 ticks")
        save(machine, tmp_path / "vm.snap")
        machine.control.stop(0)
        thread.join(10)
    finally:
        machine.close()
    path = tmp_path / "vm.snap"
    snap = F.read_snapshot(path)
    assert snap.memory_length == 16 << 20
    assert path.stat().st_size >= snap.memory_offset + snap.memory_length
    # a 16 MiB guest of a few KB: the file holds almost no blocks (where the file system has holes)
    assert path.stat().st_blocks * 512 < 2 << 20
    runs = F.read_memory_runs(snap)
    assert sum(len(data) for _, data in runs) < 1 << 20
    assert {"cpus", "devices", "machine", "memory"} <= set(snap.state)


# --- the CLI and the control socket (the "done when") ------------------------------------

@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
def test_snapshot_over_the_control_socket_kill_and_restore_from_the_command_line(
    tmp_path: Path, backend: str
) -> None:
    elf = build_ticks_guest(tmp_path)
    sock, snap, out1, out2 = (tmp_path / n for n in ("api.sock", "vm.snap", "out1", "out2"))
    proc = kvmlite(
        "--kernel", str(elf), "--cmdline", ticks_cmdline(), "--memory", "16", "--backend", backend,
        "--serial", f"file:{out1}", "--api", f"unix:{sock}",
    )  # fmt: skip
    try:
        wait_for(lambda: out1.exists() and out1.read_bytes().count(b"\n") >= 15, "15 ticks")
        reply = execute(str(sock), "snapshot-save", {"path": str(snap), "paused": True})
        assert reply["return"]["paused"] is True, reply
        assert execute(str(sock), "query-status")["return"]["status"] == "paused"
        before = out1.read_bytes()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    restored = kvmlite("--restore", str(snap), "--backend", backend, "--serial", f"file:{out2}")
    _, err = restored.communicate(timeout=300)
    expected, expected_status = expected_output()
    assert before + out2.read_bytes() == expected
    assert restored.returncode == expected_status, err.decode()


# --- bad files: one sentence, status 2, nothing runs -------------------------------------------------
@pytest.fixture(scope="module")
def good_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("snap")
    elf = build_ticks_guest(tmp)
    out = bytearray()
    machine, thread = start(elf, "emu", "userspace", out)
    try:
        wait_for(lambda: out.count(b"\n") >= 2, "2 ticks")
        save(machine, tmp / "good.snap")
        machine.control.stop(0)
        thread.join(10)
    finally:
        machine.close()
    return tmp / "good.snap"


def restore_cli(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--restore", str(path), "--serial", "none", *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def rewrite_state(path: Path, out: Path, change) -> None:  # type: ignore[no-untyped-def]
    """A copy of snapshot ``path`` whose state JSON went through ``change``, checksums made right."""
    data = bytearray(path.read_bytes())
    fields = list(F._HEADER.unpack_from(data))
    st_off, st_len = fields[3], fields[4]
    state = json.loads(data[st_off : st_off + st_len])
    change(state)
    blob = json.dumps(state).encode()
    assert st_off + len(blob) <= fields[6], "the test's change must fit before the memory image"
    data[st_off : st_off + len(blob)] = blob
    fields[4], fields[5] = len(blob), zlib.crc32(blob)
    head = F._HEADER.pack(*fields)
    data[: len(head) + 4] = head + struct.pack("<I", zlib.crc32(head))
    out.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate-header", "truncated"),
        ("truncate-memory", "truncated"),
        ("flip-state", "corrupted"),
        ("flip-memory", "corrupted"),
        ("version", "format version 99"),
        ("magic", "not a kvmlite snapshot"),
        ("missing", "cannot read snapshot"),
        ("devices", "device set mismatch"),
    ],
)
def test_bad_snapshot_files_get_one_sentence_and_status_2(
    good_snapshot: Path, tmp_path: Path, damage: str, message: str
) -> None:
    data = bytearray(good_snapshot.read_bytes())
    bad = tmp_path / "bad.snap"
    snap = F.read_snapshot(good_snapshot)
    if damage == "truncate-header":
        data = data[:40]
    elif damage == "truncate-memory":
        data = data[: snap.memory_offset + snap.runs[-1].offset]
    elif damage == "flip-state":
        data[F.HEADER_SIZE + 100] ^= 0x20
    elif damage == "flip-memory":
        data[snap.memory_offset + snap.runs[0].offset + 5] ^= 1
    elif damage == "version":
        fields = list(F._HEADER.unpack_from(data))
        fields[1] = 99
        head = F._HEADER.pack(*fields)
        data[: len(head) + 4] = head + struct.pack("<I", zlib.crc32(head))
    elif damage == "magic":
        data[:8] = b"NOTASNAP"
    if damage == "devices":
        rewrite_state(good_snapshot, bad, lambda s: s["devices"].pop())
    elif damage != "missing":
        bad.write_bytes(bytes(data))
    result = restore_cli(bad, "--backend", "emu")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_restore_with_another_device_set_names_the_difference(good_snapshot: Path) -> None:
    result = restore_cli(good_snapshot, "--backend", "emu", "--device", "pc-testdev")
    assert result.returncode == 2
    assert "device set mismatch" in result.stderr and "pc-testdev" in result.stderr


# --- reset-to-snapshot --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
def test_reset_to_snapshot_puts_memory_registers_and_devices_back(tmp_path: Path, backend: str) -> None:
    elf = build_ticks_guest(tmp_path)
    out = bytearray()
    machine, thread = start(elf, backend, "userspace", out)
    try:
        wait_for(lambda: out.count(b"\n") >= 5, "5 ticks")
        machine.control.pause()
        point = ResetPoint(machine)
        regs = machine.loops[0].vcpu.get_regs()
        at_snapshot = bytes(out)
        expected, _ = expected_output()
        for _ in range(3):
            mark = len(out)
            machine.control.resume()
            wait_for(lambda m=mark: out.count(b"\n", m) >= 3, "3 more ticks")  # type: ignore[misc]
            machine.control.pause()
            copied = point.restore()
            assert copied >= 1  # the counters' page at least
            assert machine.loops[0].vcpu.get_regs().rip == regs.rip
            # the guest goes on from the snapshot's count, as if the runs since had never been
            mark = len(out)
            machine.control.resume()
            wait_for(lambda m=mark: out.count(b"\n", m) >= 2, "ticks after the reset")  # type: ignore[misc]
            machine.control.pause()
            assert expected.startswith(at_snapshot + bytes(out[mark:]))
        point.close()
        machine.control.stop(0)
        thread.join(10)
    finally:
        machine.close()


def test_snapshot_errors_are_kvmlite_errors() -> None:
    with pytest.raises(SnapshotError, match="cannot read snapshot"):
        F.read_snapshot(Path("/nonexistent/snap"))


# --- fuzzing: mutated files never give a traceback or a half-restored machine ------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kvmlite.errors import KvmliteError  # noqa: E402


def try_restore(path: Path) -> None:
    """Build (never run) a machine from ``path``: either it works or one KvmliteError says why."""
    try:
        machine = build_restored(MachineConfig(kernel=Path(), backend="emu", serial="none"), path)
    except KvmliteError as err:
        assert str(err) and "\n" not in str(err)
        return
    machine.close()


@settings(max_examples=60, deadline=None)
@given(
    pages=st.lists(
        st.tuples(st.integers(0, 512 + 70 - 1), st.sampled_from([0, 1, 4095, 2048]), st.integers(1, 255)),
        max_size=80,
    )
)
def test_the_zero_page_scan_finds_exactly_the_non_zero_pages(pages: list[tuple[int, int, int]]) -> None:
    from kvmlite.memory.guest import GuestMemory

    memory = GuestMemory([(0, 2 << 20), (0x100000000, 70 * F.PAGE)])  # 512 pages, then 70: odd chunks
    regions = list(memory)
    for page, byte, value in pages:
        region, page = (regions[0], page) if page < 512 else (regions[1], page - 512)
        region.view[page * F.PAGE + byte] = value
    expected = [
        start + off
        for region, start in ((regions[0], 0), (regions[1], 2 << 20))
        for off in range(0, region.size, F.PAGE)
        if any(region.view[off : off + F.PAGE])
    ]
    runs = list(F.nonzero_runs(memory))
    found = [offset + off for offset, view in runs for off in range(0, len(view), F.PAGE)]
    assert found == expected
    assert all(0 < len(view) <= F.RUN_PAGES * F.PAGE for _, view in runs)
    assert all(off + len(v) <= 2 << 20 or off >= 2 << 20 for off, v in runs)  # no run spans two regions


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_snapshot_bytes(good_snapshot: Path, tmp_path: Path, data: st.DataObject) -> None:
    raw = bytearray(good_snapshot.read_bytes())
    snap = F.read_snapshot(good_snapshot)
    end = snap.memory_offset + (snap.runs[-1].offset + snap.runs[-1].length if snap.runs else 0)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, end - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = tmp_path / "fuzz.snap"
    path.write_bytes(bytes(raw))
    try_restore(path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_snapshot_state_with_valid_checksums(
    good_snapshot: Path, tmp_path: Path, data: st.DataObject
) -> None:
    """Values replaced deep inside the state, checksums made right: the parser and every loader checked."""

    def mutate(state: dict) -> None:  # type: ignore[type-arg]
        node = state
        for _ in range(data.draw(st.integers(1, 5))):
            if isinstance(node, dict) and node:
                key = data.draw(st.sampled_from(sorted(node)))
                if not isinstance(node[key], dict | list) or data.draw(st.booleans()):
                    node[key] = data.draw(JSON_VALUES)
                    return
                node = node[key]
            elif isinstance(node, list) and node:
                index = data.draw(st.integers(0, len(node) - 1))
                if not isinstance(node[index], dict | list) or data.draw(st.booleans()):
                    node[index] = data.draw(JSON_VALUES)
                    return
                node = node[index]
            else:
                return

    path = tmp_path / "fuzz.snap"
    rewrite_state(good_snapshot, path, mutate)
    try_restore(path)


def load_example():  # type: ignore[no-untyped-def]
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "snapshot_fuzz.py"
    spec = importlib.util.spec_from_file_location("snapshot_fuzz", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
def test_the_fuzz_harness_runs_inputs_from_the_snapshot_and_finds_the_crash(
    tmp_path: Path, backend: str
) -> None:
    from kvmlite.snapshot.fuzz import FuzzHarness

    example = load_example()
    guest = example.build_guest(tmp_path, pages=10)
    machine = Machine.build(MachineConfig(kernel=guest, memory_mib=64, backend=backend, serial="none"))
    try:
        harness = FuzzHarness(machine, example.INPUT_ADDR)
        for data in (b"abc", b"\xff" * 15, b"", b"x"):
            result = harness.run(data)
            assert result.value == sum(data)
            # the guest's 10 buffer pages (and its stack page) were dirtied and put back; no more
            assert 10 <= result.dirty_pages <= 12 or backend == "emu"
            assert machine.memory.read_u32(example.BUFFER_ADDR) == 0  # back to the snapshot's RAM
        # a batch: the resets done on the vCPU's own thread, the same results
        inputs = [bytes([i]) * (i + 1) for i in range(20)]
        many = harness.run_many(inputs)
        assert [r.value for r in many] == [sum(data) for data in inputs]
        assert all(10 <= r.dirty_pages <= 12 for r in many) or backend == "emu"
        assert machine.memory.read_u32(example.BUFFER_ADDR) == 0
        crash = harness.run(b"FUZZ!")
        assert crash.value is None and crash.status == 4
        assert harness.runs == 24
        harness.close()
    finally:
        machine.close()


# --- live migration -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
def test_live_migration_between_two_processes_continues_the_output(tmp_path: Path, backend: str) -> None:
    ticks = 400
    elf = build_ticks_guest(tmp_path)
    sock, out1, out2 = (tmp_path / n for n in ("api.sock", "out1", "out2"))
    uri = f"tcp:127.0.0.1:{free_port()}"
    target_log = (tmp_path / "target.log").open("wb")
    target = kvmlite("--incoming", uri, "--serial", f"file:{out2}", "-v", stderr=target_log)
    source = kvmlite(
        "--kernel", str(elf), "--cmdline", ticks_cmdline(ticks), "--memory", "16", "--backend", backend,
        "--serial", f"file:{out1}", "--api", f"unix:{sock}", "-v",
    )  # fmt: skip
    try:
        wait_for(lambda: out1.exists() and out1.read_bytes().count(b"\n") >= 10, "10 ticks on the source")
        listening = b"waiting for a migration"
        wait_for(lambda: listening in (tmp_path / "target.log").read_bytes(), "the target to listen")
        assert execute(str(sock), "migrate", {"uri": uri}) == {"return": {}}
        _, source_err = source.communicate(timeout=120)
        target.communicate(timeout=300)
        target_err = (tmp_path / "target.log").read_bytes()
    finally:
        for proc in (source, target):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        target_log.close()
    expected, expected_status = expected_output(ticks)
    assert source.returncode == 0, source_err.decode()
    assert b"downtime" in source_err and b"migrated to" in source_err
    first = out1.read_bytes()
    assert b"sum=" not in first  # the source stopped mid-run
    assert first + out2.read_bytes() == expected
    assert target.returncode == expected_status, target_err.decode()


def test_incoming_refuses_a_bad_uri() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvmlite", "run", "--incoming", "udp:x", "--serial", "none"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "expected tcp:HOST:PORT" in result.stderr and "Traceback" not in result.stderr


# --- diff snapshots -------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
def test_diff_snapshots_over_the_control_socket_restore_through_their_chain(
    tmp_path: Path, backend: str
) -> None:
    elf = build_ticks_guest(tmp_path)
    sock, out1, out2 = (tmp_path / n for n in ("api.sock", "out1", "out2"))
    full, diff1, diff2 = (tmp_path / n for n in ("full.snap", "diff1.snap", "diff2.snap"))
    proc = kvmlite(
        "--kernel", str(elf), "--cmdline", ticks_cmdline(), "--memory", "16", "--backend", backend,
        "--serial", f"file:{out1}", "--api", f"unix:{sock}",
    )  # fmt: skip
    try:
        lines = lambda: out1.read_bytes().count(b"\n") if out1.exists() else 0  # noqa: E731
        wait_for(lambda: lines() >= 5, "5 ticks")
        assert execute(str(sock), "snapshot-save", {"path": str(full)})["return"]["memory"] == "full"
        mark = lines()
        wait_for(lambda: lines() >= mark + 5, "5 more ticks")
        reply = execute(str(sock), "snapshot-save", {"path": str(diff1), "memory": "diff"})
        assert reply["return"]["memory"] == "diff", reply
        mark = lines()
        wait_for(lambda: lines() >= mark + 5, "5 more ticks")
        reply = execute(str(sock), "snapshot-save", {"path": str(diff2), "memory": "diff", "paused": True})
        assert reply["return"]["paused"] is True, reply
        before = out1.read_bytes()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # a diff holds the pages written since the previous snapshot: a few, not the guest's whole RAM
    assert len(F.read_snapshot(diff2).runs) < len(F.read_snapshot(full).runs)
    assert [s.path for s in F.read_chain(diff2)] == [full, diff1, diff2]
    restored = kvmlite("--restore", str(diff2), "--backend", backend, "--serial", f"file:{out2}")
    _, err = restored.communicate(timeout=300)
    expected, expected_status = expected_output()
    assert before + out2.read_bytes() == expected
    assert restored.returncode == expected_status, err.decode()

    # the chain is checked: a base taken again under the same name, or gone, is one sentence
    diff1.rename(tmp_path / "moved.snap")
    result = restore_cli(diff2, "--backend", backend)
    assert result.returncode == 2 and "needs its base" in result.stderr, result.stderr
    (tmp_path / "moved.snap").rename(diff1)
    other = Machine.build(MachineConfig(kernel=elf, backend="emu", memory_mib=16, serial="none"))
    try:  # the same state under the same name, but another snapshot (another memory id)
        F.write_snapshot(full, F.read_snapshot(full).state, other.memory)
    finally:
        other.close()
    result = restore_cli(diff2, "--backend", backend)
    assert result.returncode == 2 and "not the snapshot it was taken against" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_diff_snapshot_without_a_previous_one_is_refused(tmp_path: Path) -> None:
    elf = build_ticks_guest(tmp_path)
    machine = Machine.build(MachineConfig(kernel=elf, backend="emu", memory_mib=16, serial="none"))
    try:
        with pytest.raises(SnapshotError, match="needs a previous snapshot"):
            save(machine, tmp_path / "d.snap", diff=True)
    finally:
        machine.close()


@pytest.mark.parametrize("backend", [pytest.param("kvm", marks=requires_kvm), "emu"])
def test_a_reset_point_taken_in_hlt_stays_halted_after_the_reset(tmp_path: Path, backend: str) -> None:
    """The state of a vCPU waiting in the userspace irqchip's halt wait is past its HLT: a reset to it
    must wait again, not run on once as if an interrupt had come (here: into the debug-exit port)."""
    from tests.conftest import MULTIBOOT_HEADER, build_multiboot

    source = MULTIBOOT_HEADER + ".text\n.globl _start\n_start:\n    sti\n    hlt\n    mov $0x45, %eax\n"
    elf = build_multiboot(tmp_path, "halt", source + "    out %eax, $0xf4\n    cli\n    hlt\n")
    config = MachineConfig(kernel=elf, backend=backend, irqchip="userspace", memory_mib=16, serial="none")
    machine = Machine.build(config)
    thread = threading.Thread(target=machine.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: machine.loops[0].halted, "the guest to halt")
        machine.control.pause()
        point = ResetPoint(machine)
        assert point.state["halted"] == [True]
        for _ in range(3):
            machine.control.resume()
            time.sleep(0.05)
            machine.control.pause()
            point.restore()
        machine.control.resume()
        time.sleep(0.3)
        assert not machine.control.stopping, machine.control.stop_info  # still halted, never woken
        assert machine.loops[0].halted
        machine.control.stop(0)
        thread.join(10)
        point.close()
    finally:
        machine.close()
