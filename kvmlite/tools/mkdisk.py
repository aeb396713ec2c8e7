"""Make a raw ext4 disk image from a directory, without root privileges: ``kvmlite mkdisk``.

``mke2fs -d DIR`` (e2fsprogs 1.43 and later) writes the directory's files
straight into the new file system from user space: no loop device, no
mount, no root.  This tool makes the sparse image file of the requested
size and runs::

    mke2fs -q -F -t ext4 -d DIR -L LABEL -E root_owner=0:0 IMAGE

Files keep their owner's uid and gid (run as an ordinary user, they belong
to that user inside the image too); the root directory belongs to root.
The result is a disk for ``kvmlite run --disk IMAGE``; a guest whose kernel
has virtio-blk and ext4 mounts it as ``/dev/vda`` (``root=/dev/vda`` with
kvmlite's initramfs: :mod:`kvmlite.tools.initramfs`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from kvmlite.cli.qemu import parse_size_mib
from kvmlite.errors import STATUS_BAD_INPUT, KvmliteError

log = logging.getLogger(__name__)

DEFAULT_LABEL = "kvmlite"
MKE2FS_TIMEOUT = 600  # seconds
MIN_SIZE_MIB = 2  # below this mke2fs cannot fit an ext4 journal and its metadata


class MkdiskError(KvmliteError):
    """The image could not be made (kept here: only this tool raises it)."""


def make_ext4(image: Path, size_mib: int, source: Path | None = None, label: str = DEFAULT_LABEL) -> None:
    """Write an ext4 file system of ``size_mib`` MiB to ``image``, holding the tree ``source`` if given."""
    mke2fs = shutil.which("mke2fs") or next(
        (p for p in ("/sbin/mke2fs", "/usr/sbin/mke2fs") if os.access(p, os.X_OK)), None
    )
    if mke2fs is None:
        raise MkdiskError("mke2fs not found: install the e2fsprogs package")
    if size_mib < MIN_SIZE_MIB:
        raise MkdiskError(f"--size {size_mib} MiB is too small for ext4 (at least {MIN_SIZE_MIB} MiB)")
    if source is not None and not source.is_dir():
        raise MkdiskError(f"--from {source}: not a directory")
    try:
        with image.open("wb") as out:
            out.truncate(size_mib << 20)
    except OSError as err:
        raise MkdiskError(f"cannot create {image}: {err.strerror}") from err
    cmd = [mke2fs, "-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0"]
    if source is not None:
        cmd += ["-d", str(source)]
    cmd.append(str(image))
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=MKE2FS_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MkdiskError(f"mke2fs failed to run: {err}") from err
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        image.unlink(missing_ok=True)
        raise MkdiskError(f"mke2fs failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")


def main(argv: list[str] | None = None) -> int:
    """``kvmlite mkdisk [--from DIR] --size SIZE [--label NAME] -o IMAGE``."""
    parser = argparse.ArgumentParser(prog="kvmlite mkdisk", description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="the directory whose files the image holds")
    parser.add_argument("--size", required=True, help="image size: 64M, 1G (a bare number is MiB)")
    parser.add_argument("--label", default=DEFAULT_LABEL, help=f"file system label (default {DEFAULT_LABEL})")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the raw image file to write")
    args = parser.parse_args(argv)
    try:
        size_mib = parse_size_mib("--size", args.size)
        make_ext4(args.output, size_mib, args.source, args.label)
    except KvmliteError as err:
        sys.stderr.write(f"kvmlite: {err}\n")
        return STATUS_BAD_INPUT
    log.info("wrote %s (%d MiB ext4)", args.output, size_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
