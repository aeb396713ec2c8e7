"""The decoder against capstone: length, mnemonic and operands must agree.

The corpus is generated from the decoder's own opcode tables (every form, with
random prefixes, ModRM/SIB, displacements and immediates) in 16-, 32- and
64-bit modes; see ``corpus.py`` for the few documented places where capstone
is known to read the SDM differently and which are therefore left out.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmlite.emulator import decoder as D
from kvmlite.errors import DecodeError
from tests.emulator import corpus

capstone = pytest.importorskip("capstone", reason="capstone (test-only dependency) is not installed")

from tests.emulator import capstone_compare as C  # noqa: E402  (needs capstone)

MODES = (16, 32, 64)
INSTANCES_PER_FORM = 8
FORMS = corpus.all_forms()


def _check(code: bytes, mode: int) -> list[str]:
    cs = C.capstone_decode(code, mode)
    try:
        ours = D.decode(code, mode)
    except DecodeError as err:
        if cs is None:
            return []
        return [f"{code.hex()} ({mode}-bit): we reject ({err}), capstone: {cs.mnemonic} {cs.op_str}"]
    if cs is None:
        if ours.mnemonic == "x87":
            return []  # reserved x87 register encodings: we decode their length only
        return [f"{ours.raw.hex()} ({mode}-bit): we decode {ours}, capstone rejects"]
    return [
        f"{ours.raw.hex()} ({mode}-bit): {d} [ours: {ours.format(0x1000)} | cs: {cs.mnemonic} {cs.op_str}]"
        for d in C.differences(ours, cs, mode)
    ]


@pytest.mark.parametrize("mode", MODES)
def test_every_table_form_agrees_with_capstone(mode: int) -> None:
    rng = random.Random(1000 + mode)
    problems: list[str] = []
    checked = 0
    for form in FORMS:
        if not corpus.comparable(form, mode):
            continue
        for _ in range(INSTANCES_PER_FORM):
            problems += _check(corpus.instance(form, mode, rng), mode)
            checked += 1
    assert checked > 5000
    assert not problems, f"{len(problems)} of {checked} disagree:\n" + "\n".join(problems[:40])


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(form=st.sampled_from(FORMS), mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1))
def test_random_instances_agree_with_capstone(form: corpus.Form, mode: int, seed: int) -> None:
    if not corpus.comparable(form, mode):
        return
    code = corpus.instance(form, mode, random.Random(seed))
    assert _check(code, mode) == []


@settings(max_examples=3000, deadline=None)
@given(code=st.binary(min_size=1, max_size=16), mode=st.sampled_from(MODES))
def test_arbitrary_bytes_never_crash_and_lengths_agree(code: bytes, mode: int) -> None:
    """Any bytes: a clean DecodeError or an instruction; when both decode, lengths agree.

    Only the length is compared here because random bytes reach encodings
    (VEX, AVX-512, reserved-NOP space) that one side does not model.
    """
    code = code + bytes(16)
    try:
        ours = D.decode(code, mode)
    except DecodeError:
        return
    assert 1 <= ours.length <= D.MAX_INSN_LENGTH
    cs = C.capstone_decode(code, mode)
    if cs is None or ours.mnemonic == "x87":
        return
    cs_mn = C._norm_mnemonic(cs.mnemonic)
    if ours.mnemonic in ("nop", "ud0", "ud1") or cs_mn in ("nop",):
        return  # hint-NOP space and UD0/UD1: capstone's length rules differ (see corpus.comparable)
    if C._norm_mnemonic(cs.mnemonic) == ours.mnemonic or C.MNEMONIC_ALIASES.get(cs_mn) == ours.mnemonic:
        assert ours.length == cs.size, f"{code.hex()} ({mode}-bit): {ours} vs {cs.mnemonic} {cs.op_str}"


HAND_WRITTEN = [
    # (hex, mode, length, intel text at address 0x1000)
    ("4889d8", 64, 3, "mov rax, rbx"),
    ("89d8", 32, 2, "mov eax, ebx"),
    ("89d8", 16, 2, "mov ax, bx"),
    ("6689d8", 16, 3, "mov eax, ebx"),
    ("8b0425efbeadde", 64, 7, "mov eax, dword ptr [0xffffffffdeadbeef]"),
    ("8b05f0ffffff", 64, 6, "mov eax, dword ptr [rip - 0x10]"),
    ("678b05f0ffffff", 64, 7, "mov eax, dword ptr [eip - 0x10]"),
    ("8b4606", 16, 3, "mov ax, word ptr [bp + 6]"),
    ("8b0e3412", 16, 4, "mov cx, word ptr [0x1234]"),
    ("f0480fb10e", 64, 5, "lock cmpxchg qword ptr [rsi], rcx"),
    ("480fc70e", 64, 4, "cmpxchg16b xmmword ptr [rsi]"),
    ("f348a5", 64, 3, "rep movsq qword ptr [rdi], qword ptr [rsi]"),
    ("f3a6", 32, 2, "repe cmpsb byte ptr [esi], byte ptr [edi]"),
    ("f2ae", 32, 2, "repne scasb al, byte ptr [edi]"),
    ("e8fbffffff", 64, 5, "call 0x1000"),
    ("ebfe", 16, 2, "jmp 0x1000"),
    ("0f84faffffff", 32, 6, "je 0x1000"),
    ("48b88877665544332211", 64, 10, "mov rax, 0x1122334455667788"),
    ("4883c0ff", 64, 4, "add rax, 0xffffffffffffffff"),
    ("40b6ff", 64, 3, "mov sil, 0xff"),
    ("b4ff", 64, 2, "mov ah, 0xff"),
    ("0f20d8", 64, 3, "mov rax, cr3"),
    ("0f22e0", 32, 3, "mov cr4, eax"),
    ("0f011500100000", 32, 7, "lgdt fword ptr [0x1000]"),
    ("0f01f8", 64, 3, "swapgs"),
    ("0f05", 64, 2, "syscall"),
    ("cf", 64, 1, "iretd"),
    ("48cf", 64, 2, "iretq"),
    ("66cf", 32, 2, "iret"),
    ("0fae0424", 64, 4, "fxsave [rsp]"),
    ("480fae2c24", 64, 5, "xrstor64 [rsp]"),
    ("0f280d00000000", 64, 7, "movaps xmm1, xmmword ptr [rip]"),
    ("660fefc0", 64, 4, "pxor xmm0, xmm0"),
    ("660f6fc1", 64, 4, "movdqa xmm0, xmm1"),
    ("f30f6f00", 64, 4, "movdqu xmm0, xmmword ptr [rax]"),
    ("66480f6ec0", 64, 5, "movq xmm0, rax"),
    ("f30f1efa", 64, 4, "endbr64"),
    ("d9c9", 32, 2, "x87"),
    ("dd1c24", 32, 3, "fstp qword ptr [esp]"),
    ("ea00100000ff00", 32, 7, "ljmp 0xff:0x1000"),
    ("c8100002", 32, 4, "enter 0x10, 2"),
]


@pytest.mark.parametrize(("hexcode", "mode", "length", "text"), HAND_WRITTEN)
def test_hand_written_instructions(hexcode: str, mode: int, length: int, text: str) -> None:
    insn = D.decode(bytes.fromhex(hexcode) + bytes(8), mode)
    assert insn.length == length
    if text:
        assert insn.format(0x1000) == text
    cs = C.capstone_decode(bytes.fromhex(hexcode), mode)
    if cs is not None:
        assert cs.size == length


@pytest.mark.parametrize(
    ("hexcode", "mode"),
    [
        ("06", 64),  # push es: invalid in 64-bit mode
        ("0f0b", 64),  # ud2 decodes; checked below as valid
        ("8ec8", 32),  # mov cs, eax
        ("0f20c8", 64),  # mov rax, cr1
        ("f0014000", 32),  # valid: lock add [eax+0], eax -- checked below
        ("f001c0", 32),  # lock add eax, eax: lock on a register destination
        ("f090", 32),  # lock nop
        ("8d c0", 32),  # lea with a register source
        ("c5f877", 64),  # VEX (vzeroupper): not supported, reported cleanly
    ],
)
def test_invalid_encodings_raise_decode_error(hexcode: str, mode: int) -> None:
    code = bytes.fromhex(hexcode.replace(" ", "")) + bytes(8)
    if hexcode in ("0f0b", "f0014000"):
        assert D.decode(code, mode).length == len(bytes.fromhex(hexcode))
        return
    with pytest.raises(DecodeError):
        D.decode(code, mode)


def test_truncated_bytes_raise_truncated_instruction() -> None:
    for cut in range(1, 7):
        with pytest.raises(D.TruncatedInstruction):
            D.decode(bytes.fromhex("8b0425efbeadde")[:cut], 64)


def test_more_than_fifteen_bytes_is_rejected() -> None:
    with pytest.raises(DecodeError, match="15 bytes"):
        D.decode(bytes([0x66] * 14) + bytes.fromhex("0500000000"), 32)


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(DecodeError, match="mode"):
        D.decode(b"\x90", 8)
