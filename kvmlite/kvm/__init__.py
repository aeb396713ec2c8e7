"""The /dev/kvm binding: structures and numbers (``structs``, ``constants``), then one
object per file descriptor: :class:`Kvm` -> :class:`Vm` -> :class:`Vcpu`."""

from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.kvm.system import Kvm
from kvmlite.kvm.vcpu import Vcpu
from kvmlite.kvm.vm import Vm

__all__ = ["CpuidEntry", "Kvm", "Vcpu", "Vm"]
