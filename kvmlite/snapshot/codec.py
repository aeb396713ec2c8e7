"""State as JSON-able data: bytes, device-state dataclasses and ctypes structures, and back.

Encoding is tagged: ``{"$b": base64}`` for bytes, ``{"$dc": "module:Class",
"f": {...}}`` for a :class:`~kvmlite.devices.base.DeviceState`.  Decoding
imports only ``kvmlite.`` modules and builds only ``DeviceState`` subclasses,
so a crafted file can name no other code; everything else is plain JSON.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import dataclasses
import importlib
from typing import Any, TypeVar

from kvmlite.devices.base import DeviceState
from kvmlite.snapshot import SnapshotError

StructT = TypeVar("StructT", bound=ctypes.Structure)


def encode(value: Any) -> Any:
    """``value`` as JSON-able data (see the module docstring)."""
    if isinstance(value, DeviceState):
        cls = type(value)
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"$dc": f"{cls.__module__}:{cls.__qualname__}", "f": fields}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, ctypes.Structure):
        return encode(bytes(value))
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    raise SnapshotError(f"cannot store a {type(value).__name__} in a snapshot")


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`; a malformed value is a :class:`SnapshotError`."""
    if isinstance(value, dict):
        if "$b" in value:
            try:
                return base64.b64decode(value["$b"], validate=True)
            except (binascii.Error, TypeError, ValueError) as err:
                raise SnapshotError(f"snapshot holds invalid base64 data: {err}") from None
        if "$dc" in value:
            return _dataclass(value)
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def _dataclass(value: dict[str, Any]) -> DeviceState:
    name, fields = value.get("$dc"), value.get("f")
    if not isinstance(name, str) or ":" not in name or not isinstance(fields, dict):
        raise SnapshotError("snapshot holds a malformed device state record")
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith("kvmlite."):
        raise SnapshotError(f"snapshot names a device state outside kvmlite: {name}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise SnapshotError(f"snapshot names a device state this kvmlite does not have: {name}") from None
    if not (isinstance(obj, type) and issubclass(obj, DeviceState)):
        raise SnapshotError(f"snapshot names {name}, which is not a device state")
    known = {f.name for f in dataclasses.fields(obj)}
    unknown = set(fields) - known
    if unknown:
        raise SnapshotError(
            f"device state {qualname} has fields this kvmlite does not know: {sorted(unknown)}"
        )
    try:
        return obj(**{k: decode(v) for k, v in fields.items()})
    except TypeError as err:
        raise SnapshotError(f"device state {qualname}: {err}") from None


def to_struct(cls: type[StructT], data: Any, what: str) -> StructT:
    """A ``cls`` structure from the bytes :func:`encode` stored for one (or ``data`` itself, a ``cls``
    already: reset-to-snapshot keeps its states as structures, built once)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, bytes) or len(data) != ctypes.sizeof(cls):
        got = f"{len(data)} bytes" if isinstance(data, bytes) else type(data).__name__
        raise SnapshotError(f"{what}: expected {ctypes.sizeof(cls)} bytes of {cls.__name__}, found {got}")
    return cls.from_buffer_copy(data)
