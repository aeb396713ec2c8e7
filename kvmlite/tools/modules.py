"""Kernel modules for an initramfs: names resolved through ``modules.dep``, files read decompressed.

A kernel's modules live in a tree (``/lib/modules/<release>/`` on a
distribution, ``modules/<release>/`` in kvmlite's asset cache, see
:mod:`kvmlite.tools.assets`) whose ``modules.dep`` maps each module's path
to the paths of the modules it needs, one line each::

    kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko

:func:`resolve` turns module names (``virtio_blk``, ``virtio-pci``: ``-`` and
``_`` are the same, as for ``modprobe``) into paths in load order,
dependencies first; names in ``modules.builtin`` are skipped (they are in
the kernel image already).  :func:`read_module` gives a module's bytes
decompressed (``.ko.xz``, ``.ko.gz``, ``.ko.zst``), because busybox's
``insmod`` loads only plain ELF objects.

A distribution package ships the tree without ``modules.dep`` (``depmod``
makes it when the package is installed); :func:`write_modules_dep` makes it
from each module's ``.modinfo`` section (``depends=a,b``), without depmod.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import shutil
import subprocess
from pathlib import Path

from kvmlite.errors import ElfError, KvmliteError
from kvmlite.loaders.elf import elf_section

log = logging.getLogger(__name__)

MODULES_DEP = "modules.dep"
MODULES_BUILTIN = "modules.builtin"
SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")
ZSTD_TIMEOUT = 60  # seconds, for one module


class ModulesError(KvmliteError):
    """A module could not be found, resolved or read."""


def module_name(path: str) -> str:
    """``kernel/drivers/virtio/virtio-pci.ko.xz`` -> ``virtio_pci``: the name modprobe and lsmod use."""
    base = path.rsplit("/", 1)[-1]
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_modules_dep(tree: Path) -> dict[str, list[str]]:
    """path -> the paths it depends on, from ``tree/modules.dep``."""
    dep_file = tree / MODULES_DEP
    try:
        text = dep_file.read_text()
    except OSError as err:
        raise ModulesError(
            f"cannot read {dep_file}: {err.strerror} (give the kernel's modules directory, "
            "e.g. from `kvmlite fetch-assets --modules`)"
        ) from err
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        path, sep, rest = line.partition(":")
        if sep and path.strip():
            deps[path.strip()] = rest.split()
    return deps


def builtin_names(tree: Path) -> set[str]:
    """Names of the modules compiled into the kernel (``modules.builtin``; empty when absent)."""
    try:
        return {module_name(line) for line in (tree / MODULES_BUILTIN).read_text().split()}
    except OSError:
        return set()


def resolve(tree: Path, names: list[str]) -> list[str]:
    """The module paths to load for ``names``, each after the modules it needs, each once."""
    deps = read_modules_dep(tree)
    by_name = {module_name(path): path for path in deps}
    builtin = builtin_names(tree)
    order: list[str] = []

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in chain:
            raise ModulesError(f"{MODULES_DEP} has a dependency loop: {' -> '.join((*chain, path))}")
        for dep in deps.get(path, []):
            visit(dep, (*chain, path))
        order.append(path)

    for raw in names:
        name = module_name(raw.strip())
        if not name:
            continue
        if name in by_name:
            visit(by_name[name], ())
        elif name in builtin:
            log.info("module %s is built into the kernel: nothing to add", name)
        else:
            raise ModulesError(f"no module {raw.strip()!r} in {tree / MODULES_DEP} (nor built in)")
    return order


def read_module(tree: Path, path: str) -> bytes:
    """The module's ELF object, decompressed when the file is ``.xz``, ``.gz`` or ``.zst``."""
    source = tree / path
    try:
        data = source.read_bytes()
    except OSError as err:
        raise ModulesError(f"cannot read module {source}: {err.strerror}") from err
    try:
        if path.endswith(".xz"):
            data = lzma.decompress(data)
        elif path.endswith(".gz"):
            data = gzip.decompress(data)
        elif path.endswith(".zst"):
            data = _unzstd(source)
    except (lzma.LZMAError, OSError, EOFError) as err:
        raise ModulesError(f"cannot decompress module {source}: {err}") from err
    if data[:4] != b"\x7fELF":
        raise ModulesError(f"{source} is not a kernel module (no ELF header after decompression)")
    return data


def _unzstd(source: Path) -> bytes:
    zstd = shutil.which("zstd")
    if zstd is None:
        raise ModulesError(f"{source} is zstd-compressed: install the zstd package to read it")
    proc = subprocess.run([zstd, "-dc", str(source)], capture_output=True, timeout=ZSTD_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise ModulesError(f"zstd cannot decompress {source}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def modinfo(data: bytes) -> dict[str, list[str]]:
    """A module's ``.modinfo`` fields (``key=value`` strings): key -> values."""
    try:
        section = elf_section(data, ".modinfo")
    except ElfError as err:
        raise ModulesError(f"not a kernel module: {err}") from err
    info: dict[str, list[str]] = {}
    for field in (section or b"").split(b"\0"):
        key, sep, value = field.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def write_modules_dep(tree: Path) -> Path:
    """Write ``tree/modules.dep`` from the modules' own ``depends=`` fields, as depmod would."""
    paths = sorted(
        str(p.relative_to(tree)) for p in tree.rglob("*") if p.name.endswith(SUFFIXES) and p.is_file()
    )
    by_name = {module_name(path): path for path in paths}
    lines = []
    for path in paths:
        wanted = [d for v in modinfo(read_module(tree, path)).get("depends", []) for d in v.split(",") if d]
        missing = [d for d in wanted if module_name(d) not in by_name]
        if missing:
            log.warning("%s needs %s, which the tree lacks", path, ", ".join(missing))
        found = " ".join(by_name[module_name(d)] for d in wanted if d not in missing)
        lines.append(f"{path}: {found}".rstrip())
    out = tree / MODULES_DEP
    out.write_text("".join(f"{line}\n" for line in lines))
    return out
