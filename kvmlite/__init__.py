"""kvmlite: a KVM hypervisor toolkit in Python."""

__version__ = "0.1.0"
