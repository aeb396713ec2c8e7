"""Run one ring-3 code snippet on KVM and on kvmlite's emulator from the same state; compare the outcome.

(Longer than the project's ~600 lines: the differential machine, its snippet generator and the
comparison are one harness.)

The differential tests (``test_differential_kvm.py``) generate random
instruction sequences; this module owns everything around them:

* a tiny long-mode machine (own page tables, GDT and segment caches: no
  dependency on the VMM's set-up code, so a change there cannot silently
  change what is compared), with the snippet at CPL 3 and IOPL 3;
* assembling snippets with GNU as (Intel syntax), cached by text;
* :class:`Machine`, which runs a snippet on a KVM vCPU and on an
  :class:`~kvmlite.emulator.backend.EmuVcpu` over identical guest memory and
  returns both :class:`Outcome` values.

Why ring 3: on the nested KVM of this project's machines ring-3 code runs
natively on the real CPU, so KVM's answer *is* the silicon's.  The snippet
ends with ``out 0x50, al``: IOPL 3 lets CPL 3 do port I/O, so the OUT exits
to the VMM without touching any register.  KVM reports that exit with RIP
already past the OUT; the software backend leaves RIP on the OUT until the
VMM answers (KVM's ``complete_userspace_io`` scheme), so each outcome's RIP
is normalised to "the address of the OUT" before comparing.

A CPU exception with the empty IDT used here is a triple fault on both
sides (``Shutdown``); then only the kind of exit is compared.

Undefined flags.  The flags the SDM leaves undefined after an instruction
are tracked per item (:class:`Insn`) and masked from the final comparison; an
item that *reads* a flag still undefined gets :data:`FLAG_FENCE` before it,
so no undefined value can leak into registers or memory.  What this host's
CPU (AMD EPYC, measured 2026-11-25) does with them, for the record: logic
ops clear AF (as the emulator does); shifts set AF to 1 and compute OF for
any count; MUL/IMUL leave SF ZF AF PF unchanged; BSF/BSR clear CF OF SF AF
and set PF from the result; LZCNT/TZCNT clear SF AF PF and keep OF; DIV/IDIV
set AF and clear CF PF ZF SF OF.  The emulator's choices differ in places;
Intel CPUs differ again, which is why these are masked, not pinned.

kvm-pvm quirks met here (ring-3 guest code runs against some host state):
PUSHF sees IF=1 and IOPL=0 whatever the vCPU's RFLAGS say, and the exit
reports IOPL 0 (:data:`RFLAGS_HOST_VIEW`, never compared); CLI/STI fault
(host IOPL 0) and CLTS does not; reading a segment register gives the
host's selector; RDFSBASE works with the guest's CR4.FSGSBASE clear; with
RFLAGS.AC set a misaligned access raises #AC (the host's CR0.AM).  None of
these is generated.
"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from kvmlite.emulator.backend import EmuVm
from kvmlite.kvm import Kvm, Vcpu, Vm
from kvmlite.kvm import exits as E
from kvmlite.kvm import structs as S
from kvmlite.memory import GuestMemory
from kvmlite.x86 import Cr0, Cr4, Efer, Pte, Rflags

log = logging.getLogger(__name__)

# --- guest layout ---------------------------------------------------------------------
MEM_SIZE = 4 << 20
PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_ADDR = 0x3000
GDT_ADDR = 0x5000
CODE_ADDR = 0x10_0000
CODE_LIMIT = 0x1000
DATA_ADDR = 0x20_0000  # two pages of random bytes the snippet reads and writes
DATA_SIZE = 0x2000
STACK_ADDR = 0x21_0000  # one page; RSP starts in its middle
STACK_SIZE = 0x1000
STACK_START = STACK_ADDR + STACK_SIZE // 2

FS_BASE = DATA_ADDR + 0x100  # FS- and GS-relative operands land in the data pages
GS_BASE = DATA_ADDR - 0x300

STOP_PORT = 0x50
STOP_INSN = "out 0x50, al"
STOP_LEN = 2  # E6 ib

PAGE_2M = 1 << 21


GDT_CODE64_USER = 0x00AF_FA00_0000_FFFF  # DPL 3, long mode
GDT_DATA_USER = 0x00CF_F200_0000_FFFF  # DPL 3, read/write
SEL_CODE_USER, SEL_DATA_USER = 0x1B, 0x23

GPR_NAMES = (
    "rax",
    "rcx",
    "rdx",
    "rbx",
    "rsp",
    "rbp",
    "rsi",
    "rdi",
    "r8",
    "r9",
    "r10",
    "r11",
    "r12",
    "r13",
    "r14",
    "r15",
)

AS_TIMEOUT_S = 30
#: A snippet runs a few hundred instructions at most; one still running after this is looping.
RUN_TIMEOUT_S = 5.0
ASM_CACHE_LIMIT = 4096


class AssemblyError(Exception):
    """GNU as rejected a generated snippet: a bug in the generator, reported with the text."""


def _ignore_signal(signum: int, frame: object) -> None:
    """SIGALRM only has to interrupt KVM_RUN."""


def have_binutils() -> bool:
    return shutil.which("as") is not None and shutil.which("objcopy") is not None


_asm_cache: dict[str, bytes] = {}


def assemble64(text: str) -> bytes:
    """Flat 64-bit machine code for ``text`` (Intel syntax), cached by text.

    The snippets use no absolute references to their own code (only
    relative branches), so no link step is needed: ``objcopy -O binary``
    of the object's .text is the code.
    """
    cached = _asm_cache.get(text)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="kvmlite-diff-") as tmp:
        src, obj, out = Path(tmp, "s.S"), Path(tmp, "s.o"), Path(tmp, "s.bin")
        src.write_text(f".intel_syntax noprefix\n.code64\n{text}\n")
        res = subprocess.run(
            ["as", "--64", "-o", str(obj), str(src)], capture_output=True, text=True, timeout=AS_TIMEOUT_S
        )
        if res.returncode != 0:
            raise AssemblyError(f"as failed on:\n{text}\n{res.stderr}")
        subprocess.run(
            ["objcopy", "-O", "binary", "-j", ".text", str(obj), str(out)],
            check=True,
            capture_output=True,
            timeout=AS_TIMEOUT_S,
        )
        code = out.read_bytes()
    if len(_asm_cache) >= ASM_CACHE_LIMIT:
        _asm_cache.clear()
    _asm_cache[text] = code
    return code


@dataclass
class Outcome:
    """What one side ended with: how it stopped, and (if it reached the OUT) registers and memory."""

    stop: str  # "out" | "shutdown" | anything else: the exit's class name
    gprs: tuple[int, ...] = ()
    rip: int = 0
    rflags: int = 0
    data: bytes = b""
    stack: bytes = b""

    def gpr_dict(self) -> dict[str, int]:
        return dict(zip(GPR_NAMES, self.gprs, strict=True))


class Start:
    """The start state of one run: GPRs (RSP is forced to :data:`STACK_START`), RFLAGS, data bytes.

    A plain class with a short ``repr``: hypothesis prints failing examples,
    and 8 KiB of data bytes would bury the registers.
    """

    __slots__ = ("data", "gprs", "rflags", "seed", "stack")

    def __init__(self, gprs: tuple[int, ...], rflags: int, data: bytes, stack: bytes, seed: int = 0) -> None:
        self.gprs = gprs
        self.rflags = rflags
        self.data = data
        self.stack = stack
        self.seed = seed  # what the data bytes were made from

    def __repr__(self) -> str:
        regs = ", ".join(f"{n}={v:#x}" for n, v in zip(GPR_NAMES, self.gprs, strict=True))
        return f"Start({regs}, rflags={self.rflags:#x}, data seed={self.seed:#x})"


def _page_tables(mem: GuestMemory) -> None:
    """Identity-map the first 4 MiB with two user-accessible 2 MiB pages."""
    mem.write_u64(PML4_ADDR, PDPT_ADDR | Pte.P | Pte.RW | Pte.US)
    mem.write_u64(PDPT_ADDR, PD_ADDR | Pte.P | Pte.RW | Pte.US)
    for i in range(MEM_SIZE // PAGE_2M):
        mem.write_u64(PD_ADDR + 8 * i, i * PAGE_2M | Pte.P | Pte.RW | Pte.US | Pte.PS)
    mem.write(GDT_ADDR, struct.pack("<QQQQQ", 0, 0, 0, GDT_CODE64_USER, GDT_DATA_USER))


def _user_segment(seg: S.kvm_segment, selector: int, code: bool) -> None:
    seg.base, seg.limit, seg.selector = 0, 0xFFFF_FFFF, selector
    seg.type = 0xB if code else 0x3
    seg.present, seg.dpl, seg.s, seg.g, seg.avl, seg.unusable = 1, 3, 1, 1, 0, 0
    seg.l, seg.db = (1, 0) if code else (0, 1)


def ring3_sregs(sregs: S.kvm_sregs) -> None:
    """Long mode with paging, CS/SS/DS/ES/FS/GS flat DPL 3 (so CPL is 3)."""
    _user_segment(sregs.cs, SEL_CODE_USER, code=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        _user_segment(getattr(sregs, name), SEL_DATA_USER, code=False)
    sregs.fs.base, sregs.gs.base = FS_BASE, GS_BASE
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, 5 * 8 - 1
    sregs.idt.base, sregs.idt.limit = 0, 0  # any exception becomes a triple fault
    sregs.cr0 = Cr0.PE | Cr0.MP | Cr0.ET | Cr0.NE | Cr0.WP | Cr0.PG
    sregs.cr3 = PML4_ADDR
    sregs.cr4 = Cr4.PAE
    sregs.efer = Efer.LME | Efer.LMA


def _load(mem: GuestMemory, code: bytes, start: Start) -> None:
    if len(code) > CODE_LIMIT:
        raise ValueError(f"snippet of {len(code)} bytes does not fit the {CODE_LIMIT}-byte code area")
    mem.write(CODE_ADDR, code)
    mem.write(DATA_ADDR, start.data)
    mem.write(STACK_ADDR, start.stack)


def _regs(template: S.kvm_regs, start: Start) -> S.kvm_regs:
    regs = template
    for name, value in zip(GPR_NAMES, start.gprs, strict=True):
        setattr(regs, name, value)
    regs.rsp = STACK_START
    regs.rip = CODE_ADDR
    regs.rflags = start.rflags | Rflags.FIXED1 | Rflags.IOPL
    return regs


def _outcome(exit_: E.Exit, regs: S.kvm_regs, mem: GuestMemory, out_rip: int) -> Outcome:
    if isinstance(exit_, E.Shutdown):
        return Outcome("shutdown")
    if not (isinstance(exit_, E.IoOut) and exit_.port == STOP_PORT):
        return Outcome(f"{type(exit_).__name__}: {exit_!r}")
    return Outcome(
        "out",
        tuple(getattr(regs, n) for n in GPR_NAMES),
        out_rip,
        regs.rflags,
        mem.read(DATA_ADDR, DATA_SIZE),
        mem.read(STACK_ADDR, STACK_SIZE),
    )


class Machine:
    """One KVM VM and one emulator VM, each with the same 4 MiB layout, reused across runs."""

    def __init__(self, kvm: Kvm) -> None:
        self.kvm_mem = GuestMemory([(0, MEM_SIZE)])
        self.emu_mem = GuestMemory([(0, MEM_SIZE)])
        for mem in (self.kvm_mem, self.emu_mem):
            _page_tables(mem)
        self.vm: Vm = kvm.create_vm()
        self.vm.set_tss_addr()
        self.vm.register_memory(self.kvm_mem)
        self.vcpu: Vcpu = self.vm.create_vcpu(0)
        self.sregs = self.vcpu.get_sregs()
        ring3_sregs(self.sregs)
        self.emu_vm = EmuVm()
        self.emu_vm.register_memory(self.emu_mem)

    def close(self) -> None:
        self.vm.close()
        self.emu_vm.close()
        self.kvm_mem.close()
        self.emu_mem.close()

    def run_kvm(self, code: bytes, start: Start) -> Outcome:
        _load(self.kvm_mem, code, start)
        self.vcpu.set_sregs(self.sregs)
        self.vcpu.set_regs(_regs(self.vcpu.get_regs(), start))
        # A generator bug could make an endless loop: SIGALRM interrupts KVM_RUN (-> Interrupted).
        previous = signal.signal(signal.SIGALRM, _ignore_signal)
        signal.setitimer(signal.ITIMER_REAL, RUN_TIMEOUT_S)
        try:
            exit_ = self.vcpu.run()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        regs = self.vcpu.get_regs()
        # KVM has already stepped past the OUT when it reports the exit.
        return _outcome(exit_, regs, self.kvm_mem, regs.rip - STOP_LEN)

    def run_emu(self, code: bytes, start: Start) -> Outcome:
        _load(self.emu_mem, code, start)
        self.emu_vm.vcpus.clear()
        vcpu = self.emu_vm.create_vcpu(0)
        vcpu.set_sregs(self.sregs)
        vcpu.set_regs(_regs(vcpu.get_regs(), start))
        timer = threading.Timer(RUN_TIMEOUT_S, vcpu.kick)  # the same guard against endless loops
        timer.start()
        try:
            exit_ = vcpu.run()
        finally:
            timer.cancel()
        regs = vcpu.get_regs()
        return _outcome(exit_, regs, self.emu_mem, regs.rip)


# --- instruction generation ----------------------------------------------------------------
CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
DF = 0x400
ARITH = CF | PF | AF | ZF | SF | OF
#: RFLAGS bits a CPL-3 POPF may change and that cannot stop the snippet: not TF (it would trap),
#: not AC (on kvm-pvm the host's CR0.AM applies to ring-3 code: with AC set a misaligned access
#: raises #AC natively although the guest's CR0.AM is clear; measured).
POPF_SAFE = ARITH | DF | 0x200 | 0x4000 | 0x20_0000  # + IF, NT, ID
#: RFLAGS bits ring-3 code sees from the host, not the guest, on kvm-pvm (IF reads 1 and IOPL 0 in
#: PUSHF whatever the vCPU's RFLAGS hold; the exit reports IOPL 0; a CPL-3 OUT exits even with IOPL
#: 0).  Never compared; PUSHF results are masked with :data:`PUSHF_MASK` before they are stored.
RFLAGS_HOST_VIEW = int(Rflags.IF | Rflags.IOPL)
PUSHF_MASK = ~RFLAGS_HOST_VIEW & 0xFFFF_FFFF
#: Defines every arithmetic flag; put before an instruction that would read an undefined one.
FLAG_FENCE = "cmp rax, rbx"


@dataclass(frozen=True)
class Insn:
    """One generated item (one or a few lines) and what it does to the arithmetic flags.

    ``writes``: flags it certainly overwrites (so any earlier undefined value
    is gone); ``undef``: flags the SDM leaves undefined
    afterwards; ``reads``: flags whose value it consumes (into a register,
    memory or control flow), which must then be defined on entry.
    """

    text: str
    writes: int = 0
    undef: int = 0
    reads: int = 0


def finish(items: list[Insn]) -> tuple[str, int]:
    """The snippet text (fences added where needed, the OUT last) and the flags undefined at its end."""
    lines: list[str] = []
    undefined = 0
    for item in items:
        if item.reads & undefined:
            lines.append(FLAG_FENCE)
            undefined = 0
        lines.append(item.text)
        undefined = (undefined & ~item.writes) | item.undef
    lines.append(STOP_INSN)
    return "\n".join(lines), undefined


def compare(kvm: Outcome, emu: Outcome, undefined: int) -> list[str]:
    """Differences between the two outcomes (empty when they agree), ignoring ``undefined`` flags."""
    if kvm.stop != emu.stop:
        return [f"stopped differently: KVM {kvm.stop}, emulator {emu.stop}"]
    if kvm.stop != "out":
        return []
    diffs = [
        f"{name}: KVM {a:#x}, emulator {b:#x}"
        for name, a, b in zip(GPR_NAMES, kvm.gprs, emu.gprs, strict=True)
        if a != b
    ]
    if kvm.rip != emu.rip:
        diffs.append(f"rip: KVM {kvm.rip:#x}, emulator {emu.rip:#x}")
    if (kvm.rflags ^ emu.rflags) & ~(undefined | RFLAGS_HOST_VIEW):
        diffs.append(
            f"rflags: KVM {kvm.rflags:#x}, emulator {emu.rflags:#x} (undefined here: {undefined:#x})"
        )
    for name, base, a_mem, b_mem in (
        ("data", DATA_ADDR, kvm.data, emu.data),
        ("stack", STACK_ADDR, kvm.stack, emu.stack),
    ):
        if a_mem != b_mem:
            first = next(i for i in range(len(a_mem)) if a_mem[i] != b_mem[i])
            diffs.append(
                f"{name} differs first at {base + first:#x}: "
                f"KVM {a_mem[first : first + 8].hex()}, emulator {b_mem[first : first + 8].hex()}"
            )
    return diffs


# --- hypothesis strategies -------------------------------------------------------------------
# Imported here, not at the top, so that the machine half of this module works without hypothesis.
from hypothesis import strategies as st  # noqa: E402

R64 = ("rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", *(f"r{i}" for i in range(8, 16)))
R32 = ("eax", "ecx", "edx", "ebx", "ebp", "esi", "edi", *(f"r{i}d" for i in range(8, 16)))
R16 = ("ax", "cx", "dx", "bx", "bp", "si", "di", *(f"r{i}w" for i in range(8, 16)))
R8_REX = ("al", "cl", "dl", "bl", "bpl", "sil", "dil", *(f"r{i}b" for i in range(8, 16)))
R8_LEGACY = ("al", "cl", "dl", "bl", "ah", "ch", "dh", "bh")
REGS = {2: R16, 4: R32, 8: R64}
PTR = {1: "byte", 2: "word", 4: "dword", 8: "qword"}
SIZES = (1, 2, 4, 8)
#: Snippet-internal scratch base for memory operands: the data page's middle, so +-0x7f0 stays inside.
MEM_WINDOW = 0x1000
STRING_WINDOW = (0x600, 0x1A00)
MAX_STRING_COUNT = 40
CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
#: Flags each condition code reads.
COND_READS = {
    "o": OF,
    "no": OF,
    "b": CF,
    "ae": CF,
    "e": ZF,
    "ne": ZF,
    "be": CF | ZF,
    "a": CF | ZF,
    "s": SF,
    "ns": SF,
    "p": PF,
    "np": PF,
    "l": SF | OF,
    "ge": SF | OF,
    "le": ZF | SF | OF,
    "g": ZF | SF | OF,
}


def _host_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


HOST_FLAGS = _host_flags()


_REX_REGISTER = re.compile(r"\br(?:8|9|1[0-5])[dwb]?\b")


@st.composite
def reg(draw: st.DrawFn, size: int, legacy8: bool | None = None, beside: str = "") -> str:
    """A general register of ``size`` bytes other than the stack pointer.

    ``beside``: the memory operand it shares an instruction with; if that
    needs a REX prefix (R8-R15 in the address), AH/CH/DH/BH cannot be encoded.
    """
    if size == 1:
        if _REX_REGISTER.search(beside):
            legacy8 = False
        if legacy8 is None:
            legacy8 = draw(st.booleans())
        return draw(st.sampled_from(R8_LEGACY if legacy8 else R8_REX))
    return draw(st.sampled_from(REGS[size]))


def reg_pair(size: int) -> st.SearchStrategy[tuple[str, str]]:
    """Two registers that can share one instruction (no AH with a REX-only byte register)."""
    if size != 1:
        return st.tuples(reg(size), reg(size))
    return st.booleans().flatmap(lambda legacy: st.tuples(reg(1, legacy), reg(1, legacy)))


@st.composite
def imm(draw: st.DrawFn, size: int) -> int:
    bits = min(size * 8, 32)
    small = draw(st.booleans())
    if small:
        return draw(st.integers(-128, 127))
    return draw(st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1))


@st.composite
def mem(draw: st.DrawFn, size: int, avoid: tuple[str, ...] = ()) -> tuple[str, str]:
    """(set-up lines, ``<size> ptr [...]``) addressing the data page, with varied address forms.

    ``avoid``: 64-bit registers the caller changes between the set-up and the
    access, which therefore must not take part in the address.
    """
    offset = draw(st.integers(0, MEM_WINDOW - 1))
    form = draw(st.sampled_from(("abs", "base", "base+index", "base32", "fs", "gs")))
    ptr = PTR[size]
    if form == "abs":
        return "", f"{ptr} ptr [{DATA_ADDR + offset:#x}]"
    if form in ("fs", "gs"):
        # FS/GS keep a base in 64-bit mode (see ring3_sregs): the offset is relative to it
        seg_base = FS_BASE if form == "fs" else GS_BASE
        return "", f"{ptr} ptr {form}:[{DATA_ADDR + offset - seg_base:#x}]"
    if form == "base32":
        # address-size override (0x67): a 32-bit base register, the sum truncated to 32 bits
        base = draw(st.sampled_from([r for r in R64 if r not in avoid]))
        base32 = R32[R64.index(base)]
        disp = draw(st.integers(-0x7F0, 0x7F0))
        return f"mov {base32}, {DATA_ADDR + 0x800 + offset // 2:#x}", f"{ptr} ptr [{base32} + {disp}]"
    base = draw(st.sampled_from([r for r in R64 if r not in avoid]))
    disp = draw(st.integers(-0x7F0, 0x7F0)) if form == "base" else draw(st.integers(-0x80, 0x7F))
    setup = f"mov {base}, {DATA_ADDR + 0x800 + offset // 2:#x}"
    if form == "base":
        return setup, f"{ptr} ptr [{base} + {disp}]"
    index = draw(st.sampled_from([r for r in R64 if r != base and r not in avoid]))
    scale = draw(st.sampled_from((1, 2, 4, 8)))
    count = draw(st.integers(0, 63))
    return f"{setup}\nmov {index}, {count}", f"{ptr} ptr [{base} + {index}*{scale} + {disp}]"


def _join(*lines: str) -> str:
    return "\n".join(line for line in lines if line)


ALU_OPS = ("add", "or", "adc", "sbb", "and", "sub", "xor", "cmp", "test")
LOGIC_OPS = ("and", "or", "xor", "test")


@st.composite
def alu2(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(ALU_OPS))
    size = draw(st.sampled_from(SIZES))
    form = draw(st.sampled_from(("rr", "ri", "rm", "mr", "mi")))
    if op == "test" and form == "rm":
        form = "mr"
    setup = ""
    if form == "rr":
        a, b = draw(reg_pair(size))
        text = f"{op} {a}, {b}"
    elif form == "ri":
        text = f"{op} {draw(reg(size))}, {draw(imm(size))}"
    elif form == "rm":
        setup, m = draw(mem(size))
        text = f"{op} {draw(reg(size, beside=m))}, {m}"
    elif form == "mr":
        setup, m = draw(mem(size))
        text = f"{op} {m}, {draw(reg(size, beside=m))}"
    else:
        setup, m = draw(mem(size))
        text = f"{op} {m}, {draw(imm(size))}"
    if form in ("mr", "mi") and op not in ("cmp", "test") and draw(st.booleans()):
        text = "lock " + text  # the same operation, as an atomic read-modify-write
    reads = CF if op in ("adc", "sbb") else 0
    undef = AF if op in LOGIC_OPS else 0
    return Insn(_join(setup, text), ARITH, undef, reads)


@st.composite
def rm_operand(draw: st.DrawFn, size: int, legacy8: bool | None = None) -> tuple[str, str]:
    """(set-up, operand) for an r/m operand: a register or a data-page location."""
    if draw(st.booleans()):
        return "", draw(reg(size, legacy8))
    return draw(mem(size))


@st.composite
def unary(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(("inc", "dec", "neg", "not")))
    size = draw(st.sampled_from(SIZES))
    setup, target = draw(rm_operand(size))
    writes = {"inc": ARITH & ~CF, "dec": ARITH & ~CF, "neg": ARITH, "not": 0}[op]
    return Insn(_join(setup, f"{op} {target}"), writes)


SHIFTS = ("shl", "shr", "sar", "rol", "ror", "rcl", "rcr")


@st.composite
def shift(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(SHIFTS))
    size = draw(st.sampled_from(SIZES))
    setup, target = draw(rm_operand(size))
    how = draw(st.sampled_from(("1", "imm", "cl")))
    rotate = op in ("rol", "ror", "rcl", "rcr")
    reads = CF if op in ("rcl", "rcr") else 0
    writes = (CF | OF) if rotate else ARITH
    if how == "cl":
        # The count is only known at run time: assume the worst case (count > 1, maybe >= the width).
        undef = OF | (0 if rotate else AF | (CF if size < 4 else 0))
        return Insn(_join(setup, f"{op} {target}, cl"), 0, undef, reads)  # CL may be 0: nothing written
    count = 1 if how == "1" else draw(st.integers(0, 255))
    masked = count & (0x3F if size == 8 else 0x1F)
    undef = 0
    if masked > 1:
        undef |= OF
    if masked and not rotate:
        undef |= AF
        if masked >= size * 8:
            undef |= CF | OF
    operand = "1" if how == "1" else str(count)
    return Insn(_join(setup, f"{op} {target}, {operand}"), writes if masked else 0, undef, reads)


@st.composite
def double_shift(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(("shld", "shrd")))
    size = draw(st.sampled_from((2, 4, 8)))
    setup, target = draw(rm_operand(size))
    src = draw(reg(size))
    if size == 2:
        # A 16-bit count above 16 leaves the result undefined: only immediate counts up to 15 here.
        count = draw(st.integers(0, 15))
        operand = str(count)
    elif draw(st.booleans()):
        return Insn(_join(setup, f"{op} {target}, {src}, cl"), 0, OF | AF)
    else:
        count = draw(st.integers(0, 255))
        operand = str(count)
    masked = count & 0x1F if size != 8 else count & 0x3F
    if not masked:
        return Insn(_join(setup, f"{op} {target}, {src}, {operand}"))
    undef = AF | (OF if masked > 1 else 0)
    return Insn(_join(setup, f"{op} {target}, {src}, {operand}"), ARITH, undef)


DIVIDEND_REGS = ("ax", "dx", "eax", "edx", "rax", "rdx")
MUL_UNDEF = SF | ZF | AF | PF


@st.composite
def multiply(draw: st.DrawFn) -> Insn:
    form = draw(st.sampled_from(("mul", "imul1", "imul2", "imul3")))
    size = draw(st.sampled_from(SIZES if form in ("mul", "imul1") else (2, 4, 8)))
    setup, src = draw(rm_operand(size))
    if form in ("mul", "imul1"):
        text = f"{'mul' if form == 'mul' else 'imul'} {src}"
    elif form == "imul2":
        text = f"imul {draw(reg(size))}, {src}"
    else:
        text = f"imul {draw(reg(size))}, {src}, {draw(imm(size))}"
    return Insn(_join(setup, text), ARITH, MUL_UNDEF)


@st.composite
def divide(draw: st.DrawFn) -> Insn:
    """DIV/IDIV made fault-free: divisor |d| >= 2, the dividend's high half zeroed or sign-extended."""
    signed = draw(st.booleans())
    size = draw(st.sampled_from(SIZES))
    if size == 1:
        divisor_regs = [r for r in R8_REX if r != "al"]
        setup, d = (
            ("", draw(st.sampled_from(divisor_regs))) if draw(st.booleans()) else draw(mem(1, ("rax",)))
        )
    else:
        pool = [r for r in REGS[size] if r not in DIVIDEND_REGS]
        setup, d = (
            ("", draw(st.sampled_from(pool))) if draw(st.booleans()) else draw(mem(size, ("rax", "rdx")))
        )
    # bit 1 set, bit 0 clear: d is neither 0 nor +-1, so |quotient| < 2^(n-1) and nothing faults
    lines = [setup, f"or {d}, 2", f"and {d}, -2"]
    if signed:
        lines.append({1: "cbw", 2: "cwd", 4: "cdq", 8: "cqo"}[size])
    else:
        lines.append("movzx eax, al" if size == 1 else "xor edx, edx")
    lines.append(f"{'idiv' if signed else 'div'} {d}")
    return Insn(_join(*lines), ARITH, ARITH)


@st.composite
def move(draw: st.DrawFn) -> Insn:
    forms = ("mov", "movzx", "movsx", "movsxd", "lea", "xchg", "bswap", "cbw", "movabs")
    form = draw(st.sampled_from(forms + (("movbe",) if "movbe" in HOST_FLAGS else ())))
    size = draw(st.sampled_from(SIZES))
    if form == "mov":
        shape = draw(st.sampled_from(("rr", "ri", "rm", "mr", "mi")))
        if shape == "rr":
            a, b = draw(reg_pair(size))
            return Insn(f"mov {a}, {b}")
        if shape == "ri":
            return Insn(f"mov {draw(reg(size))}, {draw(imm(size))}")
        setup, m = draw(mem(size))
        if shape == "rm":
            return Insn(_join(setup, f"mov {draw(reg(size, beside=m))}, {m}"))
        if shape == "mr":
            return Insn(_join(setup, f"mov {m}, {draw(reg(size, beside=m))}"))
        return Insn(_join(setup, f"mov {m}, {draw(imm(size))}"))
    if form in ("movzx", "movsx"):
        src_size = draw(st.sampled_from((1, 2)))
        dst_size = draw(st.sampled_from([s for s in (2, 4, 8) if s > src_size]))
        if src_size == 1 and draw(st.booleans()):
            legacy = dst_size < 8 and draw(st.booleans())  # AH..BH cannot go with REX (W or R8+)
            dst = draw(st.sampled_from(REGS[dst_size][:7] if legacy else REGS[dst_size]))
            return Insn(f"{form} {dst}, {draw(reg(1, legacy))}")
        setup, src = draw(rm_operand(src_size, legacy8=False))
        return Insn(_join(setup, f"{form} {draw(reg(dst_size))}, {src}"))
    if form == "movbe":
        size = draw(st.sampled_from((2, 4, 8)))
        setup, m = draw(mem(size))
        if draw(st.booleans()):
            return Insn(_join(setup, f"movbe {draw(reg(size))}, {m}"))
        return Insn(_join(setup, f"movbe {m}, {draw(reg(size))}"))
    if form == "movsxd":
        setup, src = draw(rm_operand(4))
        return Insn(_join(setup, f"movsxd {draw(reg(8))}, {src}"))
    if form == "lea":
        # LEA computes an address and touches no memory: any registers will do.
        dst = draw(reg(draw(st.sampled_from((2, 4, 8)))))
        base, index = draw(st.sampled_from(R64)), draw(st.sampled_from(R64))
        scale, disp = draw(st.sampled_from((1, 2, 4, 8))), draw(st.integers(-(1 << 31), (1 << 31) - 1))
        return Insn(f"lea {dst}, [{base} + {index}*{scale} + {disp}]")
    if form == "xchg":
        if draw(st.booleans()):
            a, b = draw(reg_pair(size))
            return Insn(f"xchg {a}, {b}")
        setup, m = draw(mem(size))
        return Insn(_join(setup, f"xchg {m}, {draw(reg(size, beside=m))}"))
    if form == "bswap":
        return Insn(f"bswap {draw(reg(draw(st.sampled_from((4, 8)))))}")
    if form == "movabs":
        return Insn(f"movabs {draw(reg(8))}, {draw(st.integers(0, (1 << 64) - 1)):#x}")
    return Insn(draw(st.sampled_from(("cbw", "cwde", "cdqe", "cwd", "cdq", "cqo"))))


@st.composite
def conditional(draw: st.DrawFn) -> Insn:
    cc = draw(st.sampled_from(CONDITIONS))
    form = draw(st.sampled_from(("cmov", "set", "jcc")))
    if form == "cmov":
        size = draw(st.sampled_from((2, 4, 8)))
        setup, src = draw(rm_operand(size))
        return Insn(_join(setup, f"cmov{cc} {draw(reg(size))}, {src}"), reads=COND_READS[cc])
    if form == "set":
        setup, dst = draw(rm_operand(1))
        return Insn(_join(setup, f"set{cc} {dst}"), reads=COND_READS[cc])
    # a forward branch over one register increment: taken or not shows in the register
    # (the INC may be skipped, so the item defines no flag for certain)
    return Insn(f"j{cc} 1f\ninc {draw(reg(8))}\n1:", reads=COND_READS[cc])


@st.composite
def exchange(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(("xadd", "cmpxchg", "lock xadd", "lock cmpxchg", "cmpxchg8b", "cmpxchg16b")))
    if op in ("cmpxchg8b", "cmpxchg16b"):
        # CMPXCHG16B needs a 16-byte aligned operand; half the time RDX:RAX is loaded to match
        address = DATA_ADDR + 16 * draw(st.integers(0, MEM_WINDOW // 16 - 1))
        width = "qword" if op == "cmpxchg8b" else "xmmword"
        lines = []
        if draw(st.booleans()):
            regs = ("eax", "edx") if op == "cmpxchg8b" else ("rax", "rdx")
            half = 4 if op == "cmpxchg8b" else 8
            lines += [f"mov {regs[0]}, [{address:#x}]", f"mov {regs[1]}, [{address + half:#x}]"]
        lock = "lock " if draw(st.booleans()) else ""
        lines.append(f"{lock}{op} {width} ptr [{address:#x}]")
        return Insn("\n".join(lines), ZF)
    size = draw(st.sampled_from(SIZES))
    if not op.startswith("lock") and draw(st.booleans()):
        a, b = draw(reg_pair(size))
        return Insn(f"{op} {a}, {b}", ARITH)
    setup, m = draw(mem(size))
    return Insn(_join(setup, f"{op} {m}, {draw(reg(size, beside=m))}"), ARITH)


@st.composite
def bits(draw: st.DrawFn) -> Insn:
    ops = ["bt", "bts", "btr", "btc", "bsf", "bsr"]
    if "popcnt" in HOST_FLAGS:
        ops.append("popcnt")
    if "abm" in HOST_FLAGS:
        ops.append("lzcnt")
    if "bmi1" in HOST_FLAGS:
        ops.append("tzcnt")
    op = draw(st.sampled_from(ops))
    size = draw(st.sampled_from((2, 4, 8)))
    if op.startswith("bt"):
        form = draw(st.sampled_from(("rr", "ri", "mi", "mr")))
        if form == "rr":
            a, b = draw(reg_pair(size))
            text = f"{op} {a}, {b}"
        elif form == "ri":
            text = f"{op} {draw(reg(size))}, {draw(st.integers(0, 255))}"
        elif form == "mi":
            setup, m = draw(mem(size))
            text = _join(setup, f"{op} {m}, {draw(st.integers(0, 255))}")
        else:
            # a register bit offset reaches beyond the operand: keep it within +-0x400 bytes
            offset_reg = draw(st.sampled_from(REGS[size]))
            setup, m = draw(mem(size, (R64[REGS[size].index(offset_reg)],)))
            text = _join(
                setup, f"mov {offset_reg}, {draw(st.integers(-0x1000, 0x1000))}", f"{op} {m}, {offset_reg}"
            )
        return Insn(text, CF | OF | SF | AF | PF, OF | SF | AF | PF)
    setup, src = draw(rm_operand(size))
    text = _join(setup, f"{op} {draw(reg(size))}, {src}")
    if op in ("bsf", "bsr"):
        return Insn(text, ARITH, ARITH & ~ZF)
    if op == "popcnt":
        return Insn(text, ARITH)
    return Insn(text, ARITH, ARITH & ~(CF | ZF))


RSP_SNIPPETS = (
    "push rsp\npop rax",
    "push rsp\npop rsp",
    "push qword ptr [rsp]\npop rbx",
    "push rax\npop qword ptr [rsp - 8]",
    "push rcx\npush rdx\npop qword ptr [rsp]\npop rsi",
    "push rax\nadd qword ptr [rsp], rbx\npop rdi",
    "push rax\nxchg qword ptr [rsp], rbp\npop rax",
    "lea rax, [rsp + 8]\nmov rbx, rsp",
    "push rax\nmov rax, qword ptr [rsp]\nadd rsp, 8",
)


@st.composite
def stack(draw: st.DrawFn) -> Insn:
    form = draw(
        st.sampled_from(
            ("push", "pop", "pushm", "popm", "pushi", "pushf", "popf", "call", "enter", "rsp", "nested")
        )
    )
    if form == "rsp":
        # the stack pointer as an operand: PUSH RSP pushes the old value, POP [RSP+n] addresses with
        # the incremented RSP, and so on
        text = draw(st.sampled_from(RSP_SNIPPETS))
        return Insn(text, ARITH if "add" in text else 0)
    if form == "nested":
        # ENTER with a nesting level copies frame pointers from the old frame: point RBP at the stack
        level, frame = draw(st.integers(1, 4)), draw(st.integers(0, 0x40))
        return Insn(f"mov rbp, {STACK_START - 0x100:#x}\nenter {frame}, {level}\nleave")
    if form == "push":
        return Insn(f"push {draw(st.sampled_from(R64 + R16))}")
    if form == "pop":
        return Insn(f"pop {draw(st.sampled_from(R64 + R16))}")
    if form in ("pushm", "popm"):
        size = draw(st.sampled_from((2, 8)))
        setup, m = draw(mem(size))
        return Insn(_join(setup, f"{form[:-1]} {m}"))
    if form == "pushi":
        return Insn(f"push {draw(imm(4))}")
    if form == "pushf":
        push = draw(st.sampled_from(("pushfq", "pushf")))
        width = "qword" if push == "pushfq" else "word"
        mask = -(RFLAGS_HOST_VIEW + 1) if push == "pushfq" else PUSHF_MASK & 0xFFFF
        target = draw(reg(8))
        return Insn(f"{push}\nand {width} ptr [rsp], {mask}\npop {target}", ARITH, AF, reads=ARITH)
    if form == "popf":
        # only bits that cannot trap or change privilege (TF would single-step into a triple fault)
        value = draw(st.integers(0, (1 << 64) - 1)) & POPF_SAFE
        return Insn(f"push {draw(reg(8))}\nmov qword ptr [rsp], {value:#x}\npopfq", ARITH)
    if form == "call":
        return Insn(f"call 2f\njmp 3f\n2:\nadd {draw(reg(8))}, 1\nret\n3:", ARITH)
    frame = draw(st.integers(0, 0x80))
    return Insn(f"enter {frame}, 0\nmov qword ptr [rbp - 8], rbp\nleave")


@st.composite
def flag_ops(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(("clc", "stc", "cmc", "cld", "std", "lahf", "sahf")))
    if op == "lahf":
        return Insn("lahf", reads=ARITH & ~OF)
    if op == "sahf":
        return Insn("sahf", ARITH & ~OF)
    if op == "cmc":
        return Insn("cmc", CF, reads=CF)
    return Insn(op, CF if op in ("clc", "stc") else 0)


@st.composite
def string(draw: st.DrawFn) -> Insn:
    op = draw(st.sampled_from(("movs", "stos", "lods", "cmps", "scas")))
    size = draw(st.sampled_from(SIZES))
    suffix = {1: "b", 2: "w", 4: "d", 8: "q"}[size]
    if op in ("cmps", "scas"):
        prefix = draw(st.sampled_from(("", "repe ", "repne ")))
    else:
        prefix = draw(st.sampled_from(("", "rep ")))
    lo, hi = STRING_WINDOW
    src = DATA_ADDR + draw(st.integers(lo, hi))
    dst = DATA_ADDR + draw(st.integers(lo, hi))
    count = draw(st.integers(0, MAX_STRING_COUNT))
    # a REP with RCX = 0 compares nothing and leaves the flags alone
    writes = ARITH if op in ("cmps", "scas") and (not prefix or count) else 0
    # FS/GS override the source segment (DS:RSI) and are ignored for the ES:RDI destination
    override = draw(st.sampled_from(("", "", "fs", "gs")))
    if override:
        src -= FS_BASE if override == "fs" else GS_BASE  # RSI is then an offset into FS/GS
        override = f".byte {0x64 if override == 'fs' else 0x65:#x}\n"
    text = f"mov rsi, {src:#x}\nmov rdi, {dst:#x}\nmov ecx, {count}\n{override}{prefix}{op}{suffix}"
    return Insn(text, writes)


@st.composite
def misc(draw: st.DrawFn) -> Insn:
    form = draw(st.sampled_from(("xlat", "nop", "loop", "loopcc", "jrcxz", "rip", "self", "addr32-string")))
    if form == "loopcc":
        # LOOPE/LOOPNE also stop on ZF: the body's CMP decides, RCX says how far it got
        count, limit = draw(st.integers(1, 6)), draw(st.integers(0, 8))
        op = draw(st.sampled_from(("loope", "loopne")))
        body = draw(st.sampled_from([r for r in R64 if r != "rcx"]))
        return Insn(f"mov ecx, {count}\n4:\ninc {body}\ncmp {body}, {limit}\n{op} 4b", ARITH)
    if form == "jrcxz":
        reg_ = draw(st.sampled_from(("jrcxz", "jecxz")))
        return Insn(f"{reg_} 1f\nnot {draw(reg(8))}\n1:")
    if form == "rip":
        # RIP-relative: an address (LEA) and a load of code bytes, the same on both sides
        disp = draw(st.integers(-0x800, 0x800))
        if draw(st.booleans()):
            return Insn(f"lea {draw(reg(8))}, [rip + {disp}]")
        size = draw(st.sampled_from(SIZES))
        return Insn(f"mov {draw(reg(size, False))}, {PTR[size]} ptr [rip + {disp}]")
    if form == "self":
        # one register in both operands: which write lands last matters (the XADD bug), and
        # 32-bit forms zero-extend even when nothing changes
        op = draw(st.sampled_from(("xchg", "xadd", "cmpxchg", "add", "sub", "xor", "imul", "bsf", "shld")))
        size = draw(st.sampled_from((2, 4, 8)))
        r = draw(reg(size))
        if op == "shld":
            return Insn(f"shld {r}, {r}, {draw(st.integers(0, 15))}", 0, OF | AF | CF)
        if op == "bsf":
            return Insn(f"bsf {r}, {r}", ARITH, ARITH & ~ZF)
        return Insn(f"{op} {r}, {r}", 0 if op == "xchg" else ARITH, MUL_UNDEF if op == "imul" else 0)
    if form == "addr32-string":
        # address-size override on a string instruction: ESI/EDI/ECX, results zero-extended
        op = draw(st.sampled_from(("movsb", "stosw", "lodsd", "scasb", "cmpsq")))
        lo, hi = STRING_WINDOW
        src, dst = DATA_ADDR + draw(st.integers(lo, hi)), DATA_ADDR + draw(st.integers(lo, hi))
        count = draw(st.integers(0, MAX_STRING_COUNT))
        prefix = draw(st.sampled_from(("", "rep ")))
        upper = draw(st.integers(0, (1 << 32) - 1)) << 32  # must be ignored (and cleared) by addr32
        writes = ARITH if op in ("scasb", "cmpsq") and (not prefix or count) else 0
        text = (
            f"mov rsi, {src | upper:#x}\nmov rdi, {dst | upper:#x}\nmov rcx, {count | upper:#x}\n"
            f"addr32 {prefix}{op}"
        )
        return Insn(text, writes)
    if form == "xlat":
        return Insn(f"mov rbx, {DATA_ADDR + draw(st.integers(0, MEM_WINDOW)):#x}\nxlatb")
    if form == "nop":
        return Insn(draw(st.sampled_from(("nop", "pause", "nop dword ptr [rax + rax*1 + 0]"))))
    count = draw(st.integers(1, 5))
    body = draw(st.sampled_from([r for r in R64 if r != "rcx"]))  # RCX counts: adding to it never ends
    return Insn(f"mov ecx, {count}\n4:\nadd {body}, 3\nloop 4b", ARITH)


#: Legacy prefixes that do nothing to a register-to-register ALU op but take part in decoding:
#: operand size, the segment overrides (ignored in 64-bit mode), REP/REPNE (ignored here).
NEUTRAL_PREFIXES = (0x66, 0x2E, 0x3E, 0x26, 0x36, 0xF2, 0xF3)
#: One-byte ALU/move opcodes with ModRM (E,G or G,E forms), both byte and full size.
PREFIXED_OPCODES = {
    0x00: ARITH, 0x01: ARITH, 0x02: ARITH, 0x03: ARITH,  # add
    0x08: ARITH, 0x09: ARITH, 0x0A: ARITH,  # or
    0x10: ARITH, 0x11: ARITH, 0x18: ARITH, 0x19: ARITH,  # adc, sbb
    0x20: ARITH, 0x21: ARITH, 0x28: ARITH, 0x29: ARITH,  # and, sub
    0x30: ARITH, 0x31: ARITH, 0x38: ARITH, 0x39: ARITH,  # xor, cmp
    0x84: ARITH, 0x85: ARITH,  # test
    0x86: 0, 0x87: 0, 0x88: 0, 0x89: 0, 0x8A: 0, 0x8B: 0,  # xchg, mov
}  # fmt: skip
LOGIC_OPCODES = {0x08, 0x09, 0x0A, 0x20, 0x21, 0x30, 0x31, 0x84, 0x85}
ADC_SBB_OPCODES = {0x10, 0x11, 0x18, 0x19}


#: Producers whose flags translation blocks record lazily (kvmlite.emulator.fastops), and what each
#: leaves undefined (logic ops: AF; IMUL: SF ZF AF PF).
LAZY_PRODUCERS = {
    "add": 0, "sub": 0, "cmp": 0, "and": AF, "or": AF, "xor": AF, "test": AF,
    "inc": 0, "dec": 0, "imul": SF | ZF | AF | PF,
}  # fmt: skip


@st.composite
def lazy_producer(draw: st.DrawFn, avoid: str = "") -> tuple[str, int, int]:
    """(text, flags written, flags undefined after) of a lazily-flagged instruction not using ``avoid``."""
    op = draw(st.sampled_from(sorted(LAZY_PRODUCERS)))
    size = draw(st.sampled_from((4, 8)))
    pool = [r for r in REGS[size] if R64[REGS[size].index(r)] != avoid]
    a, b = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    if op in ("inc", "dec"):
        return f"{op} {a}", ARITH & ~CF, 0
    if op == "imul":
        return f"imul {a}, {b}", ARITH, LAZY_PRODUCERS[op]
    src = b if draw(st.booleans()) else str(draw(imm(size)))
    return f"{op} {a}, {src}", ARITH, LAZY_PRODUCERS[op]


@st.composite
def across_blocks(draw: st.DrawFn) -> Insn:
    """Flags made in one translation block and consumed in the next, after a jump (lazy flags that
    outlive their block), with an INC/DEC between that must keep the producer's CF."""
    text, writes, undef = draw(lazy_producer())
    lines = [text, "jmp 5f", "5:"]
    if draw(st.booleans()):
        keep, _, _ = draw(lazy_producer())
        if keep.startswith(("inc", "dec")):
            lines += [keep, "jmp 6f", "6:"]
            writes, undef = writes | (ARITH & ~CF), undef & CF
    usable = [cc for cc in CONDITIONS if not COND_READS[cc] & undef]
    cc = draw(st.sampled_from(usable))
    form = draw(st.sampled_from(("adc", "set", "cmov", "jcc", "lahf")))
    if form == "adc" and not undef & CF:
        lines.append(f"adc {draw(reg(8))}, {draw(reg(8))}")
        return Insn("\n".join(lines), ARITH, 0, reads=CF & ~writes)
    if form == "lahf" and not undef & (ARITH & ~OF):
        lines.append("lahf")
        return Insn("\n".join(lines), writes, undef, reads=(ARITH & ~OF) & ~writes)
    if form == "set":
        lines.append(f"set{cc} {draw(reg(1, False))}")
    elif form == "cmov":
        lines.append(f"cmov{cc} {draw(reg(8))}, {draw(reg(8))}")
    else:
        lines += [f"j{cc} 7f", f"not {draw(reg(8))}", "7:"]
    return Insn("\n".join(lines), writes, undef, reads=COND_READS[cc] & ~writes)


@st.composite
def counted_loop(draw: st.DrawFn) -> Insn:
    """A backward loop (a block that branches to itself) whose body sets flags a branch inside reads."""
    count = draw(st.integers(1, 7))
    body, _writes, undef = draw(lazy_producer(avoid="rcx"))
    usable = [cc for cc in CONDITIONS if not COND_READS[cc] & undef]
    lines = [f"mov ecx, {count}", "8:", body]
    if draw(st.booleans()):
        cc = draw(st.sampled_from(usable))
        lines += [f"j{cc} 9f", f"add {draw(st.sampled_from([r for r in R64 if r != 'rcx']))}, 3", "9:"]
    lines += ["dec ecx", "jnz 8b"]
    # DEC leaves CF to the body (or the ADD, or what came before): required defined on entry
    return Insn("\n".join(lines), ARITH & ~CF, 0, reads=CF)


@st.composite
def prefixed(draw: st.DrawFn) -> Insn:
    """Raw bytes: prefixes in any order, REX anywhere among them, then a register-register op.

    A REX prefix counts only right before the opcode; one followed by a
    legacy prefix is ignored (so byte registers 4-7 are AH..BH again, and
    REX.W does not widen).  66 with REX.W: REX.W wins.
    """
    prefixes = draw(st.lists(st.sampled_from(NEUTRAL_PREFIXES), max_size=4))
    rex_count = draw(st.integers(0, 2))
    for _ in range(rex_count):
        prefixes.insert(draw(st.integers(0, len(prefixes))), 0x40 | draw(st.integers(0, 15)))
    opcode = draw(st.sampled_from(sorted(PREFIXED_OPCODES)))
    reg_field, rm_field = draw(st.integers(0, 7)), draw(st.integers(0, 7))
    rex = prefixes[-1] if prefixes and prefixes[-1] & 0xF0 == 0x40 else 0
    # keep RSP out of the destination (the ModRM rm/reg fields extended by REX.B/REX.R)
    reg_index, rm_index = reg_field | (rex & 4) << 1, rm_field | (rex & 1) << 3
    written = {rm_index} if opcode & 2 == 0 else {reg_index}
    if opcode in (0x86, 0x87):
        written = {reg_index, rm_index}
    # index 4 is SP/ESP/RSP, or SPL for a byte op with a REX prefix (AH without one)
    if 4 in written and (opcode & 1 or rex):
        return Insn("nop")
    modrm = 0xC0 | reg_field << 3 | rm_field
    text = ".byte " + ", ".join(f"{b:#04x}" for b in [*prefixes, opcode, modrm])
    undef = AF if opcode in LOGIC_OPCODES else 0
    return Insn(text, PREFIXED_OPCODES[opcode], undef, CF if opcode in ADC_SBB_OPCODES else 0)


def instruction() -> st.SearchStrategy[Insn]:
    """One item of a snippet, from every family above."""
    return st.one_of(
        alu2(),
        unary(),
        shift(),
        double_shift(),
        multiply(),
        divide(),
        move(),
        conditional(),
        exchange(),
        bits(),
        stack(),
        flag_ops(),
        string(),
        misc(),
        prefixed(),
        across_blocks(),
        counted_loop(),
    )


@st.composite
def start_state(draw: st.DrawFn) -> Start:
    """Random GPRs (often small or special values), arithmetic flags and DF, data and stack bytes."""
    special = st.sampled_from(
        (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, (1 << 63), (1 << 64) - 1)
    )
    value = st.one_of(st.integers(0, (1 << 64) - 1), special, st.integers(0, 64))
    gprs = tuple(draw(value) for _ in GPR_NAMES)
    flags = draw(st.integers(0, ARITH | DF)) & (ARITH | DF)
    data = draw(st.binary(min_size=32, max_size=32))
    # expand 32 random bytes over the two data pages cheaply (hypothesis shrinks them well)
    seed = int.from_bytes(data, "little")
    data = bytes((seed >> (8 * (i % 32)) ^ (i * 0x9D)) & 0xFF for i in range(DATA_SIZE))
    stack_bytes = bytes((i * 0x3B) & 0xFF for i in range(STACK_SIZE))
    return Start(gprs, flags, data, stack_bytes, seed)


#: Instructions that fault at CPL 3 (with this module's state); with the empty IDT each is a triple
#: fault on both sides.  Left out because kvm-pvm runs them against the host's state instead of the
#: guest's: CLI/STI (#GP natively: the host's IOPL is 0, the guest's 3) and CLTS (does not fault).
FAULTING = (
    "ud2",
    "xor ecx, ecx\ndiv ecx",  # #DE: divide by zero
    "mov eax, 0x80\nmov cl, -1\ncbw\nidiv cl",  # #DE: -128 / -1 does not fit in AL
    "movabs rax, 0x800000000000\nmov rbx, [rax]",  # #GP: non-canonical
    "mov eax, 0x400000\nmov rbx, [rax]",  # #PF: past the mapped 4 MiB
    "mov eax, 0x3ffffe\nmov ebx, [rax]",  # #PF on the second page of a split access
    "cld\nmov rdi, 0x3ffff0\nmov ecx, 64\nrep stosb",  # #PF in the middle of a REP
    ".byte 0xf0, 0x01, 0xd8",  # #UD: LOCK ADD EAX, EBX (register destination)
    "cmpxchg16b xmmword ptr [0x200008]",  # #GP: misaligned
    "hlt",  # #GP: privileged
    "mov rax, cr0",
    "rdmsr",
    "lgdt [0x200000]",
    "invlpg [0x200000]",
    "swapgs",
    "movabs rsp, 0x800000000000\npush rax",  # #SS: non-canonical stack
    "int3",
    "int 0x21",  # #GP: vector beyond the empty IDT
    ".byte 0xce",  # #UD: INTO is invalid in 64-bit mode
    ".byte 0x37",  # #UD: AAA likewise
    "xor eax, eax\nmov ss, ax",  # #GP: null SS at CPL 3
    "mov eax, 8\nmov ds, ax",  # #GP: RPL/DPL 0 data selector at CPL 3
    "movabs rax, 0x900000000000\nmov qword ptr [0x200000], rax\njmp qword ptr [0x200000]",  # #GP
)
