/*
 * macros.S - assembler macros shared by the guests.
 *
 * PUTS32/PUTS64 print a string literal without the caller having to name it:
 * the text goes to .rodata under a unique local label.  The macros preserve
 * every register so they can be dropped between any two instructions.
 */

.macro PUTS32 text
    .pushsection .rodata
.Lputs32_\@: .asciz "\text"
    .popsection
    push %esi
    mov $.Lputs32_\@, %esi
    call puts32
    pop %esi
.endm

.macro PUTS64 text
    .pushsection .rodata
.Lputs64_\@: .asciz "\text"
    .popsection
    push %rsi
    mov $.Lputs64_\@, %esi
    call puts64
    pop %rsi
.endm

/* A multiboot v1 header (without the a.out fields). */
.macro MULTIBOOT_HEADER flags
    .pushsection .multiboot, "a"
    .balign 4
multiboot_header:
    .long MB_HEADER_MAGIC
    .long \flags
    .long -(MB_HEADER_MAGIC + (\flags))
    .popsection
.endm

/*
 * LONG_MODE_PAGING_ON32 tables: from 32-bit protected mode, CR3 = tables (a PML4), CR4.PAE,
 * EFER.LME, then CR0.PG|PE: long mode is active (compatibility mode) until a far jump into a
 * 64-bit code segment.  Clobbers %eax, %ecx, %edx.
 */
.macro LONG_MODE_PAGING_ON32 tables
    mov $\tables, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $CR4_PAE, %eax
    mov %eax, %cr4
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $(CR0_PG | CR0_PE), %eax
    mov %eax, %cr0
.endm
