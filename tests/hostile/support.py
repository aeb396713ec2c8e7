"""The hostile-guest suite's harness: small multiboot guests, run with kvmlite under watch.

Every hostile run is checked the same way (:func:`contained`): the documented exit status, no
Python traceback on stderr, wall time under a bound, and the process's peak RSS, open file
descriptors and threads under bounds (sampled from /proc while it runs, the peak RSS from
``wait4``).  The guests are 32-bit multiboot kernels at CPL 0: on this project's nested host every
ring-0 instruction costs about 1 µs and every exit about 10 µs, so they sweep sparsely where a
dense sweep would take minutes (each guest says where).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import assert_no_traceback, build_multiboot
from tests.images import GUEST_LIB, GUEST_STATUS

#: A guest's frame: the multiboot header, a stack, ``exit`` (isa-debug-exit, status GUEST_STATUS)
#: and the console routines of GUEST_LIB; BODY is the hostile part.
FRAME = """
.section .multiboot, "a"
.align 4
.long 0x1BADB002, 0, -0x1BADB002
.text
.code32
.globl _start
_start:
    mov $stack_top, %esp
BODY
    call exit
GUEST_LIB
.bss
.align 16
.skip 4096
stack_top:
"""

#: Peak RSS a hostile run may reach (kvmlite's own ~60-90 MiB plus what the guest touches).
RSS_BOUND_MIB = 320
FD_BOUND = 64
THREAD_BOUND = 32
#: Statuses the suite expects.
EXITED = GUEST_STATUS  # the guest reached its end and wrote isa-debug-exit
TIMEOUT, OUTPUT_LIMIT, GUEST_CRASH = 8, 10, 4


def hostile_guest(tmp: Path, name: str, body: str) -> Path:
    return build_multiboot(tmp, name, FRAME.replace("BODY", body).replace("GUEST_LIB", GUEST_LIB))


@dataclass
class Outcome:
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float
    max_rss_mib: float
    max_fds: int
    max_threads: int


def _count(pid: int) -> tuple[int, int]:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    threads = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:")), 0)
    return fds, threads


def run_watched(kernel: Path, *args: str, bound: float = 30.0) -> Outcome:
    """``kvmlite run --kernel KERNEL ARGS`` with its resources sampled; killed after ``bound`` s."""
    cmd = [sys.executable, "-m", "kvmlite", "run", "--kernel", str(kernel), *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        max_fds = max_threads = 0
        while True:
            pid, wstatus, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            fds, threads = _count(proc.pid)
            max_fds, max_threads = max(max_fds, fds), max(max_threads, threads)
            if time.monotonic() - start > bound:
                os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        seconds = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(wstatus)
        out.seek(0)
        err.seek(0)
        outcome = Outcome(
            proc.returncode,
            out.read(),
            err.read().decode(errors="replace"),
            seconds,
            usage.ru_maxrss / 1024,
            max_fds,
            max_threads,
        )
    assert_no_traceback(cmd, outcome.stderr)
    return outcome


def contained(outcome: Outcome, status: int, seconds: float) -> None:
    """The run ended with ``status`` within ``seconds`` and stayed within the resource bounds."""
    assert outcome.returncode == status, (outcome.returncode, outcome.stderr[-2000:])
    assert outcome.seconds < seconds, f"took {outcome.seconds:.1f} s"
    assert outcome.max_rss_mib < RSS_BOUND_MIB, f"peak RSS {outcome.max_rss_mib:.0f} MiB"
    assert outcome.max_fds < FD_BOUND, f"{outcome.max_fds} fds open"
    assert outcome.max_threads < THREAD_BOUND, f"{outcome.max_threads} threads"
