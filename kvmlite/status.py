"""kvmlite's exit statuses: the one list (``kvmlite run`` and :meth:`Machine.run` return these).

A guest that writes v to the debug-exit port (QEMU's ``isa-debug-exit``) makes kvmlite exit with
``(v << 1) | 1``, as QEMU does: every odd status can come from the guest.  kvmlite's own statuses
are therefore even, so that no guest can fake one:

=====  ==================  ====================================================================
0      ``OK``              the guest stopped cleanly (HLT with interrupts off, ACPI power-off,
                           reset with ``--on-reset exit``, Ctrl-A x)
2      ``BAD_INPUT``       bad arguments, a malformed kernel or initrd: one sentence on stderr
4      ``GUEST_CRASH``     triple fault, failed VM entry, KVM internal error, VMM error
6      ``NO_BACKEND``      ``--backend kvm`` and no usable /dev/kvm
8      ``TIMEOUT``         ``--timeout`` seconds of wall time passed (restarts included)
10     ``OUTPUT_LIMIT``    the guest wrote more than ``--max-output`` bytes to the console
128+n  ``SIGNALED + n``    ended by signal n (130: Ctrl-C, 143: SIGTERM), as a shell reports it;
                           159 (SIGSYS): a thread made a system call its seccomp list forbids
                           (kvmlite.vmm.seccomp)
=====  ==================  ====================================================================
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    BAD_INPUT = 2
    GUEST_CRASH = 4
    NO_BACKEND = 6
    TIMEOUT = 8
    OUTPUT_LIMIT = 10
    SIGNALED = 128
    INTERRUPTED = 128 + signal.SIGINT  # 130: Ctrl-C


def signaled(signum: int) -> int:
    """The status of a run ended by signal ``signum``."""
    return ExitStatus.SIGNALED + signum

