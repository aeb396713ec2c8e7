"""``kvmlite``: the command line.

    kvmlite run [--kernel PATH] [--initrd PATH]... [--cmdline|--append STR] [--memory MIB] [--cpus N]
                [--backend kvm|emu|auto] [--irqchip kernel|userspace|split|auto] [--serial SPEC]
                [--on-reset exit|restart] [--cpu-features SPEC] [--syscall-fix auto|off]
                [--trace [FILTER]] [--trace-file FILE] [--stats]
                [--profile FILE [--profile-hz HZ] [--symbols FILE]]
                [--gdb [HOST:]PORT|unix:PATH [--gdb-wait]] [--api unix:PATH]
                [--chroot DIR] [--runas USER] [--seccomp on|log|off] [-v]
    kvmlite info
    kvmlite ctl PATH COMMAND [JSON]                          (a control socket's command)
    kvmlite extract-vmlinux | initramfs | mkdisk | fetch-assets ...   (each with its own --help)

Every error kvmlite expects (bad arguments, a malformed kernel, no /dev/kvm)
ends with one sentence on stderr and a status from :class:`kvmlite.status.ExitStatus`,
never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kvmlite import status
from kvmlite.errors import ConfigError, KvmliteError, KvmUnavailableError
from kvmlite.status import ExitStatus

log = logging.getLogger("kvmlite")



def _positive_int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kvmlite", description="A KVM hypervisor toolkit in Python.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a guest (the built-in demo guest when no --kernel is given)")
    run.add_argument(
        "--kernel",
        type=Path,
        help="kernel image: Linux bzImage, ELF with a PVH note (vmlinux), multiboot ELF32/a.out, "
        "ELF64 or a boot sector (the format is read from the bytes)",
    )
    run.add_argument("--initrd", type=Path, action="append", default=[], help="module / initrd (repeatable)")
    run.add_argument("--cmdline", "--append", default="", help="kernel command line (QEMU: -append)")
    run.add_argument(
        "--memory", type=_positive_int, default=128, metavar="MIB", help="guest RAM in MiB (128)"
    )
    run.add_argument(
        "--cpus",
        type=_positive_int,
        default=1,
        metavar="N",
        help="vCPUs (1); more than one needs LAPICs: KVM's (kernel, split) or the emu backend's",
    )
    run.add_argument("--backend", choices=["kvm", "emu", "auto"], default="auto", help="execution backend")
    run.add_argument(
        "--irqchip",
        choices=["kernel", "userspace", "split", "auto"],
        default="auto",
        help="interrupt controllers and PIT in KVM (kernel) or in kvmlite (userspace); split: the LAPICs "
        "in KVM, PIC, IOAPIC and PIT in kvmlite (KVM_CAP_SPLIT_IRQCHIP); auto: kernel on KVM",
    )
    run.add_argument(
        "--serial",
        default="stdio",
        metavar="BACKEND",
        help="COM1 backend: stdio (default), none, file:PATH, unix:PATH",
    )
    run.add_argument(
        "--on-reset", choices=["exit", "restart"], default="exit", help="what a guest reset does (exit)"
    )
    run.add_argument(
        "--timeout",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="stop the guest after SECONDS of wall time, restarts included (exit status 8)",
    )
    run.add_argument(
        "--max-output",
        type=_positive_int,
        default=0,
        metavar="BYTES",
        help="stop the guest once it writes more than BYTES to the console (exit status 10)",
    )
    run.add_argument(
        "--cpu-features",
        default="",
        metavar="SPEC",
        help="hide (-name) or show (+name) CPUID features, e.g. -avx,-xsaves (names as in /proc/cpuinfo)",
    )
    run.add_argument(
        "--syscall-fix",
        choices=["auto", "off"],
        default="auto",
        help="auto: where the host KVM leaves SYSCALL from ring 3 at CPL 3, complete it in kvmlite (auto)",
    )
    run.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="add an optional device by QEMU's name: pc-testdev, pci-testdev, virtio-rng-pci (repeatable)",
    )
    run.add_argument(
        "--disk",
        action="append",
        default=[],
        metavar="PATH[,readonly=on][,serial=ID]",
        help="a raw disk image as a virtio-blk-pci device (repeatable)",
    )
    run.add_argument(
        "--net",
        action="append",
        default=[],
        metavar="tap=NAME|user|stream=PATH[,mac=MAC]",
        help="a virtio-net NIC on a TAP interface, on passt (user networking without root; Debian package "
        "passt) or on a UNIX socket speaking QEMU's -netdev stream framing (repeatable)",
    )
    run.add_argument(
        "--virtio-console",
        default="",
        metavar="BACKEND",
        help="a virtio console (the guest's hvc0) on BACKEND: stdio (then give --serial none), none, "
        "file:PATH, unix:PATH",
    )
    run.add_argument(
        "--virtio-transport",
        choices=["pci", "mmio"],
        default="pci",
        help="virtio devices on PCI (virtio-pci) or as virtio-mmio devices announced on the command line",
    )
    run.add_argument(
        "--host-workarounds",
        default="auto",
        metavar="auto|off|LIST",
        help="auto: where this host's KVM has a quirk kvmlite knows (docs/platform-notes.md), work around "
        "it: add Linux's clearcpuid= to its command line (clearcpuid), keep the vector state the guest "
        "kernel leaves out (xstate), hide the hypercall-based PV features (hypercalls), skip Linux's "
        "boot-time ftrace checks and crypto self-tests and unpack its initramfs on the host where ring 0 is "
        "emulated (boot-speed), boot a bzImage's vmlinux through its PVH entry there (pvh-entry); off: none; "
        "or a comma-separated list of those, e.g. clearcpuid,hypercalls (auto)",
    )
    run.add_argument(
        "--trace",
        nargs="?",
        const="all",
        default="",
        metavar="FILTER",
        help="log exits (all, or e.g. pio:0x3f8,mmio,pio:0x70-0x71; see kvmlite.vmm.trace) and POST codes",
    )
    run.add_argument("--trace-file", type=Path, metavar="FILE", help="traced exits as JSON lines to FILE")
    run.add_argument("--stats", action="store_true", help="print exit statistics to stderr at the end")
    run.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="sample the guest's RIP and write the hottest functions to FILE (rewritten every 10 s)",
    )
    run.add_argument(
        "--profile-hz",
        type=_positive_int,
        default=100,
        metavar="HZ",
        help="profiler samples per second (100)",
    )
    run.add_argument(
        "--symbols",
        type=Path,
        metavar="FILE",
        help="System.map or ELF with symbols for --profile (default: the kernel's own .symtab, if any)",
    )
    run.add_argument(
        "--gdb", metavar="[HOST:]PORT|unix:PATH", help="serve the gdb remote protocol (localhost by default)"
    )
    run.add_argument("--gdb-wait", action="store_true", help="hold the vCPUs until gdb continues (QEMU's -S)")
    run.add_argument("--api", metavar="unix:PATH", help="serve QMP-style control commands on a Unix socket")
    run.add_argument(
        "--restore",
        type=Path,
        metavar="PATH",
        help="continue the VM saved in snapshot PATH (control command snapshot-save) instead of booting",
    )
    run.add_argument(
        "--incoming",
        metavar="tcp:HOST:PORT",
        help="wait for a VM migrated from another kvmlite (control command migrate) and run it",
    )
    run.add_argument(
        "--restore-memory",
        choices=["read", "map"],
        default="read",
        help="read: load and check all of the snapshot's RAM first; map: map it, pages read on first touch",
    )
    run.add_argument(
        "--chroot",
        type=Path,
        metavar="DIR",
        help="once set up (/dev/kvm, images and sockets open), change the root directory to DIR (needs root)",
    )
    run.add_argument(
        "--runas",
        "--user",
        metavar="USER",
        help="once set up, drop to USER's uid and gid with no supplementary groups (needs root)",
    )
    run.add_argument(
        "--seccomp",
        choices=["on", "log", "off"],
        default=None,
        help="per-thread system-call allow-lists once set up (docs/seccomp.md): on stops kvmlite at a "
        "forbidden call (status 159), log names it and lets it fail; on by default where libseccomp loads",
    )
    run.add_argument("-v", "--verbose", action="count", default=0, dest="run_verbose", help=argparse.SUPPRESS)

    sub.add_parser("info", help="show the host's KVM API version and capabilities")
    sub.add_parser("qemu", help="run a guest from a QEMU command line (kvmlite qemu -help)")
    # the file-format tools parse their own arguments (see main()); listed here for --help
    sub.add_parser("extract-vmlinux", help="recover the ELF vmlinux from a bzImage")
    sub.add_parser("initramfs", help="build a busybox initramfs (gzip'd cpio), with kernel modules")
    sub.add_parser("mkdisk", help="make an ext4 disk image from a directory, without root")
    sub.add_parser("fetch-assets", help="download a Debian cloud kernel and static busybox for tests")
    sub.add_parser("ctl", help="send one command to a control socket: kvmlite ctl PATH COMMAND [JSON]")
    sub.add_parser("build-kernel", help="build the microVM guest kernel from Debian's linux-source")
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="kvmlite: %(message)s", stream=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from kvmlite.guests import DEMO_GUEST
    from kvmlite.vmm.jail import Jail
    from kvmlite.vmm.machine import MachineConfig

    args.jail = Jail.from_options(args.chroot, args.runas, args.on_reset)
    _enable_seccomp(args)
    if args.restore is not None or args.incoming is not None:
        return _restore(args)
    config = MachineConfig(  # validated here, once, before anything is built or opened
        kernel=args.kernel if args.kernel is not None else DEMO_GUEST,
        cmdline=args.cmdline,
        initrds=list(args.initrd),
        memory_mib=args.memory,
        cpus=args.cpus,
        backend=args.backend,
        irqchip=args.irqchip,
        serial=args.serial,
        on_reset=args.on_reset,
        cpu_features=args.cpu_features,
        trace=args.trace,
        trace_file=args.trace_file,
        stats=args.stats,
        syscall_fix=args.syscall_fix,
        extra_devices=list(args.device),
        disks=list(args.disk),
        nets=list(args.net),
        virtio_transport=args.virtio_transport,
        virtio_console=args.virtio_console,
        host_workarounds=args.host_workarounds,
        timeout=args.timeout,
        max_output=args.max_output,
    )
    if not config.kernel.is_file():
        if args.kernel is None:
            raise ConfigError(
                f"the built-in demo guest is missing ({DEMO_GUEST}); rebuild it: python3 guests/build.py"
            )
        raise ConfigError(f"kernel {config.kernel} does not exist or is not a file")
    for initrd in config.initrds:
        if not initrd.is_file():
            raise ConfigError(f"initrd {initrd} does not exist or is not a file")
    return _run_restarting(config, args)


def _enable_seccomp(args: argparse.Namespace) -> None:
    """``--seccomp``: compile the allow-lists now; each thread loads its own once set up.

    Filters are permanent, so the default (on where libseccomp loads) applies where kvmlite owns the
    process (``python -m kvmlite``, the ``kvmlite`` script: ``main()`` without an argument list); a
    program that calls ``main(ARGV)`` itself keeps its threads unfiltered unless ARGV asks.
    """
    from kvmlite.vmm import seccomp

    default = seccomp.default_mode() if getattr(args, "own_process", False) else "off"
    seccomp.enable(args.seccomp or default)


def _run_restarting(config: Any, args: argparse.Namespace) -> int:
    """Build and run the machine, again after each guest reset under ``--on-reset restart``.

    SIGTERM and SIGHUP stop the machine that runs at the time (and no new one
    is built): the machine is closed as on any other way out, so the terminal
    is restored and a ``--serial unix:`` socket removed.  The handlers belong
    to this loop, not to one machine, so a signal during a restart finds the
    current machine or none.
    """
    from kvmlite.vmm.limits import deadline_after
    from kvmlite.vmm.machine import Machine

    current: list[Any] = []
    signaled: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        signaled.append(signum)
        for machine in current:
            machine.control.stop(status.signaled(signum), f"killed by signal {signal.Signals(signum).name}")

    previous = _install_handlers(on_signal)
    deadline = deadline_after(config.timeout)  # one deadline for every restart
    try:
        while not signaled:
            machine = Machine.build(config)
            current.append(machine)
            try:
                code = _run_once(machine, args, deadline) if not signaled else 0
            finally:
                current.clear()
                machine.close()
            if not (machine.reset_requested and config.on_reset == "restart"):
                break
            log.warning("guest reset: restarting it (--on-reset restart)")
        return status.signaled(signaled[0]) if signaled else code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _install_handlers(handler: Callable[[int, object], None]) -> dict[int, Any]:
    """``handler`` for SIGTERM and SIGHUP (from the main thread only); the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _restore(args: argparse.Namespace) -> int:
    """``run --restore PATH`` / ``--incoming tcp:HOST:PORT``: a saved or migrated VM with this
    command line's devices, continued."""
    from kvmlite.snapshot.machine import build_restored
    from kvmlite.snapshot.migration import incoming, parse_tcp
    from kvmlite.vmm.machine import MachineConfig

    if args.kernel is not None:
        raise ConfigError("--restore and --incoming continue a saved VM: give no --kernel")
    if args.restore is not None and args.incoming is not None:
        raise ConfigError("--restore and --incoming exclude each other")
    if args.incoming is not None:
        parse_tcp(args.incoming, "--incoming")
    config = MachineConfig(
        kernel=Path(),
        backend=args.backend,
        serial=args.serial,
        on_reset="exit",
        trace=args.trace,
        trace_file=args.trace_file,
        stats=args.stats,
        extra_devices=list(args.device),
        disks=list(args.disk),
        timeout=args.timeout,
        max_output=args.max_output,
    )
    config.validate()
    if args.incoming is not None:
        machine = incoming(config, args.incoming)
    else:
        machine = build_restored(config, args.restore, lazy=args.restore_memory == "map")
    try:
        return _run_once(machine, args)
    finally:
        machine.close()


def _profiler(machine: Any, args: argparse.Namespace) -> Any:
    from kvmlite.vmm.profile import Profiler, SymbolTable

    symbols: SymbolTable | None
    if args.symbols is not None:
        if not args.symbols.is_file():
            raise ConfigError(f"symbols {args.symbols} does not exist or is not a file")
        symbols = SymbolTable.load(args.symbols)
    else:
        symbols = _kernel_symbols(machine.config.kernel)
        if symbols is None:
            log.warning("--profile: the kernel has no symbols; give --symbols System.map for names")
    return Profiler(machine.loops, hz=args.profile_hz, symbols=symbols, output=args.profile)


def _kernel_symbols(path: Path) -> Any:
    """The kernel's own .symtab as a profiler SymbolTable, or None; read through a mapping, not whole."""
    import mmap

    from kvmlite.loaders.elf import ElfError, elf_symbols, is_elf
    from kvmlite.vmm.profile import SymbolTable

    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            found = elf_symbols(view) if is_elf(view) else []  # type: ignore[arg-type]  # slices and unpack_from
    except (OSError, ValueError, ElfError) as err:
        log.warning("--profile: cannot read the kernel's symbols (%s)", err)
        found = []
    return SymbolTable(found) if found else None


def _confine_main(machine: Any) -> None:
    """The main thread's seccomp list, unless a guest reset would start a process again (passt)."""
    from kvmlite.vmm import seccomp

    config = machine.config
    if config.on_reset == "restart" and config.nets:
        from kvmlite.vmm.netdev import NetSpec  # only then: a plain run imports no network code

        nets = [NetSpec.parse(net, i) for i, net in enumerate(config.nets)]
    else:
        nets = []
    if any(net.kind == "user" for net in nets):
        if seccomp.mode() != "off":
            log.info("seccomp: the main thread stays unconfined: each restart starts passt (--net user)")
        return
    seccomp.confine("main")


def _run_once(machine: Any, args: argparse.Namespace, deadline: float | None = None) -> int:
    from kvmlite.control.attach import Attachments
    from kvmlite.vmm import seccomp

    attached = Attachments(machine, gdb=args.gdb, gdb_wait=args.gdb_wait, api=args.api)
    profiler = _profiler(machine, args) if args.profile is not None else None
    try:
        if args.jail.active or seccomp.mode() != "off":
            machine.probe_host()  # a probe VM opens /dev/kvm and its answer goes to the probe cache
        if args.jail.active:  # before any thread starts: glibc changes every thread's uid by a signal
            machine.open_consoles()  # their files and sockets are opened outside the chroot
            args.jail.enter()
        attached.start()
        if profiler is not None:
            profiler.start()
        _confine_main(machine)  # set-up is over: from here on the main thread only runs the machine
        status = machine.run(deadline)
    finally:
        if profiler is not None:
            profiler.stop()
        attached.close()
    info = machine.control.stop_info
    if info and info.message:
        log.info("%s", info.message)
    if args.stats:
        print(machine.stats().format(), file=sys.stderr)
        for line in machine.device_stats():
            print(line, file=sys.stderr)
        unclaimed = machine.pio.unclaimed + machine.mmio.unclaimed
        if unclaimed:
            print(
                f"unclaimed accesses: {sum(unclaimed.values())} at {len(unclaimed)} addresses",
                file=sys.stderr,
            )
    if info and info.status in (ExitStatus.GUEST_CRASH, ExitStatus.TIMEOUT, ExitStatus.OUTPUT_LIMIT):
        print(f"kvmlite: {info.message}", file=sys.stderr)
    return int(status)


def cmd_info(args: argparse.Namespace) -> int:
    from kvmlite.kvm import Kvm

    with Kvm() as kvm:
        print(f"{'KVM device':<34} {kvm.path}")
        print(f"{'API version':<34} {kvm.api_version()}")
        print(f"{'vCPU mmap size':<34} {kvm.vcpu_mmap_size()}")
        print(f"{'supported CPUID entries':<34} {len(kvm.supported_cpuid())}")
        print(f"{'MSRs saved/restored':<34} {len(kvm.msr_index_list())}")
        print()
        print(f"{'capability':<34} value")
        for cap, value in kvm.capabilities().items():
            print(f"KVM_CAP_{cap.name:<26} {value}")
    return 0


def _tool(command: str, argv: list[str]) -> int:
    """The file-format tools, each with its own argument parser."""
    if command == "extract-vmlinux":
        from kvmlite.tools import extract_vmlinux

        return extract_vmlinux.main(argv)
    if command == "initramfs":
        from kvmlite.tools import initramfs

        return initramfs.main(argv)
    if command == "mkdisk":
        from kvmlite.tools import mkdisk

        return mkdisk.main(argv)
    if command == "ctl":
        from kvmlite.control import client

        return client.main(argv)
    if command == "build-kernel":
        from kvmlite.tools import build_kernel

        return build_kernel.main(argv)
    from kvmlite.tools import assets

    return assets.main(argv)


TOOLS = ("extract-vmlinux", "initramfs", "mkdisk", "fetch-assets", "ctl", "build-kernel")


def _join_feature_spec(argv: list[str]) -> list[str]:
    """``--cpu-features -avx`` as ``--cpu-features=-avx``: argparse would take ``-avx`` for an option."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--cpu-features":
            out[i : i + 2] = [f"--cpu-features={out[i + 1]}"]
            break
    return out


def main(argv: list[str] | None = None, own_process: bool | None = None) -> int:
    """``kvmlite ARGV`` (``sys.argv`` when None); ``own_process``: kvmlite is the program (default: when
    ``argv`` is None), so ``run`` confines its threads with seccomp unless ``--seccomp`` says otherwise."""
    own_process = argv is None if own_process is None else own_process
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "qemu":
        from kvmlite.cli import qemu

        return qemu.main(argv[1:])
    if argv and argv[0] in TOOLS:
        _setup_logging(0)
        try:
            return _tool(argv[0], argv[1:])
        except KvmliteError as err:
            print(f"kvmlite: {err}", file=sys.stderr)
            return ExitStatus.BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(_join_feature_spec(argv))
    args.own_process = own_process
    _setup_logging(args.verbose + getattr(args, "run_verbose", 0))
    try:
        if args.command == "run":
            return cmd_run(args)
        return cmd_info(args)
    except KvmUnavailableError as err:
        print(f"kvmlite: {err}", file=sys.stderr)
        return ExitStatus.NO_BACKEND
    except KvmliteError as err:
        print(f"kvmlite: {err}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    except KeyboardInterrupt:
        return ExitStatus.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
