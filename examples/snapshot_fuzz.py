#!/usr/bin/env python3
"""Reset-to-snapshot fuzzing with kvmlite, end to end: ``python3 examples/snapshot_fuzz.py [--backend emu]``.

The guest (assembled here with GNU as and ld) sets itself up, says READY at
the snapshot point, then runs a small "parser" over the input the harness put
in its memory: it sums the bytes, dirties ``PAGES`` pages of a buffer, and
crashes (``ud2`` with no IDT: a triple fault) when the input starts with
``FUZZ``; otherwise it reports the sum through the DONE port.  The harness
(:class:`kvmlite.snapshot.fuzz.FuzzHarness`) resets the VM to the snapshot
after every input, copying back only the pages the run dirtied::

    machine = Machine.build(MachineConfig(kernel=guest, memory_mib=64, serial="none"))
    harness = FuzzHarness(machine, INPUT_ADDR)      # runs to READY, snapshots there
    for data in inputs:
        result = harness.run(data)                  # input in, run to DONE, reset
        ...result.value (DONE's %eax) or result.status/result.message (the VM ended)
    harness.close()

A crash ends the VM (kvmlite stops a guest that triple-faults); a fuzzer then
builds a new machine, or restores one from a snapshot file
(``kvmlite.snapshot.machine.build_restored``), and goes on.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmlite.snapshot.fuzz import FuzzHarness
from kvmlite.vmm.machine import Machine, MachineConfig

INPUT_ADDR = 0x200000
BUFFER_ADDR = 0x400000

GUEST = r"""
.section .multiboot, "a"
.align 4
.long 0x1BADB002, 0, -(0x1BADB002)
.text
.code32
.globl _start
_start:
    mov $0x2ff000, %esp
    mov $0x700, %dx
    out %eax, %dx               /* READY: the snapshot is taken here */
    mov INPUT, %ecx             /* the input: length, then bytes */
    mov $(INPUT + 4), %esi
    xor %eax, %eax
    xor %ebx, %ebx
    cmp $4, %ecx
    jb 1f
    cmpl $0x5a5a5546, (%esi)    /* "FUZZ" */
    jne 1f
    ud2                         /* the bug: no IDT, so a triple fault */
1:  test %ecx, %ecx
    jz 2f
    movzbl (%esi), %edx
    add %edx, %eax
    inc %esi
    dec %ecx
    jmp 1b
2:  mov $BUFFER, %edi           /* dirty PAGES pages */
    mov $PAGES, %ecx
3:  mov %eax, (%edi)
    add $4096, %edi
    loop 3b
    mov $0x704, %dx
    out %eax, %dx               /* DONE, result in %eax */
    cli
    hlt
"""


def build_guest(directory: Path, pages: int = 10) -> Path:
    """Assemble and link the guest (multiboot ELF32 at 1 MiB) into ``directory``."""
    src, obj, elf = directory / "fuzzme.S", directory / "fuzzme.o", directory / "fuzzme.elf"
    source = (
        GUEST.replace("INPUT", str(INPUT_ADDR))
        .replace("BUFFER", str(BUFFER_ADDR))
        .replace("PAGES", str(pages))
    )
    src.write_text(source)
    script = directory / "fuzzme.ld"
    script.write_text("ENTRY(_start)\nSECTIONS { . = 0x100000; .text : { *(.multiboot) *(.text) } }\n")
    subprocess.run(["as", "--32", "-o", str(obj), str(src)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(script), "-o", str(elf), str(obj)], check=True)
    return elf


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", choices=["kvm", "emu", "auto"])
    parser.add_argument("--inputs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        guest = build_guest(Path(tmp))
        config = MachineConfig(kernel=guest, memory_mib=64, backend=args.backend, serial="none")
        machine = Machine.build(config)
        harness = FuzzHarness(machine, INPUT_ADDR)
        rng = random.Random(1)
        start = time.monotonic()
        crashed = None
        for i in range(args.inputs):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
            if i == args.inputs - 1:
                data = b"FUZZ" + data  # the last input finds the bug
            result = harness.run(data)
            if result.value is None:
                crashed = (data, result)
                break
            assert result.value == sum(data), (data, result)
        elapsed = time.monotonic() - start
        print(f"{harness.runs} inputs in {elapsed:.2f} s: {harness.runs / elapsed:.0f} resets/s")
        if crashed:
            first_line = crashed[1].message.splitlines()[0] if crashed[1].message else ""
            print(f"crash on input {crashed[0]!r}: status {crashed[1].status}, {first_line}")
        harness.close()
        machine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
