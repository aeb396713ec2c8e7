"""Constants of the KVM API for x86-64: ioctl numbers, exit reasons, capabilities, flags.

Plain data, no logic beyond the ``_IOC`` encoding the kernel uses.
"""

from __future__ import annotations

import ctypes as C
from enum import IntEnum, IntFlag

from kvmlite.kvm import structs as S

KVM_API_VERSION = 12
KVMIO = 0xAE

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _iow(nr: int, struct: type[C._CData] | int) -> int:
    return _ioc(_IOC_WRITE, nr, struct if isinstance(struct, int) else C.sizeof(struct))


def _ior(nr: int, struct: type[C._CData] | int) -> int:
    return _ioc(_IOC_READ, nr, struct if isinstance(struct, int) else C.sizeof(struct))


def _iowr(nr: int, struct: type[C._CData] | int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, struct if isinstance(struct, int) else C.sizeof(struct))


class Ioctl(IntEnum):
    """ioctl request numbers; the enum member's name is what errors report."""

    # /dev/kvm
    KVM_GET_API_VERSION = _io(0x00)
    KVM_CREATE_VM = _io(0x01)
    KVM_GET_MSR_INDEX_LIST = _iowr(0x02, S.kvm_msr_list)
    KVM_CHECK_EXTENSION = _io(0x03)
    KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
    KVM_GET_SUPPORTED_CPUID = _iowr(0x05, S.kvm_cpuid2)
    KVM_GET_EMULATED_CPUID = _iowr(0x09, S.kvm_cpuid2)
    KVM_GET_MSR_FEATURE_INDEX_LIST = _iowr(0x0A, S.kvm_msr_list)
    # VM
    KVM_CREATE_VCPU = _io(0x41)
    KVM_GET_DIRTY_LOG = _iow(0x42, S.kvm_dirty_log)
    KVM_SET_USER_MEMORY_REGION = _iow(0x46, S.kvm_userspace_memory_region)
    KVM_SET_TSS_ADDR = _io(0x47)
    KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
    KVM_CREATE_IRQCHIP = _io(0x60)
    KVM_IRQ_LINE = _iow(0x61, S.kvm_irq_level)
    KVM_GET_IRQCHIP = _iowr(0x62, S.kvm_irqchip)
    KVM_SET_IRQCHIP = _ior(0x63, S.kvm_irqchip)
    KVM_IRQ_LINE_STATUS = _iowr(0x67, S.kvm_irq_level)
    KVM_REGISTER_COALESCED_MMIO = _iow(0x67, S.kvm_coalesced_mmio_zone)
    KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, S.kvm_coalesced_mmio_zone)
    KVM_SET_GSI_ROUTING = _iow(0x6A, S.kvm_irq_routing)
    KVM_IRQFD = _iow(0x76, S.kvm_irqfd)
    KVM_CREATE_PIT2 = _iow(0x77, S.kvm_pit_config)
    KVM_IOEVENTFD = _iow(0x79, S.kvm_ioeventfd)
    KVM_X86_SET_MSR_FILTER = _iow(0xC6, S.kvm_msr_filter)
    KVM_SET_CLOCK = _iow(0x7B, S.kvm_clock_data)
    KVM_GET_CLOCK = _ior(0x7C, S.kvm_clock_data)
    KVM_GET_PIT2 = _ior(0x9F, S.kvm_pit_state2)
    KVM_SET_PIT2 = _iow(0xA0, S.kvm_pit_state2)
    KVM_SIGNAL_MSI = _iow(0xA5, S.kvm_msi)
    KVM_CLEAR_DIRTY_LOG = _iowr(0xC0, S.kvm_clear_dirty_log)
    # VM and vCPU
    KVM_ENABLE_CAP = _iow(0xA3, S.kvm_enable_cap)
    # vCPU
    KVM_RUN = _io(0x80)
    KVM_GET_REGS = _ior(0x81, S.kvm_regs)
    KVM_SET_REGS = _iow(0x82, S.kvm_regs)
    KVM_GET_SREGS = _ior(0x83, S.kvm_sregs)
    KVM_SET_SREGS = _iow(0x84, S.kvm_sregs)
    KVM_TRANSLATE = _iowr(0x85, S.kvm_translation)
    KVM_INTERRUPT = _iow(0x86, S.kvm_interrupt)
    KVM_GET_MSRS = _iowr(0x88, S.kvm_msrs)
    KVM_SET_MSRS = _iow(0x89, S.kvm_msrs)
    KVM_GET_FPU = _ior(0x8C, S.kvm_fpu)
    KVM_SET_FPU = _iow(0x8D, S.kvm_fpu)
    KVM_GET_LAPIC = _ior(0x8E, S.kvm_lapic_state)
    KVM_SET_LAPIC = _iow(0x8F, S.kvm_lapic_state)
    KVM_SET_CPUID2 = _iow(0x90, S.kvm_cpuid2)
    KVM_GET_CPUID2 = _iowr(0x91, S.kvm_cpuid2)
    KVM_GET_MP_STATE = _ior(0x98, S.kvm_mp_state)
    KVM_SET_MP_STATE = _iow(0x99, S.kvm_mp_state)
    KVM_NMI = _io(0x9A)
    KVM_SET_GUEST_DEBUG = _iow(0x9B, S.kvm_guest_debug)
    KVM_GET_VCPU_EVENTS = _ior(0x9F, S.kvm_vcpu_events)
    KVM_SET_VCPU_EVENTS = _iow(0xA0, S.kvm_vcpu_events)
    KVM_GET_DEBUGREGS = _ior(0xA1, S.kvm_debugregs)
    KVM_SET_DEBUGREGS = _iow(0xA2, S.kvm_debugregs)
    KVM_GET_XSAVE = _ior(0xA4, S.kvm_xsave)
    KVM_SET_XSAVE = _iow(0xA5, S.kvm_xsave)
    KVM_GET_XCRS = _ior(0xA6, S.kvm_xcrs)
    KVM_SET_XCRS = _iow(0xA7, S.kvm_xcrs)
    KVM_GET_TSC_KHZ = _io(0xA3)


class ExitReason(IntEnum):
    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    NOTIFY = 37


class InternalError(IntEnum):
    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


class SystemEvent(IntEnum):
    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class MpState(IntEnum):
    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8
    AP_RESET_HOLD = 9
    SUSPENDED = 10


class Cap(IntEnum):
    """KVM_CAP_* numbers of interest to an x86 VMM."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    CLOCKSOURCE = 8
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    NOP_IO_DELAY = 12
    MP_STATE = 14
    COALESCED_MMIO = 15
    SYNC_MMU = 16
    USER_NMI = 22
    SET_GUEST_DEBUG = 23
    REINJECT_CONTROL = 24
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    MCE = 31
    IRQFD = 32
    PIT2 = 33
    SET_BOOT_CPU_ID = 34
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    INTR_SHADOW = 49
    DEBUGREGS = 50
    X86_ROBUST_SINGLESTEP = 51
    ENABLE_CAP = 54
    XSAVE = 55
    XCRS = 56
    ASYNC_PF = 59
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    MAX_VCPUS = 66
    TSC_DEADLINE_TIMER = 72
    SYNC_REGS = 74
    SIGNAL_MSI = 77
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    EXT_EMUL_CPUID = 95
    IOEVENTFD_NO_LENGTH = 100
    CHECK_EXTENSION_VM = 105
    DISABLE_QUIRKS = 116
    X86_SMM = 117
    MULTI_ADDRESS_SPACE = 118
    GUEST_DEBUG_HW_BPS = 119
    GUEST_DEBUG_HW_WPS = 120
    SPLIT_IRQCHIP = 121
    IOEVENTFD_ANY_LENGTH = 122
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    IMMEDIATE_EXIT = 136
    X86_DISABLE_EXITS = 143
    GET_MSR_FEATURES = 153
    NESTED_STATE = 157
    COALESCED_PIO = 162
    EXCEPTION_PAYLOAD = 164
    MANUAL_DIRTY_LOG_PROTECT2 = 168
    HALT_POLL = 182
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189
    DIRTY_LOG_RING = 192
    X86_BUS_LOCK_EXIT = 193
    SREGS2 = 200
    EXIT_HYPERCALL = 201
    BINARY_STATS_FD = 203
    EXIT_ON_EMULATION_FAILURE = 204


class MemFlag(IntFlag):
    LOG_DIRTY_PAGES = 1 << 0
    READONLY = 1 << 1


class GuestDebug(IntFlag):
    ENABLE = 0x1
    SINGLESTEP = 0x2
    USE_SW_BP = 0x10000
    USE_HW_BP = 0x20000
    INJECT_DB = 0x40000
    INJECT_BP = 0x80000
    BLOCKIRQ = 0x100000


class IrqfdFlag(IntFlag):
    DEASSIGN = 1 << 0
    RESAMPLE = 1 << 1


class IoeventfdFlag(IntFlag):
    DATAMATCH = 1 << 0
    PIO = 1 << 1
    DEASSIGN = 1 << 2


class MsrFilterFlag(IntFlag):
    READ = 1 << 0
    WRITE = 1 << 1


class MsrExitReason(IntFlag):
    INVAL = 1 << 0
    UNKNOWN = 1 << 1
    FILTER = 1 << 2


class IrqchipId(IntEnum):
    PIC_MASTER = 0
    PIC_SLAVE = 1
    IOAPIC = 2


KVM_EXIT_IO_IN = 0
KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2
KVM_EXIT_IO_OUT = 1
KVM_PIT_SPEAKER_DUMMY = 1
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
