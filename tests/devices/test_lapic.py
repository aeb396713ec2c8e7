"""Register-level tests of the local APIC: priorities, EOI, IPIs, destinations, the timer's three modes."""

from __future__ import annotations

import pytest

from kvmlite.devices import lapic as A
from kvmlite.devices.lapic import Ipi, Lapic
from tests.devices.conftest import Calls, FakeClock


def enabled(
    apic_id: int = 0, clock: FakeClock | None = None, **kw: object
) -> tuple[Lapic, list[Ipi], list[int]]:
    """A LAPIC with SVR enabled (spurious vector 0xFF), recording its IPIs and EOI broadcasts."""
    sent: list[Ipi] = []
    eois: list[int] = []
    apic = Lapic(
        apic_id, send_ipi=sent.append, eoi_broadcast=eois.append, clock=clock or FakeClock(), **kw  # type: ignore[arg-type]
    )
    apic.write(A.SVR, 4, 0x1FF)
    return apic, sent, eois


def test_reset_state_is_kvms() -> None:
    bsp, ap = Lapic(0, bsp=True), Lapic(1)
    assert bsp.read(A.ID, 4) == 0 and ap.read(A.ID, 4) == 1 << 24
    assert bsp.read(A.VERSION, 4) == 0x60014
    assert bsp.read(A.SVR, 4) == 0xFF and not bsp.sw_enabled
    assert bsp.read(A.LVT_LINT0, 4) == 0x700  # ExtINT, unmasked: the PIC's virtual wire
    assert ap.read(A.LVT_LINT0, 4) == A.LVT_MASKED
    assert bsp.accepts_pic_interrupts() and not ap.accepts_pic_interrupts()
    assert bsp.base & A.BASE_BSP and not ap.base & A.BASE_BSP
    assert bsp.read(A.DFR, 4) == 0xFFFF_FFFF


def test_fixed_interrupts_are_taken_by_priority_class_against_the_ppr() -> None:
    apic, _, _ = enabled()
    apic.accept(A.DM_FIXED, 0x41)
    apic.accept(A.DM_FIXED, 0x52)
    assert apic.read(A.IRR_BASE + 0x20, 4) == (1 << 1) | (1 << 0x12)  # IRR bits 0x41, 0x52 in word 2
    assert apic.pending_vector() == 0x52
    assert apic.acknowledge() == 0x52
    assert apic.read(A.ISR_BASE + 0x20, 4) == 1 << 0x12
    assert apic.read(A.PPR, 4) == 0x50
    assert apic.pending_vector() is None  # 0x41's class (4) is not above the PPR's (5)
    apic.write(A.EOI, 4, 0)
    assert apic.read(A.PPR, 4) == 0 and apic.pending_vector() == 0x41
    apic.write(A.TPR, 4, 0x45)  # TPR class 4 masks class 4
    assert apic.read(A.PPR, 4) == 0x45 and apic.pending_vector() is None
    apic.write(A.TPR, 4, 0x30)
    assert apic.acknowledge() == 0x41


def test_the_spurious_vector_when_nothing_is_deliverable() -> None:
    apic, _, _ = enabled()
    apic.write(A.SVR, 4, 0x1EF)
    assert apic.acknowledge() == 0xEF


def test_software_disabled_drops_fixed_interrupts_and_masks_every_lvt() -> None:
    apic, _, _ = enabled()
    apic.write(A.LVT_TIMER, 4, 0x30)
    apic.write(A.SVR, 4, 0xFF)
    apic.accept(A.DM_FIXED, 0x40)
    assert apic.irr == 0
    assert apic.read(A.LVT_TIMER, 4) & A.LVT_MASKED
    apic.write(A.LVT_TIMER, 4, 0x30)  # stays masked while disabled
    assert apic.read(A.LVT_TIMER, 4) == A.LVT_MASKED | 0x30


def test_level_triggered_eoi_is_broadcast_with_its_vector() -> None:
    apic, _, eois = enabled()
    apic.accept(A.DM_FIXED, 0x61, level=True)
    apic.accept(A.DM_FIXED, 0x70)
    assert apic.read(A.TMR_BASE + 0x30, 4) == 1 << 1
    assert apic.acknowledge() == 0x70
    apic.write(A.EOI, 4, 0)
    assert eois == []  # edge
    assert apic.acknowledge() == 0x61
    apic.write(A.EOI, 4, 0)
    assert eois == [0x61]


def test_illegal_vectors_set_esr_bits_latched_by_a_write() -> None:
    apic, sent, _ = enabled()
    apic.accept(A.DM_FIXED, 5)
    apic.write(A.ICR_LOW, 4, 0x0000_0003)
    assert sent == [] and apic.irr == 0
    assert apic.read(A.ESR, 4) == 0  # not visible before the write
    apic.write(A.ESR, 4, 0)
    assert apic.read(A.ESR, 4) == A.ESR_RECEIVE_ILLEGAL_VECTOR | A.ESR_SEND_ILLEGAL_VECTOR
    apic.write(A.ESR, 4, 0)
    assert apic.read(A.ESR, 4) == 0


def test_icr_writes_send_messages_with_every_field() -> None:
    apic, sent, _ = enabled(apic_id=3)
    apic.write(A.ICR_HIGH, 4, 0x0500_0000)
    apic.write(A.ICR_LOW, 4, 0x0000_4830)  # fixed, logical, assert, vector 0x30
    apic.write(A.ICR_LOW, 4, 0x000C_4500)  # INIT to all but self
    apic.write(A.ICR_LOW, 4, 0x0000_0612)  # SIPI, vector 0x12, physical
    assert sent == [
        Ipi(0x30, A.DM_FIXED, 5, True, A.SH_NONE, False, True, 3),
        Ipi(0x00, A.DM_INIT, 5, False, A.SH_OTHERS, False, True, 3),
        Ipi(0x12, A.DM_SIPI, 5, False, A.SH_NONE, False, False, 3),
    ]
    assert apic.read(A.ICR_LOW, 4) & A.DELIVERY_STATUS == 0  # always idle


def test_destinations_physical_flat_cluster_and_broadcast() -> None:
    apic, _, _ = enabled(apic_id=2)
    assert apic.matches(2, False) and not apic.matches(3, False) and apic.matches(0xFF, False)
    apic.write(A.LDR, 4, 0x0400_0000)  # flat: bit 2
    assert apic.matches(0x04, True) and apic.matches(0x0F, True) and not apic.matches(0x03, True)
    apic.write(A.DFR, 4, 0x0FFF_FFFF)  # cluster model: cluster 1, member bit 0
    apic.write(A.LDR, 4, 0x1100_0000)
    assert apic.read(A.DFR, 4) == 0x0FFF_FFFF
    assert apic.matches(0x13, True) and not apic.matches(0x23, True) and not apic.matches(0x12, True)


def test_init_nmi_and_sipi_are_latched_for_the_vcpu() -> None:
    calls = Calls()
    apic = Lapic(1, notify=calls)
    apic.accept(A.DM_INIT, 0)
    apic.accept(A.DM_SIPI, 0x9A)
    apic.accept(A.DM_NMI, 0)
    assert apic.init_pending and apic.sipi_vector == 0x9A and apic.nmi_pending and calls.count == 3
    apic.accept(A.DM_INIT, 0, level=True, assert_=False)  # level de-assert: nothing
    assert calls.count == 3


def test_one_shot_timer_counts_down_and_fires_once() -> None:
    clock = FakeClock()
    apic, _, _ = enabled(clock=clock)
    apic.write(A.TDCR, 4, 0x3)  # divide by 16
    apic.write(A.LVT_TIMER, 4, 0x40)
    apic.write(A.TMICT, 4, 1000)
    assert apic.next_deadline() == clock.now + 16_000
    clock.advance(8_000)
    assert apic.read(A.TMCCT, 4) == 500
    clock.advance(8_000)
    apic.tick(clock.now)
    assert apic.pending_vector() == 0x40 and apic.next_deadline() is None
    assert apic.read(A.TMCCT, 4) == 0


def periodic_timer(clock: FakeClock, initial_count: int) -> tuple[Lapic, int]:
    """An enabled APIC, timer periodic at vector 0x41 (divide by 1) from ``initial_count``; and its start."""
    apic, _, _ = enabled(clock=clock)
    apic.write(A.TDCR, 4, 0xB)  # divide by 1
    apic.write(A.LVT_TIMER, 4, (A.TIMER_PERIODIC << 17) | 0x41)
    apic.write(A.TMICT, 4, initial_count)
    return apic, clock.now


def test_periodic_timer_reloads_and_coalesces_late_periods() -> None:
    clock = FakeClock()
    apic, start = periodic_timer(clock, 1_000_000)
    clock.advance(3_500_000)
    apic.tick(clock.now)
    assert apic.pending_vector() == 0x41 and apic.missed_irqs == 2
    assert apic.next_deadline() == start + 4_000_000
    apic.write(A.TMICT, 4, 0)
    assert apic.next_deadline() is None


def test_a_periodic_timer_under_200_us_is_delivered_every_200_us_as_kvm_does() -> None:
    clock = FakeClock()
    apic, start = periodic_timer(clock, 1)
    assert apic.next_deadline() == start + 200_000
    assert apic.read(A.TMCCT, 4) <= 1  # the count still runs down from TMICT
    clock.advance(200_000)
    apic.tick(clock.now)
    assert apic.pending_vector() == 0x41 and apic.next_deadline() == start + 400_000


def test_masked_timer_runs_but_raises_nothing() -> None:
    clock = FakeClock()
    apic, _, _ = enabled(clock=clock)
    apic.write(A.LVT_TIMER, 4, A.LVT_MASKED | 0x41)
    apic.write(A.TMICT, 4, 10)
    clock.advance(100)
    apic.tick(clock.now)
    assert apic.irr == 0


def test_tsc_deadline_timer_fires_at_the_tsc_value_and_disarms() -> None:
    clock = FakeClock()
    tsc = FakeClock(5_000)
    apic, _, _ = enabled(clock=clock, tsc=tsc, tsc_hz=2_000_000_000)
    apic.write(A.TMICT, 4, 1000)
    apic.write(A.LVT_TIMER, 4, (A.TIMER_TSC_DEADLINE << 17) | 0x42)
    assert apic.next_deadline() is None and apic.tmict == 0  # the mode change stopped it
    apic.write(A.TMICT, 4, 50)  # ignored in this mode
    assert apic.tmict == 0
    assert apic.write_msr(A.MSR_TSC_DEADLINE, 9_000)
    assert apic.read_msr(A.MSR_TSC_DEADLINE) == 9_000
    assert apic.next_deadline() == clock.now + 2_000  # 4000 TSC cycles at 2 GHz
    clock.advance(2_000)
    apic.tick(clock.now)
    assert apic.pending_vector() == 0x42 and apic.read_msr(A.MSR_TSC_DEADLINE) == 0
    apic.write_msr(A.MSR_TSC_DEADLINE, 1)  # in the past: due at once
    assert apic.next_deadline() == clock.now


def test_x2apic_msrs() -> None:
    apic, sent, _ = enabled(apic_id=0x21)
    assert apic.read_msr(0x802) is None  # not in x2APIC mode: #GP
    apic.set_base(apic.base | A.BASE_EXTD)
    assert apic.read_msr(0x802) == 0x21
    assert apic.read_msr(0x80D) == (2 << 16) | (1 << 1)  # LDR derived from the ID
    assert not apic.write_msr(0x80D, 0) and apic.read_msr(0x80E) is None  # LDR read-only, no DFR
    assert apic.write_msr(0x830, (7 << 32) | 0x4031)
    assert sent[-1] == Ipi(0x31, A.DM_FIXED, 7, False, A.SH_NONE, False, True, 0x21)
    assert apic.write_msr(0x83F, 0x55)  # SELF_IPI
    assert apic.pending_vector() == 0x55
    assert not apic.write_msr(0x80B, 1)  # EOI with a non-zero value: #GP
    assert apic.write_msr(0x80B, 0)


def test_hardware_disable_resets_and_ignores_messages() -> None:
    apic, _, _ = enabled()
    apic.set_base(apic.base & ~A.BASE_ENABLE)
    assert not apic.hw_enabled and not apic.sw_enabled
    apic.accept(A.DM_FIXED, 0x40)
    assert apic.irr == 0 and apic.accepts_pic_interrupts()


@pytest.mark.parametrize("mode", [A.TIMER_ONESHOT, A.TIMER_PERIODIC, A.TIMER_TSC_DEADLINE])
def test_state_round_trip_keeps_the_running_timer(mode: int) -> None:
    clock = FakeClock()
    apic, _, _ = enabled(apic_id=1, clock=clock, tsc=clock)
    apic.write(A.LVT_TIMER, 4, (mode << 17) | 0x43)
    apic.write(A.TMICT, 4, 5_000)
    apic.write_msr(A.MSR_TSC_DEADLINE, clock.now + 5_000)
    apic.accept(A.DM_FIXED, 0x80, level=True)
    apic.acknowledge()
    clock.advance(1_000)
    copy = Lapic.from_state(apic.state(), clock=clock, tsc=clock)
    assert copy.state() == apic.state()
    assert copy.next_deadline() == apic.next_deadline()
    assert copy.register_page() == apic.register_page()
    assert copy.read(A.TMCCT, 4) == apic.read(A.TMCCT, 4)
