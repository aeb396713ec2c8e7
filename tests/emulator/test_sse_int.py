"""The SSE2 integer instructions the emulator gained for Linux's user space on the software backend
(a static busybox's first instruction past ``movd`` was ``punpckldq``): each one against the real CPU
at CPL 3 through KVM, and a few pinned values that need no KVM."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kvmlite.kvm import Kvm
from kvmlite.x86 import Cr4
from tests.conftest import KVM_OK, KVM_REASON
from tests.emulator import differential as D
from tests.emulator.fakes import make

Asm = Callable[..., bytes]
CODE, STACK = 0x1000, 0x8000
RAX, RBX, RCX, RDX, RSI = 0, 3, 1, 2, 6

#: xmm0 = rbx:rax and xmm2 = rdx:rcx before the instruction; the result comes back in rbx:rax (and esi).
LOAD = """
movq xmm0, rax
movq xmm1, rbx
movlhps xmm0, xmm1
movq xmm2, rcx
movq xmm3, rdx
movlhps xmm2, xmm3
"""
STORE = """
movq rax, xmm0
movhlps xmm1, xmm0
movq rbx, xmm1
"""
BINARY = [
    "punpcklbw", "punpcklwd", "punpckldq", "punpcklqdq", "punpckhbw", "punpckhwd", "punpckhdq",
    "punpckhqdq", "packsswb", "packuswb", "packssdw", "psrlw", "psrld", "psrlq", "psllw", "pslld",
    "psllq", "psraw", "psrad", "paddusb", "paddusw", "psubusb", "psubusw", "paddsb", "paddsw", "psubsb",
    "psubsw", "pminub", "pmaxub", "pminsw", "pmaxsw", "pavgb", "pavgw", "pmullw", "pmulhuw", "pmulhw",
    "pmuludq", "pmaddwd", "psadbw",
]  # fmt: skip
SNIPPETS = [f"{op} xmm0, xmm2" for op in BINARY] + [
    "pshufd xmm0, xmm2, 0x1b",
    "pshuflw xmm0, xmm2, 0x4e",
    "pshufhw xmm0, xmm2, 0xb1",
    "psrldq xmm0, 3",
    "pslldq xmm0, 5",
    "psrlw xmm0, 3",
    "psrad xmm0, 40",
    "psllq xmm0, 63",
    "psraw xmm0, 15",
    "pmovmskb esi, xmm2",
    "movhlps xmm0, xmm2",
    "movlhps xmm0, xmm2",
    "unpcklps xmm0, xmm2",
    "unpckhpd xmm0, xmm2",
    "movss xmm0, xmm2",
    "movsd xmm0, xmm2",
    "movq [rsp-16], xmm2\nmovhps xmm0, [rsp-16]",
    "movq [rsp-16], xmm2\nmovlpd xmm0, [rsp-16]",
    "movq [rsp-16], xmm2\nmovss xmm0, [rsp-16]",
    "movhps [rsp-16], xmm2\nmovsd xmm0, [rsp-16]",
    "movsd [rsp-16], xmm2\nmovlps [rsp-12], xmm0\nmovsd xmm0, [rsp-16]",
]
#: Values with high bits, saturating lanes and small shift counts in the low qword of xmm2.
STARTS = [
    (0x8000_7FFF_0102_FF80, 0x0123_4567_89AB_CDEF, 0x0000_0000_0000_0005, 0xFFFF_8000_7F80_0081),
    (0x7F7F_8080_0000_FFFF, 0x8000_0001_FFFF_0000, 0x8001_7FFF_00FF_FF00, 0x1234_5678_9ABC_DEF0),
]


@pytest.fixture(scope="module")
def machine():  # type: ignore[no-untyped-def]
    with Kvm() as kvm:
        m = D.Machine(kvm)
        m.sregs.cr4 |= Cr4.OSFXSR
        yield m
        m.close()


@pytest.mark.skipif(not KVM_OK, reason=KVM_REASON)
@pytest.mark.skipif(not D.have_binutils(), reason="GNU as is not installed")
@pytest.mark.parametrize("snippet", SNIPPETS)
def test_sse2_integer_instruction_matches_the_real_cpu(machine: D.Machine, snippet: str) -> None:
    code = D.assemble64(LOAD + snippet + STORE + D.STOP_INSN)
    for rax, rbx, rcx, rdx in STARTS:
        gprs = [0] * 16
        gprs[RAX], gprs[RBX], gprs[RCX], gprs[RDX] = rax, rbx, rcx, rdx
        start = D.Start(tuple(gprs), 0x202, bytes(D.DATA_SIZE), bytes(D.STACK_SIZE))
        on_kvm, on_emu = machine.run_kvm(code, start), machine.run_emu(code, start)
        assert on_kvm.stop == "out", on_kvm
        assert on_emu.gpr_dict() == on_kvm.gpr_dict(), snippet


def run(asm: Asm, source: str) -> list[int]:
    ex, _ = make(64, asm(source + "\nhlt\n", 64, CODE), rip=CODE, rsp=STACK)
    ex.run(200)
    assert ex.cpu.halted
    return ex.cpu.gpr


def test_punpckldq_interleaves_the_low_dwords(asm: Asm) -> None:
    """What busybox's start-up runs after two MOVDs (an int pair to a double's bits)."""
    gpr = run(asm, "mov eax, 0x11111111\nmov esi, 0x22222222\nmovd xmm0, eax\nmovd xmm2, esi\n"
              "punpckldq xmm0, xmm2\nmovq rax, xmm0")  # fmt: skip
    assert gpr[RAX] == 0x2222_2222_1111_1111


def test_pmovmskb_and_pshufd(asm: Asm) -> None:
    gpr = run(asm, "mov rax, 0x80ff007f00800001\nmovq xmm1, rax\npmovmskb ecx, xmm1\n"
              "pshufd xmm2, xmm1, 0x01\nmovq rdx, xmm2")  # fmt: skip
    assert gpr[RCX] == 0b1100_0100  # bytes 2, 6 and 7 have their top bit set
    assert gpr[RDX] == 0x0080_0001_80FF_007F  # dwords 1, 0


def test_locked_instructions_hold_the_cross_vcpu_lock(asm: Asm) -> None:
    """With SMP each vCPU is a thread: a LOCK-prefixed instruction (and XCHG with memory) runs under
    ``tb.ATOMIC``, which another thread holding it keeps out (without it Linux lost init's registers)."""
    import threading

    from kvmlite.emulator import tb

    code = asm("lock inc dword ptr [0x5000]\nxchg [0x5000], eax\nhlt\n", 64, CODE)
    ex, ops = make(64, code, rip=CODE, rsp=STACK)
    seen: list[bool] = []
    real = tb.ATOMIC
    probe = threading.Lock()

    class Watch:
        def __enter__(self) -> None:
            seen.append(real.locked() is False)
            probe.acquire()

        def __exit__(self, *exc: object) -> None:
            probe.release()

    tb.ATOMIC = Watch()  # type: ignore[assignment]
    try:
        ex.run(10)
    finally:
        tb.ATOMIC = real
    assert ex.cpu.halted and seen == [True, True]
    assert ops.u(0x5000, 4) == 0
