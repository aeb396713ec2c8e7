#!/usr/bin/env python3
"""Build kvmlite's test guests from source: ``python3 guests/build.py [--out DIR] [names...]``.

The guests are tiny kernels in GNU assembler (and one in C) that kvmlite's
tests, demo and benchmarks boot, and that the test-suite also boots under QEMU
to compare the two VMMs on the very same bytes.  See guests/README.md for the
conventions they follow.

Why a Python script and not a Makefile: the tests build the guests into a
temporary directory from a pytest fixture, and a function call
(:func:`build_all`) is easier to drive, and to fail clearly, than ``make``.

Builds are deterministic: no debug information, no build-id, no file names,
stripped, fixed link addresses (except ``dbg``, the debugger's guest, which
keeps its debug information and symbols); two builds with the same toolchain
produce the same bytes (the test-suite checks this).

The assembly guests are assembled as x86-64 objects even when they start in
32-bit mode: their 64-bit parts use sign-extended 32-bit addresses that an
ELF32 object cannot express.  The multiboot ones are then linked with
``--oformat elf32-i386``, which gives the ELF32 image a multiboot loader
expects while relocations are resolved by the x86-64 linker.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GUESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = GUESTS_DIR.parent
DEFAULT_OUT_DIR = GUESTS_DIR / "build"
DEMO_INSTALL_PATH = REPO_DIR / "kvmlite" / "guests" / "demo.elf"
MULTIBOOT_LD_SCRIPT = GUESTS_DIR / "lib" / "multiboot.ld"
CMB_LD_SCRIPT = GUESTS_DIR / "cmb" / "link.ld"

BOOT_SECTOR_ADDR = 0x7C00
BOOT_SECTOR_SIZE = 512
BOOT_SIGNATURE = b"\x55\xaa"
MAX_PAGE_SIZE = "0x1000"
REQUIRED_TOOLS = ("gcc", "ld", "objcopy")
OUTPUT_MODE = 0o644  # images are data for a VMM, not host executables

ASM_FLAGS = ("-c", "-m64", "-nostdinc", "-I", str(GUESTS_DIR))
C_FLAGS = (
    "-c",
    "-m32",
    "-O2",
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-ffreestanding",
    "-fno-pic",
    "-fno-pie",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-ident",
    "-mgeneral-regs-only",
    "-nostdlib",
)
LD_COMMON = (
    "-nostdlib",
    "--build-id=none",
    "-s",
    "-z",
    f"max-page-size={MAX_PAGE_SIZE}",
    "-z",
    "noexecstack",
)
LD_NO_RWX_WARNING = "--no-warn-rwx-segments"


class GuestBuildError(Exception):
    """A guest could not be built: missing tool, failing command, bad output."""


class Kind(enum.Enum):
    """How a guest is linked and which boot format it ends up in."""

    MULTIBOOT_ELF32 = "multiboot ELF32"
    MULTIBOOT_AOUT = "multiboot a.out kludge (flat binary)"
    BOOT_SECTOR = "real-mode boot sector"
    ELF64 = "plain ELF64, entered in long mode"
    C_MULTIBOOT_ELF32 = "multiboot ELF32 written in C"


@dataclass(frozen=True)
class GuestSpec:
    """One guest: its sources (relative to guests/), kind and output file name."""

    name: str
    kind: Kind
    sources: tuple[str, ...]
    output: str
    defines: tuple[str, ...] = ()
    #: Keep debug information and symbols (for the debugger's tests): built with -g, not stripped.
    debug: bool = False


#: What every virtio test guest links: the entry, the C library and the virtio-pci driver.
VIRTIO_GUEST = ("cmb/boot.S", "clib/klib.c", "virtio/vdrv.c")
VBLK_SOURCES = (*VIRTIO_GUEST, "virtio/vblk.c")
VNET_SOURCES = (*VIRTIO_GUEST, "virtio/vnet.c")
VBLKLOOP_SOURCES = (*VIRTIO_GUEST, "virtio/vblkloop.c")

GUESTS: dict[str, GuestSpec] = {
    spec.name: spec
    for spec in (
        GuestSpec("demo", Kind.MULTIBOOT_ELF32, ("demo.S",), "demo.elf"),
        GuestSpec("realmode", Kind.BOOT_SECTOR, ("realmode.S",), "realmode.bin"),
        GuestSpec("pm32", Kind.MULTIBOOT_ELF32, ("pm32.S",), "pm32.elf"),
        GuestSpec("aout", Kind.MULTIBOOT_AOUT, ("aout.S",), "aout.bin"),
        GuestSpec("lm64", Kind.ELF64, ("lm64.S",), "lm64.elf"),
        # The same lm64 with a PVH entry note, so QEMU -kernel can boot it for
        # the reference run; kvmlite boots the plain one.
        GuestSpec("lm64-pvh", Kind.ELF64, ("lm64.S",), "lm64-pvh.elf", defines=("PVH_ENTRY",)),
        GuestSpec("cbench", Kind.MULTIBOOT_ELF32, ("cbench.S",), "cbench.elf"),
        # rewrites its own page tables and code (the emulator's translation caches)
        GuestSpec("smc", Kind.MULTIBOOT_ELF32, ("smc.S",), "smc.elf"),
        GuestSpec("outloop", Kind.MULTIBOOT_ELF32, ("outloop.S",), "outloop.elf"),
        GuestSpec("mmioloop", Kind.MULTIBOOT_ELF32, ("mmioloop.S",), "mmioloop.elf"),
        GuestSpec("cmb", Kind.C_MULTIBOOT_ELF32, ("cmb/boot.S", "cmb/kernel.c", "clib/klib.c"), "cmb.elf"),
        # the debugger's guest: built with debug information and symbols
        GuestSpec("dbg", Kind.C_MULTIBOOT_ELF32, ("cmb/boot.S", "dbg/kernel.c", "clib/klib.c"), "dbg.elf",
                  debug=True),
        # The PC platform devices driven as an OS does, from 32-bit and from long mode.
        GuestSpec("platform32", Kind.MULTIBOOT_ELF32, ("platform32.S",), "platform32.elf"),
        GuestSpec("platform64", Kind.MULTIBOOT_ELF32, ("platform64.S",), "platform64.elf"),
        GuestSpec("kbdreset", Kind.MULTIBOOT_ELF32, ("kbdreset.S",), "kbdreset.elf"),
    )
}
GUEST_NAMES: tuple[str, ...] = tuple(GUESTS)
#: Guests that only their own tests build and check (their output varies from run to run, or they need a
#: device on the command line, so they have no expectation shared with the generic reference runs);
#: build_guest builds them by name too.
OWN_TEST_GUESTS: dict[str, GuestSpec] = {
    spec.name: spec
    for spec in (
        # virtio devices through PCI enumeration and a virtqueue of their own, identical under QEMU
        # (tests/test_virtio_guests.py runs them with the device they need).
        GuestSpec("vblk", Kind.C_MULTIBOOT_ELF32, VBLK_SOURCES, "vblk.elf"),
        GuestSpec("vrng", Kind.C_MULTIBOOT_ELF32, (*VIRTIO_GUEST, "virtio/vrng.c"), "vrng.elf"),
        GuestSpec("vcons", Kind.C_MULTIBOOT_ELF32, (*VIRTIO_GUEST, "virtio/vcons.c"), "vcons.elf"),
        # vblk finding its disk as a virtio-mmio device on its command line (kvmlite only: QEMU's PC has none)
        GuestSpec("vblk-mmio", Kind.C_MULTIBOOT_ELF32, VBLK_SOURCES, "vblk-mmio.elf", ("VIRTIO_MMIO",)),
        GuestSpec("vnet", Kind.C_MULTIBOOT_ELF32, VNET_SOURCES, "vnet.elf"),
        GuestSpec("vnet-mmio", Kind.C_MULTIBOOT_ELF32, VNET_SOURCES, "vnet-mmio.elf", ("VIRTIO_MMIO",)),
        # virtio-blk load for bench/blk_bench.py: requests in flight on a 64-entry queue
        GuestSpec("vblkbench", Kind.C_MULTIBOOT_ELF32, (*VIRTIO_GUEST, "virtio/vblkbench.c"), "vblkbench.elf",
                  ("VQ_SIZE=64",)),
        # a virtio-blk disk kept busy while snapshots save and restore it (tests/test_snapshot_virtio.py)
        GuestSpec("vblkloop", Kind.C_MULTIBOOT_ELF32, VBLKLOOP_SOURCES, "vblkloop.elf"),
        GuestSpec(
            "vblkloop-mmio", Kind.C_MULTIBOOT_ELF32, VBLKLOOP_SOURCES, "vblkloop-mmio.elf", ("VIRTIO_MMIO",)
        ),
        # PIT ticks counted, computing at CPL 3: the snapshot tests' guest (tests/snapshot_guests.py)
        GuestSpec("ticks3", Kind.MULTIBOOT_ELF32, ("ticks3.S",), "ticks3.elf"),
        # Vector register state of ring-3 tasks across context switches (tests/test_xstate.py).
        GuestSpec("xstate", Kind.MULTIBOOT_ELF32, ("xstate.S",), "xstate.elf"),
    )
}


def missing_tools() -> list[str]:
    """Names of the required build tools that are not on PATH (empty when all are)."""
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def _run(cmd: Sequence[str]) -> None:
    """Run one toolchain command; turn a failure into a GuestBuildError with its output."""
    logger.debug("running %s", " ".join(cmd))
    env = dict(os.environ, LC_ALL="C", SOURCE_DATE_EPOCH="0")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    except OSError as err:
        raise GuestBuildError(f"cannot run {cmd[0]}: {err}") from err
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    if proc.stderr.strip():
        logger.warning("%s: %s", cmd[0], proc.stderr.strip())


def _compile(spec: GuestSpec, work: Path) -> list[Path]:
    """Assemble or compile every source of ``spec`` into ``work``; return the objects."""
    objects = []
    defines = [f"-D{name}" for name in spec.defines]
    for index, source in enumerate(spec.sources):
        src = GUESTS_DIR / source
        if not src.is_file():
            raise GuestBuildError(f"{spec.name}: source {src} is missing")
        obj = work / f"{index}-{src.stem}.o"
        if src.suffix == ".c":
            debug = ("-g", "-O1") if spec.debug else ()
            flags: Sequence[str] = (*C_FLAGS, "-I", str(GUESTS_DIR), *debug)
        elif spec.kind is Kind.C_MULTIBOOT_ELF32:
            flags = ("-c", "-m32", "-nostdinc")
        else:
            flags = ASM_FLAGS
        _run(["gcc", *flags, *defines, str(src), "-o", str(obj)])
        objects.append(obj)
    return objects


def _check_boot_sector(path: Path) -> None:
    """A boot sector must be exactly one sector ending in the 0x55 0xAA signature."""
    data = path.read_bytes()
    if len(data) != BOOT_SECTOR_SIZE or data[-2:] != BOOT_SIGNATURE:
        raise GuestBuildError(f"{path.name}: not a {BOOT_SECTOR_SIZE}-byte boot sector ({len(data)} bytes)")


def build_guest(name: str, out_dir: Path) -> Path:
    """Build the guest called ``name`` into ``out_dir`` and return the path of the image."""
    spec = GUESTS.get(name) or OWN_TEST_GUESTS.get(name)
    if spec is None:
        raise GuestBuildError(f"unknown guest {name!r}; known: {', '.join(GUEST_NAMES)}")
    missing = missing_tools()
    if missing:
        raise GuestBuildError(f"missing build tools: {', '.join(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / spec.output
    with tempfile.TemporaryDirectory(prefix=f"guest-{name}-") as tmp:
        work = Path(tmp)
        objects = [str(obj) for obj in _compile(spec, work)]
        linked = work / "linked.elf"
        if spec.kind is Kind.MULTIBOOT_ELF32:
            ld_args = ["-m", "elf_x86_64", "--oformat", "elf32-i386", "-T", str(MULTIBOOT_LD_SCRIPT)]
        elif spec.kind is Kind.ELF64:
            ld_args = ["-m", "elf_x86_64", "-T", str(MULTIBOOT_LD_SCRIPT)]
        elif spec.kind is Kind.C_MULTIBOOT_ELF32:
            ld_args = ["-m", "elf_i386", "-T", str(CMB_LD_SCRIPT)]
        elif spec.kind is Kind.MULTIBOOT_AOUT:
            ld_args = ["-m", "elf_x86_64", "-T", str(MULTIBOOT_LD_SCRIPT)]
        else:  # BOOT_SECTOR
            ld_args = ["-m", "elf_x86_64", "-Ttext", hex(BOOT_SECTOR_ADDR), "-e", "_start"]
        ld_common = [f for f in LD_COMMON if f != "-s"] if spec.debug else LD_COMMON
        _run(["ld", *ld_args, *ld_common, LD_NO_RWX_WARNING, "-o", str(linked), *objects])
        if spec.kind in (Kind.MULTIBOOT_AOUT, Kind.BOOT_SECTOR):
            _run(["objcopy", "-O", "binary", "--only-section=.text", "--only-section=.rodata",
                  "--only-section=.data", str(linked), str(output)])  # fmt: skip
        else:
            shutil.copyfile(linked, output)
    output.chmod(OUTPUT_MODE)
    if spec.kind is Kind.BOOT_SECTOR:
        _check_boot_sector(output)
    logger.info("built %s (%s): %s, %d bytes", name, spec.kind.value, output, output.stat().st_size)
    return output


def build_all(out_dir: Path, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build the named guests (all when ``names`` is None); return name -> image path."""
    return {name: build_guest(name, out_dir) for name in (GUEST_NAMES if names is None else names)}


def install_demo(built: Path) -> Path:
    """Copy a freshly built demo image to where the kvmlite package ships it."""
    shutil.copyfile(built, DEMO_INSTALL_PATH)
    logger.info("installed %s", DEMO_INSTALL_PATH)
    return DEMO_INSTALL_PATH


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"guests to build (default: all of {GUEST_NAMES})"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT_DIR, help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--install-demo",
        action="store_true",
        help=f"also copy demo.elf to {DEMO_INSTALL_PATH.relative_to(REPO_DIR)}",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every command")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    names = args.names or list(GUEST_NAMES)
    if args.install_demo and "demo" not in names:
        names.append("demo")
    try:
        built = build_all(args.out, names)
        if args.install_demo:
            install_demo(built["demo"])
    except GuestBuildError as err:
        logger.error("error: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
