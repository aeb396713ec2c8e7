/*
 * xstate.S - does the vector register state of ring-3 tasks survive context switches?
 *
 * A multiboot ELF32 guest with a tiny preemptive kernel that switches
 * between ring-3 tasks the way Linux does it:
 *
 *  - each task has its own kernel stack and its own XSAVE area; a switch
 *    (on a timer interrupt, or on a page fault the task takes) saves the
 *    outgoing task with XSAVEOPT (XSAVEC with compact=1) and EDX:EAX = -1
 *    under the XCR0 the kernel set, and restores the incoming one with XRSTOR,
 *    unless the incoming task's registers are still live on this CPU (Linux's
 *    fpregs_state_valid: same CPU, nobody restored another task since);
 *  - the kernel's XCR0 is x87|SSE (Linux booted with clearcpuid=avx...), or
 *    every component CPUID 0xD offers with full=1;
 *  - with cpus=2 the AP is started with INIT/SIPI, both CPUs take tasks
 *    from one run queue, and tasks migrate between them.
 *
 * Each task finds out in ring 3 what it may use, as glibc does (CPUID,
 * then XGETBV: level 2 = ZMM0-31 and k0-7, 1 = YMM0-15, 0 = XMM0-15),
 * loads a pattern of its own into every one of those registers and then,
 * in a loop, stores them all and compares them with what it loaded.  Every
 * `every` iterations it stores its last vector register to a page that is
 * not mapped (the first store of a memcpy to a fresh page): the page fault
 * is a switch, and the stored bytes are checked afterwards too.  Ring 3 is
 * where the time goes; the kernel's part is a few hundred instructions per
 * switch.
 *
 * hold=N instead: no timer, no faults, no switches: one task per CPU holds
 * its registers for N iterations, each of which leaves the guest with an
 * `out` (the VMM's thread runs host code, and the host may preempt it).
 *
 * Command line (decimal): switches=N (default 2000) cpus=1|2 every=N
 * (iterations between faults, default 200; 0: never) level=L (use at most
 * level L) full=1 compact=1 hold=N hz=N (timer, default 250).
 *
 * Output: "xstate: level=L user-xcr0=0x.. kernel-xcr0=0x..", counts, one
 * line per task, "xstate: ok" and v=0x31 (status 99); on a register that
 * changed, "xstate: FAIL task T offset O got G want W" and v=1 (status 3);
 * on any other exception, lib/exceptions64.S's "EXCEPTION vec=.." line and
 * v=0x7f (status 255).
 * Without XSAVE (kvmlite's software backend) the kernel uses FXSAVE/FXRSTOR and
 * the tasks XMM0-15 (level 0), as Linux would; kernel-xcr0 then reads 0.
 */
#include "lib/guest.h"
#include "lib/macros.S"

#define EXIT_OK         0x31
#define NTASKS          4
#define DEFAULT_SWITCHES 2000
#define DEFAULT_EVERY   200
#define DEFAULT_HZ      250
#define IDLE_PORT       0x500           /* unclaimed: each `out` there is a plain exit to the VMM */

#define VEC_PF          14
#define VEC_TIMER       0x20
#define PIT_HZ          1193182
#define LAPIC           0xfee00000
#define LAPIC_ID        0x20
#define LAPIC_EOI       0xb0
#define LAPIC_SVR       0xf0
#define LAPIC_ICR_LO    0x300
#define LAPIC_ICR_HI    0x310
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0
#define LAPIC_BUS_HZ    1000000000      /* KVM's LAPIC timer ticks at 1 GHz */
#define TRAMPOLINE      0x8000
#define CODE32          0x48

#define TSS_RSP0        4
#define TSS_SIZE        104
#define TSS_IOMAP_SIZE  8192            /* every port allowed: this host consults the bitmap whatever IOPL says */
#define TSS_LIMIT       (TSS_SIZE + TSS_IOMAP_SIZE)   /* the bitmap's closing 0xff byte included */
#define TSS_SIZE_ALIGNED (TSS_SIZE + TSS_IOMAP_SIZE + 64)
#define CR4_OSFXSR      (1 << 9)
#define CR4_OSXMMEXCPT  (1 << 10)
#define CR4_OSXSAVE     (1 << 18)
#define MSR_GS_BASE     0xc0000101

/* task control block */
#define T_RSP           0
#define T_STATE         8               /* 0 runnable, 1 running */
#define T_LAST_CPU      16              /* cpu + 1 whose registers hold this task's state, 0 none */
#define T_KSTACK_TOP    24
#define T_AREA          32
#define T_INDEX         40
#define T_ITERS         48
#define T_CPUS_SEEN     56
#define T_LEVEL         64
#define T_SIZE          128
/* per-CPU data, reached through GS */
#define C_SELF          0
#define C_INDEX         8
#define C_CURRENT       16
#define C_FPU_OWNER     24
#define C_TSS           32
#define C_SIZE          64
/* a task's user data: pattern, expected image, scratch image (32 x 64 bytes, then k0-k7) */
#define IMAGE_SIZE      2112
#define IMAGE_QWORDS    (IMAGE_SIZE / 8)
#define K_OFFSET        2048
#define U_PATTERN       0
#define U_EXPECTED      IMAGE_SIZE
#define U_SCRATCH       (2 * IMAGE_SIZE)
#define U_SIZE          8192
#define FRESH_BASE      0x200000        /* 2 MiB: 4 KiB pages, two per task, one mapped at a time */

    MULTIBOOT_HEADER (MB_FLAG_ALIGN)

#include "lib/mbentry32.S"
#include "lib/serial32.S"
#include "lib/cmdline32.S"
#include "lib/serial64.S"
#include "lib/exceptions64.S"     /* any exception but our page faults: report, exit 255 */

    .code32
    .text
main32:
    cmpl $MB_BOOT_MAGIC, mb_magic
    jne .Lbad_arg
    ARG32 key_switches, switches_target, DEFAULT_SWITCHES
    ARG32 key_cpus, ncpus, 1
    ARG32 key_every, every, DEFAULT_EVERY
    ARG32 key_level, max_level, 2
    ARG32 key_full, full_xcr0, 0
    ARG32 key_compact, compact, 0
    ARG32 key_hold, hold, 0
    ARG32 key_hz, hz, DEFAULT_HZ
    mov ncpus, %eax
    dec %eax
    cmp $1, %eax
    ja .Lbad_arg
    mov $bsp_main64, %ebx
    jmp enter_long_mode32
.Lbad_arg:
    PUTS32 "xstate: FAIL bad command line\n"
    mov $EXIT_FAIL, %eax
    jmp exit32

/* enter_long_mode32: PAE paging with our tables, EFER.LME, then far return to 64-bit %ebx. */
enter_long_mode32:
    lgdt gdt_ptr
    mov $KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    LONG_MODE_PAGING_ON32 pml4
    push $KCODE
    push %ebx
    lret

/* The AP's way in: real mode at TRAMPOLINE (copied there), then enter_long_mode32 to ap_main64. */
trampoline:
    .code16
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl TRAMPOLINE + (tramp_gdt_ptr - trampoline)
    mov %cr0, %eax
    or $CR0_PE, %eax
    mov %eax, %cr0
    ljmpl $CODE32, $(TRAMPOLINE + (tramp32 - trampoline))
    .code32
tramp32:
    mov $KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $ap_boot_stack_top, %esp
    mov $ap_main64, %ebx
    mov $enter_long_mode32, %eax
    jmp *%eax
    .balign 8
tramp_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:

    .code64
/* ---- per-CPU start-up ---------------------------------------------------------------------------- */
bsp_main64:
    mov $boot_stack_top, %esp
    mov $1, %eax                        /* XSAVE at all? (CPUID.1:ECX.XSAVE) */
    cpuid
    bt $26, %ecx
    jc 1f
    movl $1, use_fxsave                 /* no XSAVE: FXSAVE/FXRSTOR, x87 and SSE only */
1:  call setup_descriptors
    xor %edi, %edi
    call cpu_setup64
    cmpl $0, use_fxsave
    jne 2f
    call choose_xcr0
2:
    call setup_tasks
    cmpl $2, ncpus
    jne 2f
    call start_ap
2:  call start_timer
    PUTS64 "xstate: cpus="
    mov ncpus, %eax
    call putdec64
    PUTS64 " tasks="
    mov ntasks, %eax
    call putdec64
    PUTS64 " kernel-xcr0=0x"
    mov kernel_xcr0, %rax
    call puthex64
    PUTS64 "\n"
    jmp start_first_task

ap_main64:
    mov $ap_boot_stack_top, %esp
    mov $1, %edi
    call cpu_setup64
    movl $1, ap_alive
    call start_timer
    jmp start_first_task

/* setup_descriptors (BSP): IDT gates and the TSS descriptors (symbol arithmetic the assembler cannot do). */
setup_descriptors:
    mov $idt, %edi
    mov $exc_stubs, %esi
    xor %ecx, %ecx
1:  mov %rsi, %rax
    cmp $VEC_PF, %ecx
    jne 2f
    mov $pf_entry, %eax
2:  call set_gate
    add $16, %edi
    add $EXC_STUB_SIZE, %esi
    inc %ecx
    cmp $NUM_EXCEPTIONS, %ecx
    jb 1b
    mov $(idt + VEC_TIMER * 16), %edi
    mov $timer_entry, %eax
    call set_gate
    mov $tss0, %eax
    mov $(gdt + TSS_SEL), %edi
    call set_tss_descriptor
    mov $tss1, %eax
    mov $(gdt + TSS_SEL + 16), %edi
    call set_tss_descriptor
    ret

/* set_gate: interrupt gate at %rdi (DPL 0) for the handler at %eax. */
set_gate:
    mov %ax, (%rdi)
    movw $KCODE, 2(%rdi)
    movw $0x8e00, 4(%rdi)
    shr $16, %eax
    mov %ax, 6(%rdi)
    movq $0, 8(%rdi)
    ret

/* set_tss_descriptor: available 64-bit TSS at %eax, descriptor at %rdi. */
set_tss_descriptor:
    movw $TSS_SIZE, 102(%rax)           /* the I/O bitmap right after the TSS, all ports allowed */
    movb $0xff, TSS_LIMIT(%rax)
    movw $TSS_LIMIT, (%rdi)
    mov %ax, 2(%rdi)
    shr $16, %eax
    mov %al, 4(%rdi)
    movb $0x89, 5(%rdi)
    movb $0, 6(%rdi)
    mov %ah, 7(%rdi)
    movq $0, 8(%rdi)
    ret

/* cpu_setup64: %edi = CPU index.  GDT/IDT/TSS, per-CPU GS base, SSE and XSAVE on, our XCR0. */
cpu_setup64:
    lgdt gdt_ptr
    mov $KDATA, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    lidt idt_ptr
    mov %edi, %eax                      /* TSS descriptor 0x28 + 16 * cpu */
    shl $4, %eax
    add $TSS_SEL, %eax
    ltr %ax
    mov %edi, %eax
    imul $C_SIZE, %eax
    add $percpu, %eax
    mov %rax, C_SELF(%rax)
    mov %rdi, C_INDEX(%rax)
    mov %edi, %ecx
    imul $TSS_SIZE_ALIGNED, %ecx
    add $tss0, %ecx
    mov %rcx, C_TSS(%rax)
    xor %ecx, %ecx                      /* null FS/GS: an IRET to ring 3 leaves them (and the base) alone */
    mov %ecx, %fs
    mov %ecx, %gs
    mov %rax, %rdx
    shr $32, %rdx
    mov $MSR_GS_BASE, %ecx
    wrmsr
    mov %cr0, %rax
    and $~((1 << 2) | (1 << 3)), %eax   /* EM, TS off */
    or $(1 << 1), %eax                  /* MP */
    mov %rax, %cr0
    mov %cr4, %rax
    or $(CR4_OSFXSR | CR4_OSXMMEXCPT), %eax
    cmpl $0, use_fxsave
    jne 2f
    or $CR4_OSXSAVE, %eax
2:  mov %rax, %cr4
    cmp $0, %edi
    jne 1f
    ret
1:  mov kernel_xcr0, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
    ret

/* choose_xcr0 (BSP): x87|SSE, or with full=1 every component CPUID 0xD offers among x87..AVX-512. */
choose_xcr0:
    mov $3, %esi
    cmpl $0, full_xcr0
    je 1f
    mov $0xd, %eax
    xor %ecx, %ecx
    cpuid
    and $0xe7, %eax
    or %eax, %esi
1:  mov %esi, %eax
    mov %rax, kernel_xcr0
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
    ret

/* setup_tasks: one task per CPU with hold=N, else NTASKS; kernel stacks primed to enter ring 3. */
setup_tasks:
    mov $NTASKS, %eax
    cmpl $0, hold
    je 1f
    mov ncpus, %eax
1:  mov %eax, ntasks
    xor %ebx, %ebx                      /* task index */
2:  mov %ebx, %edi
    imul $T_SIZE, %edi
    add $tasks, %edi
    mov %rbx, T_INDEX(%rdi)
    mov %ebx, %eax
    shl $12, %eax
    add $areas, %eax
    mov %rax, T_AREA(%rdi)
    movw $0x37f, 0(%rax)                /* FCW and MXCSR as after reset (XSTATE_BV 0: the rest too) */
    movl $0x1f80, 24(%rax)
    mov %ebx, %eax
    shl $12, %eax
    add $kstacks + 4096, %eax
    mov %rax, T_KSTACK_TOP(%rdi)
    /* the first switch to the task "returns" to task_first_run on this stack, which IRETQs to ring 3 */
    lea -8 * 5(%rax), %rsi              /* interrupt frame: RIP CS RFLAGS RSP SS */
    movq $user_task, 0(%rsi)
    movq $UCODE, 8(%rsi)
    movq $(EFLAGS_RESERVED | EFLAGS_IOPL3 | EFLAGS_IF), 16(%rsi)
    mov %ebx, %eax
    shl $12, %eax
    add $ustacks + 4096, %eax
    mov %rax, 24(%rsi)
    movq $UDATA, 32(%rsi)
    sub $8 * 15, %rsi                   /* the 15 GPRs task_first_run pops: all 0 but %rdi = index */
    mov %rbx, 8 * 8(%rsi)              /* RESTORE_GPRS pops r15 first, %rdi ninth */
    sub $8, %rsi
    movq $task_first_run, (%rsi)
    mov %rsi, T_RSP(%rdi)
    inc %ebx
    cmp ntasks, %ebx
    jb 2b
    ret

/* start_ap: copy the trampoline, INIT and SIPI to APIC ID 1, wait for it to check in. */
start_ap:
    mov $trampoline, %esi
    mov $TRAMPOLINE, %edi
    mov $(trampoline_end - trampoline), %ecx
    rep movsb
    mov $LAPIC, %r8d
    movl $0x1ff, LAPIC_SVR(%r8)
    movl $(1 << 24), LAPIC_ICR_HI(%r8)
    movl $0x00004500, LAPIC_ICR_LO(%r8)
    movl $(1 << 24), LAPIC_ICR_HI(%r8)
    movl $(0x00004600 | (TRAMPOLINE >> 12)), LAPIC_ICR_LO(%r8)
1:  pause
    cmpl $0, ap_alive
    je 1b
    ret

/* start_timer: LAPIC timer on this CPU with cpus=2; else the PIT on IRQ 0 through the PIC.  No timer with hold. */
start_timer:
    cmpl $0, hold
    jne 9f
    cmpl $2, ncpus
    je 5f
    mov $0x11, %al                      /* PIC: ICW1..4, vectors 0x20/0x28, only IRQ 0 unmasked */
    out %al, $0x20
    out %al, $0xa0
    mov $VEC_TIMER, %al
    out %al, $0x21
    mov $VEC_TIMER + 8, %al
    out %al, $0xa1
    mov $4, %al
    out %al, $0x21
    mov $2, %al
    out %al, $0xa1
    mov $1, %al
    out %al, $0x21
    out %al, $0xa1
    mov $0xfe, %al
    out %al, $0x21
    mov $0xff, %al
    out %al, $0xa1
    mov $0x34, %al                      /* PIT channel 0, rate generator */
    out %al, $0x43
    mov $PIT_HZ, %eax
    xor %edx, %edx
    divl hz
    out %al, $0x40
    mov %ah, %al
    out %al, $0x40
    ret
5:  mov $LAPIC, %r8d
    movl $0x1ff, LAPIC_SVR(%r8)
    movl $0xb, LAPIC_TIMER_DIV(%r8)  /* divide by 1 */
    movl $(VEC_TIMER | (1 << 17)), LAPIC_LVT_TIMER(%r8)   /* periodic */
    mov $LAPIC_BUS_HZ, %eax
    xor %edx, %edx
    divl hz
    mov %eax, LAPIC_TIMER_INIT(%r8)
9:  ret

/* ---- scheduling ----------------------------------------------------------------------------------- */
/* start_first_task: this CPU has no task yet; take one and go. */
start_first_task:
    xor %r12d, %r12d
    call pick_next
    jmp switch_in

/*
 * schedule: called from an interrupt or fault entry (interrupts off) on the current task's kernel
 * stack with every GPR saved there.  Saves the task's vector state and switches to the next
 * runnable task if there is one.  Clobbers every GPR.
 */
schedule:
    mov %gs:C_SELF, %rbx
    mov C_CURRENT(%rbx), %r12
    lock incq switches
    call check_end
    call pick_next
    cmp %r12, %r13
    je 9f
    mov T_AREA(%r12), %rdi              /* switch_fpu_prepare: save the outgoing task's registers */
    mov $-1, %eax
    mov $-1, %edx
    cmpl $0, use_fxsave
    jne 3f
    cmpl $0, compact
    jne 1f
    xsaveopt64 (%rdi)
    jmp 2f
1:  xsavec64 (%rdi)
    jmp 2f
3:  fxsave64 (%rdi)
2:  mov %rsp, T_RSP(%r12)
    jmp switch_in
9:  ret

/* switch_in: %r12 = the outgoing task (saved, or 0), %r13 = the incoming one (marked running). */
switch_in:
    mov %gs:C_SELF, %rbx
    mov T_RSP(%r13), %rsp
    test %r12, %r12
    jz 1f
    movq $0, T_STATE(%r12)              /* only now may another CPU take it */
1:  mov %r13, C_CURRENT(%rbx)
    mov C_TSS(%rbx), %rax
    mov T_KSTACK_TOP(%r13), %rcx
    mov %rcx, TSS_RSP0(%rax)
    mov C_INDEX(%rbx), %rcx             /* note the CPUs each task ran on */
    mov $1, %eax
    shl %cl, %eax
    lock or %rax, T_CPUS_SEEN(%r13)
    inc %rcx
    cmp %r13, C_FPU_OWNER(%rbx)         /* fpregs_state_valid: still live in this CPU's registers? */
    jne 2f
    cmp %rcx, T_LAST_CPU(%r13)
    je 3f
2:  mov T_AREA(%r13), %rdi
    mov $-1, %eax
    mov $-1, %edx
    cmpl $0, use_fxsave
    jne 4f
    xrstor64 (%rdi)
    jmp 5f
4:  fxrstor64 (%rdi)
5:
    mov %r13, C_FPU_OWNER(%rbx)
    mov %rcx, T_LAST_CPU(%r13)
3:  ret

/* pick_next: %r13 = the next runnable task after %r12 (marked running), or %r12 if none; spins if none at all. */
pick_next:
1:  mov $1, %eax
    xchg %eax, runqueue_lock
    test %eax, %eax
    jnz 1b
    xor %ecx, %ecx
    test %r12, %r12
    jz 2f
    mov T_INDEX(%r12), %rcx
    inc %ecx
2:  mov ntasks, %edx                    /* try each task once, starting after the current one */
3:  cmp ntasks, %ecx
    jb 4f
    xor %ecx, %ecx
4:  mov %ecx, %eax
    imul $T_SIZE, %eax
    add $tasks, %eax
    cmpq $0, T_STATE(%rax)
    je 6f
    inc %ecx
    dec %edx
    jnz 3b
    movl $0, runqueue_lock              /* nothing runnable: keep the current task, if any */
    mov %r12, %r13
    test %r12, %r12
    jnz 7f
    pause
    jmp 1b
6:  movq $1, T_STATE(%rax)
    mov %rax, %r13
    movl $0, runqueue_lock
7:  ret

/* check_end: a task reported a mismatch, or enough switches: the BSP reports and exits. */
check_end:
    cmpq $0, C_INDEX(%rbx)
    jne 9f
    cmpl $0, failed
    jne report_failure
    mov switches, %rax
    cmp switches_target, %eax
    jae report_success
9:  ret

/* ---- entries -------------------------------------------------------------------------------------- */
.macro SAVE_GPRS
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rbp
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
.endm
.macro RESTORE_GPRS
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rbp
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
.endm

timer_entry:
    SAVE_GPRS
    lock incq timer_switches
    cmpl $2, ncpus
    je 1f
    mov $0x20, %al                      /* PIC EOI */
    out %al, $0x20
    jmp 2f
1:  mov $LAPIC, %r8d
    movl $0, LAPIC_EOI(%r8)
2:  call schedule
    RESTORE_GPRS
    iretq

/* pf_entry: a task's store to its fresh page: map that page, unmap its sibling, switch. */
pf_entry:
    SAVE_GPRS
    mov %cr2, %rax
    sub $FRESH_BASE, %rax
    cmp $(NTASKS * 2 * 4096), %rax
    jae exc_entry_pf
    shr $12, %rax
    lea fresh_pt(,%rax,8), %rdi
    mov %rax, %rcx
    shl $12, %rcx
    add $(FRESH_BASE | PTE_P | PTE_W | PTE_U), %rcx
    mov %rcx, (%rdi)
    xor $1, %rax
    lea fresh_pt(,%rax,8), %rdi
    movq $0, (%rdi)
    shl $12, %rax
    add $FRESH_BASE, %rax
    invlpg (%rax)
    mov %cr2, %rax
    invlpg (%rax)
    lock incq fault_switches
    call schedule
    RESTORE_GPRS
    add $8, %rsp                        /* the error code */
    iretq

task_first_run:
    RESTORE_GPRS
    iretq

exc_entry_pf:
    RESTORE_GPRS
    pushq $VEC_PF
    jmp exc_common

/* ---- reports (BSP, ring 0) ------------------------------------------------------------------------ */
report_header:
    PUTS64 "xstate: level="
    xor %eax, %eax                      /* the highest any task found */
    xor %ecx, %ecx
1:  mov %ecx, %edx
    imul $T_SIZE, %edx
    cmp tasks + T_LEVEL(%rdx), %rax
    jae 2f
    mov tasks + T_LEVEL(%rdx), %rax
2:  inc %ecx
    cmp ntasks, %ecx
    jb 1b
    call putdec64
    PUTS64 " user-xcr0=0x"
    mov user_xcr0, %rax
    call puthex64
    PUTS64 " kernel-xcr0=0x"
    mov kernel_xcr0, %rax
    call puthex64
    PUTS64 "\n"
    ret

report_failure:
    cli
    call report_header
    PUTS64 "xstate: FAIL task "
    mov failed, %eax
    dec %eax
    call putdec64
    PUTS64 " offset "
    mov fail_offset, %rax
    call putdec64
    PUTS64 " got 0x"
    mov fail_got, %rax
    call puthex64
    PUTS64 " want 0x"
    mov fail_want, %rax
    call puthex64
    PUTS64 " after "
    mov switches, %rax
    call putdec64
    PUTS64 " switches\n"
    mov $EXIT_FAIL, %eax
    jmp exit64

report_success:
    cli
    call report_header
    PUTS64 "xstate: switches="
    mov switches, %rax
    call putdec64
    PUTS64 " timer="
    mov timer_switches, %rax
    call putdec64
    PUTS64 " faults="
    mov fault_switches, %rax
    call putdec64
    PUTS64 "\n"
    xor %ebx, %ebx
1:  mov %ebx, %edi
    imul $T_SIZE, %edi
    add $tasks, %edi
    PUTS64 "xstate: task "
    mov %ebx, %eax
    call putdec64
    PUTS64 " iterations="
    mov T_ITERS(%rdi), %rax
    call putdec64
    PUTS64 " cpus=0x"
    mov T_CPUS_SEEN(%rdi), %rax
    call puthex64
    PUTS64 "\n"
    inc %ebx
    cmp ntasks, %ebx
    jb 1b
    PUTS64 "xstate: ok\n"
    mov $EXIT_OK, %eax
    jmp exit64

/* ---- ring 3 --------------------------------------------------------------------------------------- */
/*
 * user_task (CPL 3, %rdi = task index): find the level, build the pattern, load it, then check for ever.
 * %r15 = index, %r14 = user data, %r13 = TCB, %r12 = store routine, %r11 = fault store routine,
 * %r10 = iterations left before the next fault, %r9 = which of the two fresh pages is next.
 */
user_task:
    mov %rdi, %r15
    mov %edi, %r13d
    imul $T_SIZE, %r13d
    add $tasks, %r13d
    mov %edi, %r14d
    imul $U_SIZE, %r14d
    add $userdata, %r14d
    call detect_level                   /* %eax = level */
    cmp max_level, %eax
    jbe 1f
    mov max_level, %eax
1:  mov %rax, T_LEVEL(%r13)
    lea 1(%r15), %rdx                   /* pattern: qword j = (index + 1) * 0x0101010101010101 ^ j * golden */
    mov $0x0101010101010101, %rax
    imul %rax, %rdx
    mov $0x9e3779b97f4a7c15, %r8
    xor %ecx, %ecx
2:  mov %rcx, %rax
    imul %r8, %rax
    xor %rdx, %rax
    mov %rax, U_PATTERN(%r14,%rcx,8)
    inc %ecx
    cmp $IMAGE_QWORDS, %ecx
    jb 2b
    mov T_LEVEL(%r13), %rax
    lea U_PATTERN(%r14), %rsi
    mov load_routines(,%rax,8), %rcx
    call *%rcx
    mov store_routines(,%rax,8), %r12
    mov fault_routines(,%rax,8), %r11
    lea U_EXPECTED(%r14), %rbx          /* the expected image: the registers as loaded, stored once */
    call *%r12
    mov every, %r10d
    xor %r9d, %r9d

user_loop:
    lea U_SCRATCH(%r14), %rbx
    call *%r12
    lea U_SCRATCH(%r14), %rsi
    lea U_EXPECTED(%r14), %rdi
    mov $IMAGE_QWORDS, %ecx
    repe cmpsq
    jne user_mismatch
    incq T_ITERS(%r13)
    cmpl $0, hold
    jne user_hold
    test %r10d, %r10d
    jz user_loop                        /* every=0: never fault */
    dec %r10d
    jnz user_loop
    mov every, %r10d
    mov %r15, %rbx                      /* the fresh page: FRESH_BASE + (2 * index + r9) * 4096 */
    shl $1, %rbx
    add %r9, %rbx
    shl $12, %rbx
    add $FRESH_BASE, %rbx
    xor $1, %r9d
    call *%r11                          /* faults: the kernel maps the page and switches */
    mov %rbx, %rsi                      /* what landed there must be the last register's bytes */
    lea U_EXPECTED(%r14), %rdi
    mov T_LEVEL(%r13), %rax
    mov last_reg_offset(,%rax,8), %rax
    add %rax, %rdi
    mov T_LEVEL(%r13), %rax
    mov last_reg_qwords(,%rax,8), %rcx
    repe cmpsq
    jne user_mismatch_fresh
    jmp user_loop

/* hold=N: one exit to the VMM per iteration; the first task's CPU reports after N iterations of every task. */
user_hold:
    mov $IDLE_PORT, %dx
    out %al, (%dx)
    cmp $0, %r15
    jne user_loop
    xor %ecx, %ecx
1:  mov %ecx, %eax
    imul $T_SIZE, %eax
    add $tasks, %eax
    mov T_ITERS(%rax), %rax
    cmp hold, %eax
    jb user_loop
    inc %ecx
    cmp ntasks, %ecx
    jb 1b
    PUTS64 "xstate: level="
    mov T_LEVEL(%r13), %rax
    call putdec64
    PUTS64 " user-xcr0=0x"
    mov user_xcr0, %rax
    call puthex64
    PUTS64 " kernel-xcr0=0x"
    mov kernel_xcr0, %rax
    call puthex64
    PUTS64 "\nxstate: held "
    mov hold, %eax
    call putdec64
    PUTS64 " iterations with an exit each on "
    mov ntasks, %eax
    call putdec64
    PUTS64 " cpus\nxstate: ok\n"
    mov $EXIT_OK, %eax
    jmp exit64

user_mismatch_fresh:
    mov T_LEVEL(%r13), %rax             /* report the offset as the last register's in the image */
    mov last_reg_offset(,%rax,8), %rdx
    add %rsi, %rdx
    sub %rbx, %rdx
    jmp 1f
user_mismatch:
    lea U_SCRATCH(%r14), %rax
    mov %rsi, %rdx
    sub %rax, %rdx
1:  sub $8, %rdx                        /* repe cmpsq stopped one qword past the difference */
    xor %eax, %eax
    lea 1(%r15), %ecx
    lock cmpxchg %ecx, fail_claim       /* the first task to fail reports */
    jne 2f
    mov -8(%rsi), %rax
    mov %rax, fail_got
    mov -8(%rdi), %rax
    mov %rax, fail_want
    mov %rdx, fail_offset
    mov %ecx, failed                    /* the BSP's next switch reports it */
2:  pause
    jmp 2b

/* detect_level (CPL 3): 2 with AVX-512F usable, 1 with AVX usable, else 0; notes XCR0 as seen here. */
detect_level:
    push %rbx
    push %rcx
    push %rdx
    mov $1, %eax
    cpuid
    xor %ebx, %ebx                      /* level */
    bt $27, %ecx                        /* OSXSAVE */
    jnc 9f
    mov %ecx, %esi
    xor %ecx, %ecx
    xgetbv
    mov %eax, user_xcr0
    bt $28, %esi                        /* AVX */
    jnc 9f
    mov %eax, %esi
    and $6, %eax
    cmp $6, %eax
    jne 9f
    mov $1, %ebx
    mov $7, %eax
    xor %ecx, %ecx
    cpuid
    bt $16, %ebx                        /* AVX512F */
    mov $1, %ebx
    jnc 9f
    and $0xe6, %esi
    cmp $0xe6, %esi
    jne 9f
    mov $2, %ebx
9:  mov %ebx, %eax
    pop %rdx
    pop %rcx
    pop %rbx
    ret

/* Per level: load every register from (%rsi); store every register to (%rbx); fault-store the last one. */
load_sse:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu \n * 64(%rsi), %xmm\n
    .endr
    ret
store_sse:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    movdqu %xmm\n, \n * 64(%rbx)
    .endr
    ret
fault_sse:
    movdqu %xmm15, (%rbx)
    ret
load_avx:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmovdqu \n * 64(%rsi), %ymm\n
    .endr
    ret
store_avx:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    vmovdqu %ymm\n, \n * 64(%rbx)
    .endr
    ret
fault_avx:
    vmovdqu %ymm15, (%rbx)
    ret
load_avx512:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    vmovdqu64 \n * 64(%rsi), %zmm\n
    .endr
    .irp n, 0,1,2,3,4,5,6,7
    kmovw K_OFFSET + \n * 2(%rsi), %k\n
    .endr
    ret
store_avx512:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    vmovdqu64 %zmm\n, \n * 64(%rbx)
    .endr
    .irp n, 0,1,2,3,4,5,6,7
    kmovw %k\n, K_OFFSET + \n * 2(%rbx)
    .endr
    ret
fault_avx512:
    vmovdqu64 %zmm31, (%rbx)
    ret

    .pushsection .rodata
    .balign 8
load_routines:   .quad load_sse, load_avx, load_avx512
store_routines:  .quad store_sse, store_avx, store_avx512
fault_routines:  .quad fault_sse, fault_avx, fault_avx512
last_reg_offset: .quad 15 * 64, 15 * 64, 31 * 64
last_reg_qwords: .quad 2, 4, 8
key_switches:    .asciz "switches="
key_cpus:        .asciz "cpus="
key_every:       .asciz "every="
key_level:       .asciz "level="
key_full:        .asciz "full="
key_compact:     .asciz "compact="
key_hold:        .asciz "hold="
key_hz:          .asciz "hz="
    .popsection

/* ---- data ----------------------------------------------------------------------------------------- */
    .pushsection .data
    .balign 16
gdt:
    .quad 0                             /* null */
    .quad 0x00af9a000000ffff            /* 0x08 kernel code, 64-bit */
    .quad 0x00cf92000000ffff            /* 0x10 kernel data */
    .quad 0x00cff2000000ffff            /* 0x18 user data */
    .quad 0x00affa000000ffff            /* 0x20 user code, 64-bit */
    .quad 0, 0, 0, 0                    /* 0x28, 0x38: one TSS per CPU, filled by setup_descriptors */
    .quad 0x00cf9a000000ffff            /* 0x48 32-bit code, for the AP trampoline */
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
idt_ptr:
    .word 256 * 16 - 1
    .quad idt

    .balign 8
switches_target: .long 0
ncpus:           .long 0
every:           .long 0
max_level:       .long 0
full_xcr0:       .long 0
compact:         .long 0
hold:            .long 0
hz:              .long 0
ntasks:          .long 0
ap_alive:        .long 0
runqueue_lock:   .long 0
failed:          .long 0
fail_claim:      .long 0
use_fxsave:      .long 0
    .balign 8
kernel_xcr0:     .quad 0
user_xcr0:       .quad 0
switches:        .quad 0
timer_switches:  .quad 0
fault_switches:  .quad 0
fail_offset:     .quad 0
fail_got:        .quad 0
fail_want:       .quad 0

    /* Page tables: 0-4 GiB in 2 MiB pages, except 2-4 MiB: 4 KiB pages, the fresh ones not present. */
    .balign 4096
pml4:
    .quad pdpt + PTE_TABLE
    .fill 511, 8, 0
pdpt:
    .quad pd + PTE_TABLE
    .quad pd + 0x1000 + PTE_TABLE
    .quad pd + 0x2000 + PTE_TABLE
    .quad pd + 0x3000 + PTE_TABLE
    .fill 508, 8, 0
pd:
    .quad PTE_LARGE
    .quad fresh_pt + PTE_TABLE
    .set page, 2
    .rept 2046
    .quad (page << 21) | PTE_LARGE
    .set page, page + 1
    .endr
fresh_pt:
    .fill 512, 8, 0
    .popsection

    .pushsection .bss
    .balign 4096
areas:                                  /* one 4 KiB XSAVE area per task */
    .skip NTASKS * 4096
kstacks:
    .skip NTASKS * 4096
ustacks:
    .skip NTASKS * 4096
userdata:
    .skip NTASKS * U_SIZE
    .balign 64
tasks:
    .skip NTASKS * T_SIZE
percpu:
    .skip 2 * C_SIZE
    .balign 16
idt:
    .skip 256 * 16
    .balign 128
tss0:
    .skip TSS_SIZE_ALIGNED
tss1:
    .skip TSS_SIZE_ALIGNED
    .balign 16
    .skip 4096
ap_boot_stack_top:
    .popsection
