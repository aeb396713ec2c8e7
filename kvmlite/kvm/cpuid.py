"""``CpuidEntry``: one CPUID leaf as KVM's CPUID ioctls carry it, and its conversions to and from
``kvm_cpuid2``.  Its own module so that ``system.py`` (which reads the host's table) and
``vcpu.py`` (which sets a guest's) share it without importing each other."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from kvmlite.kvm import structs as S


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def cpuid_to_struct(entries: list[CpuidEntry]) -> ctypes.Structure:
    """Build a ``kvm_cpuid2`` for KVM_SET_CPUID2 from entries."""
    buf = S.cpuid2_with(len(entries))
    for dst, e in zip(buf.entries, entries, strict=True):
        dst.function, dst.index, dst.flags = e.function, e.index, e.flags
        dst.eax, dst.ebx, dst.ecx, dst.edx = e.eax, e.ebx, e.ecx, e.edx
    return buf


def cpuid_from_struct(buf: ctypes.Structure) -> list[CpuidEntry]:
    """The entries a CPUID ioctl filled in (``buf.nent`` of them)."""
    return [
        CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in buf.entries[: buf.nent]
    ]
