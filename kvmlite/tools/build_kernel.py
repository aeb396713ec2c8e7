"""Build kvmlite's microVM guest kernel from Debian's ``linux-source-*`` package.

On a host that emulates every guest ring-0 instruction (docs/platform-notes.md),
a distribution kernel spends minutes initialising what a VM does not have; a
kernel configured for exactly kvmlite's machine boots several times sooner
(Firecracker and cloud-hypervisor ship guest configurations for the same
reason).  ``kvmlite build-kernel``:

1. asks apt for the candidate version of :data:`SOURCE_PACKAGE` and, unless a
   tree for that version is already unpacked, downloads it (``apt-get
   download``: no root needed) and unpacks its ``/usr/src/linux-source-*.tar.xz``;
2. configures the tree: ``make tinyconfig``, the fragment
   (:data:`FRAGMENT`, ``kvmlite/tools/microvm.config``) merged over it with the
   kernel's own ``scripts/kconfig/merge_config.sh``, ``make olddefconfig``, and
   a check that every value the fragment asks for is in the result;
3. builds ``bzImage`` and ``vmlinux`` with one job per CPU (``--jobs``),
   showing progress, with the whole make output in ``build.log`` in the tree;
4. copies both, with the final ``.config``, into the asset cache
   (:func:`kvmlite.tools.assets.cache_dir`) as ``vmlinux-microvm-<version>-<hash>``,
   ``bzImage-microvm-…`` and ``config-microvm-…``, where ``<hash>`` is over the
   fragment's settings: a changed setting names a kernel not built yet, so the next run
   rebuilds (incrementally: the tree stays, under ``linux-build/<version>``).

Tests and users find the result with :func:`find_microvm_kernel`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kvmlite.errors import STATUS_BAD_INPUT, KvmliteError
from kvmlite.tools import assets

log = logging.getLogger(__name__)

SOURCE_PACKAGE = "linux-source-6.1"
FRAGMENT = Path(__file__).with_name("microvm.config")
BUILD_SUBDIR = "linux-build"
KERNEL_PREFIX = "microvm"
SOURCE_TARBALL = re.compile(r"^\.?/?usr/src/linux-source-[0-9.]+\.tar\.xz$")
HASH_LEN = 12
#: The command line the Linux boot test gives the microVM kernel: all a normal KVM host needs.
MICROVM_CMDLINE = "console=ttyS0"
#: Programs the build runs, and the Debian package that has each.
BUILD_TOOLS = {
    "make": "make",
    "gcc": "gcc",
    "ld": "binutils",
    "bc": "bc",
    "bison": "bison",
    "flex": "flex",
    "perl": "perl",
    "tar": "tar",
    "xz": "xz-utils",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
}
#: Headers the build compiles host tools against (objtool needs libelf), and their Debian packages.
BUILD_HEADERS = {"gelf.h": "libelf-dev"}
HEADER_DIRS = (Path("/usr/include"), Path("/usr/local/include"))
#: Lines of make's output that mark one file built ("  CC      kernel/fork.o").
_PROGRESS_LINE = re.compile(r"^\s+(CC|AS|AR|LD|OBJCOPY|GEN|HOSTCC)\s+\S")
PROGRESS_EVERY_S = 30.0
LOG_TAIL_LINES = 15
_CONFIG_SET = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


class BuildKernelError(KvmliteError):
    """The microVM kernel could not be downloaded, configured or built (only this tool raises it)."""


@dataclass(frozen=True)
class MicrovmKernel:
    """A built kernel in the cache: the PVH-bootable ELF, the bzImage and the configuration."""

    vmlinux: Path
    bzimage: Path
    config: Path


# --- the fragment -------------------------------------------------------------------------------------
def parse_config(text: str) -> dict[str, str]:
    """``CONFIG_X=v`` lines and ``# CONFIG_X is not set`` (as ``"n"``); other comments are skipped."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _CONFIG_SET.match(line):
            values[m.group(1)] = m.group(2)
        elif m := _CONFIG_UNSET.match(line):
            values[m.group(1)] = "n"
    return values


def fragment_hash(fragment: str) -> str:
    """The first :data:`HASH_LEN` hex digits of a SHA-256 over the fragment's settings (not its comments)."""
    settings = "".join(f"{name}={value}\n" for name, value in sorted(parse_config(fragment).items()))
    return hashlib.sha256(settings.encode()).hexdigest()[:HASH_LEN]


def unmet_settings(fragment: dict[str, str], config: dict[str, str]) -> list[str]:
    """Settings of the fragment the final ``.config`` does not have ("CONFIG_X=y (got n)")."""
    out = []
    for name, want in fragment.items():
        got = config.get(name, "n")
        if got != want:
            out.append(f"{name}={want} (got {got})")
    return out


def kernel_paths(directory: Path, version: str, digest: str) -> MicrovmKernel:
    stem = f"{KERNEL_PREFIX}-{version}-{digest}"
    return MicrovmKernel(*(directory / f"{kind}-{stem}" for kind in ("vmlinux", "bzImage", "config")))


def find_microvm_kernel(
    directory: Path | None = None, fragment: Path = FRAGMENT
) -> tuple[MicrovmKernel | None, str]:
    """(the kernel built from the current fragment, "") or (None, why not) for a test's skip.

    Any source version will do; the newest file wins.
    """
    directory = directory or assets.cache_dir()
    digest = fragment_hash(fragment.read_text())
    found = sorted(directory.glob(f"vmlinux-{KERNEL_PREFIX}-*-{digest}"), key=lambda p: p.stat().st_mtime)
    for vmlinux in reversed(found):
        version = vmlinux.name[len(f"vmlinux-{KERNEL_PREFIX}-") : -len(digest) - 1]
        kernel = kernel_paths(directory, version, digest)
        if kernel.bzimage.is_file():
            return kernel, ""
    return None, (
        f"no microVM kernel built from the current {fragment.name} in {directory} "
        f"(run `kvmlite build-kernel`, or set {assets.ENV_VAR})"
    )


# --- the build machine ---------------------------------------------------------------------------------
def missing_build_packages() -> list[str]:
    """Debian packages whose programs or headers the build needs and this machine lacks."""
    missing = {pkg for tool, pkg in BUILD_TOOLS.items() if shutil.which(tool) is None}
    for header, pkg in BUILD_HEADERS.items():
        if not any((d / header).is_file() for d in HEADER_DIRS):
            missing.add(pkg)
    return sorted(missing)


def check_build_tools() -> None:
    missing = missing_build_packages()
    if missing:
        raise BuildKernelError(
            f"building the kernel needs the Debian packages {' '.join(missing)}: "
            f"install them (sudo apt-get install {' '.join(missing)}) and retry"
        )


def _run(cmd: list[str], cwd: Path, what: str, timeout: float | None = None) -> str:
    log.debug("running %s in %s", " ".join(cmd), cwd)
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BuildKernelError(f"{what} failed to run: {err}") from err
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise BuildKernelError(f"{what} failed: {lines[-1] if lines else f'status {proc.returncode}'}")
    return proc.stdout


def candidate_version(package: str = SOURCE_PACKAGE) -> str | None:
    """The version apt would download, or None when apt's lists do not name the package."""
    try:
        out = subprocess.run(
            ["apt-cache", "policy", package], capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Candidate:\s*(\S+)", out)
    return m.group(1) if m and m.group(1) != "(none)" else None


def _safe_version(version: str) -> str:
    """A Debian version as a file name part (epochs' ':' would upset make)."""
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def source_tree(build_root: Path, package: str = SOURCE_PACKAGE) -> tuple[Path, str]:
    """The unpacked source of the package's candidate version, downloading it first when needed."""
    version = candidate_version(package)
    if version is None:
        trees = sorted(build_root.glob("*/linux-source-*/Makefile"), key=lambda p: p.stat().st_mtime)
        if trees:  # no apt lists (offline?): build what is already here
            tree = trees[-1].parent
            log.info("apt does not know %s: using the unpacked %s", package, tree)
            return tree, tree.parent.name
        version = ""  # let apt-get download say what is wrong (and run apt-get update as root)
    if version:
        for tree in (build_root / _safe_version(version)).glob("linux-source-*"):
            if (tree / "Makefile").is_file():
                return tree, _safe_version(version)
    build_root.mkdir(parents=True, exist_ok=True)
    download = build_root / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir()
    os.chmod(download, 0o755)  # apt's unprivileged _apt user writes here when run as root
    try:
        log.info("downloading %s (about 140 MB)", package)
        assets._apt_download([package], download)
        deb = assets._deb_for(download, package)
        version = _run(["dpkg-deb", "-f", str(deb), "Version"], download, "dpkg-deb").strip()
        dest = build_root / _safe_version(version)
        tarball = download / "linux-source.tar.xz"
        log.info("unpacking %s %s", package, version)
        assets._extract_member(deb, SOURCE_TARBALL, tarball)
        deb.unlink()
        staging = build_root / f".unpack-{_safe_version(version)}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _run(["tar", "-xJf", str(tarball)], staging, "unpacking the kernel source")
        shutil.rmtree(dest, ignore_errors=True)
        staging.replace(dest)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    trees = [t for t in dest.glob("linux-source-*") if (t / "Makefile").is_file()]
    if not trees:
        raise BuildKernelError(f"{package} {version} unpacked no linux-source-* tree with a Makefile")
    return trees[0], _safe_version(version)


# --- configure and build ----------------------------------------------------------------------------------
def configure(tree: Path, fragment: Path) -> None:
    """tinyconfig, the fragment merged over it, olddefconfig; every fragment value must survive."""
    _run(["make", "tinyconfig"], tree, "make tinyconfig")
    _run(
        ["sh", "scripts/kconfig/merge_config.sh", "-m", ".config", str(fragment)],
        tree,
        "merge_config.sh",
    )
    _run(["make", "olddefconfig"], tree, "make olddefconfig")
    unmet = unmet_settings(parse_config(fragment.read_text()), parse_config((tree / ".config").read_text()))
    if unmet:
        raise BuildKernelError(
            f"the kernel's Kconfig refused {len(unmet)} setting(s) of {fragment.name} "
            f"(a dependency is missing): {', '.join(unmet)}"
        )


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def make_images(tree: Path, jobs: int, progress: bool = True) -> None:
    """``make -jN bzImage vmlinux``, reporting files built and time taken; output in ``build.log``."""
    log_path = tree / "build.log"
    start = last = time.monotonic()
    built = 0
    tty = progress and sys.stderr.isatty()
    cmd = ["make", f"-j{jobs}", "bzImage", "vmlinux"]
    log.info("building bzImage and vmlinux with %d job(s) (make output in %s)", jobs, log_path)
    try:
        with log_path.open("w") as out, subprocess.Popen(
            cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if _PROGRESS_LINE.match(line):
                    built += 1
                now = time.monotonic()
                if progress and (tty or now - last >= PROGRESS_EVERY_S):
                    last = now
                    minutes, seconds = divmod(int(now - start), 60)
                    line = f"building the kernel: {built} files, {minutes}m{seconds:02d}s"
                    if tty:
                        sys.stderr.write(f"\r{line}  ")
                        sys.stderr.flush()
                    else:
                        log.info("%s", line)
            status = proc.wait()
    except OSError as err:
        raise BuildKernelError(f"make failed to run: {err}") from err
    finally:
        if tty:
            sys.stderr.write("\n")
    if status != 0:
        raise BuildKernelError(
            f"make {' '.join(cmd[1:])} failed with status {status}; the end of {log_path}:\n{_tail(log_path)}"
        )
    log.info("built in %.0f s (%d files)", time.monotonic() - start, built)


def build_kernel(
    directory: Path | None = None,
    jobs: int | None = None,
    force: bool = False,
    fragment: Path = FRAGMENT,
    progress: bool = True,
) -> MicrovmKernel:
    """Download, configure, build and cache the microVM kernel; return its cached paths.

    Nothing is done when a kernel built from this fragment is cached (unless ``force``).
    """
    directory = directory or assets.cache_dir()
    if not fragment.is_file():
        raise BuildKernelError(f"the config fragment {fragment} does not exist")
    found, _ = find_microvm_kernel(directory, fragment)
    if found and not force:
        log.info("already built: %s", found.vmlinux)
        return found
    check_build_tools()
    tree, version = source_tree(directory / BUILD_SUBDIR)
    digest = fragment_hash(fragment.read_text())
    log.info("configuring %s with %s (%s)", tree, fragment.name, digest)
    configure(tree, fragment)
    make_images(tree, jobs or os.cpu_count() or 1, progress)
    kernel = kernel_paths(directory, version, digest)
    for src, dest in (
        (tree / "vmlinux", kernel.vmlinux),
        (tree / "arch/x86/boot/bzImage", kernel.bzimage),
        (tree / ".config", kernel.config),
    ):
        if not src.is_file():
            raise BuildKernelError(f"make succeeded but left no {src}")
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(src, tmp)
        tmp.replace(dest)
    return kernel


def main(argv: list[str] | None = None) -> int:
    """``build-kernel [--dir DIR] [--jobs N] [--force]``: print the paths of vmlinux, bzImage, config."""
    parser = argparse.ArgumentParser(prog="kvmlite build-kernel", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, help=f"cache directory (default ${assets.ENV_VAR} or {assets.DEFAULT_CACHE})"
    )
    parser.add_argument("--jobs", "-j", type=int, help="parallel make jobs (default: one per CPU)")
    parser.add_argument("--force", action="store_true", help="configure and make again even when cached")
    parser.add_argument(
        "--fragment", type=Path, default=FRAGMENT, help=f"config fragment over tinyconfig ({FRAGMENT.name})"
    )
    args = parser.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be at least 1, not {args.jobs}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.setLevel(logging.INFO)  # progress, even when the command line set up logging for warnings only
    try:
        kernel = build_kernel(args.dir, args.jobs, args.force, args.fragment)
    except KvmliteError as err:
        sys.stderr.write(f"kvmlite: {err}\n")
        return STATUS_BAD_INPUT
    sys.stdout.write(f"vmlinux {kernel.vmlinux}\nbzImage {kernel.bzimage}\nconfig {kernel.config}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
