"""The snapshot tests' guest: it counts PIT ticks, prints each, computes between them, exits with a result.

32-bit multiboot.  PIT channel 0 at 100 Hz through the PIC (the in-kernel
one or kvmlite's).  After every tick the main loop prints ``tick N`` on
COM1 and runs a few hundred rounds of an LCG whose state lives in memory,
so the final value depends on how many ticks were counted and on nothing
else; after ``TICKS`` ticks it prints ``sum=XXXXXXXX`` and writes
``(sum & 0x3f) + 1`` to the debug-exit port.  A restore that loses or
repeats a tick, loses RAM or registers, or a timer that does not go on,
shows up in the output or the sum.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MULTIBOOT_HEADER, build_multiboot
from tests.images import TICK_GATES, tick_setup

TICKS = 120
ROUNDS = 200

GUEST = (
    MULTIBOOT_HEADER
    + """
.text
.globl _start
_start:
    mov $0x2ff000, %esp
    START_AP
TICK_SETUP
    movl $0, ticks
    movl $0, printed
    movl $12345, state
    sti
main:
    hlt
1:  mov printed, %eax
    cmp ticks, %eax
    jae main
    inc %eax
    mov %eax, printed
    mov $msg_tick, %esi
    call puts
    mov printed, %eax
    call putdec
    mov $10, %al
    call putc
    mov $ROUNDS, %ecx
2:  mov state, %eax
    imul $1103515245, %eax, %eax
    add $12345, %eax
    add printed, %eax
    mov %eax, state
    loop 2b
    cmpl $TICKS, printed
    jb 1b
    cli
    WAIT_AP
    mov $msg_sum, %esi
    call puts
    mov state, %eax
    call puthex
    mov $10, %al
    call putc
    mov state, %eax
    and $0x3f, %eax
    inc %eax
    mov $0xf4, %dx
    out %eax, %dx
    hlt

tick:
    push %eax
    incl ticks
    mov $0x20, %al
    out %al, $0x20
    pop %eax
spurious:
    iret

/* putc: %al to COM1, polling LSR.THRE */
putc:
    push %edx
    push %eax
    mov $0x3fd, %dx
3:  in %dx, %al
    test $0x20, %al
    jz 3b
    pop %eax
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret

puts:
    lodsb
    test %al, %al
    jz 4f
    call putc
    jmp puts
4:  ret

/* putdec: %eax in decimal */
putdec:
    mov $10, %ebx
    xor %ecx, %ecx
5:  xor %edx, %edx
    div %ebx
    push %edx
    inc %ecx
    test %eax, %eax
    jnz 5b
6:  pop %eax
    add $0x30, %al
    call putc
    loop 6b
    ret

/* puthex: %eax as 8 hex digits */
puthex:
    mov %eax, %edx
    mov $8, %ecx
7:  rol $4, %edx
    mov %edx, %eax
    and $0xf, %eax
    mov hexdigits(%eax), %al
    call putc
    loop 7b
    ret

TICK_GATES
TRAMPOLINE
msg_tick: .asciz "tick "
msg_sum: .asciz "sum="
hexdigits: .ascii "0123456789abcdef"

.bss
.align 8
ticks: .long 0
printed: .long 0
state: .long 0
idt:
    .skip 256 * 8
"""
)


#: With two vCPUs: the BSP wakes the AP (INIT, startup IPI) which computes AP_ROUNDS rounds of the LCG in
#: real mode while the BSP counts; the BSP waits for it at the end and folds its result into the sum.
START_AP = """
    cld
    mov $trampoline, %esi
    mov $0x8000, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb
    movl $0x1FF, 0xFEE000F0
    movl $(1 << 24), 0xFEE00310
    movl $0x00004500, 0xFEE00300
    movl $(1 << 24), 0xFEE00310
    movl $0x00004608, 0xFEE00300
"""
WAIT_AP = """
8:  pause
    cmpl $1, 0x9010
    jne 8b
    mov 0x9020, %eax
    xor %eax, state
"""
AP_ROUNDS = 100000
TRAMPOLINE = f"""
trampoline:
.code16
    xor %ax, %ax
    mov %ax, %ds
    mov $1, %eax
    mov ${AP_ROUNDS}, %ecx
9:  imul $1103515245, %eax, %eax
    add $12345, %eax
    dec %ecx
    jnz 9b
    mov %eax, 0x9020
    movl $1, 0x9010
    cli
10: hlt
    jmp 10b
.code32
trampoline_end:
"""


def expected_output(ticks: int = TICKS, smp: bool = False) -> tuple[bytes, int]:
    """What an uninterrupted run prints, and its exit status."""
    state = 12345
    out = b""
    for n in range(1, ticks + 1):
        out += f"tick {n}\n".encode()
        for _ in range(ROUNDS):
            state = (state * 1103515245 + 12345 + n) & 0xFFFF_FFFF
    if smp:
        ap = 1
        for _ in range(AP_ROUNDS):
            ap = (ap * 1103515245 + 12345) & 0xFFFF_FFFF
        state ^= ap
    out += f"sum={state:08x}\n".encode()
    return out, (((state & 0x3F) + 1) << 1) | 1


def build_ticks_guest(tmp: Path, ticks: int = TICKS, smp: bool = False) -> Path:
    source = GUEST.replace("TICK_SETUP", tick_setup(11932)).replace("TICK_GATES", TICK_GATES)
    source = source.replace("$TICKS", f"${ticks}").replace("$ROUNDS", f"${ROUNDS}")
    source = (
        source.replace("START_AP", START_AP if smp else "")
        .replace("WAIT_AP", WAIT_AP if smp else "")
        .replace("TRAMPOLINE", TRAMPOLINE if smp else "")
    )
    return build_multiboot(tmp, f"snapticks{ticks}{'smp' if smp else ''}", source)
