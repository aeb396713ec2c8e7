"""Integer arithmetic with exact x86 flags, as small pure functions.

Every function takes unsigned operands already truncated to ``size`` bytes
and returns ``(result, flags)`` where ``flags`` holds only the six
arithmetic flags (CF PF AF ZF SF OF); the executor merges them into RFLAGS
with :data:`~kvmlite.emulator.cpu.ARITH_FLAGS`.  The generic handlers compute
flags eagerly here; translation blocks record the common ALU operations lazily
(:mod:`kvmlite.emulator.fastops`) and derive the same bits when they are read.
Both are checked bit for bit against the host CPU in the tests.

Where the SDM calls a flag *undefined* we produce what current Intel and AMD
parts produce for the common case (AF cleared by logic ops, SF/ZF/PF from the
low half after MUL) and the tests mask those flags out.
"""

from __future__ import annotations

from kvmlite.emulator.cpu import FLAG_AF, FLAG_CF, FLAG_OF, FLAG_PF, FLAG_SF, FLAG_ZF

MASK = (0, 0xFF, 0xFFFF, 0, 0xFFFFFFFF, 0, 0, 0, 0xFFFFFFFFFFFFFFFF)
SIGN = (0, 0x80, 0x8000, 0, 0x80000000, 0, 0, 0, 0x8000000000000000)
BITS = (0, 8, 16, 0, 32, 0, 0, 0, 64)
PARITY = tuple(FLAG_PF if bin(i).count("1") % 2 == 0 else 0 for i in range(256))


def szp(r: int, size: int) -> int:
    """SF, ZF and PF of a result."""
    f = PARITY[r & 0xFF]
    if r == 0:
        f |= FLAG_ZF
    if r & SIGN[size]:
        f |= FLAG_SF
    return f


def add(a: int, b: int, carry: int, size: int) -> tuple[int, int]:
    """ADD / ADC (``carry`` is 0 or 1)."""
    full = a + b + carry
    mask = MASK[size]
    r = full & mask
    f = PARITY[r & 0xFF] | ((a ^ b ^ r) & FLAG_AF)
    if full > mask:
        f |= FLAG_CF
    if r == 0:
        f |= FLAG_ZF
    sign = SIGN[size]
    if r & sign:
        f |= FLAG_SF
    if (a ^ r) & (b ^ r) & sign:
        f |= FLAG_OF
    return r, f


def sub(a: int, b: int, borrow: int, size: int) -> tuple[int, int]:
    """SUB / SBB / CMP / NEG (``borrow`` is 0 or 1)."""
    full = a - b - borrow
    r = full & MASK[size]
    f = PARITY[r & 0xFF] | ((a ^ b ^ r) & FLAG_AF)
    if full < 0:
        f |= FLAG_CF
    if r == 0:
        f |= FLAG_ZF
    sign = SIGN[size]
    if r & sign:
        f |= FLAG_SF
    if (a ^ b) & (a ^ r) & sign:
        f |= FLAG_OF
    return r, f


def logic(r: int, size: int) -> int:
    """Flags of AND/OR/XOR/TEST: CF = OF = AF = 0, SF ZF PF from the result."""
    f = PARITY[r & 0xFF]
    if r == 0:
        f |= FLAG_ZF
    if r & SIGN[size]:
        f |= FLAG_SF
    return f


def to_signed(value: int, size: int) -> int:
    """Two's-complement reading of a ``size``-byte value (any size, 16 for a DX:AX-style pair)."""
    bits = size * 8
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def shift(op: str, a: int, count: int, size: int, cf_in: int, flags: int) -> tuple[int, int]:
    """Shifts and rotates; ``count`` already masked to 5 (or 6) bits, nonzero.

    ``flags`` is the current arithmetic-flag set, returned modified (rotates
    keep SF/ZF/PF/AF).  OF is defined for a count of 1; for larger counts we
    compute it by the same formula, as current hardware does.
    """
    bits = BITS[size]
    mask = MASK[size]
    sign = SIGN[size]
    if op == "shl":
        r = (a << count) & mask
        cf = (a >> (bits - count)) & 1 if count <= bits else 0
        f = szp(r, size) | (FLAG_CF if cf else 0)
        if bool(r & sign) != bool(cf):
            f |= FLAG_OF
        return r, f
    if op == "shr":
        r = a >> count
        cf = (a >> (count - 1)) & 1 if count <= bits else 0
        f = szp(r, size) | (FLAG_CF if cf else 0)
        if a & sign and count == 1:
            f |= FLAG_OF
        elif a & sign and count > 1:
            pass
        return r, f
    if op == "sar":
        sa = to_signed(a, size)
        r = (sa >> min(count, bits)) & mask
        cf = (sa >> (count - 1)) & 1 if count <= bits else (1 if sa < 0 else 0)
        return r, szp(r, size) | (FLAG_CF if cf else 0)
    keep = flags & ~(FLAG_CF | FLAG_OF)
    if op == "rol":
        n = count % bits
        r = ((a << n) | (a >> (bits - n))) & mask if n else a
        cf = r & 1
        of = bool(r & sign) != bool(cf)
    elif op == "ror":
        n = count % bits
        r = ((a >> n) | (a << (bits - n))) & mask if n else a
        cf = 1 if r & sign else 0
        of = bool(r & sign) != bool(r & (sign >> 1))
    elif op == "rcl":
        n = count % (bits + 1)
        if n == 0:
            return a, flags
        wide = (cf_in << bits) | a  # bits+1 wide value, carry on top
        wide = ((wide << n) | (wide >> (bits + 1 - n))) & ((1 << (bits + 1)) - 1)
        r = wide & mask
        cf = wide >> bits
        of = bool(r & sign) != bool(cf)
    else:  # rcr
        n = count % (bits + 1)
        if n == 0:
            return a, flags
        of = bool(a & sign) != bool(cf_in)  # defined for count 1: MSB before XOR CF
        wide = (cf_in << bits) | a
        wide = ((wide >> n) | (wide << (bits + 1 - n))) & ((1 << (bits + 1)) - 1)
        r = wide & mask
        cf = wide >> bits
        if n != 1:
            of = bool(r & sign) != bool(r & (sign >> 1))
    return r, keep | (FLAG_CF if cf else 0) | (FLAG_OF if of else 0)
