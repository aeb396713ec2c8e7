"""Snapshots: a VM's whole state captured, saved to a file, restored, reset to, migrated.

* :mod:`.codec` turns state into JSON-able data and back (bytes, device-state
  dataclasses; nothing is ever unpickled);
* :mod:`.vcpu` captures and restores one vCPU through the backend protocol
  (registers, FPU/XSAVE, XCRs, MSRs, LAPIC, events, MP state, debug
  registers; the emulator's extra state on the software backend) and the
  in-kernel devices of a KVM VM (PIC, IOAPIC, PIT2, kvmclock);
* :mod:`.devices` applies device states to the devices a new machine attached;
* :mod:`.fileformat` is the file format (``docs/snapshot-format.md``);
* :mod:`.machine` puts them together: :func:`~.machine.capture` a paused
  machine into a :class:`~.machine.Snapshot`, :func:`~.machine.build_restored`
  a machine from one, and :class:`~.machine.ResetPoint` for reset-to-snapshot.
"""

from __future__ import annotations

from kvmlite.errors import KvmliteError


class SnapshotError(KvmliteError):
    """A snapshot cannot be taken, read or restored (the message says which part and why)."""
