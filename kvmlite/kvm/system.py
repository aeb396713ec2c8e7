"""``Kvm``: the /dev/kvm file descriptor (system ioctls)."""

from __future__ import annotations

import errno
import os

from kvmlite.errors import KvmIoctlError, KvmUnavailableError
from kvmlite.kvm import structs as S
from kvmlite.kvm.constants import KVM_API_VERSION, Cap, Ioctl
from kvmlite.kvm.cpuid import CpuidEntry, cpuid_from_struct
from kvmlite.kvm.ioctl import ioctl
from kvmlite.kvm.vm import Vm

DEFAULT_DEVICE = "/dev/kvm"
_MAX_CPUID_ENTRIES = 256
_MAX_MSRS = 1024



class Kvm:
    """An open /dev/kvm.  ``Kvm()`` raises :class:`KvmUnavailableError` with the reason if it cannot."""

    def __init__(self, path: str = DEFAULT_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise KvmUnavailableError(f"cannot open {path}: {err.strerror}") from err
        self.path = path
        version = self.api_version()
        if version != KVM_API_VERSION:
            os.close(self.fd)
            raise KvmUnavailableError(f"{path} speaks KVM API {version}, kvmlite needs {KVM_API_VERSION}")

    @staticmethod
    def available(path: str = DEFAULT_DEVICE) -> tuple[bool, str]:
        """(usable, reason): whether /dev/kvm can be opened and speaks API 12, without raising."""
        try:
            Kvm(path).close()
        except KvmUnavailableError as err:
            return False, str(err)
        return True, f"{path} API {KVM_API_VERSION}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        return ioctl(self.fd, Ioctl.KVM_GET_API_VERSION)

    def check_extension(self, cap: Cap | int) -> int:
        """The capability's value: 0 when absent, often 1 or a count when present."""
        return ioctl(self.fd, Ioctl.KVM_CHECK_EXTENSION, int(cap))

    def capabilities(self) -> dict[Cap, int]:
        return {cap: self.check_extension(cap) for cap in Cap}

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, Ioctl.KVM_GET_VCPU_MMAP_SIZE)

    def _cpuid(self, request: Ioctl) -> list[CpuidEntry]:
        nent = _MAX_CPUID_ENTRIES
        while True:
            buf = S.cpuid2_with(nent)
            try:
                ioctl(self.fd, request, buf)
                break
            except KvmIoctlError as err:
                if err.errno != errno.E2BIG or nent >= 4096:  # the table is bigger: grow and retry
                    raise
                nent *= 2
        return cpuid_from_struct(buf)

    def supported_cpuid(self) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID: what the host can offer a guest."""
        return self._cpuid(Ioctl.KVM_GET_SUPPORTED_CPUID)

    def emulated_cpuid(self) -> list[CpuidEntry]:
        return self._cpuid(Ioctl.KVM_GET_EMULATED_CPUID)

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores."""
        buf = S.msr_list_with(_MAX_MSRS)
        ioctl(self.fd, Ioctl.KVM_GET_MSR_INDEX_LIST, buf)
        return list(buf.indices[: buf.nmsrs])

    def msr_feature_index_list(self) -> list[int]:
        buf = S.msr_list_with(_MAX_MSRS)
        ioctl(self.fd, Ioctl.KVM_GET_MSR_FEATURE_INDEX_LIST, buf)
        return list(buf.indices[: buf.nmsrs])

    def create_vm(self) -> Vm:
        return Vm(ioctl(self.fd, Ioctl.KVM_CREATE_VM, 0), self.vcpu_mmap_size(), self)

