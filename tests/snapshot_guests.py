"""The snapshot tests' guest (guests/ticks3.S): it counts PIT ticks, prints each, computes at CPL 3.

Ring 0 only sets up long mode, the PIC, the PIT at 100 Hz and a tick handler that counts; the main
loop runs at CPL 3 with interrupts on (ring 3 is where this host runs guest code natively).  After
every tick it prints ``tick N`` and runs ``rounds`` rounds of an LCG whose state lives in memory,
so the final value depends on how many ticks were counted and on nothing else; after ``ticks``
ticks it prints ``sum=X`` and exits with ``(sum & 0x3f) + 1`` through the debug-exit port.  With
``cpus=2`` the AP computes ``ap_rounds`` rounds at CPL 3 meanwhile, folded into the sum.  A restore
that loses or repeats a tick, loses RAM or registers, or a timer that does not go on, shows up in
the output or the sum.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.guest_expectations import load_build_module

TICKS = 120
ROUNDS = 1000
AP_ROUNDS = 200_000_000
_MUL, _ADD, _MASK = 1103515245, 12345, 0xFFFF_FFFF


def _lcg(x: int, rounds: int, add: int) -> int:
    """``rounds`` rounds of x = x * MUL + add (mod 2**32), by squaring the affine map."""
    a, b = 1, 0  # the map so far: x -> a * x + b
    step_a, step_b = _MUL, add & _MASK
    while rounds:
        if rounds & 1:
            a, b = (step_a * a) & _MASK, (step_a * b + step_b) & _MASK
        step_a, step_b = (step_a * step_a) & _MASK, (step_a * step_b + step_b) & _MASK
        rounds >>= 1
    return (a * x + b) & _MASK


def expected_output(ticks: int = TICKS, smp: bool = False, rounds: int = ROUNDS) -> tuple[bytes, int]:
    """What an uninterrupted run prints, and its exit status."""
    state = 12345
    out = b""
    for n in range(1, ticks + 1):
        out += f"tick {n}\n".encode()
        state = _lcg(state, rounds, _ADD + n)
    if smp:
        state ^= _lcg(1, AP_ROUNDS, _ADD)
    out += f"sum={state:x}\n".encode()
    return out, (((state & 0x3F) + 1) << 1) | 1


def ticks_cmdline(ticks: int = TICKS, smp: bool = False, rounds: int = ROUNDS) -> str:
    """The guest's command line for :func:`expected_output` with the same arguments."""
    return f"ticks={ticks} rounds={rounds}" + (f" cpus=2 ap_rounds={AP_ROUNDS}" if smp else "")


def build_ticks_guest(tmp: Path) -> Path:
    """guests/ticks3.S built into ``tmp`` (run it with :func:`ticks_cmdline`)."""
    built: Path = load_build_module().build_guest("ticks3", tmp)
    return built


# --- what the snapshot tests share ----------------------------------------------------------------
def wait_for(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def kvmlite(*args: str, **kw) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    """``python3 -m kvmlite run ARGS`` with this tree on the path (stdout and stderr piped)."""
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-m", "kvmlite", "run", *args],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        **kw,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
