"""The registry's devices: their states captured, and loaded into the devices of another machine.

A restored machine is built by the same builder as a booted one (so each
device is wired to the new run's interrupt lines, console, timers and
images); then each device takes its saved state *in place*, since buses,
timers and wrappers already hold references to it.  In place works for every
device the same way: ``type(d).from_state(state, **wiring)`` builds a device
from the state with ``d``'s own wiring (its constructor's arguments, read
back from the attributes it stored them in), and ``d`` *adopts* that
device's attributes: plain values are taken, sub-objects (PIT channels, PIC
chips, the FIFOs' owners) take theirs recursively so the objects a bus holds
stay the ones in use, and callables (wiring) stay ``d``'s own.

A device whose object graph the machine is wired into beyond its
constructor (the PCI bus with its functions and BAR listeners, a virtio
transport whose device the I/O thread's eventfds and the timer service
call) instead has ``load_state(state)``, which takes the record in place,
and :func:`load_state` uses that.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from kvmlite.devices.base import DeviceState
from kvmlite.errors import KvmliteError
from kvmlite.snapshot import SnapshotError
from kvmlite.vmm.registry import DeviceRegistry

log = logging.getLogger(__name__)


def capture_devices(registry: DeviceRegistry) -> list[dict[str, Any]]:
    """``[{name, type, state}]`` for every device in attach order (state None: it has no guest state)."""
    out = []
    for record in registry:
        state_fn = getattr(record.device, "state", None)
        state = state_fn() if callable(state_fn) else None
        if not isinstance(state, DeviceState):
            raise SnapshotError(f"device {record.name} ({record.type}) cannot be saved in a snapshot yet")
        out.append({"name": record.name, "type": record.type, "state": state})
    return out


def check_device_set(registry: DeviceRegistry, saved: list[dict[str, Any]]) -> None:
    """The new machine has exactly the saved devices (names, types), or one sentence says what differs."""
    have = [(r.name, r.type) for r in registry]
    want = [(str(d.get("name")), str(d.get("type"))) for d in saved]
    if have == want:
        return
    missing = [f"{n} ({t})" for n, t in want if (n, t) not in have]
    extra = [f"{n} ({t})" for n, t in have if (n, t) not in want]
    parts = []
    if missing:
        parts.append(f"the snapshot has {', '.join(missing)} which this command line does not attach")
    if extra:
        parts.append(f"this command line attaches {', '.join(extra)} which the snapshot does not have")
    if not parts:
        parts.append("the devices are attached in another order")
    raise SnapshotError("device set mismatch: " + "; ".join(parts))


def restore_devices(registry: DeviceRegistry, saved: list[dict[str, Any]], unchanged: bool = False) -> None:
    """Give every device of ``registry`` its saved state (after :func:`check_device_set`).

    With ``unchanged`` a device whose state equals the saved one now is left as it is
    (reset-to-snapshot: most devices were not touched by one run, and loading costs more
    than comparing).
    """
    for entry in saved:
        state = entry["state"]
        if state is None:
            continue
        record = registry[entry["name"]]
        if unchanged and record.device.state() == state:
            continue
        load_state(record.device, state, record.name)


def load_state(device: Any, state: DeviceState, name: str) -> None:
    """``device`` takes ``state`` in place (see the module docstring)."""
    cls = type(device)
    in_place = getattr(device, "load_state", None)
    try:
        if callable(in_place):
            in_place(state)
            return
        fresh = cls.from_state(state, **_wiring(device))
    except KvmliteError as err:
        raise SnapshotError(f"device {name}: {err}") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as err:
        raise SnapshotError(f"device {name}: the snapshot's state does not fit it ({err!r})") from None
    _adopt(device, fresh, {id(fresh): device})


def replay_devices(registry: DeviceRegistry) -> None:
    """After a restore, with RAM in place: devices run what their queues hold (virtio's ``replay``)."""
    for record in registry:
        inner = getattr(record.device, "device", None)
        replay = getattr(inner, "replay", None)
        if callable(replay):
            replay()


def _wiring(device: Any) -> dict[str, Any]:
    """The constructor arguments ``device`` was built with, as far as it keeps them."""
    out: dict[str, Any] = {}
    attrs = vars(device)
    for name in _constructor_params(type(device)):
        for attr in (f"_{name}", name):
            if attr in attrs:
                out[name] = attrs[attr]
                break
    return out


_CONSTRUCTOR_PARAMS: dict[type, tuple[str, ...]] = {}


def _constructor_params(cls: type) -> tuple[str, ...]:
    known = _CONSTRUCTOR_PARAMS.get(cls)
    if known is None:
        init = inspect.getattr_static(cls, "__init__")  # the function itself, as the class holds it
        params = list(inspect.signature(init).parameters.values())[1:]
        known = tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        _CONSTRUCTOR_PARAMS[cls] = known
    return known


def _adoptable(old: Any, new: Any) -> bool:
    return (
        type(old) is type(new)
        and hasattr(new, "__dict__")
        and not callable(new)
        and type(new).__module__.startswith("kvmlite.")
    )


def _adopt(old: Any, new: Any, seen: dict[int, Any]) -> None:
    """``old`` takes ``new``'s state; ``seen`` maps objects of ``new``'s graph to ``old``'s."""
    seen[id(new)] = old
    mine = vars(old)
    for key, value in vars(new).items():
        if id(value) in seen:
            mine[key] = seen[id(value)]
        elif callable(value) and key in mine:
            continue  # wiring: the old device's lines and sinks stay
        elif key in mine and _adoptable(mine[key], value):
            _adopt(mine[key], value, seen)
        elif (
            key in mine
            and isinstance(value, list)
            and isinstance(mine[key], list)
            and len(value) == len(mine[key])
            and value
            and all(_adoptable(a, b) for a, b in zip(mine[key], value, strict=True))
        ):
            for a, b in zip(mine[key], value, strict=True):
                _adopt(a, b, seen)
        else:
            mine[key] = value
