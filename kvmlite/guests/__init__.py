"""Guest images shipped inside the kvmlite package.

Only the built-in demo guest of ``kvmlite run`` ships here, so the command
works without a toolchain.  It is built from ``guests/demo.S`` by
``python3 guests/build.py --install-demo`` (see guests/README.md); the
test-suite checks that the shipped bytes match a fresh build and that the
demo behaves the same under QEMU.

The demo is a multiboot v1 ELF32 kernel.  It prints one line per step
(protected-mode entry, multiboot information, long mode, a CRC-32 at CPL 3,
the trap back to CPL 0) and then powers off with ``cli; hlt``, which kvmlite
reports as exit status 0.  A failed self-check leaves through the
isa-debug-exit port (port 0xf4) with value 1, i.e. status 3.
"""

from __future__ import annotations

from pathlib import Path

DEMO_GUEST: Path = Path(__file__).resolve().parent / "demo.elf"
"""The built-in demo guest (multiboot ELF32)."""

DEMO_FINAL_LINE = "demo: all checks passed"
"""The last line the demo prints when every self-check passed."""

__all__ = ["DEMO_FINAL_LINE", "DEMO_GUEST"]
