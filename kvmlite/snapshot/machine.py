"""A machine's snapshot: capture it, save it, build a machine from one, reset to one.

* :func:`capture_state` - everything but RAM of a paused machine (vCPUs, the
  in-kernel devices, every registry device), JSON-able after :mod:`.codec`;
* :func:`save` - pause, write the file (:mod:`.fileformat`), resume;
* :func:`build_restored` - ``kvmlite run --restore``: the machine the
  snapshot describes, built by the ordinary builder with the devices of the
  new command line (disk images, console), then every state loaded into it;
  nothing runs until all of the file has been checked and loaded;
* :class:`ResetPoint` - reset-to-snapshot in memory for fuzzing: only the
  pages dirtied since the snapshot are copied back (KVM's dirty log, or a
  comparison of the pages on the software backend), plus vCPU and device state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmlite.errors import KvmliteError
from kvmlite.loaders.base import EntryMode, LoadResult
from kvmlite.snapshot import SnapshotError
from kvmlite.snapshot import fileformat as F
from kvmlite.snapshot.devices import capture_devices, check_device_set, replay_devices, restore_devices
from kvmlite.snapshot.dirty import DirtyLog
from kvmlite.snapshot.vcpu import (
    boot_tsc,
    capture_kernel_devices,
    capture_vcpu,
    msr_indices,
    restore_kernel_devices,
    restore_vcpu,
    writable_msrs,
)
from kvmlite.vmm.irqchip import KernelIrqChip

if TYPE_CHECKING:
    from kvmlite.vmm.machine import Machine, MachineConfig

log = logging.getLogger(__name__)

#: What the state section's "machine" record must match on restore (the rest comes from the command line).
#: What a value of the wrong type or range in a state raises somewhere in a loader.
MALFORMED = (AttributeError, TypeError, ValueError, KeyError, IndexError, OverflowError, KvmliteError)
MACHINE_KEYS = ("memory_mib", "cpus", "backend", "irqchip", "extra_devices", "disks")


def _kernel_irqchip(machine: Machine) -> bool:
    """Whether the vCPUs' LAPICs are KVM's (the in-kernel irqchip, or the split one)."""
    return isinstance(machine.irqchip, KernelIrqChip)


def _irqchip_kind(machine: Machine) -> str:
    """'kernel', 'split' or 'userspace', as ``--irqchip`` names them."""
    if not _kernel_irqchip(machine):
        return "userspace"
    return "split" if getattr(machine.irqchip, "split", False) else "kernel"


def capture_state(machine: Machine) -> dict[str, Any]:
    """The machine's state but RAM (call while it is paused, or before it ran)."""
    vm, caps = machine.vm, machine.caps
    vcpus = [loop.vcpu for loop in machine.loops]
    if not vcpus:
        raise SnapshotError("the machine has no vCPUs yet")
    kind = _irqchip_kind(machine)
    lapic = kind != "userspace"
    indices = msr_indices(vm, vcpus[0])
    with machine.lock:
        devices = capture_devices(machine.devices)
        state: dict[str, Any] = {
            "machine": {
                "memory_mib": machine.config.memory_mib,
                "cpus": len(vcpus),
                "backend": caps.name,
                "irqchip": kind,
                "extra_devices": sorted(machine.config.extra_devices),
                "disks": len(machine.config.disks),
                "virtio_transport": machine.config.virtio_transport,
            },
            "cpus": [capture_vcpu(v, caps, indices, lapic) for v in vcpus],
            # which vCPUs wait in the userspace irqchip's halt wait (their RIP is past the HLT)
            "halted": [loop.halted for loop in machine.loops],
            # split: KVM has the LAPICs (in "cpus") and kvmclock; the PIC, IOAPIC and PIT are "devices"
            "kernel_devices": capture_kernel_devices(vm, split=kind == "split") if lapic else None,
            "devices": devices,
        }
    return state


def save(
    machine: Machine,
    path: Path,
    separate_memory: bool = False,
    stay_paused: bool = False,
    diff: bool = False,
) -> dict[str, Any]:
    """Pause, write the snapshot to ``path``, resume (unless ``stay_paused``: the caller then resumes).

    With ``diff`` only the pages written since the machine's previous snapshot go to the file,
    which names that snapshot as its base (``docs/snapshot-format.md``).  Every save starts the
    dirty tracking a later diff needs (:class:`SnapshotChain`).
    """
    control = machine.control
    chain = SnapshotChain.of(machine)
    if diff and chain.last is None:
        raise SnapshotError("a diff snapshot needs a previous snapshot of this VM to refer to")
    running = bool(machine.loops) and not control.stopping
    if running:
        control.pause()
    start = time.monotonic()
    try:
        # under the device lock: the I/O thread completes no request between the state and the RAM
        with machine.lock:
            state = capture_state(machine)
            pages = chain.take() if diff else None
            since = None if pages is None or chain.last is None else (chain.last, pages)
            written, snap_id = F.write_snapshot(path, state, machine.memory, separate_memory, since)
            chain.saved(F.DiffBase(path, snap_id))
    except BaseException:
        if running:
            control.resume()
        raise
    elapsed = time.monotonic() - start
    if running and not stay_paused:
        control.resume()
    log.info("snapshot %s: %d bytes of data in %.1f ms", path, written, elapsed * 1e3)
    return {
        "path": str(path),
        "memory": "diff" if diff else "full",
        "bytes": written,
        "ms": round(elapsed * 1e3, 3),
        "paused": running and stay_paused,
    }


class SnapshotChain:
    """What a machine's next diff snapshot refers to: its last snapshot, and the pages written since."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.last: F.DiffBase | None = None
        self.log: DirtyLog | None = None

    @classmethod
    def of(cls, machine: Machine) -> SnapshotChain:
        chain: SnapshotChain | None = getattr(machine, "snapshot_chain", None)
        if chain is None:
            chain = machine.snapshot_chain = cls(machine)  # type: ignore[attr-defined]
        return chain

    def take(self) -> list[tuple[int, int]]:
        return self.log.take() if self.log is not None else []

    def saved(self, snapshot: F.DiffBase) -> None:
        """``snapshot`` was written (the machine paused): the next diff counts from here."""
        self.last = snapshot
        if self.log is None:
            self.log = DirtyLog(self.machine)
        else:
            self.log.take()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def restore_config(config: MachineConfig, saved: Any, source: str) -> MachineConfig:
    """``config`` (the new command line) with what the snapshot fixes: RAM size, vCPUs, backend, irqchip.

    ``saved`` is the state's ``machine`` record; ``source`` names where it came from in messages
    ("snapshot PATH", "the migration source").
    """
    if not isinstance(saved, dict) or any(k not in saved for k in MACHINE_KEYS):
        raise SnapshotError(f"{source} does not describe its machine")
    try:
        memory_mib, cpus = int(saved["memory_mib"]), int(saved["cpus"])
        backend, irqchip = str(saved["backend"]), str(saved["irqchip"])
        extras, disks = [str(d) for d in saved["extra_devices"]], int(saved["disks"])
        transport = str(saved.get("virtio_transport", "pci"))
    except (TypeError, ValueError) as err:
        raise SnapshotError(f"{source} has a malformed machine record ({err!r})") from None
    if config.backend != "auto" and config.backend != backend:
        raise SnapshotError(f"{source} comes from the {backend} backend, not {config.backend}")
    if sorted(config.extra_devices) != extras:
        raise SnapshotError(
            f"device set mismatch: {source} has the optional devices {extras or 'none'}, "
            f"this command line {sorted(config.extra_devices) or 'none'}"
        )
    if len(config.disks) != disks:
        raise SnapshotError(
            f"device set mismatch: {source} has {disks} disks, this command line {len(config.disks)}"
        )
    return replace(
        config, memory_mib=memory_mib, cpus=cpus, backend=backend, irqchip=irqchip, virtio_transport=transport
    )


def build_restored(config: MachineConfig, path: Path, lazy: bool = False) -> Machine:
    """The machine of snapshot ``path``, with the devices ``config`` attaches, ready to :meth:`run`."""

    start = time.monotonic()
    chain = F.read_chain(path)  # a diff snapshot: its bases down to the full one, first
    snap = chain[-1]
    source = f"snapshot {path}"
    machine = build_empty(config, snap.state.get("machine"), snap.state.get("devices"), source)
    try:
        F.check_regions(snap, machine.memory)
        # every CRC checked before anything is loaded (a lazy restore reads only the diffs' pages)
        runs = [run for s in (chain[1:] if lazy else chain) for run in F.read_memory_runs(s)]
        if lazy:
            F.map_memory(machine.memory, chain[0])
            for offset, data in runs:
                F.write_image(machine.memory, offset, data)
        else:
            F.load_memory(machine.memory, runs)
        load_into(machine, snap.state)  # after RAM: virtio devices run what their rings hold
    except SnapshotError:
        machine.close()
        raise
    except MALFORMED as err:  # a value of the wrong kind deep in a state that passed its checksum
        machine.close()
        raise SnapshotError(f"{source} has a malformed state ({type(err).__name__}: {err})") from None
    except BaseException:
        machine.close()
        raise
    SnapshotChain.of(machine).saved(F.DiffBase(path, snap.id))  # a diff snapshot may refer to this one
    log.info("restored %s in %.1f ms", path, (time.monotonic() - start) * 1e3)
    return machine


def build_empty(
    config: MachineConfig, record: Any, devices: Any, source: str, lock_disks: bool = True
) -> Machine:
    """The machine ``record`` describes with ``config``'s devices, vCPUs created, nothing loaded or run.

    Its device set must be ``devices`` (the state's ``[{name, type}]``).  With ``lock_disks``
    False its disk images are opened but not locked (a migration target: the source has them).
    """
    from kvmlite.vmm.machine import Machine

    try:
        config = restore_config(config, record, source)
        machine = Machine(config)
    except SnapshotError:
        raise
    except KvmliteError as err:
        raise SnapshotError(f"{source}: {err}") from None
    machine.lock_disks = lock_disks
    try:
        machine.attach_configured_devices()
        if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
            raise SnapshotError(f"{source} has a malformed device list")
        check_device_set(machine.devices, devices)
        machine.load_result = LoadResult(format="snapshot", entry=0, mode=EntryMode.REAL)
        machine.create_vcpus(config.cpus)
    except SnapshotError:
        machine.close()
        raise
    except MALFORMED as err:
        machine.close()
        raise SnapshotError(f"{source} has a malformed state ({type(err).__name__}: {err})") from None
    except BaseException:
        machine.close()
        raise
    return machine


def load_into(machine: Machine, state: dict[str, Any], reset: bool = False) -> None:
    """Load vCPU, in-kernel and device state into a built machine (paused or not yet running).

    RAM must be in place already: virtio devices then run the requests the driver had made
    available but they had not taken yet (:meth:`~kvmlite.virtio.device.VirtioDevice.replay`).
    ``reset``: the machine is the one ``state`` was captured from (reset-to-snapshot): devices
    whose state did not change are left alone.
    """
    cpus = state.get("cpus")
    if not isinstance(cpus, list) or len(cpus) != len(machine.loops):
        raise SnapshotError(
            f"the snapshot holds {len(cpus) if isinstance(cpus, list) else 'no'} vCPUs, "
            f"the machine has {len(machine.loops)}"
        )
    kind = _irqchip_kind(machine)
    lapic = kind != "userspace"
    kernel = state.get("kernel_devices")
    record = state.get("machine")
    saved_kind = record.get("irqchip") if isinstance(record, dict) else None
    if lapic != (kernel is not None) or (saved_kind is not None and saved_kind != kind):
        saved_kind = saved_kind or ("userspace" if kernel is None else "in-kernel")
        raise SnapshotError(f"the snapshot's irqchip ({saved_kind}) differs from the machine's ({kind})")
    if kernel is not None:
        restore_kernel_devices(machine.vm, kernel, split=kind == "split")
    tsc = boot_tsc(cpus)
    halted = state.get("halted") or [False] * len(cpus)
    if not isinstance(halted, list) or len(halted) != len(cpus):
        raise SnapshotError("the snapshot's record of halted vCPUs is malformed")
    for loop, st, was_halted in zip(machine.loops, cpus, halted, strict=True):
        if not isinstance(st, dict):
            raise SnapshotError("the snapshot's vCPU state is malformed")
        restore_vcpu(loop.vcpu, machine.caps, st, lapic, tsc, reset)
        loop.state_reloaded = True
        loop.resume_halted = bool(was_halted)
        if not reset:
            loop.state_loaded()  # host-quirk repairs armed by what the guest did before the snapshot
    with machine.lock:
        before = _earliest_deadline(machine)
        restore_devices(machine.devices, state.get("devices") or [], unchanged=reset)
        reloaded = getattr(machine.irqchip, "state_reloaded", None)
        if callable(reloaded):
            reloaded()  # the split irqchip's MSI routes follow the IOAPIC's restored redirection table
        replay_devices(machine.devices)
        after = _earliest_deadline(machine)
    if after is not None and (before is None or after < before):
        machine.timers.poke()  # only when the timer service would otherwise sleep past a deadline


def _earliest_deadline(machine: Machine) -> int | None:
    deadlines = [d for d in (dev.next_deadline() for dev in machine.timers.devices) if d is not None]
    return min(deadlines, default=None)


class ResetPoint:
    """Reset-to-snapshot in memory: ``point = ResetPoint(machine)``, run, ``point.restore()``, run...

    Call both while the machine is paused (or not running).  With KVM, guest
    RAM is registered with dirty logging and ``restore()`` copies back only the
    pages KVM_GET_DIRTY_LOG reports; on the software backend it compares the
    pages with the saved copy (there is no dirty log to ask).
    """

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.state = capture_state(machine)
        for loop, cpu in zip(machine.loops, self.state["cpus"], strict=True):
            cpu["msrs"] = {str(k): v for k, v in writable_msrs(loop.vcpu, cpu["msrs"]).items()}
        self.copy = [bytes(region.view) for region in machine.memory]
        self.log = DirtyLog(machine) if DirtyLog.available(machine) else None
        self.restored_pages = 0

    def restore(self) -> int:
        """Back to the snapshot; returns how many pages were copied back."""
        machine = self.machine
        regions = list(machine.memory)
        if self.log is not None:
            dirty = self.log.take()
        else:
            dirty = [
                (i, off)
                for i, region in enumerate(regions)
                for off in range(0, region.size, F.PAGE)
                if not self.copy[i].startswith(region.view[off : off + F.PAGE], off)  # memcmp, no copy
            ]
        for i, off in dirty:
            regions[i].view[off : off + F.PAGE] = self.copy[i][off : off + F.PAGE]
        load_into(machine, self.state, reset=True)
        self.restored_pages = len(dirty)
        return len(dirty)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
