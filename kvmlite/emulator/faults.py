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

# Exception vectors (Intel SDM vol. 3, table 6-1).
DE = 0  # divide error
DB = 1  # debug
NMI = 2
BP = 3  # breakpoint (INT3)
OF = 4  # overflow (INTO)
BR = 5  # BOUND range exceeded
UD = 6  # invalid opcode
NM = 7  # device not available
DF = 8  # double fault
TS = 10  # invalid TSS
NP = 11  # segment not present
SS = 12  # stack-segment fault
GP = 13  # general protection
PF = 14  # page fault
MF = 16  # x87 floating point
AC = 17  # alignment check
MC = 18  # machine check
XM = 19  # SIMD floating point

VECTOR_NAMES = {
    DE: "#DE", DB: "#DB", NMI: "NMI", BP: "#BP", OF: "#OF", BR: "#BR", UD: "#UD", NM: "#NM", DF: "#DF",
    TS: "#TS", NP: "#NP", SS: "#SS", GP: "#GP", PF: "#PF", MF: "#MF", AC: "#AC", MC: "#MC", XM: "#XM",
}  # fmt: skip

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
