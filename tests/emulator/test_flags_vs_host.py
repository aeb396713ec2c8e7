"""ALU results and flags checked bit for bit against the host CPU.

Every development machine is an x86-64 (see shared/platform.md), so the
truth is at hand: each instruction under test is run natively (in an
executable mmap called through ctypes) and in the emulator with the same
inputs and incoming flags, and the results and the *defined* flags must
agree.  Flags the SDM leaves undefined for an instruction are masked out.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import random

import pytest

from kvmlite.emulator.cpu import FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF
from tests.emulator.fakes import make

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="needs an x86-64 host")

ALL = FLAG_CF | FLAG_PF | FLAG_AF | FLAG_ZF | FLAG_SF | FLAG_OF
LOGIC = ALL & ~FLAG_AF
MULF = FLAG_CF | FLAG_OF
CODE_ADDR = 0x1000
N_RANDOM = 60

# Host harness: f(a, b, flags_in, out*): rax = a, rcx = b, flags = flags_in, run OP,
# store rax and the flags to out[0], out[1].
_PROLOGUE = bytes.fromhex("4989c8529d4889f84889f1")  # mov r8,rcx; push rdx; popfq; mov rax,rdi; mov rcx,rsi
_EPILOGUE = bytes.fromhex("9c5a49890049895008c3")  # pushfq; pop rdx; mov [r8],rax; mov [r8+8],rdx; ret


class Host:
    """Runs one instruction natively; one executable page reused for every call."""

    def __init__(self) -> None:
        self.page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.page))
        self.out = (ctypes.c_uint64 * 2)()
        proto = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_void_p)
        self.fn = proto(self.addr)

    def run(self, op: bytes, a: int, b: int, flags: int) -> tuple[int, int]:
        code = _PROLOGUE + op + _EPILOGUE
        self.page.seek(0)
        self.page.write(code)
        self.fn(a, b, flags | 2, ctypes.addressof(self.out))
        return self.out[0], self.out[1]


@pytest.fixture(scope="module")
def host() -> Host:
    return Host()


def emulate(op: bytes, a: int, b: int, flags: int) -> tuple[int, int]:
    ex, _ops = make(64, op + b"\xf4", rip=CODE_ADDR)
    ex.cpu.gpr[0] = a
    ex.cpu.gpr[1] = b
    ex.cpu.rflags = flags | 2
    ex.step()
    return ex.cpu.gpr[0], ex.cpu.rflags


def _size_prefix(size: int) -> bytes:
    return {1: b"", 2: b"\x66", 4: b"", 8: b"\x48"}[size]


def _alu_rr(opcode: int, size: int) -> bytes:
    """<op> rAX, rCX in the r/m,reg direction (00..39 family), ModRM C8."""
    return _size_prefix(size) + bytes([opcode + (0 if size == 1 else 1), 0xC8])


def _group(opcode_b: int, opcode_v: int, ext: int, size: int, rm: int = 0) -> bytes:
    return _size_prefix(size) + bytes([opcode_b if size == 1 else opcode_v, 0xC0 | (ext << 3) | rm])


def _values(size: int, rng: random.Random) -> list[tuple[int, int]]:
    bits = size * 8
    mask = (1 << bits) - 1
    edge = [0, 1, mask, mask >> 1, (mask >> 1) + 1, 0x7F & mask, 0x80 & mask, 0x0F, 0x10]
    pairs = [(x, y) for x in edge for y in edge]
    pairs += [(rng.getrandbits(bits), rng.getrandbits(bits)) for _ in range(N_RANDOM)]
    return pairs


def _check(
    host: Host,
    op: bytes,
    size: int,
    defined: int,
    rng: random.Random,
    b_mask: int | None = None,
    check_result: bool = True,
) -> None:
    problems = []
    mask = (1 << (size * 8)) - 1
    for a, b in _values(size, rng):
        if b_mask is not None:
            b &= b_mask
        flags_in = rng.getrandbits(1) * FLAG_CF | rng.choice((0, ALL))
        hr, hf = host.run(op, a, b, flags_in)
        er, ef = emulate(op, a, b, flags_in)
        if check_result and (hr ^ er) & (mask if size != 4 else (1 << 64) - 1):
            problems.append(f"a={a:#x} b={b:#x}: result host {hr:#x} emu {er:#x}")
        if (hf ^ ef) & defined:
            problems.append(
                f"a={a:#x} b={b:#x} in={flags_in:#x}: flags host {hf & defined:#x} emu {ef & defined:#x}"
            )
    assert not problems, f"{op.hex()}:\n" + "\n".join(problems[:10])


SIZES = (1, 2, 4, 8)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("name", "opcode", "defined"),
    [
        ("add", 0x00, ALL),
        ("or", 0x08, LOGIC),
        ("adc", 0x10, ALL),
        ("sbb", 0x18, ALL),
        ("and", 0x20, LOGIC),
        ("sub", 0x28, ALL),
        ("xor", 0x30, LOGIC),
        ("cmp", 0x38, ALL),
        ("test", 0x84, LOGIC),
    ],
)
def test_two_operand_alu_matches_host(host: Host, name: str, opcode: int, defined: int, size: int) -> None:
    _check(host, _alu_rr(opcode, size), size, defined, random.Random(opcode * 10 + size))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("name", "ext", "defined"),
    [("inc", 0, ALL), ("dec", 1, ALL)],
)
def test_inc_dec_keep_carry_and_match_host(host: Host, name: str, ext: int, defined: int, size: int) -> None:
    _check(host, _group(0xFE, 0xFF, ext, size), size, defined, random.Random(ext + size))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "ext", "defined"), [("not", 2, ALL), ("neg", 3, ALL)])
def test_not_neg_match_host(host: Host, name: str, ext: int, defined: int, size: int) -> None:
    _check(host, _group(0xF6, 0xF7, ext, size), size, defined, random.Random(ext * 3 + size))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("name", "ext"), [("rol", 0), ("ror", 1), ("rcl", 2), ("rcr", 3), ("shl", 4), ("shr", 5), ("sar", 7)]
)
def test_shifts_and_rotates_by_cl_match_host(host: Host, name: str, ext: int, size: int) -> None:
    op = _group(0xD2, 0xD3, ext, size)
    rng = random.Random(ext * 7 + size)
    count_mask = 0x3F if size == 8 else 0x1F
    # OF is defined only for a count of 1; AF is undefined for shifts.
    for count in [*range(count_mask + 1), count_mask + 1, 0xFF]:
        defined = (ALL & ~FLAG_AF) if name in ("shl", "shr", "sar") else (FLAG_CF | FLAG_OF)
        if (count & count_mask) != 1:
            defined &= ~FLAG_OF
        if name in ("shl", "shr") and (count & count_mask) >= size * 8:
            defined &= ~FLAG_CF  # shifting everything out: CF undefined for 8/16-bit operands
        for _ in range(4):
            a = rng.getrandbits(size * 8)
            flags_in = rng.choice((0, ALL))
            hr, hf = host.run(op, a, count, flags_in)
            er, ef = emulate(op, a, count, flags_in)
            mask = (1 << 64) - 1 if size == 4 and count & count_mask else (1 << (size * 8)) - 1
            assert (hr ^ er) & mask == 0, f"{name} {a:#x} by {count}: host {hr:#x} emu {er:#x}"
            assert (hf ^ ef) & defined == 0, f"{name} {a:#x} by {count}: flags host {hf:#x} emu {ef:#x}"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("name", "ext"), [("mul", 4), ("imul", 5)])
def test_one_operand_multiply_matches_host_in_rax_and_cf_of(
    host: Host, name: str, ext: int, size: int
) -> None:
    op = _group(0xF6, 0xF7, ext, size, rm=1)  # mul/imul rCX
    _check(host, op, size if size > 1 else 2, MULF, random.Random(ext + 40 * size))


@pytest.mark.parametrize("size", (2, 4, 8))
def test_two_operand_imul_matches_host(host: Host, size: int) -> None:
    op = _size_prefix(size) + bytes([0x0F, 0xAF, 0xC1])  # imul rAX, rCX
    _check(host, op, size, MULF, random.Random(size))


@pytest.mark.parametrize("size", (2, 4, 8))
@pytest.mark.parametrize(("name", "opcode", "defined"), [("bsf", 0xBC, FLAG_ZF), ("bsr", 0xBD, FLAG_ZF)])
def test_bit_scans_match_host(host: Host, name: str, opcode: int, defined: int, size: int) -> None:
    op = _size_prefix(size) + bytes([0x0F, opcode, 0xC1])  # bsf rAX, rCX
    _check(host, op, size, defined, random.Random(opcode + size))


@pytest.mark.parametrize("size", (2, 4, 8))
@pytest.mark.parametrize(("name", "opcode"), [("bt", 0xA3), ("bts", 0xAB), ("btr", 0xB3), ("btc", 0xBB)])
def test_bit_tests_on_registers_match_host(host: Host, name: str, opcode: int, size: int) -> None:
    op = _size_prefix(size) + bytes([0x0F, opcode, 0xC8])  # bt rAX, rCX
    _check(host, op, size, FLAG_CF, random.Random(opcode + size))


@pytest.mark.parametrize("size", (2, 4, 8))
@pytest.mark.parametrize(("name", "opcode"), [("shld", 0xA5), ("shrd", 0xAD)])
def test_double_shifts_match_host(host: Host, name: str, opcode: int, size: int) -> None:
    op = _size_prefix(size) + bytes([0x0F, opcode, 0xC8])  # shld rAX, rCX, cl
    rng = random.Random(opcode * size)
    count_mask = 0x3F if size == 8 else 0x1F
    for i in range(300):
        a, b = rng.getrandbits(size * 8), rng.getrandbits(size * 8)
        count = rng.randrange(0, size * 8 if size > 2 else 17)
        # rCX is both the source and the count: low bits are the count. Every other run puts
        # bits above the mask into CL too (CPUs ignore them: a 16-bit count of 33 shifts by 1).
        cl = count | (rng.randrange(1, 256 // (count_mask + 1)) * (count_mask + 1) if i % 2 else 0)
        b = (b & ~0xFF) | (cl & 0xFF)
        defined = (ALL & ~FLAG_AF) if count else ALL
        if count != 1:
            defined &= ~FLAG_OF
        hr, hf = host.run(op, a, b, 0)
        er, ef = emulate(op, a, b, 0)
        mask = (1 << 64) - 1 if size == 4 and count else (1 << (size * 8)) - 1
        assert (hr ^ er) & mask == 0, f"{name} {a:#x},{b:#x}: host {hr:#x} emu {er:#x}"
        assert (hf ^ ef) & defined == 0, f"{name} {a:#x},{b:#x}: flags host {hf:#x} emu {ef:#x}"


@pytest.mark.parametrize("name", ["daa", "das", "aaa", "aas"])
def test_bcd_adjusts_match_known_results(name: str) -> None:
    """BCD adjusts are invalid in 64-bit mode: checked in 32-bit mode against worked examples."""
    opcode = {"daa": 0x27, "das": 0x2F, "aaa": 0x37, "aas": 0x3F}[name]
    cases = {
        # (AL/AX in, flags in) -> (AL/AX out, CF)
        "daa": [((0x0F, 0), (0x15, 0)), ((0x9A, 0), (0x00, 1)), ((0x79 + 0x35 & 0xFF, 0), (0x14, 1))],
        "das": [((0x2F, 0), (0x29, 0)), ((0xFF, 0), (0x99, 1))],
        "aaa": [((0x000B, 0), (0x0101, 1)), ((0x0005, 0), (0x0005, 0))],
        "aas": [((0x020B, 0), (0x0105, 1)), ((0x0205, 0), (0x0205, 0))],
    }[name]
    for (value, flags), (want, cf) in cases:
        ex, _ = make(32, bytes([opcode]))
        ex.cpu.gpr[0] = value
        ex.cpu.rflags = flags | 2
        ex.step()
        width = 0xFF if name in ("daa", "das") else 0xFFFF
        assert ex.cpu.gpr[0] & width == want, f"{name} {value:#x}"
        assert bool(ex.cpu.rflags & FLAG_CF) == bool(cf)
