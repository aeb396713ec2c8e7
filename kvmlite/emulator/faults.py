"""Guest-visible exceptions raised inside the emulator, and their vectors.

An instruction that faults raises :class:`GuestFault`; :meth:`Executor.step`
catches it, rolls RIP back to the faulting instruction and delivers the
exception through the IVT or IDT, exactly as the CPU would.  These are
control flow, not failures of kvmlite, but they derive from
:class:`~kvmlite.errors.EmulatorError` so that one escaping a caller that
bypasses ``step()`` is still a clear kvmlite error.  A fault while delivering
a double fault ends in :class:`TripleFault`, which *does* leave ``step()``:
the VMM resets or stops the guest, as KVM reports ``KVM_EXIT_SHUTDOWN``.

The page-fault and non-canonical errors come from :mod:`kvmlite.emulator.mmu`
(raised by ``ops.read_linear``/``write_linear``) and are converted to #PF and
#GP/#SS by the executor.
"""

from __future__ import annotations

from kvmlite.errors import EmulatorError
from kvmlite.x86 import Vector

# Exception vectors (kvmlite.x86.Vector), under the short names the executor uses.
DE, DB, NMI, BP, OF, BR = Vector.DE, Vector.DB, Vector.NMI, Vector.BP, Vector.OF, Vector.BR
UD, NM, DF, TS, NP, SS = Vector.UD, Vector.NM, Vector.DF, Vector.TS, Vector.NP, Vector.SS
GP, PF, MF, AC, MC, XM = Vector.GP, Vector.PF, Vector.MF, Vector.AC, Vector.MC, Vector.XM

VECTOR_NAMES = {int(v): v.mnemonic for v in Vector}

# Exceptions that push an error code (in protected and long mode).
HAS_ERROR_CODE = frozenset({DF, TS, NP, SS, GP, PF, AC})
# Contributory exceptions: two in a row make a double fault (SDM table 6-5).
CONTRIBUTORY = frozenset({DE, TS, NP, SS, GP})


class GuestFault(EmulatorError):
    """An exception the guest must see: vector, optional error code, CR2 for #PF."""

    def __init__(
        self, vector: int, error_code: int | None = None, address: int = 0, reason: str = ""
    ) -> None:
        self.vector = vector
        self.error_code = error_code
        self.address = address
        name = VECTOR_NAMES.get(vector, f"vector {vector}")
        code = f"({error_code:#x})" if error_code is not None else ""
        super().__init__(f"{name}{code}{': ' + reason if reason else ''}")


class TripleFault(EmulatorError):
    """Delivering an exception failed three times over: the guest must be reset or stopped."""


def gp(error_code: int = 0, reason: str = "") -> GuestFault:
    """#GP with an error code (0 unless a selector is to blame)."""
    return GuestFault(GP, error_code, reason=reason)


def ud(reason: str = "") -> GuestFault:
    return GuestFault(UD, reason=reason)
