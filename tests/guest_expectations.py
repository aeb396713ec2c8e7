"""What every test guest must print and how it must exit: the one place both VMMs are held to.

The guests in ``guests/`` are booted by two VMMs: QEMU (tests/test_guests_qemu.py,
the reference) and kvmlite (the lead's tests).  Both runs are checked against
the :data:`EXPECTATIONS` below, so a difference between kvmlite and QEMU shows up
as one of them failing the same expectation.

Serial output is matched line by line.  A line is either a literal string
(exact match), a :class:`Re` (the line must fully match a regular expression:
used for machine-dependent numbers such as ``mem_upper`` and for the kernel path
at the start of a multiboot command line) or a :class:`Repeat` (one or more
consecutive lines each fully matching, e.g. the memory-map entries).

Exit statuses follow QEMU's isa-debug-exit (iosize=4): a guest that writes v to
port 0xf4 ends with status ``(v << 1) | 1``.  Only the demo ends with
``cli; hlt``, which kvmlite reports as status 0 and QEMU as a halted CPU that
keeps running (``ends_with_halt``).

Use :func:`build_guests` to build the images (it drives guests/build.py) and
:meth:`GuestExpectation.mismatches` to compare an output.
"""

from __future__ import annotations

import enum
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO_DIR = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_DIR / "guests" / "build.py"

DEBUG_EXIT_PORT = 0xF4
HALT_STATUS = 0
"""kvmlite's status for a guest that ran ``cli; hlt`` (clean power-off)."""
RESET_STATUS = 0
"""A guest reset: kvmlite with ``--on-reset exit`` (the default) and QEMU with -no-reboot both exit 0."""
QEMU_MEMORY_MIB = 128
"""Guest RAM of the reference runs; kvmlite runs may use another size (the memory lines are regexes)."""

LCG_MUL = 6364136223846793005
LCG_ADD = 1442695040888963407
LCG_MASK = (1 << 64) - 1
CBENCH_TEST_ITERS = 1000
LOOP_TEST_N = 1000


def debug_exit_status(value: int) -> int:
    """Exit status of a VMM after the guest wrote ``value`` to the isa-debug-exit port."""
    return ((value << 1) | 1) & 0xFF


def lcg(iterations: int) -> int:
    """The value cbench prints after ``iterations`` steps (MMIX LCG from 0, mod 2**64)."""
    state = 0
    for _ in range(iterations):
        state = (state * LCG_MUL + LCG_ADD) & LCG_MASK
    return state


class BootFormat(enum.Enum):
    """How a VMM must load the image (the formats kvmlite detects)."""

    MULTIBOOT_ELF32 = "multiboot-elf32"
    MULTIBOOT_AOUT = "multiboot-aout"
    BOOT_SECTOR = "boot-sector"
    ELF64 = "elf64"


@dataclass(frozen=True)
class Re:
    """One serial line that must fully match ``pattern``."""

    pattern: str

    def matches(self, line: str) -> bool:
        return re.fullmatch(self.pattern, line) is not None


@dataclass(frozen=True)
class Repeat:
    """One or more consecutive serial lines, each fully matching ``pattern``."""

    pattern: str

    def matches(self, line: str) -> bool:
        return re.fullmatch(self.pattern, line) is not None


Line = str | Re | Repeat


def cmdline_line(prefix: str, args: str) -> Re:
    """A line printing the multiboot command line: '<kernel path> <args>' as QEMU builds it.

    The kernel path differs between runs, so any non-blank word is accepted
    for it; QEMU leaves a trailing space when there are no arguments, which is
    allowed but not required.
    """
    tail = " ?" if not args else " " + re.escape(args)
    return Re(re.escape(prefix) + r'="\S+' + tail + '"')


@dataclass(frozen=True)
class GuestExpectation:
    """One run of one guest: its image, arguments, serial lines and exit status."""

    guest: str
    """Name of the guest in guests/build.py."""
    image: str
    """File name of the image kvmlite boots, in the build output directory."""
    boot: BootFormat
    args: str
    """Command-line arguments (multiboot guests), after the kernel path."""
    lines: tuple[Line, ...]
    exit_status: int
    """Status kvmlite (and QEMU, except for ends_with_halt) must exit with."""
    qemu_image: str | None = None
    """Image QEMU boots when it differs from ``image`` (lm64 -> lm64-pvh.elf)."""
    qemu_bootable: bool = True
    ends_with_halt: bool = False
    """The guest ends with cli; hlt: status 0 in kvmlite, a halted CPU in QEMU."""

    @property
    def reference_image(self) -> str:
        """The image the QEMU reference run boots."""
        return self.qemu_image or self.image

    def mismatches(self, serial: str) -> list[str]:
        """Differences between ``serial`` (the whole output) and the expected lines; empty if it matches."""
        problems: list[str] = []
        if serial and not serial.endswith("\n"):
            problems.append(f"output does not end with a newline: {serial[-40:]!r}")
        lines = serial.splitlines()
        pos = 0
        for index, expected in enumerate(self.lines):
            if isinstance(expected, Repeat):
                start = pos
                while pos < len(lines) and expected.matches(lines[pos]):
                    pos += 1
                if pos == start:
                    got = lines[pos] if pos < len(lines) else "<end of output>"
                    problems.append(f"line {pos + 1}: expected one or more /{expected.pattern}/, got {got!r}")
                    return problems
                continue
            if pos >= len(lines):
                missing = len(self.lines) - index
                problems.append(f"output ends after {len(lines)} lines; {missing} expected line(s) missing")
                return problems
            line = lines[pos]
            ok = expected.matches(line) if isinstance(expected, Re) else line == expected
            if not ok:
                shown = f"/{expected.pattern}/" if isinstance(expected, Re) else repr(expected)
                problems.append(f"line {pos + 1}: expected {shown}, got {line!r}")
                return problems
            pos += 1
        if pos < len(lines):
            problems.append(f"unexpected extra output from line {pos + 1}: {lines[pos:]!r}")
        return problems


MEM_LINE = r"\d+ KiB"
HEX = r"[0-9a-f]+"

RTC_DATE_LINE = Re(r"rtc: date \d{4}-\d{2}-\d{2}")
"""The RTC's date (UTC); tests/test_platform_guests.py compares it with the host's."""
RTC_TIME_LINE = Re(r"rtc: time \d{2}:\d{2}:\d{2} UTC")
"""Printed only with ``time=1``: it differs from run to run."""
PLATFORM_PIT_START = "pit: counting 100 ticks"
PLATFORM_PIT_DONE = "pit: 100 ticks, isr in handler=0x1"
PLATFORM_RTC_PERIODIC_DONE = "rtc: 4 periodic interrupts at 8 Hz"


def platform_lines(mode: str, echo: bytes = b"", idle: int = 0, show_time: bool = False) -> tuple[Line, ...]:
    """What guests/platform32.S (``mode`` "platform32") and platform64.S print.

    ``echo`` is the input fed after the echo prompt (command line ``echo=N``
    with N = len(echo)); ``idle`` the ``idle=N`` of the idle benchmark;
    ``show_time`` the ``time=1`` that adds the RTC's time of day.  Both
    guests print the same lines but for the first and the last.
    """
    first = {
        "platform32": "platform32: protected mode, 32-bit interrupt gates",
        "platform64": "platform64: long mode, 64-bit interrupt gates",
    }[mode]
    lines: list[Line] = [
        first,
        "serial: 115200 8n1, fifo on",
        "serial: loopback echoed 4 of 4 bytes, msr=0xf0 then 0x10",
        "pic: remapped to vectors 0x20 and 0x28",
        "pic: imr master=0xfa slave=0xfe",
        "pic: isr=0x0",
        "pit: channel 0 mode 2 divisor 11932 (100 Hz)",
        "pit: read-back status=0x34",
        "pit: latched count in range",
        "pit: counter runs between latches",
        "pit: channel 2 one-shot, out2 low then high (port 0x61)",
        PLATFORM_PIT_START,
        PLATFORM_PIT_DONE,
        RTC_DATE_LINE,
        *([RTC_TIME_LINE] if show_time else []),
        PLATFORM_RTC_PERIODIC_DONE,
    ]
    if echo:
        lines += [
            f"serial: echo {len(echo)} bytes received by irq",
            echo.decode("latin-1"),
            f"serial: {len(echo)} bytes echoed",
        ]
    if idle:
        lines += [f"rtc: idle for {idle} update interrupts", f"rtc: {idle} update interrupts"]
    lines.append(f"{mode}: done")
    return tuple(lines)


def platform_args(echo: bytes = b"", idle: int = 0, show_time: bool = False) -> str:
    """The command line of a platform guest run (see :func:`platform_lines`)."""
    words = [f"echo={len(echo)}"] if echo else []
    words += [f"idle={idle}"] if idle else []
    words += ["time=1"] if show_time else []
    return " ".join(words)


EXPECTATIONS: dict[str, GuestExpectation] = {
    exp_name: exp
    for exp_name, exp in (
        (
            "demo",
            GuestExpectation(
                guest="demo",
                image="demo.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="",
                lines=(
                    "kvmlite demo guest",
                    "pm32: multiboot magic 0x2badb002 ok",
                    Re(r"pm32: mem_upper=" + MEM_LINE),
                    cmdline_line("pm32: cmdline", ""),
                    "lm64: long mode active, own GDT and page tables",
                    "ring3: entering user mode",
                    "ring3: ran at cpl=3",
                    "ring3: crc32=0x29058c73",
                    "ring0: back via int3 gate, cpl=0",
                    "demo: all checks passed",
                ),
                exit_status=HALT_STATUS,
                ends_with_halt=True,
            ),
        ),
        (
            "realmode",
            GuestExpectation(
                guest="realmode",
                image="realmode.bin",
                boot=BootFormat.BOOT_SECTOR,
                args="",
                lines=(
                    "real mode ok",
                    "realmode: running at 0x7c00",
                    "realmode: boot drive 0x0080",
                    "realmode: sum of squares 1..50 = 0xa7ad",
                ),
                exit_status=debug_exit_status(0x10),
            ),
        ),
        (
            "pm32",
            GuestExpectation(
                guest="pm32",
                image="pm32.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="foo=bar baz",
                lines=(
                    "pm32: multiboot magic ok",
                    "pm32: cr0.pe=1 cr0.pg=0",
                    "pm32: eflags.if=0",
                    Re(r"pm32: mem_lower=" + MEM_LINE),
                    Re(r"pm32: mem_upper=" + MEM_LINE),
                    cmdline_line("pm32: cmdline", "foo=bar baz"),
                    Repeat(rf"pm32: mmap base=0x{HEX} length=0x{HEX} type=\d+"),
                    Re(r"pm32: mmap entries=\d+"),
                    "pm32: done",
                ),
                exit_status=debug_exit_status(0x21),
            ),
        ),
        (
            "aout",
            GuestExpectation(
                guest="aout",
                image="aout.bin",
                boot=BootFormat.MULTIBOOT_AOUT,
                args="",
                lines=("a.out kludge ok", "aout: image at 0x100000", "aout: bss zeroed ok"),
                exit_status=debug_exit_status(0x22),
            ),
        ),
        (
            "lm64",
            GuestExpectation(
                guest="lm64",
                image="lm64.elf",
                boot=BootFormat.ELF64,
                args="",
                lines=(
                    "lm64: long mode ok",
                    "lm64: entered with cs=0x8 cr0.pg=1",
                    "lm64: ring3 sum of squares 1..1000 = 333833500",
                    "lm64: back in ring 0 from cs=0x23",
                    "lm64: done",
                ),
                exit_status=debug_exit_status(0x30),
                qemu_image="lm64-pvh.elf",
            ),
        ),
        (
            "cbench",
            GuestExpectation(
                guest="cbench",
                image="cbench.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args=f"iters={CBENCH_TEST_ITERS}",
                lines=(
                    f"cbench: iters={CBENCH_TEST_ITERS}",
                    f"cbench: result={lcg(CBENCH_TEST_ITERS):#x}",
                    "cbench: ran at cpl=3",
                ),
                exit_status=debug_exit_status(0),
            ),
        ),
        (
            # page tables and code rewritten under the CPU's feet: every value is computed in
            # guests/smc.S's comments; KVM, QEMU TCG and kvmlite's emulator must all agree
            "smc",
            GuestExpectation(
                guest="smc",
                image="smc.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="",
                lines=(
                    "smc: remap sum=0xeeee pte=0x20 after-write=0x60 pde=0x20 page_b=0x3333",
                    "smc: code first=0xa1 remapped=0xb2 patched=0xc3c3 reloaded=0x27c",
                    "smc: patch sum=0x1c",
                    "smc: cr3 sum=0xa2f0 shared=0x33",
                    "smc: reload sum=0x3333",
                    "smc: done",
                ),
                exit_status=debug_exit_status(0x34),
            ),
        ),
        (
            "outloop",
            GuestExpectation(
                guest="outloop",
                image="outloop.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args=f"n={LOOP_TEST_N}",
                lines=(f"outloop: n={LOOP_TEST_N} port=0x500", "outloop: done at cpl=3"),
                exit_status=debug_exit_status(0),
            ),
        ),
        (
            "outloop-bad-arg",
            GuestExpectation(
                guest="outloop",
                image="outloop.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="n=12x",
                lines=("outloop: FAIL malformed n= on the command line",),
                exit_status=debug_exit_status(1),
            ),
        ),
        (
            "mmioloop",
            GuestExpectation(
                guest="mmioloop",
                image="mmioloop.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args=f"n={LOOP_TEST_N}",
                lines=(f"mmioloop: n={LOOP_TEST_N} addr=0xd0000000", "mmioloop: done at cpl=3"),
                exit_status=debug_exit_status(0),
            ),
        ),
        (
            "cmb",
            GuestExpectation(
                guest="cmb",
                image="cmb.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="hello=world",
                lines=(
                    "hello from C",
                    "cmb: magic=0x2badb002",
                    Re(r"cmb: mem_lower=\d+ KiB mem_upper=\d+ KiB"),
                    cmdline_line("cmb: cmdline", "hello=world"),
                    "cmb: fib(40)=102334155",
                    "cmb: hex=0xdeadbeef padded=00000042 neg=-12345 char=Z str=[ok] pct=%",
                    "cmb: done",
                ),
                exit_status=debug_exit_status(0x42),
            ),
        ),
        (
            "dbg",
            GuestExpectation(
                guest="dbg",
                image="dbg.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="",
                lines=("magic-ok=1", "counter=22", "result=7"),
                exit_status=debug_exit_status(0x21),
            ),
        ),
        (
            "platform32",
            GuestExpectation(
                guest="platform32",
                image="platform32.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="",
                lines=platform_lines("platform32"),
                exit_status=debug_exit_status(0x50),
            ),
        ),
        (
            "platform64",
            GuestExpectation(
                guest="platform64",
                image="platform64.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="",
                lines=platform_lines("platform64"),
                exit_status=debug_exit_status(0x51),
            ),
        ),
        (
            "platform64-bad-arg",
            GuestExpectation(
                guest="platform64",
                image="platform64.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="echo=5x",
                lines=("platform: FAIL malformed echo=, idle= or time= on the command line",),
                exit_status=debug_exit_status(1),
            ),
        ),
        (
            "kbdreset",
            GuestExpectation(
                guest="kbdreset",
                image="kbdreset.elf",
                boot=BootFormat.MULTIBOOT_ELF32,
                args="",
                lines=("kbdreset: pulsing the reset line (0xfe to port 0x64)",),
                exit_status=RESET_STATUS,
            ),
        ),
    )
}


def load_build_module() -> ModuleType:
    """Import guests/build.py (not a package module) and return it."""
    name = "kvmlite_guest_build"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {BUILD_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def build_guests(out_dir: Path) -> dict[str, Path]:
    """Build every guest into ``out_dir``; return guest name -> image path.

    Raises the build script's ``GuestBuildError`` when a tool is missing or a
    step fails; call :func:`missing_build_tools` first to skip instead.
    """
    built: dict[str, Path] = load_build_module().build_all(out_dir)
    return built


def missing_build_tools() -> list[str]:
    """Toolchain programs the guests need that are not installed."""
    missing: list[str] = load_build_module().missing_tools()
    return missing


def qemu_command(exp: GuestExpectation, image: Path) -> list[str]:
    """The qemu-system-x86_64 command line of the reference run of ``exp`` (TCG, serial on stdout)."""
    cmd = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        str(QEMU_MEMORY_MIB),
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=4",
    ]
    if exp.boot is BootFormat.BOOT_SECTOR:
        cmd += ["-drive", f"format=raw,file={image}"]
    else:
        cmd += ["-kernel", str(image)]
        if exp.args:
            cmd += ["-append", exp.args]
    return cmd
