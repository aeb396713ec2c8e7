"""ctypes mirrors of the x86-64 structures in ``linux/kvm.h`` and ``asm/kvm.h``.

This module holds layout only: no logic, no ioctl calls.  Field names follow
the kernel headers so that the KVM API documentation reads straight across.
``tests/test_structs.py`` checks every size and offset against the real
headers by compiling a small C program.
"""

from __future__ import annotations

import ctypes as C
import functools

u8 = C.c_uint8
u16 = C.c_uint16
u32 = C.c_uint32
u64 = C.c_uint64
s32 = C.c_int32
s64 = C.c_int64


class Struct(C.Structure):
    """A ctypes structure with a readable repr (fields and their values)."""

    def __repr__(self) -> str:
        parts = []
        for name, *_ in self._fields_:
            if name.startswith("pad") or name.startswith("_"):
                continue
            value = getattr(self, name)
            parts.append(f"{name}={value:#x}" if isinstance(value, int) else f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# --- registers --------------------------------------------------------------


class kvm_regs(Struct):
    _fields_ = [
        (name, u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class kvm_segment(Struct):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(Struct):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(Struct):
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(Struct):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_msr_entry(Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(Struct):
    """Header only; the entries follow (see :func:`msrs_with`)."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


class kvm_msr_list(Struct):
    """Header only; the u32 indices follow."""

    _fields_ = [("nmsrs", u32)]


class kvm_cpuid_entry2(Struct):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(Struct):
    """Header only; the entries follow (see :func:`cpuid2_with`)."""

    _fields_ = [("nent", u32), ("padding", u32)]


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(Struct):
    _fields_ = [("regs", C.c_char * KVM_APIC_REG_SIZE)]


class kvm_debug_exit_arch(Struct):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_guest_debug_arch(Struct):
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(Struct):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


class _events_exception(Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _events_interrupt(Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _events_triple_fault(Struct):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(Struct):
    _fields_ = [
        ("exception", _events_exception),
        ("interrupt", _events_interrupt),
        ("nmi", _events_nmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", _events_smi),
        ("triple_fault", _events_triple_fault),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_mp_state(Struct):
    _fields_ = [("mp_state", u32)]


class kvm_debugregs(Struct):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class kvm_xsave(Struct):
    _fields_ = [("region", u32 * 1024)]


class kvm_xcr(Struct):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


KVM_MAX_XCRS = 16


class kvm_xcrs(Struct):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS), ("padding", u64 * 16)]


class kvm_interrupt(Struct):
    _fields_ = [("irq", u32)]


class kvm_translation(Struct):
    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


# --- VM-wide ----------------------------------------------------------------


class kvm_userspace_memory_region(Struct):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_irq_level(Struct):
    _fields_ = [("irq", u32), ("level", u32)]  # irq shares its word with s32 status


class kvm_pit_config(Struct):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_pit_channel_state(Struct):
    _fields_ = [
        ("count", u32),
        ("latched_count", u16),
        ("count_latched", u8),
        ("status_latched", u8),
        ("status", u8),
        ("read_state", u8),
        ("write_state", u8),
        ("write_latch", u8),
        ("rw_mode", u8),
        ("mode", u8),
        ("bcd", u8),
        ("gate", u8),
        ("count_load_time", s64),
    ]


class kvm_pit_state2(Struct):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


class kvm_pic_state(Struct):
    _fields_ = [
        (name, u8)
        for name in (
            "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
            "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi",
            "special_fully_nested_mode", "init4", "elcr", "elcr_mask",
        )
    ]  # fmt: skip


KVM_IOAPIC_NUM_PINS = 24


class kvm_ioapic_state(Struct):
    _fields_ = [
        ("base_address", u64),
        ("ioregsel", u32),
        ("id", u32),
        ("irr", u32),
        ("pad", u32),
        ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS),
    ]


class _irqchip_union(C.Union):
    _fields_ = [("dummy", C.c_char * 512), ("pic", kvm_pic_state), ("ioapic", kvm_ioapic_state)]


class kvm_irqchip(Struct):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", _irqchip_union)]


class kvm_irqfd(Struct):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_irq_routing_irqchip(Struct):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(Struct):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _irq_routing_union(C.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


class kvm_irq_routing_entry(Struct):
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _irq_routing_union)]


class kvm_irq_routing(Struct):
    """The header of KVM_SET_GSI_ROUTING's argument; :func:`irq_routing_with` adds the entries."""

    _fields_ = [("nr", u32), ("flags", u32)]


class kvm_ioeventfd(Struct):
    _fields_ = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", s32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


class kvm_msi(Struct):
    _fields_ = [
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("flags", u32),
        ("devid", u32),
        ("pad", u8 * 12),
    ]


class kvm_dirty_log(Struct):
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]  # a pointer, as u64


class kvm_clear_dirty_log(Struct):
    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64)]


class kvm_enable_cap(Struct):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_msr_filter_range(Struct):
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", C.c_void_p)]


KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter(Struct):
    _fields_ = [("flags", u32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


class kvm_coalesced_mmio_zone(Struct):
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_clock_data(Struct):
    _fields_ = [
        ("clock", u64),
        ("flags", u32),
        ("pad0", u32),
        ("realtime", u64),
        ("host_tsc", u64),
        ("pad", u32 * 4),
    ]


# --- the shared kvm_run page ------------------------------------------------


class kvm_run_hw(Struct):
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_fail_entry(Struct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_ex(Struct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_run_io(Struct):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_run_debug(Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class kvm_run_mmio(Struct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_hypercall(Struct):
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("longmode", u32), ("pad", u32)]


class kvm_run_internal(Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_emulation_failure(Struct):
    _fields_ = [
        ("suberror", u32),
        ("ndata", u32),
        ("flags", u64),
        ("insn_size", u8),
        ("insn_bytes", u8 * 15),
    ]


class kvm_run_system_event(Struct):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_msr(Struct):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class kvm_run_exit_union(C.Union):
    _fields_ = [
        ("hw", kvm_run_hw),
        ("fail_entry", kvm_run_fail_entry),
        ("ex", kvm_run_ex),
        ("io", kvm_run_io),
        ("debug", kvm_run_debug),
        ("mmio", kvm_run_mmio),
        ("hypercall", kvm_run_hypercall),
        ("internal", kvm_run_internal),
        ("emulation_failure", kvm_run_emulation_failure),
        ("system_event", kvm_run_system_event),
        ("msr", kvm_run_msr),
        ("padding", C.c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class kvm_run(Struct):
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", kvm_run_exit_union),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", C.c_char * SYNC_REGS_SIZE_BYTES),
    ]


# --- variable-length helpers -------------------------------------------------


def cpuid2_with(nent: int) -> C.Structure:
    """A ``kvm_cpuid2`` with room for ``nent`` entries, as a fresh ctypes object."""

    class kvm_cpuid2_n(Struct):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]

    obj = kvm_cpuid2_n()
    obj.nent = nent
    return obj


def irq_routing_with(entries: list[kvm_irq_routing_entry]) -> C.Structure:
    """A ``kvm_irq_routing`` holding ``entries``."""

    class kvm_irq_routing_n(Struct):
        _fields_ = [("nr", u32), ("flags", u32), ("entries", kvm_irq_routing_entry * len(entries))]

    obj = kvm_irq_routing_n()
    obj.nr = len(entries)
    for i, entry in enumerate(entries):
        obj.entries[i] = entry
    return obj


@functools.lru_cache(maxsize=64)
def _msrs_type(nmsrs: int) -> type[C.Structure]:
    """The ``kvm_msrs`` class for ``nmsrs`` entries, made once per size (a rescue reads MSRs every time)."""

    class kvm_msrs_n(Struct):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * nmsrs)]

    return kvm_msrs_n


def msrs_with(nmsrs: int) -> C.Structure:
    """A fresh ``kvm_msrs`` with room for ``nmsrs`` entries."""
    obj = _msrs_type(nmsrs)()
    obj.nmsrs = nmsrs
    return obj


def msr_list_with(nmsrs: int) -> C.Structure:
    """A ``kvm_msr_list`` with room for ``nmsrs`` indices."""

    class kvm_msr_list_n(Struct):
        _fields_ = [("nmsrs", u32), ("indices", u32 * nmsrs)]

    obj = kvm_msr_list_n()
    obj.nmsrs = nmsrs
    return obj


# Every fixed-size structure, for the layout test and for documentation.
ALL_STRUCTS: dict[str, type[C.Structure]] = {
    cls.__name__: cls
    for cls in (
        kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_fpu, kvm_msr_entry, kvm_msrs, kvm_msr_list,
        kvm_cpuid_entry2, kvm_cpuid2, kvm_lapic_state, kvm_debug_exit_arch, kvm_guest_debug_arch,
        kvm_guest_debug, kvm_vcpu_events, kvm_mp_state, kvm_debugregs, kvm_xsave, kvm_xcr, kvm_xcrs,
        kvm_interrupt, kvm_translation, kvm_userspace_memory_region, kvm_irq_level, kvm_pit_config,
        kvm_pit_channel_state, kvm_pit_state2, kvm_pic_state, kvm_ioapic_state, kvm_irqchip, kvm_irqfd,
        kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_irq_routing_entry, kvm_irq_routing,
        kvm_ioeventfd, kvm_msi, kvm_dirty_log, kvm_clear_dirty_log, kvm_enable_cap,
        kvm_msr_filter_range, kvm_msr_filter,
        kvm_coalesced_mmio_zone, kvm_clock_data, kvm_run,
    )
}  # fmt: skip
