"""Ring-3 vector register state across a guest kernel's context switches and the host's preemption.

The guest (guests/xstate.S) is a small kernel that switches between ring-3 tasks as Linux does
(XSAVEOPT/XSAVEC and XRSTOR under the XCR0 it set, on a timer interrupt and on a page fault, with
Linux's "registers still live on this CPU" shortcut), while each task holds a pattern of its own in
every vector register ring 3 can use (ZMM0-31 and k0-k7, or YMM0-15, or XMM0-15) and checks it.  On
hosts whose ring 3 runs with the host's XCR0 (kvmlite.vmm.xstate_quirk) the tasks use AVX-512 while
the kernel saves only x87/SSE: without kvmlite's side table they trade registers within a few switches.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import KVM_OK
from tests.guest_expectations import load_build_module, missing_build_tools

STATUS_OK, STATUS_FAIL = (0x31 << 1) | 1, (1 << 1) | 1
SWITCHES = 2000
HOLD_ITERATIONS = 10000
NO_VEX_ON_EMU = "kvmlite's emulator does not execute VEX/EVEX instructions: ring 3 holds XMM registers only"
needs_kvm = pytest.mark.skipif(not KVM_OK, reason="needs /dev/kvm")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = missing_build_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} to build the test guest")
    built: Path = load_build_module().build_guest("xstate", tmp_path_factory.mktemp("xstate"))
    return built


def run(guest: Path, cmdline: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    kvmlite = [sys.executable, "-m", "kvmlite", "run", "--stats"]
    return subprocess.run(
        [*kvmlite, "--kernel", str(guest), "--cmdline", cmdline, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def level_of(out: str) -> int:
    found = re.search(r"xstate: level=(\d) user-xcr0=0x([0-9a-f]+) kernel-xcr0=0x([0-9a-f]+)", out)
    assert found, out
    return int(found.group(1))


def check_ok(r: subprocess.CompletedProcess[str], switches: int = SWITCHES) -> None:
    assert r.returncode == STATUS_OK, f"status {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "xstate: ok" in r.stdout
    if switches:
        counts = re.search(r"switches=(\d+) timer=(\d+) faults=(\d+)", r.stdout)
        assert counts, r.stdout
        total, timer, faults = map(int, counts.groups())
        assert total >= switches and timer > 0 and faults > 0  # both kinds of switch happened
        iterations = [int(n) for n in re.findall(r"iterations=(\d+)", r.stdout)]
        assert len(iterations) == 4 and all(n > 0 for n in iterations)  # every task ran and checked


CASES = [
    pytest.param("emu", 1, id="emu-1cpu"),
    pytest.param("kvm", 1, id="kvm-1cpu", marks=needs_kvm),
    pytest.param("kvm", 2, id="kvm-2cpus", marks=needs_kvm),
]


@pytest.mark.parametrize(("backend", "cpus"), CASES)
def test_xmm_registers_survive_thousands_of_switches(guest: Path, backend: str, cpus: int) -> None:
    switches = 1000 if backend == "kvm" else 150  # every instruction is emulated on the software backend
    every = 200 if backend == "kvm" else 5
    cmdline = f"switches={switches} cpus={cpus} every={every} level=0 hz=100"
    r = run(guest, cmdline, "--backend", backend, "--cpus", str(cpus))
    check_ok(r, switches)
    assert level_of(r.stdout) == 0
    if cpus == 2:  # tasks moved between the CPUs
        assert "cpus=0x3" in r.stdout


@pytest.mark.parametrize(("backend", "cpus"), CASES)
def test_every_vector_register_ring3_can_use_survives_thousands_of_switches(
    guest: Path, backend: str, cpus: int
) -> None:
    if backend == "emu":
        pytest.skip(NO_VEX_ON_EMU)
    r = run(guest, f"switches={SWITCHES} cpus={cpus} hz=100", "--cpus", str(cpus))
    check_ok(r)
    if cpus == 2:
        assert "cpus=0x3" in r.stdout
    if level_of(r.stdout) == 0:
        pytest.skip("ring 3 has no AVX state here (CPUID or XCR0 at CPL 3): only XMM0-15 were checked")


@needs_kvm
def test_the_compacted_format_of_xsavec_too(guest: Path) -> None:
    r = run(guest, "switches=1000 cpus=2 compact=1 hz=100", "--cpus", "2")
    check_ok(r, 1000)


@needs_kvm
@pytest.mark.parametrize("compact", [0, 1])
def test_a_kernel_saving_every_component_keeps_them_too(guest: Path, compact: int) -> None:
    r = run(guest, f"switches=300 cpus=2 full=1 compact={compact} hz=40", "--cpus", "2")
    check_ok(r, 300)


@needs_kvm
def test_without_the_workaround_tasks_trade_registers_where_the_host_has_the_quirk(guest: Path) -> None:
    """Shows that the guest catches the bug: on a host with the quirk, all workarounds but xstate fail it."""
    from kvmlite.kvm import Kvm
    from kvmlite.vmm.xstate_quirk import ring3_extra_xcr0

    if not ring3_extra_xcr0(Kvm().create_vm):
        pytest.skip("this host runs ring 3 with the guest's XCR0: the kernel's XSAVE covers what tasks use")
    but_xstate = "clearcpuid,hypercalls"
    r = run(guest, f"switches={SWITCHES} cpus=2", "--cpus", "2", "--host-workarounds", but_xstate)
    assert r.returncode == STATUS_FAIL, r.stdout
    failure = re.search(r"xstate: FAIL task \d offset (\d+) got 0x([0-9a-f]+) want 0x([0-9a-f]+)", r.stdout)
    assert failure, r.stdout
    assert int(failure.group(1)) >= 16  # beyond XMM0's low half: state the kernel's XCR0 does not cover
    # with the workaround (the default) the same run passes: test_every_vector_register_ring3_can_use...


@needs_kvm
@pytest.mark.parametrize("cpus", [1, 2])
def test_registers_survive_exits_and_host_preemption_without_guest_switches(guest: Path, cpus: int) -> None:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        r = run(guest, f"hold={HOLD_ITERATIONS} cpus={cpus}", "--cpus", str(cpus))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    check_ok(r, switches=0)
    assert f"held {HOLD_ITERATIONS} iterations with an exit each on {cpus} cpus" in r.stdout
    if level_of(r.stdout) == 0:
        pytest.skip("ring 3 has no AVX state here: only XMM0-15 were held")


# --- the side table itself, without a VM ----------------------------------------------------------------


class _Comp:
    def __init__(self, index: int, offset: int, size: int) -> None:
        self.index, self.offset, self.size = index, offset, size


COMPONENTS = [_Comp(2, 576, 256), _Comp(5, 1088, 64)]


def _area(fill: int, bv: int) -> bytearray:
    area = bytearray(4096)
    area[576 : 576 + 256] = bytes([fill]) * 256
    area[1088 : 1088 + 64] = bytes([fill + 1]) * 64
    area[512:520] = bv.to_bytes(8, "little")
    return area


def test_side_table_gives_back_what_was_saved_for_the_same_image_and_init_state_otherwise() -> None:
    from kvmlite.vmm.xstate_quirk import ExtendedStateKeeper

    keeper = ExtendedStateKeeper(new_vm=None, max_areas=2)
    image_a, image_b = b"A" * 464, b"B" * 464
    keeper._keep(0x1000, image_a, _area(0x11, 0x27), COMPONENTS)
    keeper._keep(0x2000, image_b, _area(0x55, 0x07), COMPONENTS)

    live = _area(0x55, 0x27)  # B's registers are live; A is restored
    assert keeper._restore(0x1000, image_a, live, COMPONENTS)
    assert live[576:832] == b"\x11" * 256 and live[1088:1152] == b"\x12" * 64
    assert int.from_bytes(live[512:520], "little") == 0x27

    live = _area(0x11, 0x27)  # A's area was overwritten (say, reinitialised by the kernel): init state
    assert not keeper._restore(0x1000, b"C" * 464, live, COMPONENTS)
    assert live[576:832] == bytes(256) and live[1088:1152] == bytes(64)
    assert int.from_bytes(live[512:520], "little") == 0x03  # only x87/SSE left in use

    live = _area(0x11, 0x27)  # an area never saved: init state, never another task's registers
    assert not keeper._restore(0x3000, image_a, live, COMPONENTS)
    assert live[576:832] == bytes(256)

    keeper._keep(0x3000, image_a, _area(0x22, 0x27), COMPONENTS)  # bounded: the oldest area is dropped
    assert len(keeper) == 2
    assert not keeper._restore(0x1000, image_a, _area(0, 3), COMPONENTS)
    assert keeper._restore(0x2000, image_b, _area(0, 3), COMPONENTS)


@needs_kvm
def test_probe_reports_only_xcr0_components_beyond_x87_and_sse() -> None:
    from kvmlite.kvm import Kvm
    from kvmlite.vmm.xstate_quirk import ring3_extra_xcr0

    extra = ring3_extra_xcr0(Kvm().create_vm)
    assert extra & 3 == 0
    if extra:
        assert extra & (1 << 2)  # AVX state at least: what the quirk is about
