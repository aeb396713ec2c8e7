"""Guest-visible exceptions raised inside the emulator, and their vectors.

An instruction that faults raises :class:`GuestFault`; :meth:`Executor.step`
catches it, rolls RIP back to the faulting instruction and delivers the
exception through the IVT or IDT, exactly as the CPU would.  These are
control flow, not failures of kvmlite, but they derive from
:class:`~kvmlite.errors.EmulatorError` so that one escaping a caller that
bypasses ``step()`` is still a clear kvmlite error.  A fault while delivering
a double fault ends in :class:`TripleFault`, which *does* leave ``step()``:
the VMM resets or stops the guest, as KVM reports ``KVM_EXIT_SHUTDOWN``.

:class:`PageFault`, :class:`NonCanonicalAddress` and :class:`InvalidPdpte`
are raised by :mod:`kvmlite.emulator.mmu` (through ``ops.read_linear``/
``write_linear``) and converted to #PF and #GP/#SS by the executor.
"""

from __future__ import annotations

from kvmlite.errors import EmulatorError
from kvmlite.x86 import PfErr, Vector

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


# --- raised by the MMU (kvmlite.emulator.mmu) through ops.read_linear/write_linear
class PageFault(EmulatorError):
    """A translation failed: the executor delivers #PF with CR2 = ``address``."""

    def __init__(self, address: int, error_code: int, reason: str = "") -> None:
        self.address = address
        self.error_code = error_code
        self.reason = reason
        bits = [flag.name for flag in PfErr if error_code & flag and flag.name]
        detail = f": {reason}" if reason else ""
        super().__init__(f"#PF at {address:#x}, error code {error_code:#x} [{' '.join(bits) or '-'}]{detail}")


class NonCanonicalAddress(EmulatorError):
    """A long-mode linear address is not canonical: #GP (or #SS for stack accesses), not #PF."""

    def __init__(self, address: int) -> None:
        self.address = address
        super().__init__(f"non-canonical linear address {address:#x}")


class InvalidPdpte(EmulatorError):
    """A PAE PDPTE loaded at a CR3/CR0/CR4 write has reserved bits set: the MOV raises #GP."""

    def __init__(self, index: int, value: int) -> None:
        self.index = index
        self.value = value
        super().__init__(f"PAE PDPTE {index} = {value:#018x} has reserved bits set")
