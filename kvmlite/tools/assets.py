"""Fetch a real Linux kernel and a static busybox from Debian's packages, for tests and demos.

kvmlite ships no kernel binary; a real one is the best test input for the
bzImage and PVH loaders and for ``extract-vmlinux``.  Debian's cloud kernel
(small, virtio and serial built in) and ``busybox-static`` are fetched with
the ordinary package client, without root:

* ``apt-get download linux-image-cloud-amd64`` fetches only the metapackage;
  its ``Depends`` names the real package (``linux-image-<abi>-cloud-amd64``),
  which is downloaded in turn;
* ``dpkg-deb --fsys-tarfile`` streams each package's files, and only
  ``/boot/vmlinuz-*`` and ``/bin/busybox`` are kept;
* the results land in the cache directory (``$KVMLITE_ASSETS``, default
  ``~/.cache/kvmlite/assets``) as ``vmlinuz`` and ``busybox``;
* with ``--modules``, the kernel's modules too (about 90 MB unpacked: Debian's
  cloud kernel has virtio-pci, virtio-blk and virtio-net as modules), as
  ``modules/<release>/`` taken from the same package as ``vmlinuz`` (which is
  replaced, so the two always match), with a ``modules.dep`` made from the
  modules themselves (:func:`kvmlite.tools.modules.write_modules_dep`: the
  package leaves that file to depmod at installation).  ``kvmlite initramfs
  --modules`` reads them from there;
* with ``--symbols``, the kernel's ``System.map`` comes too, for
  ``kvmlite run --profile``.  Debian's image package ships a placeholder; the
  real map is in ``linux-image-<abi>-cloud-amd64-dbg`` (about 280 MB to
  download, of which only the map is kept).
* with ``--debug-vmlinux``, the same -dbg package's ``vmlinux`` (the kernel
  as an ELF with its debug information, about 600 MB) is kept as
  ``vmlinux-dbg``, for gdb on a Debian guest (``break do_sys_openat2``,
  ``bt``: tests/gdb/test_gdb_linux.py) and for ``gdb vmlinux-dbg CORE`` on a
  ``dump-guest-memory`` core.  It always matches the cached ``vmlinuz``: both
  are taken in the same fetch, from the same kernel package version.

Tests call :func:`find_assets` and skip with its reason when nothing is cached.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from kvmlite.errors import STATUS_BAD_INPUT, KvmliteError
from kvmlite.tools import modules
from kvmlite.vmm.host_quirks import LINUX_BOOT_SPEED, LINUX_CLEARCPUID

log = logging.getLogger(__name__)

ENV_VAR = "KVMLITE_ASSETS"
DEFAULT_CACHE = Path("~/.cache/kvmlite/assets")
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
VMLINUZ_NAME = "vmlinuz"
BUSYBOX_NAME = "busybox"
SYSTEM_MAP_NAME = "System.map"
SYSTEM_MAP_MEMBER = re.compile(r"^\.?/?usr/lib/debug/boot/System\.map-.+")
DEBUG_VMLINUX_NAME = "vmlinux-dbg"
DEBUG_VMLINUX_MEMBER = re.compile(r"^\.?/?usr/lib/debug/boot/vmlinux-.+")
KERNEL_MEMBER = re.compile(r"^\.?/?boot/vmlinuz-.+")
BUSYBOX_MEMBER = re.compile(r"^\.?/?bin/busybox$")
MODULES_MEMBER = re.compile(r"^\.?/?lib/modules/(?P<release>[^/]+)/(?P<path>.+)$")
MODULES_DIR = "modules"
DEPENDS_IMAGE = re.compile(r"\b(linux-image-[0-9][^\s,(|]*-cloud-amd64)\b")
#: The kernel command line the Linux boot test and benchmark use.  Only ``console=ttyS0`` is needed on a
#: normal KVM host; the rest makes the boot feasible where the host emulates every guest ring-0
#: instruction (docs/platform-notes.md) and is harmless elsewhere:
#:
#: * ``clearcpuid=``: that host raises #UD for VEX (AVX) instructions at ring 0 and cannot emulate SSSE3+
#:   arithmetic there, and the guest sees the host's CPUID at ring 0 whatever KVM_SET_CPUID2 says, so the
#:   kernel itself must hide those features (and SMAP, XSAVES, which it cannot handle either); kvmlite adds
#:   this one by itself where it finds that host (kvmlite.vmm.host_quirks); user space keeps its AVX
#:   registers across the kernel's context switches there (kvmlite.vmm.xstate_quirk);
#: * ``cryptomgr.notests`` and ``initcall_blacklist=`` (ftrace's boot-time scan of its ~40,000 call sites,
#:   about 5 minutes there, and ``trace_eval_init``'s rewrite of every trace event's format under
#:   ``event_mutex``, which init waits for): the parameters kvmlite adds by itself where ring 0 is
#:   emulated (``LINUX_BOOT_SPEED``, ``--host-workarounds`` item ``boot-speed``; why each, there);
#: * ``init_on_alloc=0``: Debian zeroes every allocated page by default;
#: * ``quiet nowatchdog tsc=reliable no_timer_check audit=0 apparmor=0 mitigations=off``: less console
#:   output, no lockup detectors or clock watchdogs misled by the slow ring 0, fewer subsystems.
LINUX_TEST_CMDLINE = (
    "console=ttyS0 quiet nowatchdog tsc=reliable no_timer_check mitigations=off audit=0 apparmor=0 "
    "init_on_alloc=0 " + " ".join([*LINUX_BOOT_SPEED, LINUX_CLEARCPUID])
)
APT_TIMEOUT = 600  # seconds: the kernel package is ~30 MB


class AssetsError(KvmliteError):
    """The kernel or busybox could not be fetched or unpacked (kept here: only this tool raises it)."""


def cache_dir() -> Path:
    """Where assets live: ``$KVMLITE_ASSETS`` or ``~/.cache/kvmlite/assets``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_CACHE).expanduser()


def find_assets(directory: Path | None = None) -> tuple[tuple[Path, Path] | None, str]:
    """((vmlinuz, busybox), "") when both are cached, else (None, the reason) for a test's skip."""
    directory = directory or cache_dir()
    vmlinuz, busybox = directory / VMLINUZ_NAME, directory / BUSYBOX_NAME
    missing = [p.name for p in (vmlinuz, busybox) if not p.is_file()]
    if missing:
        return None, (
            f"{' and '.join(missing)} not found in {directory} (run `kvmlite fetch-assets`, or set {ENV_VAR})"
        )
    return (vmlinuz, busybox), ""


def find_modules(directory: Path | None = None) -> tuple[Path | None, str]:
    """(the cached modules tree ``modules/<release>``, "") or (None, the reason)."""
    directory = directory or cache_dir()
    trees = sorted(p for p in (directory / MODULES_DIR).glob("*") if (p / "modules.dep").is_file())
    if len(trees) != 1:
        what = "no kernel modules" if not trees else "more than one modules tree"
        return None, f"{what} in {directory / MODULES_DIR} (run `kvmlite fetch-assets --modules --force`)"
    return trees[0], ""


def find_debug_vmlinux(directory: Path | None = None) -> tuple[Path | None, str]:
    """(the cached Debian ``vmlinux`` with debug information, "") or (None, the reason)."""
    path = (directory or cache_dir()) / DEBUG_VMLINUX_NAME
    if not path.is_file():
        return None, f"{path} not found (run `kvmlite fetch-assets --debug-vmlinux`, 280 MB to download)"
    return path, ""


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    log.debug("running %s in %s", " ".join(cmd), cwd)
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise AssetsError(f"{cmd[0]} failed to run: {err}") from err


def _apt_download(packages: list[str], workdir: Path) -> None:
    """``apt-get download`` the packages; when apt's lists are missing, say how to get them."""
    proc = _run(["apt-get", "download", *packages], workdir)
    if proc.returncode == 0:
        return
    err = proc.stderr.strip().splitlines()
    if any("Unable to locate package" in line or "has no installation candidate" in line for line in err):
        if os.geteuid() == 0:
            log.info("apt lists lack %s: running apt-get update", packages)
            update = _run(["apt-get", "update"], workdir)
            if update.returncode == 0 and _run(["apt-get", "download", *packages], workdir).returncode == 0:
                return
        raise AssetsError(
            f"apt-get cannot find {' '.join(packages)}: run `sudo apt-get update` once, then retry"
        )
    raise AssetsError(f"apt-get download {' '.join(packages)} failed: {err[-1] if err else proc.returncode}")


def _deb_for(workdir: Path, package: str) -> Path:
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if not debs:
        raise AssetsError(f"apt-get reported success but no {package}_*.deb appeared in {workdir}")
    return debs[-1]


def _extract(deb: Path, where: Callable[[str], Path | None], stop_after: int = 0) -> list[str]:
    """Stream the package's file tree through dpkg-deb and copy each regular file for which
    ``where(name)`` gives a destination there; the names copied (stopping after ``stop_after`` if set)."""
    copied: list[str] = []
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    dest = where(member.name) if member.isfile() else None
                    if dest is None:
                        continue
                    src = tar.extractfile(member)
                    assert src is not None
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(dest.name + ".part")
                    with tmp.open("wb") as out:
                        shutil.copyfileobj(src, out)
                    tmp.chmod(0o755 if member.mode & 0o111 else 0o644)
                    tmp.replace(dest)
                    copied.append(member.name)
                    if len(copied) == stop_after:
                        proc.kill()
                        break
        except tarfile.TarError as err:
            raise AssetsError(f"cannot read the files of {deb.name}: {err}") from err
    return copied


def _extract_member(deb: Path, pattern: re.Pattern[str], dest: Path) -> str:
    """Copy the first member of the package matching ``pattern`` to ``dest``; its name."""
    copied = _extract(deb, lambda name: dest if pattern.match(name) else None, stop_after=1)
    if not copied:
        raise AssetsError(f"{deb.name} holds no file matching {pattern.pattern}")
    dest.chmod(0o755)
    return copied[0]


def _extract_debug_files(deb: Path, wanted: dict[str, re.Pattern[str]], directory: Path) -> None:
    """Copy each member matching one of ``wanted``'s patterns to ``directory / name``, in one pass."""

    def where(member: str) -> Path | None:
        return next((directory / name for name, pattern in wanted.items() if pattern.match(member)), None)

    copied = _extract(deb, where, stop_after=len(wanted))
    for name, pattern in wanted.items():
        if not any(pattern.match(member) for member in copied):
            raise AssetsError(f"{deb.name} holds no file matching {pattern.pattern}")
        (directory / name).chmod(0o644)


def _extract_kernel_and_modules(deb: Path, directory: Path, staging: Path) -> str:
    """vmlinuz and ``modules/<release>/`` from one image package, in one pass; the vmlinuz member name."""
    vmlinuz = staging / VMLINUZ_NAME

    def where(name: str) -> Path | None:
        if KERNEL_MEMBER.match(name):
            return vmlinuz
        match = MODULES_MEMBER.match(name)
        return staging / MODULES_DIR / match["release"] / match["path"] if match else None

    copied = _extract(deb, where)
    kernel_member = next((name for name in copied if KERNEL_MEMBER.match(name)), None)
    trees = list((staging / MODULES_DIR).glob("*"))
    if kernel_member is None or len(trees) != 1:
        raise AssetsError(f"{deb.name} does not hold one vmlinuz and one lib/modules/<release> tree")
    modules.write_modules_dep(trees[0])
    shutil.rmtree(directory / MODULES_DIR, ignore_errors=True)
    (staging / MODULES_DIR).replace(directory / MODULES_DIR)
    vmlinuz.replace(directory / VMLINUZ_NAME)
    return kernel_member


def fetch_assets(
    directory: Path | None = None,
    force: bool = False,
    symbols: bool = False,
    with_modules: bool = False,
    debug_vmlinux: bool = False,
) -> tuple[Path, Path]:
    """Download and unpack the Debian cloud kernel and static busybox; return (vmlinuz, busybox).

    ``symbols``: also fetch the kernel's System.map (from its -dbg package).
    ``with_modules``: also keep the kernel's modules (``modules/<release>/``, see :func:`find_modules`).
    ``debug_vmlinux``: also keep the -dbg package's vmlinux (see :func:`find_debug_vmlinux`).
    """
    directory = directory or cache_dir()
    found, _ = find_assets(directory)
    have_symbols = not symbols or (directory / SYSTEM_MAP_NAME).is_file()
    have_modules = not with_modules or find_modules(directory)[0] is not None
    have_vmlinux = not debug_vmlinux or find_debug_vmlinux(directory)[0] is not None
    if found and not force and have_symbols and have_modules and have_vmlinux:
        return found
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise AssetsError(f"fetching assets needs {tool} (a Debian or Ubuntu system): it is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvmlite-assets-", dir=directory) as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # let apt's unprivileged _apt user write here when run as root
        _apt_download([KERNEL_META_PACKAGE, BUSYBOX_PACKAGE], work)
        meta = _deb_for(work, KERNEL_META_PACKAGE)
        depends = _run(["dpkg-deb", "-f", str(meta), "Depends"], work).stdout
        match = DEPENDS_IMAGE.search(depends)
        if not match:
            raise AssetsError(
                f"{meta.name} depends on no linux-image-*-cloud-amd64 package ({depends.strip()!r})"
            )
        image_package = match.group(1)
        log.info("%s resolves to %s", KERNEL_META_PACKAGE, image_package)
        _apt_download([image_package], work)
        vmlinuz, busybox = directory / VMLINUZ_NAME, directory / BUSYBOX_NAME
        if with_modules:
            kernel_member = _extract_kernel_and_modules(_deb_for(work, image_package), directory, work)
        else:
            kernel_member = _extract_member(_deb_for(work, image_package), KERNEL_MEMBER, vmlinuz)
        _extract_member(_deb_for(work, BUSYBOX_PACKAGE), BUSYBOX_MEMBER, busybox)
        debug_files = {SYSTEM_MAP_NAME: SYSTEM_MAP_MEMBER} if symbols else {}
        if debug_vmlinux:
            debug_files[DEBUG_VMLINUX_NAME] = DEBUG_VMLINUX_MEMBER
        if debug_files:
            dbg_package = f"{image_package}-dbg"
            _apt_download([dbg_package], work)
            _extract_debug_files(_deb_for(work, dbg_package), debug_files, directory)
        (directory / "SOURCE").write_text(f"{image_package} {kernel_member}\n{BUSYBOX_PACKAGE}\n")
    return vmlinuz, busybox


def main(argv: list[str] | None = None) -> int:
    """``fetch-linux-assets [--dir DIR] [--force]``: print the paths of vmlinuz and busybox."""
    parser = argparse.ArgumentParser(prog="kvmlite fetch-assets", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help=f"cache directory (default ${ENV_VAR} or {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="download again even when cached")
    parser.add_argument(
        "--symbols",
        action="store_true",
        help="also keep the kernel's System.map, for run --profile (downloads the ~280 MB -dbg package)",
    )
    parser.add_argument(
        "--modules",
        action="store_true",
        help="also keep the kernel's modules (~90 MB), for kvmlite initramfs --modules",
    )
    parser.add_argument(
        "--debug-vmlinux",
        action="store_true",
        help="also keep the kernel's vmlinux with debug information (from the same -dbg package), for gdb",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        vmlinuz, busybox = fetch_assets(
            args.dir, args.force, args.symbols, args.modules, args.debug_vmlinux
        )
    except KvmliteError as err:
        sys.stderr.write(f"kvmlite: {err}\n")
        return STATUS_BAD_INPUT
    sys.stdout.write(f"vmlinuz {vmlinuz}\nbusybox {busybox}\n")
    system_map = vmlinuz.parent / SYSTEM_MAP_NAME
    if system_map.is_file():
        sys.stdout.write(f"symbols {system_map}\n")
    debug_vmlinux, _ = find_debug_vmlinux(vmlinuz.parent)
    if debug_vmlinux is not None:
        sys.stdout.write(f"debug-vmlinux {debug_vmlinux}\n")
    tree, _ = find_modules(vmlinuz.parent)
    if tree is not None:
        sys.stdout.write(f"modules {tree}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
