"""Differential tests: random ring-3 instruction sequences on KVM (the real CPU) vs kvmlite's emulator.

Each example is a list of up to :data:`MAX_ITEMS` generated items (see
:mod:`tests.emulator.differential` for the families: ALU, shifts and
rotates, multiply/divide, moves, conditionals, bit scans, stack, flags,
string instructions with REP, ...), run from the same random registers,
flags and data bytes at CPL 3 on KVM, where the host CPU executes it
natively, and on the software backend.  Both must stop at the final OUT with
the same GPRs, RIP, RFLAGS (less the flags the SDM leaves undefined for the
instructions that last wrote them) and the same data and stack pages.

The generator never emits a faulting sequence, so "both triple-faulted" is
a failure too: the first assertion checks KVM really reached the OUT.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.kvm import Kvm
from tests.conftest import KVM_OK, KVM_REASON
from tests.emulator import differential as D

needs_kvm = pytest.mark.skipif(not KVM_OK, reason=f"needs a usable /dev/kvm: {KVM_REASON}")
needs_as = pytest.mark.skipif(not D.have_binutils(), reason="needs GNU as and objcopy to assemble snippets")

MAX_ITEMS = 20
#: Examples per run; raise it (``KVMLITE_DIFF_EXAMPLES=5000``) to hunt for rarer disagreements.
MAX_EXAMPLES = int(os.environ.get("KVMLITE_DIFF_EXAMPLES", "200"))


@pytest.fixture(scope="module")
def machine():  # type: ignore[no-untyped-def]
    with Kvm() as kvm:
        m = D.Machine(kvm)
        yield m
        m.close()


def run_both(machine: D.Machine, items: list[D.Insn], start: D.Start) -> tuple[str, list[str], D.Outcome]:
    text, undefined = D.finish(items)
    code = D.assemble64(text)
    on_kvm = machine.run_kvm(code, start)
    on_emu = machine.run_emu(code, start)
    return text, D.compare(on_kvm, on_emu, undefined), on_kvm


@needs_kvm
@needs_as
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(items=st.lists(D.instruction(), min_size=1, max_size=MAX_ITEMS), start=D.start_state())
def test_random_ring3_sequences_match_the_real_cpu(
    machine: D.Machine, items: list[D.Insn], start: D.Start
) -> None:
    text, diffs, on_kvm = run_both(machine, items, start)
    assert on_kvm.stop == "out", f"the generated snippet faulted on the real CPU:\n{text}"
    assert not diffs, "\n".join([text, "--", *diffs])


@needs_kvm
@needs_as
@settings(max_examples=MAX_EXAMPLES // 4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(D.instruction(), max_size=5),
    fault=st.sampled_from(D.FAULTING),
    start=D.start_state(),
)
def test_faulting_instructions_stop_both_sides_alike(
    machine: D.Machine, items: list[D.Insn], fault: str, start: D.Start
) -> None:
    """#UD, #DE, #GP, #PF, #SS at CPL 3 with no IDT: a triple fault on the CPU and on the emulator."""
    text, _ = D.finish([*items, D.Insn(fault)])
    code = D.assemble64(text)
    on_kvm = machine.run_kvm(code, start)
    on_emu = machine.run_emu(code, start)
    assert on_kvm.stop == "shutdown", f"expected a fault on the real CPU:\n{text}"
    assert on_emu.stop == "shutdown", f"the emulator stopped with {on_emu.stop}:\n{text}"


@needs_kvm
@needs_as
def test_a_register_difference_is_reported(machine: D.Machine) -> None:
    """The comparison itself can fail: a snippet whose result the emulator sees differently is caught."""
    start = D.Start(tuple(range(16)), 0, bytes(D.DATA_SIZE), bytes(D.STACK_SIZE))
    code = D.assemble64("add rax, 5\n" + D.STOP_INSN)
    on_kvm = machine.run_kvm(code, start)
    on_emu = machine.run_emu(code, start)
    assert on_kvm.stop == on_emu.stop == "out"
    assert D.compare(on_kvm, on_emu, 0) == []
    tampered = D.Outcome(
        on_emu.stop,
        (on_emu.gprs[0] + 1, *on_emu.gprs[1:]),
        on_emu.rip,
        on_emu.rflags,
        on_emu.data,
        on_emu.stack,
    )
    assert D.compare(on_kvm, tampered, 0) == [
        f"rax: KVM {on_kvm.gprs[0]:#x}, emulator {on_kvm.gprs[0] + 1:#x}"
    ]


def test_undefined_flags_are_fenced_before_a_reader() -> None:
    """A flag left undefined (AF after AND) is redefined before an instruction that reads it (PUSHF)."""
    text, undefined = D.finish(
        [D.Insn("and eax, ebx", D.ARITH, D.AF), D.Insn("pushfq\npop rcx", reads=D.ARITH)]
    )
    assert text.splitlines() == ["and eax, ebx", D.FLAG_FENCE, "pushfq", "pop rcx", D.STOP_INSN]
    assert undefined == 0
    _, undefined = D.finish([D.Insn("imul eax, ebx", D.ARITH, D.SF | D.ZF)])
    assert undefined == D.SF | D.ZF
