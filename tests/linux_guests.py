"""What the opt-in Linux tests share: which kernel, how to boot it, a console to talk to its shell.

Used by tests/test_linux_boot.py, tests/test_linux_disk.py and tests/test_linux_devices.py (a test module
never imports another).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmlite.tools.assets import LINUX_TEST_CMDLINE
from kvmlite.tools.build_kernel import MICROVM_CMDLINE

ENABLED = os.environ.get("KVMLITE_LINUX_BOOT") == "1"
KERNEL_CHOICE = os.environ.get("KVMLITE_KERNEL", "")
BOOT_TIMEOUT_S = float(os.environ.get("KVMLITE_BOOT_TIMEOUT_S", "3600"))
COMMAND_TIMEOUT_S = 600.0  # a fork and exec on a loaded 2-core host here took minutes
PROMPT = b"kvmlite# "


@dataclass(frozen=True)
class Linux:
    """One kernel in both forms, the initramfs and what to expect of them."""

    name: str
    pvh: Path  # an ELF vmlinux with the PVH note
    bzimage: Path
    initrd: Path
    cmdline: str
    release: str  # a regular expression `uname -r` matches


def microvm(initrd: Path) -> Linux | str:
    from kvmlite.tools import build_kernel

    found, reason = build_kernel.find_microvm_kernel()
    if found is None:
        return reason
    return Linux("microvm", found.vmlinux, found.bzimage, initrd, MICROVM_CMDLINE, r"^\d+\.\d+\.\d+\S*$")


def debian(vmlinuz: Path, out: Path, initrd: Path) -> Linux:
    from kvmlite.tools import extract_vmlinux

    vmlinux = out / "vmlinux"
    vmlinux.write_bytes(extract_vmlinux.extract_vmlinux(vmlinuz.read_bytes()))
    return Linux("debian", vmlinux, vmlinuz, initrd, LINUX_TEST_CMDLINE, r"\d+\.\d+\.\d+-\d+-cloud-amd64")


def linux_for_test(out: Path, debian_modules: Sequence[str]) -> Linux:
    """The kernel ``KVMLITE_KERNEL`` asks for, with a busybox initramfs built in ``out`` (skips the test when
    an asset is missing).

    The microVM kernel (the default where ``kvmlite build-kernel`` has run) has virtio built in; Debian's
    cloud kernel has it as modules, so its initramfs carries ``debian_modules`` and their dependencies from
    the tree ``kvmlite fetch-assets --modules`` cached, and /init loads them.
    """
    from kvmlite.tools import assets, initramfs

    if KERNEL_CHOICE not in ("", "microvm", "debian"):
        pytest.fail(f"KVMLITE_KERNEL={KERNEL_CHOICE!r}: use microvm or debian")
    found, reason = assets.find_assets()
    if found is None:
        pytest.skip(f"no kernel and busybox ({reason}): run `kvmlite fetch-assets --modules`")
    vmlinuz, busybox = found
    initrd = out / "initrd.cpio"
    if KERNEL_CHOICE != "debian":
        initrd.write_bytes(initramfs.build_initramfs(busybox, compress=False))
        small = microvm(initrd)
        if isinstance(small, Linux):
            return small
        if KERNEL_CHOICE == "microvm":
            pytest.skip(small)
    tree, reason = assets.find_modules()
    if tree is None:
        pytest.skip(reason)
    archive = initramfs.build_initramfs(
        busybox, compress=False, module_names=list(debian_modules), modules_dir=tree
    )
    initrd.write_bytes(archive)
    return debian(vmlinuz, out, initrd)


class Console:
    """kvmlite running a guest whose COM1 is our stdin/stdout pipe; its log (-v) goes to a file."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvmlite", "-v", "run", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.seen = b""
        self.transcript = b""  # everything the console showed

    def expect(self, pattern: bytes, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while pattern not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = self.seen[-2000:].decode(errors="replace")
                raise AssertionError(f"waited for {pattern!r}; the console showed:\n{tail}")
            if select.select([self.proc.stdout], [], [], min(left, 1.0))[0]:
                data = os.read(self.proc.stdout.fileno(), 4096)
                self.seen += data
                self.transcript += data
        before, _, self.seen = self.seen.partition(pattern)
        return before

    def run(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.expect(PROMPT, COMMAND_TIMEOUT_S).decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
