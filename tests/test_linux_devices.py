"""Linux on virtio-rng and virtio-console: ``/dev/hwrng`` gives bytes and ``hvc0`` carries a shell (opt-in).

Run with::

    kvmlite fetch-assets && kvmlite build-kernel     # busybox, the microVM kernel (both drivers built in)
    KVMLITE_LINUX_BOOT=1 python3 -m pytest tests/test_linux_devices.py -v

(``KVMLITE_KERNEL=debian`` boots Debian's cloud kernel instead, whose initramfs then loads
virtio_pci, virtio_mmio, virtio_console and virtio-rng; ``kvmlite fetch-assets --modules`` first.)

The guest has ``--device virtio-rng-pci`` and ``--virtio-console stdio`` and its COM1 goes to a
file; the kernel command line ends in ``console=hvc0``, so ``/dev/console`` is the virtio console and
kvmlite's /init runs its shell there.  The test types into that shell through kvmlite's stdin and reads
its answers on kvmlite's stdout: the shell's terminal is ``/dev/hvc0``, the kernel chose virtio_rng as
the hardware RNG, and ``/dev/hwrng`` gives 16 KiB in which two 32-byte reads differ.  Both transports:
virtio-pci and virtio-mmio.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmlite.tools import initramfs
from tests.conftest import requires_kvm
from tests.linux_guests import (
    BOOT_TIMEOUT_S,
    COMMAND_TIMEOUT_S,
    ENABLED,
    PROMPT,
    Console,
    Linux,
    linux_for_test,
)

pytestmark = [
    requires_kvm,
    pytest.mark.skipif(not ENABLED, reason="slow Linux boot: set KVMLITE_LINUX_BOOT=1 to run it"),
]
DEBIAN_MODULES = ["virtio_pci", "virtio_mmio", "virtio_console", "virtio-rng"]
HWRNG_BYTES = 16 << 10


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory) -> Linux:
    return linux_for_test(tmp_path_factory.mktemp("linux"), DEBIAN_MODULES)


def _hex_bytes(answer: str) -> bytes:
    """What ``od -An -tx1`` printed (the echoed command line has no hex pairs on their own)."""
    pairs = re.findall(r"(?m)^(?: [0-9a-f]{2})+\s*$", answer)
    return bytes.fromhex("".join(pairs).replace(" ", "").replace("\r", "").replace("\n", ""))


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_linux_reads_hwrng_and_runs_its_shell_on_hvc0(transport: str, linux: Linux, tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    args = ["--kernel", str(linux.pvh), "--initrd", str(linux.initrd), "--memory", "256", "--cpus", "1"]
    args += ["--cmdline", f"{linux.cmdline} console=hvc0", "--serial", f"file:{serial}"]
    args += ["--device", "virtio-rng-pci", "--virtio-console", "stdio", "--virtio-transport", transport]
    console = Console(tmp_path / "kvmlite.log", *args)
    try:
        try:
            console.expect(initramfs.READY_MARKER.encode(), BOOT_TIMEOUT_S)
        except AssertionError as err:  # nothing on hvc0: say how far the kernel got on COM1
            tail = serial.read_text(errors="replace")[-3000:] if serial.exists() else "(no COM1 output)"
            raise AssertionError(f"{err}\nCOM1 showed:\n{tail}") from None
        console.expect(PROMPT, COMMAND_TIMEOUT_S)
        # the shell reads this on hvc0 and answers there
        assert console.run("readlink /proc/self/fd/0; echo answer=$((6 * 7))").split()[-2:] == [
            "/dev/hvc0",
            "answer=42",
        ]
        assert "hvc0" in console.run("cat /sys/class/tty/console/active").split()
        assert console.run("cat /sys/class/misc/hw_random/rng_current").split()[-1].startswith("virtio_rng")
        answer = console.run(f"head -c {HWRNG_BYTES} /dev/hwrng | wc -c")
        assert answer.split()[-1] == str(HWRNG_BYTES), answer
        first = _hex_bytes(console.run("od -An -tx1 -N32 /dev/hwrng"))
        second = _hex_bytes(console.run("od -An -tx1 -N32 /dev/hwrng"))
        assert len(first) == len(second) == 32 and first != second, (first, second)
        assert console.proc.stdin is not None
        console.proc.stdin.write(b"poweroff -f\n")
        console.proc.stdin.flush()
        assert console.proc.wait(timeout=COMMAND_TIMEOUT_S) == 0
    finally:
        console.close()
