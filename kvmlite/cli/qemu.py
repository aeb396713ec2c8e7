"""``kvmlite qemu`` and ``kvmlite-qemu``: the part of qemu-system-x86_64's command line harnesses use.

(Longer than the project's ~600 lines: one small handler per QEMU option, in a table, is the
whole file; splitting the table would only scatter it.)

Kernel test harnesses (kvm-unit-tests' ``run_tests.sh``, scripts written for
``qemu-system-x86_64 -kernel``) call QEMU with a handful of options.  This
front end accepts that subset, translates it into ``kvmlite run`` arguments
(the same :class:`~kvmlite.vmm.machine.MachineConfig`, nothing run twice) and
refuses every other option with one sentence naming it (status 2)::

    kvmlite-qemu -kernel x86/msr.flat -smp 1 -machine accel=kvm -serial stdio \\
        -device pc-testdev -device isa-debug-exit,iobase=0xf4,iosize=4 -no-reboot

How each option maps (``-help`` prints the same):

* ``-kernel``, ``-initrd`` (multiboot modules, comma-separated), ``-append``,
  ``-m`` (``128``, ``2G``, ``size=512M``), ``-smp`` (``N`` or ``cpus=N,...``);
* ``-machine``/``-M`` ``pc``, ``q35`` or ``microvm`` (kvmlite builds its one PC
  either way) with ``accel=kvm|tcg`` (``tcg`` is kvmlite's own emulator,
  ``--backend emu``) and ``kernel-irqchip=on|off|split``; ``-accel``, ``-enable-kvm``;
* ``-cpu host|max|MODEL[,+feat,-feat,feat=on|off]``: kvmlite always gives the
  guest the host's CPU as KVM reports it; a named model is accepted with a
  warning, feature flags and ``vendor=`` go to ``--cpu-features``;
* ``-serial stdio|null|none|file:PATH|unix:PATH,server=on,wait=off|chardev:ID``,
  ``-chardev stdio|null|file|socket`` (``id=``, ``path=``), ``-nographic``,
  ``-nodefaults``, ``-display none``, ``-vga none``, ``-monitor none``,
  ``-mon`` (a ``readline`` monitor is ignored with a warning: kvmlite has none;
  ``mode=control`` (QMP) is refused);
* ``-device isa-debug-exit,iobase=0xf4,iosize=4`` (kvmlite's is always
  there, at that port), ``-device pc-testdev``, ``-device pci-testdev``; ``-device help``
  lists them;
* ``-no-reboot`` (a guest reset ends the run; without it the guest restarts,
  as under QEMU), ``-global kvm-pit.lost_tick_policy=...`` (accepted: see
  docs/conformance.md), ``-name``, ``-no-user-config``.

QEMU prints warnings as ``qemu-system-x86_64: warning: ...``; this front end
prints its own and kvmlite's log lines the same way (``kvmlite-qemu:
warning: ...``), because kvm-unit-tests counts any other line on stderr as a
VMM failure.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kvmlite import __version__
from kvmlite.devices.debug_exit import DEFAULT_WIDTH
from kvmlite.errors import ConfigError, KvmliteError
from kvmlite.kvm.cpuid import CpuidEntry
from kvmlite.status import ExitStatus
from kvmlite.vmm.cpuid import FEATURES
from kvmlite.vmm.layout import DEBUG_EXIT_PORT

PROG = "kvmlite-qemu"

#: kvmlite's own isa-debug-exit is at DEBUG_EXIT_PORT, DEFAULT_WIDTH bytes wide; QEMU's defaults are these.
QEMU_DEBUG_EXIT_DEFAULTS = {"iobase": 0x501, "iosize": 2}

MACHINE_TYPES = ("pc", "q35", "microvm")
#: Machine properties kvmlite has no switch for; accepted with a warning that they change nothing.
IGNORED_MACHINE_PROPS = ("pit", "vmport", "hpet", "smm", "usb", "graphics", "dump-guest-core", "mem-merge")
#: QEMU's x86 CPU models.  kvmlite shows the guest the host's CPU whatever the model; see -cpu.
CPU_MODELS = (
    "qemu64", "qemu32", "kvm64", "kvm32", "base", "pentium", "pentium2", "pentium3", "486", "coreduo",
    "core2duo", "n270", "athlon", "phenom", "Conroe", "Penryn", "Nehalem", "Westmere", "SandyBridge",
    "IvyBridge", "Haswell", "Broadwell", "Skylake-Client", "Skylake-Server", "Cascadelake-Server",
    "Cooperlake", "Icelake-Server", "SapphireRapids", "GraniteRapids", "Denverton", "Snowridge",
    "Opteron_G1", "Opteron_G2", "Opteron_G3", "Opteron_G4", "Opteron_G5", "EPYC", "EPYC-Rome",
    "EPYC-Milan", "EPYC-Genoa", "Dhyana",
)  # fmt: skip
#: -cpu properties that describe what kvmlite does anyway.
HARMLESS_CPU_PROPS = {"host-phys-bits": "on", "migratable": None, "check": None, "enforce": None}
#: QEMU feature names that differ from Linux's /proc/cpuinfo names kvmlite uses (after - and . become _).
CPU_FEATURE_ALIASES = {
    "tsc_deadline": "tsc_deadline_timer",
    "pni": "sse3",
    "sha": "sha_ni",
    "avx512vbmi2": "avx512_vbmi2",
    "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg",
    "lahf": "lahf_lm",
    "fxsr_opt": "fxsr",
    "i64": "lm",
}
PIT_POLICIES = ("discard", "delay", "slew")
SERIAL_NAMES = {"stdio": "stdio", "null": "none", "none": "none"}

HELP = f"""\
{PROG}: kvmlite {__version__}'s QEMU-compatible front end (a subset of QEMU's qemu-system-x86_64 options)
usage: {PROG} [options]     (also: kvmlite qemu [options])

Every option not listed here is refused with a message naming it (exit status 2).

-kernel FILE              multiboot, ELF64 or Linux kernel (kvmlite detects the format)
-initrd FILE[,FILE...]    initrd, or multiboot modules
-append CMDLINE           kernel command line
-m SIZE                   guest RAM: MiB, or with a k/M/G/T suffix, or size=SIZE (128M)
-smp N | cpus=N,...       vCPUs (more than one needs LAPICs: KVM's irqchip or the emu backend)
-machine, -M TYPE[,accel=kvm|tcg][,kernel-irqchip=on|off|split]
                          TYPE: {", ".join(MACHINE_TYPES)} (kvmlite builds one PC for all); tcg runs the
                          guest on kvmlite's own x86 emulator (kvmlite run --backend emu)
-accel kvm|tcg, -enable-kvm
-cpu host|max|MODEL[,+FEAT|-FEAT|FEAT=on|off...][,vendor=NAME]
                          the guest sees the host's CPU as KVM reports it; MODEL is accepted with a
                          warning; features as in /proc/cpuinfo or QEMU (tsc-deadline, ...)
-serial stdio|null|file:PATH|unix:PATH,server=on,wait=off|chardev:ID      COM1
-chardev stdio|null|file|socket,id=ID[,path=PATH][,server=on,wait=off]
-mon chardev=ID[,mode=readline]     accepted and ignored (kvmlite has no monitor; no QMP)
-nographic                COM1 on stdio unless -serial says otherwise
-nodefaults, -display none, -vga none, -monitor none, -no-user-config, -name NAME
-no-reboot                a guest reset ends the run (otherwise the guest restarts)
-device isa-debug-exit,iobase=0xf4,iosize=4    a write of v exits with status (v << 1) | 1
-device pc-testdev        QEMU's ISA test device (kvm-unit-tests)
-device pci-testdev       QEMU's PCI test device (kvm-unit-tests)
-device help              list the devices
-global kvm-pit.lost_tick_policy=discard|delay|slew     accepted (kvmlite keeps KVM's default)
-help, -version
"""

DEVICE_LIST = """\
Misc devices:
name "isa-debug-exit", bus ISA
name "pc-testdev", bus ISA
name "pci-testdev", bus PCI, desc "PCI Test Device"
"""

log = logging.getLogger("kvmlite")


class QemuOptionError(ConfigError):
    """A QEMU option this front end does not accept, or a bad value for one."""


@dataclass
class Translation:
    """What the QEMU command line asks for, as ``kvmlite run`` arguments."""

    run_args: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Text to print instead of running (-help, -device help, ...).
    info: str | None = None


@dataclass
class _State:
    kernel: str | None = None
    initrds: list[str] = field(default_factory=list)
    append: str = ""
    memory_mib: int = 128
    cpus: int = 1
    accel: str = "auto"
    irqchip: str = "auto"
    cpu_spec: list[str] = field(default_factory=list)
    serial: str | None = None
    nographic: bool = False
    no_reboot: bool = False
    devices: list[str] = field(default_factory=list)
    chardevs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: str | None = None
    #: kvmlite run's confinement options from -sandbox, -chroot and -runas.
    confine: list[str] = field(default_factory=list)


def split_opts(text: str) -> list[str]:
    """QEMU's option list syntax: comma-separated, a doubled comma is a literal comma."""
    items, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1 : i + 2] == ",":
                cur += ","
                i += 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    items.append(cur)
    return items


def _props(option: str, items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise QemuOptionError(f"{option}: expected key=value, not {item!r}")
        out[key] = value
    return out


def parse_size_mib(option: str, text: str) -> int:
    """``128``, ``128M``, ``2G``, ``4g``, ``512k`` -> MiB (QEMU's default unit is MiB)."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    number, unit = (text[:-1], text[-1].lower()) if text and text[-1].isalpha() else (text, "m")
    try:
        value = float(number) * units[unit]
    except (KeyError, ValueError):
        raise QemuOptionError(f"{option}: {text!r} is not a size (such as 128, 512M or 2G)") from None
    if value <= 0 or value != int(value):
        raise QemuOptionError(f"{option}: {text!r} is not a whole, positive number of MiB")
    return int(value)


def _int(option: str, text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise QemuOptionError(f"{option}: {text!r} is not a number") from None


# --- one handler per option ---------------------------------------------------------------
def _opt_m(st: _State, value: str) -> None:
    items = split_opts(value)
    first = items[0]
    if first.startswith("size="):
        first = first[5:]
    if len(items) > 1:
        raise QemuOptionError(f"-m {value}: only a size is accepted (no slots= or maxmem=)")
    st.memory_mib = parse_size_mib("-m", first)


def _opt_smp(st: _State, value: str) -> None:
    items = split_opts(value)
    cpus = None
    if items[0] and "=" not in items[0]:
        cpus = _int("-smp", items.pop(0))
    props = _props("-smp", items)
    unknown = set(props) - {"cpus", "sockets", "dies", "cores", "threads", "maxcpus"}
    if unknown:
        raise QemuOptionError(f"-smp: kvmlite does not accept {', '.join(sorted(unknown))}")
    if "cpus" in props:
        cpus = _int("-smp cpus", props["cpus"])
    if cpus is None:
        cpus = 1
        for key in ("sockets", "dies", "cores", "threads"):
            cpus *= _int(f"-smp {key}", props.get(key, "1"))
    if cpus <= 0:
        raise QemuOptionError(f"-smp {value}: the number of CPUs must be positive")
    st.cpus = cpus


def _accel(option: str, st: _State, value: str) -> None:
    choices = value.split(":")
    backends = {"kvm": "kvm", "tcg": "emu"}
    for name in choices:
        if name not in backends:
            raise QemuOptionError(f"{option} {value}: kvmlite runs guests with kvm or tcg, not {name!r}")
    st.accel = backends[choices[0]] if len(choices) == 1 else ("auto" if choices[0] == "kvm" else "emu")


def _opt_machine(st: _State, value: str) -> None:
    items = split_opts(value)
    if items[0] in ("help", "?"):
        st.info = "Supported machines are:\n" + "".join(
            f"{name:<20} accepted: kvmlite builds one PC for every type\n" for name in MACHINE_TYPES
        )
        return
    if items[0] and "=" not in items[0]:
        mtype = items.pop(0)
        family = mtype.split("-")[0] if mtype.startswith("pc-") else mtype
        if family not in ("pc", "q35", "microvm") and not mtype.startswith("pc-q35"):
            raise QemuOptionError(f"-machine {mtype}: kvmlite has no such machine (pc, q35 or microvm)")
    for key, val in _props("-machine", items).items():
        if key == "type":
            _opt_machine(st, val)
        elif key == "accel":
            _accel("-machine accel=", st, val)
        elif key == "kernel-irqchip":
            modes = {"on": "kernel", "off": "userspace", "split": "split"}
            if val not in modes:
                raise QemuOptionError(f"-machine kernel-irqchip={val}: kvmlite accepts on, off or split")
            st.irqchip = modes[val]
        elif key in IGNORED_MACHINE_PROPS:
            st.warnings.append(f"-machine {key}={val} is ignored: kvmlite has no switch for it")
        else:
            raise QemuOptionError(f"-machine {key}={val}: kvmlite does not accept this machine property")


def _opt_accel(st: _State, value: str) -> None:
    items = split_opts(value)
    if len(items) > 1:
        raise QemuOptionError(f"-accel {value}: accelerator properties are not accepted")
    _accel("-accel", st, items[0])


def cpu_feature_name(qemu_name: str) -> str | None:
    """QEMU's name for a CPUID feature -> kvmlite's (/proc/cpuinfo's), or None if kvmlite has none."""
    name = qemu_name.lower().replace("-", "_").replace(".", "_")
    name = CPU_FEATURE_ALIASES.get(name, name)
    return name if name in FEATURES else None


def _opt_cpu(st: _State, value: str) -> None:
    items = split_opts(value)
    model = items.pop(0)
    if model in ("help", "?"):
        st.info = "Available CPUs:\n  host  max  " + "  ".join(CPU_MODELS) + "\n"
        return
    if model not in ("host", "max") and model not in CPU_MODELS:
        raise QemuOptionError(f"-cpu {model}: unknown CPU model")
    if model not in ("host", "max"):
        st.warnings.append(
            f"-cpu {model}: kvmlite gives the guest the host's CPU (as KVM reports it), not QEMU's {model}"
        )
    for item in items:
        key, eq, val = item.partition("=")
        sign = ""
        if not eq and item[:1] in "+-" and item:
            sign, key = item[0], item[1:]
        elif key == "vendor" and eq:
            st.cpu_spec.append(f"vendor={val}")
            continue
        elif key in HARMLESS_CPU_PROPS:
            wanted = HARMLESS_CPU_PROPS[key]
            if wanted is not None and eq and val != wanted:
                raise QemuOptionError(f"-cpu {key}={val}: kvmlite always gives the guest {key}={wanted}")
            continue
        elif eq and val in ("on", "off", "true", "false"):
            sign = "+" if val in ("on", "true") else "-"
        elif not eq:
            sign = "+"
        else:
            raise QemuOptionError(f"-cpu {item}: kvmlite does not accept this CPU property")
        if key.startswith("hv_") or key.startswith("hv-"):
            raise QemuOptionError(f"-cpu {item}: kvmlite offers no Hyper-V enlightenments")
        feature = cpu_feature_name(key)
        if feature is None:
            raise QemuOptionError(f"-cpu {item}: kvmlite does not know the CPU feature {key!r}")
        st.cpu_spec.append(sign + feature)


def drop_unsupported(
    spec: list[str], warnings: list[str], supported: list[CpuidEntry] | None = None
) -> list[str]:
    """``spec`` without the ``+feature`` items this host's KVM does not offer, as QEMU drops them.

    QEMU with KVM warns "host doesn't support requested feature" and leaves the
    bit clear, so a test asking for ``+svm`` on a host without nested SVM skips
    instead of failing; kvmlite's ``--cpu-features +name`` would set the bit.
    ``supported`` is KVM_GET_SUPPORTED_CPUID (read from /dev/kvm when None; with
    no /dev/kvm the spec is kept and the run's own error says why).
    """
    if supported is None:
        from kvmlite.kvm import Kvm

        try:
            with Kvm() as kvm:
                supported = kvm.supported_cpuid()
        except KvmliteError:
            return spec
    offered = {(e.function, e.index): e for e in supported}
    kept = []
    for item in spec:
        f = FEATURES.get(item[1:]) if item.startswith("+") else None
        entry = offered.get((f.leaf, f.subleaf)) if f is not None else None
        if f is not None and not (entry is not None and getattr(entry, f.reg.name.lower()) >> f.bit & 1):
            warnings.append(f"host doesn't support requested feature: {item[1:]}")
            continue
        kept.append(item)
    return kept


def _serial_spec(st: _State, option: str, value: str) -> str:
    if value in SERIAL_NAMES:
        return SERIAL_NAMES[value]
    if value == "mon:stdio":
        st.warnings.append(f"{option} mon:stdio: COM1 on stdio; there is no monitor (Ctrl-A x still quits)")
        return "stdio"
    kind, _, rest = value.partition(":")
    if kind == "chardev":
        if rest not in st.chardevs:
            raise QemuOptionError(f"{option} {value}: no -chardev with id {rest!r} before it")
        return st.chardevs[rest]
    items = split_opts(rest)
    if kind == "file" and len(items) == 1 and items[0]:
        return f"file:{items[0]}"
    if kind == "unix" and items[0]:
        return _unix_socket(st, option, value, items[0], dict(_flags(items[1:])))
    raise QemuOptionError(
        f"{option} {value}: kvmlite connects COM1 to stdio, null, file:PATH or unix:PATH,server=on only"
    )


def _flags(items: list[str]) -> list[tuple[str, str]]:
    """``server``, ``nowait``, ``wait=off`` style flags as (key, on|off) pairs."""
    out = []
    for item in items:
        key, eq, val = item.partition("=")
        if not eq:
            key, val = (key[2:], "off") if key.startswith("no") else (key, "on")
        out.append((key, {"true": "on", "false": "off"}.get(val, val)))
    return out


def _unix_socket(st: _State, option: str, value: str, path: str, flags: dict[str, str]) -> str:
    unknown = set(flags) - {"server", "wait"}
    if unknown:
        raise QemuOptionError(f"{option} {value}: kvmlite does not accept {', '.join(sorted(unknown))}")
    if flags.get("server") != "on":
        raise QemuOptionError(
            f"{option} {value}: kvmlite's Unix socket serial listens: add server=on,wait=off"
        )
    if flags.get("wait", "on") == "on":
        st.warnings.append(f"{option} {value}: kvmlite starts the guest without waiting for a client")
    return f"unix:{path}"


def _opt_serial(st: _State, value: str) -> None:
    spec = _serial_spec(st, "-serial", value)
    if st.serial is not None:
        if spec == "none":
            return
        raise QemuOptionError(f"-serial {value}: kvmlite has one serial port (COM1), already given")
    st.serial = spec


def _opt_chardev(st: _State, value: str) -> None:
    items = split_opts(value)
    backend = items.pop(0)
    props = dict(_flags(items)) if backend == "socket" else _props("-chardev", items)
    cid = props.pop("id", "")
    if not cid:
        raise QemuOptionError(f"-chardev {value}: an id= is required")
    props.pop("mux", None)
    props.pop("signal", None)
    path = props.pop("path", "")
    if backend in ("stdio", "null") and not props and not path:
        st.chardevs[cid] = SERIAL_NAMES[backend]
    elif backend == "file" and path and not props:
        st.chardevs[cid] = f"file:{path}"
    elif backend == "socket" and path:
        st.chardevs[cid] = _unix_socket(st, "-chardev", value, path, props)
    else:
        raise QemuOptionError(
            f"-chardev {value}: kvmlite accepts stdio, null, file (path=) and socket (path=, server=on) only"
        )


def _opt_mon(st: _State, value: str) -> None:
    props = _props("-mon", split_opts(value))
    if props.get("mode", "readline") == "control":
        raise QemuOptionError(f"-mon {value}: kvmlite has no QMP monitor")
    if props.get("chardev") not in st.chardevs:
        raise QemuOptionError(f"-mon {value}: no -chardev with id {props.get('chardev')!r} before it")
    st.warnings.append(f"-mon {value} is ignored: kvmlite has no monitor (Ctrl-A x quits on a terminal)")


def _opt_monitor(st: _State, value: str) -> None:
    if value != "none":
        raise QemuOptionError(f"-monitor {value}: kvmlite has no monitor (only -monitor none is accepted)")


def _opt_device(st: _State, value: str) -> None:
    items = split_opts(value)
    driver = items.pop(0)
    if driver in ("help", "?"):
        st.info = DEVICE_LIST
        return
    props = _props(f"-device {driver}", items)
    if driver == "isa-debug-exit":
        for key in props:
            if key not in QEMU_DEBUG_EXIT_DEFAULTS:
                raise QemuOptionError(f"-device isa-debug-exit,{key}=: kvmlite does not accept this property")
        iobase = _int("-device isa-debug-exit,iobase=", props.get("iobase", "0x501"))
        iosize = _int("-device isa-debug-exit,iosize=", props.get("iosize", "2"))
        if (iobase, iosize) != (DEBUG_EXIT_PORT, DEFAULT_WIDTH):
            raise QemuOptionError(
                f"-device isa-debug-exit,iobase={iobase:#x},iosize={iosize}: kvmlite's isa-debug-exit "
                f"is at iobase={DEBUG_EXIT_PORT:#x},iosize={DEFAULT_WIDTH} only"
            )
    elif driver in ("pc-testdev", "pci-testdev"):
        if props:
            raise QemuOptionError(f"-device {value}: kvmlite's {driver} has no properties")
        if driver not in st.devices:
            st.devices.append(driver)
    else:
        raise QemuOptionError(f"-device {driver}: kvmlite has no such device (-device help lists them)")


def _opt_global(st: _State, value: str) -> None:
    key, _, val = value.partition("=")
    if key != "kvm-pit.lost_tick_policy" or val not in PIT_POLICIES:
        raise QemuOptionError(
            f"-global {value}: kvmlite accepts only kvm-pit.lost_tick_policy={'|'.join(PIT_POLICIES)}"
        )


def _only(option: str, allowed: str) -> Callable[[_State, str], None]:
    def handler(st: _State, value: str) -> None:
        if value != allowed:
            raise QemuOptionError(f"{option} {value}: kvmlite accepts only {option} {allowed}")

    return handler


def _set(**changes: object) -> Callable[[_State], None]:
    def handler(st: _State) -> None:
        for key, value in changes.items():
            setattr(st, key, value)

    return handler


def _help(text: str) -> Callable[[_State], None]:
    return _set(info=text)


def _kernel(st: _State, value: str) -> None:
    st.kernel = value


def _initrd(st: _State, value: str) -> None:
    for module in split_opts(value):
        if " " in module.strip():
            raise QemuOptionError(f"-initrd {value}: multiboot module arguments are not accepted")
        st.initrds.append(module.strip())


def _append(st: _State, value: str) -> None:
    st.append = value


def _opt_sandbox(st: _State, value: str) -> None:
    """``-sandbox on|off``: QEMU's process-wide seccomp list; kvmlite's per-thread lists (--seccomp)."""
    opts = split_opts(value)
    if not opts or opts[0] not in ("on", "off") or len(opts) > 1:
        raise QemuOptionError(f"-sandbox {value}: kvmlite accepts -sandbox on or -sandbox off")
    st.confine += ["--seccomp", opts[0]]


def _opt_chroot(st: _State, value: str) -> None:
    st.confine += ["--chroot", value]


def _opt_runas(st: _State, value: str) -> None:
    st.confine += ["--runas", value]


def _ignore(st: _State, value: str) -> None:
    """Options that name or describe the VM and change nothing in it (-name)."""


#: Options that take a value.
WITH_VALUE: dict[str, Callable[[_State, str], None]] = {
    "kernel": _kernel,
    "initrd": _initrd,
    "append": _append,
    "m": _opt_m,
    "smp": _opt_smp,
    "machine": _opt_machine,
    "M": _opt_machine,
    "accel": _opt_accel,
    "cpu": _opt_cpu,
    "serial": _opt_serial,
    "chardev": _opt_chardev,
    "mon": _opt_mon,
    "monitor": _opt_monitor,
    "device": _opt_device,
    "global": _opt_global,
    "display": _only("-display", "none"),
    "vga": _only("-vga", "none"),
    "parallel": _only("-parallel", "none"),
    "net": _only("-net", "none"),
    "name": _ignore,
    "sandbox": _opt_sandbox,
    "chroot": _opt_chroot,
    "runas": _opt_runas,
}
#: Options that take none.
FLAGS: dict[str, Callable[[_State], None]] = {
    "nographic": _set(nographic=True),
    "nodefaults": _set(),
    "no-user-config": _set(),
    "no-reboot": _set(no_reboot=True),
    "enable-kvm": _set(accel="kvm"),
    "help": _help(HELP),
    "h": _help(HELP),
    "version": _help(f"{PROG} (kvmlite {__version__}): a QEMU-compatible front end, not QEMU\n"),
}


def translate(argv: list[str]) -> Translation:
    """The QEMU command line as ``kvmlite run`` arguments; QemuOptionError names a refused option."""
    st = _State()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg == "-":
            raise QemuOptionError(f"{arg}: kvmlite boots -kernel images only (no disk image argument)")
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if name in FLAGS:
            FLAGS[name](st)
        elif name in WITH_VALUE:
            if not args:
                raise QemuOptionError(f"-{name} needs a value")
            WITH_VALUE[name](st, args.pop(0))
        else:
            raise QemuOptionError(f"-{name}: kvmlite does not accept this QEMU option")
        if st.info is not None:
            return Translation(info=st.info)
    if st.kernel is None:
        raise QemuOptionError("-kernel is required: kvmlite boots a kernel image, it has no BIOS or disks")
    serial = st.serial if st.serial is not None else ("stdio" if st.nographic else "none")
    run = ["--kernel", st.kernel, "--memory", str(st.memory_mib), "--cpus", str(st.cpus)]
    run += ["--backend", st.accel, "--irqchip", st.irqchip, "--serial", serial]
    run += ["--on-reset", "exit" if st.no_reboot else "restart"]
    if st.append:
        run += ["--cmdline", st.append]
    for initrd in st.initrds:
        run += ["--initrd", initrd]
    if st.accel != "emu" and any(item.startswith("+") for item in st.cpu_spec):
        st.cpu_spec = drop_unsupported(st.cpu_spec, st.warnings)
    if st.cpu_spec:
        run.append("--cpu-features=" + ",".join(st.cpu_spec))
    for device in st.devices:
        run += ["--device", device]
    return Translation(run + st.confine, st.warnings)


class _QemuStyle(logging.Formatter):
    """``kvmlite-qemu: warning: message``, as QEMU prints its own."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{PROG}: {record.levelname.lower()}: {record.getMessage()}"


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_QemuStyle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("KVMLITE_QEMU_LOG", "WARNING").upper())


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    _setup_logging()
    try:
        tr = translate(argv)
        if tr.info is None and tr.run_args and not Path(tr.run_args[1]).is_file():
            raise QemuOptionError(f"could not open kernel file '{tr.run_args[1]}': No such file or directory")
    except QemuOptionError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    if tr.info is not None:
        sys.stdout.write(tr.info)
        return ExitStatus.OK
    for warning in tr.warnings:
        log.warning("%s", warning)
    log.info("kvmlite run %s", " ".join(tr.run_args))
    from kvmlite.cli import main as cli

    return cli.main(["run", *tr.run_args], own_process=own_process)


if __name__ == "__main__":
    sys.exit(main())
