"""Exit round trip: how long one guest exit to userspace and back takes, kvmlite vs C.

The guest is the one of ``bench/c/exit_loop.c``: 2 MiB of RAM, long mode
with identity page tables, started directly at CPL 3 by ``KVM_SET_SREGS``,
looping ``out dx, al`` to port 0x500 (variant ``pio``) or ``mov [rbx], al``
to the unbacked guest-physical address 0xd0000000 (variant ``mmio``) RCX
times, then writing port 0x501 to say it is done.  Ring 3 because on the
nested KVM of ``platform.md`` ring-0 code is emulated at about 1 us per
instruction while ring-3 code is native; ``cpl=0`` is kept as a variant
since exits *from* CPL 0 turned out to be about three times cheaper there.

Three ways to drive the same loop, all timed over the loop only (set-up
excluded), reported in ns per exit:

* C (``exit_loop.c``): the baseline.
* :func:`run_raw`: Python with nothing but ``fcntl.ioctl`` and
  ``struct.unpack_from`` on the ``kvm_run`` mapping: the floor any Python VMM
  stands on.
* :func:`run_kvmlite`: kvmlite's own API (``Kvm`` -> ``Vm`` -> ``Vcpu.run()``
  returning typed exits): what a kvmlite user gets.

The guest layout below must stay in step with the ``#define``s of
``exit_loop.c``; both are small and read side by side.

Standalone use: ``python3 bench/exit_roundtrip.py [--quick] [--variant pio|mmio] [--cpl 3|0]``.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import logging
import mmap
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness import (
    DEFAULT_RUNS,
    BenchFailed,
    Benchmark,
    BenchUnavailable,
    Result,
    alternate,
    build_c,
    parse_key_values,
)

from kvmlite.kvm import structs as S
from kvmlite.kvm.constants import KVM_API_VERSION, ExitReason, Ioctl

log = logging.getLogger(__name__)

# --- guest layout (mirrors exit_loop.c) ---------------------------------------
MEM_SIZE = 2 << 20
PML4_ADDR = 0x1000
PDPT_ADDR = 0x2000
PD_LOW_ADDR = 0x3000
PD_MMIO_ADDR = 0x4000
GDT_ADDR = 0x5000
TSS_ADDR = 0x6000
CODE_ADDR = 0x10000
STACK_TOP = 0x1F0000

PIO_PORT = 0x500
DONE_PORT = 0x501
MMIO_ADDR = 0xD000_0000

PTE_P, PTE_RW, PTE_US, PTE_PS = 0x1, 0x2, 0x4, 0x80
PAGE_2M = 1 << 21

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 0x1, 0x2, 0x10, 0x20, 0x10000, 0x8000_0000
CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400
RFLAGS_FIXED, RFLAGS_IOPL3 = 0x2, 0x3000

SEL_KERNEL_CODE, SEL_KERNEL_DATA = 0x08, 0x10
SEL_USER_DATA, SEL_USER_CODE = 0x1B, 0x23
SEL_TSS = 0x28
SEG_TYPE_CODE_XRA, SEG_TYPE_DATA_RWA, SEG_TYPE_TSS64_BUSY = 11, 3, 11
FLAT_LIMIT = 0xFFFF_FFFF
GDT_LIMIT = 0x37

TSS_IOMAP_OFFSET = 0x68  # I/O permission bitmap right after the 104-byte TSS
TSS_IOMAP_BYTES = 65536 // 8  # all zero: every port allowed at CPL 3
TSS_LIMIT = TSS_IOMAP_OFFSET + TSS_IOMAP_BYTES  # the byte at the limit is the 0xff terminator

GDT_ENTRIES = {
    0x08: 0x00AF_9B00_0000_FFFF,  # kernel code, 64-bit
    0x10: 0x00CF_9300_0000_FFFF,  # kernel data
    0x18: 0x00CF_F300_0000_FFFF,  # user data, DPL 3
    0x20: 0x00AF_FB00_0000_FFFF,  # user code, 64-bit, DPL 3
}

# mov dx, 0x500 ; L: out dx, al ; dec rcx ; jnz L ; mov dx, 0x501 ; out dx, al ; jmp $
GUEST_PIO = bytes.fromhex("66ba0005 ee 48ffc9 75fa 66ba0105 ee ebfe".replace(" ", ""))
# mov dx, 0x501 ; L: mov [rbx], al ; dec rcx ; jnz L ; out dx, al ; jmp $
GUEST_MMIO = bytes.fromhex("66ba0105 8803 48ffc9 75f9 ee ebfe".replace(" ", ""))

VARIANTS = ("pio", "mmio")
CPLS = (3, 0)

ITERATIONS_FULL = 100_000
ITERATIONS_QUICK = 20_000
C_SOURCE = "exit_loop.c"
C_TIMEOUT_S = 300

# --- kvm_run offsets for the raw loop ------------------------------------------
_EXIT_REASON_OFFSET = S.kvm_run.exit_reason.offset
_EXIT_OFFSET = S.kvm_run.exit.offset
_IO_PORT_OFFSET = _EXIT_OFFSET + S.kvm_run_io.port.offset
_MMIO_ADDR_OFFSET = _EXIT_OFFSET + S.kvm_run_mmio.phys_addr.offset


@dataclass(frozen=True)
class LoopTiming:
    """One timed run of the guest loop."""

    driver: str
    variant: str
    cpl: int
    exits: int
    seconds: float
    #: CPU time over the loop (the C baseline reports it): unlike ``seconds``, not inflated by load.
    cpu_seconds: float = 0.0

    @property
    def ns_per_exit(self) -> float:
        return self.seconds * 1e9 / self.exits

    @property
    def cpu_ns_per_exit(self) -> float:
        return self.cpu_seconds * 1e9 / self.exits


def _check_args(variant: str, iterations: int, cpl: int) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if cpl not in CPLS:
        raise ValueError(f"cpl must be one of {CPLS}, got {cpl!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be positive, got {iterations}")


# --- building the guest ----------------------------------------------------------
def build_guest_image(variant: str) -> bytearray:
    """The 2 MiB guest RAM image: page tables, GDT, TSS with I/O bitmap, and the loop's code."""
    mem = bytearray(MEM_SIZE)

    def put64(addr: int, value: int) -> None:
        struct.pack_into("<Q", mem, addr, value)

    put64(PML4_ADDR, PDPT_ADDR | PTE_P | PTE_RW | PTE_US)
    put64(PDPT_ADDR + 0 * 8, PD_LOW_ADDR | PTE_P | PTE_RW | PTE_US)
    put64(PDPT_ADDR + 3 * 8, PD_MMIO_ADDR | PTE_P | PTE_RW | PTE_US)
    put64(PD_LOW_ADDR, 0 | PTE_P | PTE_RW | PTE_US | PTE_PS)
    put64(PD_MMIO_ADDR + ((MMIO_ADDR // PAGE_2M) % 512) * 8, MMIO_ADDR | PTE_P | PTE_RW | PTE_US | PTE_PS)
    for offset, descriptor in GDT_ENTRIES.items():
        put64(GDT_ADDR + offset, descriptor)
    put64(GDT_ADDR + SEL_TSS, TSS_LIMIT | (TSS_ADDR << 16) | (0x8B << 40))
    # RFLAGS.IOPL=3 alone does not let CPL 3 use `out` on the nested KVM of
    # platform.md (#GP, then a triple fault); the TSS I/O bitmap does.
    put64(TSS_ADDR + 4, STACK_TOP)  # RSP0
    struct.pack_into("<H", mem, TSS_ADDR + 0x66, TSS_IOMAP_OFFSET)
    mem[TSS_ADDR + TSS_LIMIT] = 0xFF
    code = GUEST_PIO if variant == "pio" else GUEST_MMIO
    mem[CODE_ADDR : CODE_ADDR + len(code)] = code
    return mem


def _segment(seg: S.kvm_segment, selector: int, seg_type: int, dpl: int, *, code: bool) -> None:
    seg.base, seg.limit, seg.selector, seg.type = 0, FLAT_LIMIT, selector, seg_type
    seg.present, seg.dpl, seg.s, seg.g = 1, dpl, 1, 1
    seg.l, seg.db = (1, 0) if code else (0, 1)
    seg.avl = seg.unusable = 0


def configure_sregs(sregs: S.kvm_sregs, cpl: int) -> None:
    """Long mode, paging on, flat segments of privilege ``cpl``, the TSS: in place."""
    code_sel, data_sel = (SEL_USER_CODE, SEL_USER_DATA) if cpl == 3 else (SEL_KERNEL_CODE, SEL_KERNEL_DATA)
    _segment(sregs.cs, code_sel, SEG_TYPE_CODE_XRA, cpl, code=True)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, data_sel, SEG_TYPE_DATA_RWA, cpl, code=False)
    tr = sregs.tr
    tr.base, tr.limit, tr.selector, tr.type = TSS_ADDR, TSS_LIMIT, SEL_TSS, SEG_TYPE_TSS64_BUSY
    tr.present, tr.dpl, tr.s, tr.g, tr.l, tr.db, tr.unusable = 1, 0, 0, 0, 0, 0, 0
    sregs.ldt.unusable, sregs.ldt.present = 1, 0
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, GDT_LIMIT
    sregs.idt.base, sregs.idt.limit = 0, 0
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr3 = PML4_ADDR
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA


def initial_regs(iterations: int) -> S.kvm_regs:
    regs = S.kvm_regs()
    regs.rip, regs.rsp, regs.rcx, regs.rbx = CODE_ADDR, STACK_TOP, iterations, MMIO_ADDR
    regs.rflags = RFLAGS_FIXED | RFLAGS_IOPL3
    return regs


class _GuestRam:
    """2 MiB of anonymous host memory holding the guest image, with its host address."""

    def __init__(self, variant: str) -> None:
        self.mm = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.mm[:] = build_guest_image(variant)
        anchor = ctypes.c_char.from_buffer(self.mm)
        self.addr = ctypes.addressof(anchor)
        del anchor  # the address stays valid as long as the mapping does

    def close(self) -> None:
        self.mm.close()


def _unexpected(driver: str, what: str, exits: int) -> BenchFailed:
    return BenchFailed(f"{driver}: unexpected guest exit ({what}) after {exits} exits")


# --- driver 1: the raw Python floor ----------------------------------------------
def run_raw(variant: str, iterations: int, cpl: int = 3) -> LoopTiming:
    """Drive the guest with bare ``fcntl.ioctl`` + ``struct`` (no kvmlite objects): the Python floor."""
    _check_args(variant, iterations, cpl)
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        raise BenchUnavailable(f"cannot open /dev/kvm: {err.strerror}") from err
    fds = [kvm]
    ram = _GuestRam(variant)
    run_mm: mmap.mmap | None = None
    try:
        if fcntl.ioctl(kvm, Ioctl.KVM_GET_API_VERSION, 0) != KVM_API_VERSION:
            raise BenchUnavailable("/dev/kvm speaks another API version")
        vm = fcntl.ioctl(kvm, Ioctl.KVM_CREATE_VM, 0)
        fds.append(vm)
        region = S.kvm_userspace_memory_region(0, 0, 0, MEM_SIZE, ram.addr)
        fcntl.ioctl(vm, Ioctl.KVM_SET_USER_MEMORY_REGION, region)
        vcpu = fcntl.ioctl(vm, Ioctl.KVM_CREATE_VCPU, 0)
        fds.append(vcpu)
        run_size = fcntl.ioctl(kvm, Ioctl.KVM_GET_VCPU_MMAP_SIZE, 0)
        run_mm = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = S.kvm_sregs()
        fcntl.ioctl(vcpu, Ioctl.KVM_GET_SREGS, sregs)
        configure_sregs(sregs, cpl)
        fcntl.ioctl(vcpu, Ioctl.KVM_SET_SREGS, sregs)
        fcntl.ioctl(vcpu, Ioctl.KVM_SET_REGS, initial_regs(iterations))
        seconds, exits = _raw_loop(vcpu, run_mm, variant == "mmio")
    except OSError as err:
        raise BenchFailed(f"raw ioctl driver: {err}") from err
    finally:
        if run_mm is not None:
            run_mm.close()
        for fd in reversed(fds):
            os.close(fd)
        ram.close()
    if exits != iterations:
        raise BenchFailed(f"raw ioctl driver: {exits} exits for {iterations} iterations")
    return LoopTiming("python-raw", variant, cpl, exits, seconds)


def _raw_loop(vcpu: int, run_mm: mmap.mmap, mmio: bool) -> tuple[float, int]:
    """The timed part: every name the loop touches is a local."""
    ioctl = fcntl.ioctl
    kvm_run = int(Ioctl.KVM_RUN)
    u32 = struct.Struct("<I").unpack_from
    u16 = struct.Struct("<H").unpack_from
    u64 = struct.Struct("<Q").unpack_from
    reason_io, reason_mmio = int(ExitReason.IO), int(ExitReason.MMIO)
    exits = 0
    t0 = time.perf_counter()
    while True:
        try:
            ioctl(vcpu, kvm_run, 0)
        except InterruptedError:
            continue
        reason = u32(run_mm, _EXIT_REASON_OFFSET)[0]
        if reason == reason_io:
            port = u16(run_mm, _IO_PORT_OFFSET)[0]
            if port == PIO_PORT and not mmio:
                exits += 1
                continue
            if port == DONE_PORT:
                break
            raise _unexpected("raw ioctl driver", f"IO port {port:#x}", exits)
        if reason == reason_mmio and mmio and u64(run_mm, _MMIO_ADDR_OFFSET)[0] == MMIO_ADDR:
            exits += 1
            continue
        raise _unexpected("raw ioctl driver", _reason_name(reason), exits)
    return time.perf_counter() - t0, exits


def _reason_name(reason: int) -> str:
    try:
        return f"exit reason {ExitReason(reason).name}"
    except ValueError:
        return f"exit reason {reason}"


# --- driver 2: kvmlite's API --------------------------------------------------------
# >>> KVMLITE-API VARIANT: the lead owns this function's body; it plugs kvmlite.kvm's
# >>> Kvm/Vm/Vcpu objects into the same guest.  Keep the signature and LoopTiming result.
def run_kvmlite(variant: str, iterations: int, cpl: int = 3) -> LoopTiming:
    """Drive the guest through kvmlite: ``Kvm().create_vm()``, ``Vm.create_vcpu(0)``, ``Vcpu.run()``."""
    _check_args(variant, iterations, cpl)
    try:
        from kvmlite.errors import KvmliteError, KvmUnavailableError
        from kvmlite.kvm.exits import IoOut, MmioWrite
        from kvmlite.kvm.system import Kvm
    except ImportError as err:
        raise BenchUnavailable(f"kvmlite's KVM API is not importable yet: {err}") from err

    try:
        kvm = Kvm()
    except KvmUnavailableError as err:
        raise BenchUnavailable(str(err)) from err
    ram = _GuestRam(variant)
    vm = None
    try:
        vm, vcpu = _vm_on_guest(kvm, ram, cpl, iterations)
        seconds, exits = _kvmlite_loop(vcpu.run, variant == "mmio", IoOut, MmioWrite)
    except KvmliteError as err:
        raise BenchFailed(f"kvmlite driver: {err}") from err
    finally:
        if vm is not None:
            vm.close()
        kvm.close()
        ram.close()
    if exits != iterations:
        raise BenchFailed(f"kvmlite driver: {exits} exits for {iterations} iterations")
    return LoopTiming("kvmlite", variant, cpl, exits, seconds)


def _vm_on_guest(kvm: Any, ram: _GuestRam, cpl: int, iterations: int) -> tuple[Any, Any]:
    """A kvmlite VM with the loop guest's memory and one vCPU ready to run it."""
    vm = kvm.create_vm()
    vm.set_user_memory_region(0, 0, MEM_SIZE, ram.addr)
    vcpu = vm.create_vcpu(0)
    sregs = vcpu.get_sregs()
    configure_sregs(sregs, cpl)
    vcpu.set_sregs(sregs)
    vcpu.set_regs(initial_regs(iterations))
    return vm, vcpu


def _kvmlite_loop(run: Callable[[], object], mmio: bool, io_out: type, mmio_write: type) -> tuple[float, int]:
    """The timed part.  Its own function so the last exit object (a view into kvm_run) is gone on return:
    ``Vcpu.close()`` cannot unmap kvm_run while such a view is alive."""
    exits = 0
    t0 = time.perf_counter()
    while True:
        ex = run()
        if type(ex) is io_out:
            if ex.port == PIO_PORT and not mmio:  # type: ignore[attr-defined]
                exits += 1
                continue
            if ex.port == DONE_PORT:  # type: ignore[attr-defined]
                break
        elif type(ex) is mmio_write and mmio and ex.addr == MMIO_ADDR:  # type: ignore[attr-defined]
            exits += 1
            continue
        raise _unexpected("kvmlite", repr(ex), exits)
    return time.perf_counter() - t0, exits


def run_vmm(variant: str, iterations: int, cpl: int = 3) -> LoopTiming:
    """The whole VMM path: ``VcpuLoop`` dispatching each exit through the PIO/MMIO bus to a device."""
    _check_args(variant, iterations, cpl)
    from kvmlite.errors import KvmliteError, KvmUnavailableError
    from kvmlite.kvm.system import Kvm
    from kvmlite.memory.bus import Bus
    from kvmlite.vmm.loop import VcpuLoop, VmControl

    class Counter:
        count = 0

        def read(self, offset: int, size: int) -> int:
            return 0

        def write(self, offset: int, size: int, value: int) -> None:
            self.count += 1

    try:
        kvm = Kvm()
    except KvmUnavailableError as err:
        raise BenchUnavailable(str(err)) from err
    ram = _GuestRam(variant)
    vm = None
    counter = Counter()
    control = VmControl()
    pio, mmio = Bus("pio"), Bus("mmio")

    class Done:
        def read(self, offset: int, size: int) -> int:
            return 0

        def write(self, offset: int, size: int, value: int) -> None:
            control.stop(0, "bench done")

    pio.insert(Done(), DONE_PORT, 1)
    if variant == "mmio":
        mmio.insert(counter, MMIO_ADDR, 8)
    else:
        pio.insert(counter, PIO_PORT, 1)
    try:
        vm, vcpu = _vm_on_guest(kvm, ram, cpl, iterations)
        loop = VcpuLoop(vcpu, control, pio, mmio)
        t0 = time.perf_counter()
        loop.run()
        seconds = time.perf_counter() - t0
        info = control.stop_info
        if info is None or info.status != 0:
            raise BenchFailed(f"VMM loop stopped unexpectedly: {info}")
    except KvmliteError as err:
        raise BenchFailed(f"VMM driver: {err}") from err
    finally:
        if vm is not None:
            vm.close()
        kvm.close()
        ram.close()
    if counter.count != iterations:
        raise BenchFailed(f"VMM driver: {counter.count} device writes for {iterations} iterations")
    return LoopTiming("vmm", variant, cpl, counter.count, seconds)


# <<< end of the kvmlite-API variant


# --- driver 3: the C baseline ---------------------------------------------------------
def run_c(variant: str, iterations: int, cpl: int = 3) -> LoopTiming:
    """Build ``exit_loop.c`` if needed and run it once."""
    _check_args(variant, iterations, cpl)
    return _run_exit_loop([variant, str(iterations), str(cpl)], variant, cpl)


def run_c_pm32(access: str, port: int, iterations: int) -> LoopTiming:
    """The C loop in a multiboot kernel's state with the in-kernel irqchip (``exit_loop.c``'s pm32
    mode): ``access`` "in" or "out" on ``port``, the baseline of the `kvmlite run` rows."""
    if access not in ("in", "out") or iterations < 1:
        raise ValueError(f"access must be in or out and iterations positive, got {access!r}, {iterations}")
    variant = "in" if access == "in" else "pio"
    return _run_exit_loop([variant, str(iterations), "pm32", hex(port)], variant, 0)


def _run_exit_loop(args: list[str], variant: str, cpl: int) -> LoopTiming:
    exe = build_c(C_SOURCE)
    cmd = [str(exe), *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=C_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise BenchFailed(f"{' '.join(cmd)} took longer than {C_TIMEOUT_S} s") from err
    if res.returncode != 0:
        raise BenchFailed(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    kv = parse_key_values(res.stdout)
    try:
        seconds, cpu = float(kv["seconds"]), float(kv["cpu_seconds"])
        return LoopTiming("c", variant, cpl, int(kv["exits"]), seconds, cpu)
    except (KeyError, ValueError) as err:
        raise BenchFailed(f"cannot parse exit_loop output {res.stdout!r}") from err


# --- registration ---------------------------------------------------------------------
Driver = Callable[[str, int, int], LoopTiming]


def compare(
    driver: Driver, label: str, variant: str, cpl: int, quick: bool, runs: int = DEFAULT_RUNS
) -> Result:
    """``runs`` alternating C and ``driver`` runs of the same loop; ns per exit for each."""
    iterations = ITERATIONS_QUICK if quick else ITERATIONS_FULL
    ours, theirs = alternate(
        lambda: driver(variant, iterations, cpl).ns_per_exit,
        lambda: run_c(variant, iterations, cpl).ns_per_exit,
        runs,
    )
    return Result(
        name=f"exit roundtrip {variant} cpl{cpl}: {label}",
        unit="ns/exit",
        kvmlite_samples=ours,
        baseline_samples=theirs,
        baseline_name="C exit_loop",
        note=f"{iterations} exits/run",
    )


def _bench(driver: Driver, label: str, variant: str, cpl: int, what: str) -> Benchmark:
    return Benchmark(
        name=f"exit-{variant}-cpl{cpl}-{label}",
        description=f"{what}: guest {variant} exit at CPL {cpl}, ns per exit vs the same loop in C",
        measure=lambda quick: compare(driver, label, variant, cpl, quick),
        requires_tools=("cc",),
        needs_kvm=True,
        tags=("exit",),
    )


def benchmarks() -> list[Benchmark]:
    """The exit round-trip rows, in report order."""
    return [
        _bench(run_raw, "python-raw", "pio", 3, "Python floor (bare fcntl.ioctl)"),
        _bench(run_kvmlite, "kvmlite", "pio", 3, "kvmlite Vcpu.run()"),
        _bench(run_kvmlite, "kvmlite", "mmio", 3, "kvmlite Vcpu.run()"),
        _bench(run_vmm, "vmm-loop", "pio", 3, "kvmlite VcpuLoop + bus + device"),
        _bench(run_vmm, "vmm-loop", "mmio", 3, "kvmlite VcpuLoop + bus + device"),
        _bench(run_raw, "python-raw", "pio", 0, "Python floor (bare fcntl.ioctl)"),
        _bench(run_kvmlite, "kvmlite", "pio", 0, "kvmlite Vcpu.run()"),
        _bench(run_vmm, "vmm-loop", "pio", 0, "kvmlite VcpuLoop + bus + device"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{ITERATIONS_QUICK} exits per run")
    parser.add_argument("--variant", choices=VARIANTS, default="pio")
    parser.add_argument("--cpl", type=int, choices=CPLS, default=3)
    parser.add_argument("--driver", choices=("raw", "kvmlite", "vmm"), default="raw")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    driver, label = {
        "raw": (run_raw, "python-raw"),
        "kvmlite": (run_kvmlite, "kvmlite"),
        "vmm": (run_vmm, "vmm-loop"),
    }[args.driver]
    try:
        res = compare(driver, label, args.variant, args.cpl, args.quick)
    except (BenchUnavailable, BenchFailed, ValueError) as err:
        log.error("%s", err)
        return 1
    log.info(
        "%s: %s %.0f ns/exit (+-%.1f%%), C %.0f ns/exit (+-%.1f%%), ratio %.2f",
        res.name,
        label,
        res.kvmlite,
        100 * res.kvmlite_spread,
        res.baseline,
        100 * res.baseline_spread,
        res.ratio,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
