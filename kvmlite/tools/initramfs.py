"""Build a busybox initramfs: a cpio "newc" archive (gzip'd by default) the kernel unpacks as its first root.

The archive is what ``gen_init_cpio`` in the kernel tree would make from a
short file list, written here without any outside tool so a test can build
one anywhere:

* ``/bin/busybox`` and a symlink per applet (the binary's own ``--list`` when
  it runs on this machine, else :data:`DEFAULT_APPLETS`);
* the directories an init needs (``/dev``, ``/proc``, ``/sys``, ...) and the
  ``/dev/console`` character device (5, 1), which the kernel opens for init's
  stdin/stdout before any devtmpfs is mounted;
* ``/init``: the caller's, or :data:`DEFAULT_INIT`, which mounts proc, sysfs
  and devtmpfs, loads the archive's kernel modules, mounts the disk named by
  ``root=`` on the kernel command line, prints :data:`READY_MARKER` (what a
  boot test waits for) and runs a shell on the console, powering off when it
  exits so the guest stops instead of panicking on init's death; where the
  kernel has an evdev device it starts busybox ``acpid`` before the shell, whose handler
  :data:`POWER_BUTTON_HANDLER` (in the archive with the default init) powers
  off at an ACPI power-button press, as a distribution's acpid or
  systemd-logind does;
* kernel modules (``--modules virtio_pci,virtio_blk``) with the modules they
  need, resolved through the kernel's ``modules.dep`` and stored
  decompressed (:mod:`kvmlite.tools.modules`) as ``/lib/modules/NAME.ko``,
  their load order in :data:`MODULE_LIST`;
* extra files or directory trees (``adds``).

``root=``: with an initramfs the kernel leaves the root file system to init,
so :data:`DEFAULT_INIT` reads ``root=``, ``rootfstype=`` and ``ro``/``rw`` from
``/proc/cmdline`` itself: it waits for the device, mounts it on ``/mnt`` and,
when that file system has an executable ``/sbin/init``, switches to it as the
root (``switch_root``); otherwise the shell runs with the disk on ``/mnt``.

The output is deterministic: entries sorted by path, inode numbers given in
that order, every mtime :data:`FIXED_MTIME`, uid/gid 0, gzip header mtime 0.
The same inputs give the same bytes, so an initramfs can be cached or
compared by hash.

newc format (``Documentation/driver-api/early-userspace/buffer-format.rst``):
each entry is a 110-byte ASCII header ("070701" then 13 fields of 8 hex
digits), the NUL-terminated name padded so header+name is a multiple of 4,
then the data padded to 4; the archive ends with an entry named
``TRAILER!!!``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kvmlite.errors import STATUS_BAD_INPUT, KvmliteError
from kvmlite.files import read_bounded
from kvmlite.tools import assets, modules

log = logging.getLogger(__name__)

NEWC_MAGIC = "070701"
NEWC_HEADER_SIZE = 110
NEWC_ALIGN = 4
TRAILER = "TRAILER!!!"
FIRST_INO = 721  # where gen_init_cpio starts; any value works
FIXED_MTIME = 0
MAX_FIELD = 0xFFFF_FFFF
GZIP_LEVEL = 9
#: The largest file taken into an archive (busybox, init, --add): far above what an initramfs
#: for a test VM holds, and a bound on what a mistaken path (/dev/zero) can cost.
MAX_MEMBER = 256 << 20

CONSOLE_MAJOR, CONSOLE_MINOR = 5, 1
DIR_MODE = 0o755
FILE_MODE = 0o644
EXEC_MODE = 0o755
CONSOLE_MODE = 0o600
BUSYBOX_PATH = "bin/busybox"
APPLET_DIR = "bin"
BASE_DIRS = ("bin", "dev", "etc", "mnt", "proc", "root", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin")
BUSYBOX_LIST_TIMEOUT = 10  # seconds
APPLET_NAME = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")

#: Applets the default init and an interactive shell need, used when ``busybox --list`` cannot run here.
DEFAULT_APPLETS = (
    "ash", "cat", "cttyhack", "dmesg", "echo", "grep", "ls", "mkdir", "mount", "poweroff",
    "ps", "reboot", "rm", "setsid", "sh", "sleep", "sync", "umount", "uname",
)  # fmt: skip

#: Printed by the default /init once the filesystems are mounted: what a boot test waits for.
READY_MARKER = "kvmlite-initramfs: ready"
SHELL_PROMPT = "kvmlite# "
#: The modules /init loads, one file name (in /lib/modules) per line, dependencies first.
MODULE_LIST = "etc/kvmlite-modules"
MODULE_DIR = "lib/modules"
#: How long /init waits for the root= device to appear (seconds; probing is slow where ring 0 is emulated).
ROOT_WAIT_S = 120
#: busybox acpid's directory of event handlers, and the one it runs for a power-button press
#: (a KEY_POWER key event becomes the action ``PWRF/00000080``, run from that directory).
ACPI_EVENT_DIR = "etc/acpi"
POWER_BUTTON_HANDLER = f"/{ACPI_EVENT_DIR}/PWRF/00000080"
#: Printed by the power-button handler before it powers the guest off.
POWER_BUTTON_MARKER = "kvmlite-initramfs: power button pressed, powering off"
POWER_BUTTON_SCRIPT = f"""#!/bin/sh
# Run by busybox acpid (started by /init) when the ACPI power button is pressed.
echo "{POWER_BUTTON_MARKER}"
/bin/busybox sync
/bin/busybox poweroff -f
"""

DEFAULT_INIT = f"""#!/bin/sh
# /init written by kvmlite: mount the kernel's filesystems, say so, then run a shell
# on the console. Busybox is called by name so a missing applet link cannot stop it.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev 2>/dev/null
if [ -f /{MODULE_LIST} ]; then
    for m in $($bb cat /{MODULE_LIST}); do
        $bb insmod /{MODULE_DIR}/$m || echo "kvmlite-initramfs: cannot load $m"
    done
fi
root=; fstype=; mode=rw
for arg in $($bb cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${{arg#root=}}" ;;
        rootfstype=*) fstype="-t ${{arg#rootfstype=}}" ;;
        ro|rw) mode=$arg ;;
    esac
done
if [ -n "$root" ]; then
    n=0
    while [ ! -b "$root" ] && [ $n -lt {ROOT_WAIT_S} ]; do $bb sleep 1; n=$((n + 1)); done
    if $bb mount $fstype -o $mode "$root" /mnt; then
        echo "kvmlite-initramfs: $root mounted on /mnt ($mode)"
        if [ -x /mnt/sbin/init ]; then
            echo "kvmlite-initramfs: switching to $root as the root"
            $bb mount --move /dev /mnt/dev 2>/dev/null
            $bb umount /proc /sys
            exec $bb switch_root /mnt /sbin/init
        fi
    else
        echo "kvmlite-initramfs: cannot mount $root"
    fi
fi
# The ACPI power button (QEMU's and kvmlite's system_powerdown) reaches user space as a key on an
# evdev device; busybox acpid runs {POWER_BUTTON_HANDLER} for it.
if [ -e /dev/input/event0 ]; then
    $bb acpid -c /{ACPI_EVENT_DIR} -l /dev/console -p /tmp/acpid.pid
fi
echo "{READY_MARKER} (Linux $($bb uname -r))"
export PS1='{SHELL_PROMPT}'
if $bb --list | $bb grep -qx cttyhack; then
    $bb setsid $bb cttyhack $bb sh   # a controlling tty, so ^C works
else
    $bb sh
fi
echo "kvmlite-initramfs: shell exited, powering off"
$bb poweroff -f
"""


class InitramfsError(KvmliteError):
    """An initramfs could not be built from the given files (kept here: only this tool raises it)."""


@dataclass(frozen=True)
class Entry:
    """One archive member; ``data`` is a file's contents or a symlink's target."""

    mode: int  # full st_mode: type bits and permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % NEWC_ALIGN)


def newc_entry(name: str, entry: Entry, ino: int) -> bytes:
    """One newc record: header, padded name, padded data."""
    if len(entry.data) > MAX_FIELD:
        raise InitramfsError(
            f"{name} is {len(entry.data)} bytes: newc cpio cannot hold files of 4 GiB or more"
        )
    raw_name = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, FIXED_MTIME, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(raw_name), 0,
    )  # fmt: skip
    header = (NEWC_MAGIC + "".join(f"{v:08X}" for v in fields)).encode()
    assert len(header) == NEWC_HEADER_SIZE
    return header + raw_name + _pad(NEWC_HEADER_SIZE + len(raw_name)) + entry.data + _pad(len(entry.data))


def write_newc(entries: dict[str, Entry]) -> bytes:
    """An uncompressed newc archive of ``entries`` (paths without a leading '/'), sorted, with trailer."""
    out = bytearray()
    for i, name in enumerate(sorted(entries)):
        out += newc_entry(name, entries[name], FIRST_INO + i)
    out += newc_entry(TRAILER, Entry(0), 0)
    return bytes(out)


def busybox_applets(busybox: Path) -> list[str]:
    """The applets the binary says it has (``busybox --list``), or :data:`DEFAULT_APPLETS`."""
    try:
        proc = subprocess.run(
            [str(busybox), "--list"],
            capture_output=True,
            text=True,
            timeout=BUSYBOX_LIST_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired, ValueError) as err:
        log.info("cannot run %s --list (%s): linking the default applets", busybox, err)
        return list(DEFAULT_APPLETS)
    names = [n for n in proc.stdout.split() if APPLET_NAME.match(n) and n != "busybox"]
    if proc.returncode != 0 or not names:
        log.info("%s --list gave no applets: linking the default applets", busybox)
        return list(DEFAULT_APPLETS)
    return sorted(set(names))


def archive_path(dst: str) -> str:
    """``dst`` as an archive member name: relative, normalised, never escaping the root."""
    parts = [p for p in PurePosixPath(dst).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise InitramfsError(f"bad destination path {dst!r}: give an absolute path inside the initramfs")
    return "/".join(parts)


def _add_parents(entries: dict[str, Entry], name: str) -> None:
    parent = PurePosixPath(name).parent
    while str(parent) != ".":
        existing = entries.get(str(parent))
        if existing is None:
            entries[str(parent)] = Entry(stat.S_IFDIR | DIR_MODE)
        elif not stat.S_ISDIR(existing.mode):
            raise InitramfsError(f"cannot put {name} under {parent}: {parent} is not a directory")
        parent = parent.parent


def _put(entries: dict[str, Entry], name: str, entry: Entry) -> None:
    if name in entries and not stat.S_ISDIR(entries[name].mode):
        log.debug("%s replaces an earlier entry of the same path", name)
    _add_parents(entries, name)
    entries[name] = entry


def _add_host_path(entries: dict[str, Entry], src: Path, name: str) -> None:
    """Add a file, symlink or directory tree from the host under archive path ``name``."""
    try:
        st = src.lstat()
        if stat.S_ISLNK(st.st_mode):
            _put(entries, name, Entry(stat.S_IFLNK | 0o777, os.readlink(src).encode()))
        elif stat.S_ISDIR(st.st_mode):
            _put(entries, name, Entry(stat.S_IFDIR | stat.S_IMODE(st.st_mode)))
            for child in sorted(src.iterdir()):
                _add_host_path(entries, child, f"{name}/{child.name}")
        elif stat.S_ISREG(st.st_mode):
            data = read_bounded(src, "file", MAX_MEMBER, InitramfsError)
            _put(entries, name, Entry(stat.S_IFREG | stat.S_IMODE(st.st_mode), data))
        else:
            raise InitramfsError(f"{src} is neither a file, a directory nor a symlink")
    except OSError as err:
        raise InitramfsError(f"cannot read {src}: {err.strerror}") from err


def build_entries(
    busybox: Path,
    init: Path | None = None,
    adds: list[tuple[Path, str]] | None = None,
    applets: list[str] | None = None,
) -> dict[str, Entry]:
    """The archive's members by path, before serialisation (for callers that add their own)."""
    entries: dict[str, Entry] = {}
    for d in BASE_DIRS:
        _put(entries, d, Entry(stat.S_IFDIR | DIR_MODE))
    _put(entries, "dev/console", Entry(stat.S_IFCHR | CONSOLE_MODE, rdev=(CONSOLE_MAJOR, CONSOLE_MINOR)))
    busybox_bytes = read_bounded(busybox, "busybox", MAX_MEMBER, InitramfsError)
    if busybox_bytes[:4] != b"\x7fELF":
        raise InitramfsError(f"{busybox} is not an ELF executable: give a static busybox binary")
    _put(entries, BUSYBOX_PATH, Entry(stat.S_IFREG | EXEC_MODE, busybox_bytes))
    for applet in applets if applets is not None else busybox_applets(busybox):
        if not APPLET_NAME.match(applet):
            raise InitramfsError(f"bad applet name {applet!r}")
        _put(entries, f"{APPLET_DIR}/{applet}", Entry(stat.S_IFLNK | 0o777, b"busybox"))
    if init is not None:
        init_bytes = read_bounded(init, "init", MAX_MEMBER, InitramfsError)
    else:
        init_bytes = DEFAULT_INIT.encode()
        _put(entries, POWER_BUTTON_HANDLER[1:], Entry(stat.S_IFREG | EXEC_MODE, POWER_BUTTON_SCRIPT.encode()))
    _put(entries, "init", Entry(stat.S_IFREG | EXEC_MODE, init_bytes))
    for src, dst in adds or []:
        _add_host_path(entries, src, archive_path(dst))
    return entries


def add_modules(entries: dict[str, Entry], tree: Path, names: list[str]) -> list[str]:
    """Put ``names`` and the modules they need from ``tree`` into ``entries``, with the load list;
    returns the file names in load order."""
    files = []
    for path in modules.resolve(tree, names):
        name = f"{modules.module_name(path)}.ko"
        data = modules.read_module(tree, path)
        _put(entries, f"{MODULE_DIR}/{name}", Entry(stat.S_IFREG | FILE_MODE, data))
        files.append(name)
    _put(entries, MODULE_LIST, Entry(stat.S_IFREG | FILE_MODE, "".join(f"{f}\n" for f in files).encode()))
    return files


def build_initramfs(
    busybox: Path,
    init: Path | None = None,
    adds: list[tuple[Path, str]] | None = None,
    applets: list[str] | None = None,
    compress: bool = True,
    module_names: list[str] | None = None,
    modules_dir: Path | None = None,
) -> bytes:
    """A newc initramfs with busybox, its applet links, /dev/console, /init, ``adds`` and kernel modules.

    gzip'd unless ``compress`` is False: the kernel takes a plain cpio as well,
    and skipping the inflate saves minutes where guest ring 0 is emulated.
    ``module_names`` come from ``modules_dir`` (default: the tree ``kvmlite
    fetch-assets --modules`` cached).
    """
    entries = build_entries(busybox, init, adds, applets)
    if module_names:
        if modules_dir is None:
            modules_dir, reason = assets.find_modules()
            if modules_dir is None:
                raise InitramfsError(f"--modules: {reason}, or give --modules-dir")
        add_modules(entries, modules_dir, module_names)
    archive = write_newc(entries)
    return gzip.compress(archive, compresslevel=GZIP_LEVEL, mtime=0) if compress else archive


def _parse_add(spec: str) -> tuple[Path, str]:
    src, sep, dst = spec.rpartition(":")
    if not sep or not src or not dst:
        raise InitramfsError(f"--add {spec!r}: expected SRC:DST, e.g. ./hello:/bin/hello")
    return Path(src), dst


def main(argv: list[str] | None = None) -> int:
    """``kvmlite initramfs --busybox PATH [--init FILE] [--add SRC:DST ...] -o FILE``."""
    parser = argparse.ArgumentParser(prog="kvmlite initramfs", description=__doc__.splitlines()[0])
    parser.add_argument("--busybox", type=Path, required=True, help="a static busybox binary")
    parser.add_argument("--init", type=Path, help="use this file as /init instead of kvmlite's script")
    parser.add_argument(
        "--add", action="append", default=[], metavar="SRC:DST", help="add a file or directory tree"
    )
    parser.add_argument(
        "--modules",
        default="",
        metavar="NAME,...",
        help="kernel modules for /init to load, with those they need (e.g. virtio_pci,virtio_blk)",
    )
    parser.add_argument(
        "--modules-dir",
        type=Path,
        metavar="DIR",
        help="the kernel's modules tree with modules.dep (default: from kvmlite fetch-assets --modules)",
    )
    parser.add_argument(
        "--no-compress",
        action="store_true",
        help="write a plain cpio (faster to unpack where guest ring-0 code is slow)",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the .cpio.gz")
    args = parser.parse_args(argv)
    try:
        adds = [_parse_add(a) for a in args.add]
        names = [n for n in args.modules.split(",") if n.strip()]
        data = build_initramfs(
            args.busybox,
            args.init,
            adds,
            compress=not args.no_compress,
            module_names=names,
            modules_dir=args.modules_dir,
        )
        args.output.write_bytes(data)
    except KvmliteError as err:
        sys.stderr.write(f"kvmlite: {err}\n")
        return STATUS_BAD_INPUT
    except OSError as err:
        sys.stderr.write(f"kvmlite: cannot write {args.output}: {err.strerror}\n")
        return STATUS_BAD_INPUT
    log.info("wrote %s (%d bytes)", args.output, len(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
