/*
 * platform.S - drive the PC platform devices the way a small OS does.
 *
 * Shared by platform32.S (32-bit protected mode) and platform64.S (long
 * mode): the including guest selects .code32 or .code64 first and defines
 *   PUTS "text"   print a literal            (PUTS32 / PUTS64)
 *   PUTHEX        print %eax in hex          (call puthex32 / puthex64)
 *   PUTDEC        print %eax in decimal      (call putdec32 / putdec64)
 *   PUTC          print %al                  (call putc32 / putc64)
 *   FAIL_EXIT     leave with EXIT_FAIL       (jmp to an exit32/exit64 path)
 * and installs interrupt gates for PIC_VECTOR_BASE..+15 whose entry stubs save
 * the registers and call irq0_body, irq4_body, irq8_body or irq_other_body.
 *
 * Why one body for two CPU modes: the device protocol does not depend on the
 * CPU mode, and the two guests must print exactly the same lines so that
 * both can be held to the same expectations.  The code below therefore uses
 * only instructions that assemble to the same meaning in both modes: 32-bit
 * registers, port I/O, absolute addresses below 2 GiB (indexed through
 * 32-bit registers, which long mode accepts with an address-size prefix)
 * and call/ret; no push/pop, whose stack slots differ in width.
 * Routines clobber %eax, %ebx, %ecx, %edx, %esi and %edi.
 *
 * Ring-0 code is emulated at about 1 us per instruction on the nested KVM
 * this project develops on, so every wait here is a HLT until an interrupt,
 * and polling loops are bounded and short.
 */

/* 8259A pair */
#define PIC1_CMD        0x20
#define PIC1_DATA       0x21
#define PIC2_CMD        0xa0
#define PIC2_DATA       0xa1
#define ICW1_INIT_ICW4  0x11            /* edge triggered, cascade, ICW4 follows */
#define PIC_VECTOR_BASE 0x20
#define PIC2_VECTOR     0x28
#define ICW3_MASTER     0x04            /* slave on IRQ 2 */
#define ICW3_SLAVE      0x02            /* cascade identity 2 */
#define ICW4_8086       0x01
#define OCW2_EOI        0x20            /* non-specific end of interrupt */
#define OCW3_READ_IRR   0x0a
#define OCW3_READ_ISR   0x0b
#define MASK_ALL        0xff
#define MASTER_MASK     0xfa            /* IRQ 0 (PIT) and IRQ 2 (cascade) open */
#define SLAVE_MASK      0xfe            /* IRQ 8 (RTC) open */
#define IRQ0_BIT        0x01
#define IRQ4_BIT        0x10
#define POST_PORT       0x80            /* io_wait: a write nobody cares about */

/* 8254 PIT */
#define PIT_CH0         0x40
#define PIT_MODE        0x43
#define PIT_CH0_MODE2   0x34            /* channel 0, lobyte/hibyte, mode 2, binary */
#define PIT_CH0_SHUTDOWN 0x30           /* channel 0, lobyte/hibyte, mode 0 (one shot) */
#define PIT_LATCH_CH0   0x00            /* counter latch command, channel 0 */
#define PIT_READBACK_CH0 0xc2           /* read-back: latch count and status of channel 0 */
#define PIT_STATUS_CFG  0x3f            /* status bits that echo the programmed mode */
#define PIT_DIVISOR     11932           /* 1193182 Hz / 11932 = 100 Hz */
#define PIT_TICKS       100             /* one second at 100 Hz */
#define PIT_CH2         0x42
#define PIT_CH2_MODE0   0xb0            /* channel 2, lobyte/hibyte, mode 0 (one shot), binary */
#define CH2_COUNT       11932           /* 10 ms */
#define PORT_B          0x61
#define PORTB_GATE2     0x01
#define PORTB_SPEAKER   0x02
#define PORTB_OUT2      0x20
#define OUT2_POLLS      200000          /* 10 ms of polling takes a few hundred exits */

/* MC146818 RTC */
#define CMOS_INDEX      0x70
#define CMOS_DATA       0x71
#define RTC_SEC         0x00
#define RTC_MIN         0x02
#define RTC_HOUR        0x04
#define RTC_DAY         0x07
#define RTC_MONTH       0x08
#define RTC_YEAR        0x09
#define RTC_REG_A       0x0a
#define RTC_REG_B       0x0b
#define RTC_REG_C       0x0c
#define RTC_CENTURY     0x32
#define RTC_A_UIP       0x80
#define RTC_A_DIVIDER   0xf0
#define RTC_RATE_8HZ    0x0d            /* 32768 >> (13 - 1) = 8 Hz */
#define RTC_B_PIE       0x40
#define RTC_B_UIE       0x10
#define RTC_B_BINARY    0x04
#define RTC_B_24H       0x02
#define RTC_C_PF        0x40
#define RTC_C_UF        0x10
#define RTC_HOUR_PM     0x80
#define RTC_PERIODIC_N  4
#define RTC_UIP_POLLS   100000          /* UIP lasts 244 us; a VMM that never clears it is a bug */
#define RTC_FIELDS      7               /* sec, min, hour, day, month, year, century */

/* 16550 UART at COM1 */
#define UART_RBR        (COM1_BASE + 0)
#define UART_THR        (COM1_BASE + 0)
#define UART_DLL        (COM1_BASE + 0)
#define UART_IER        (COM1_BASE + 1)
#define UART_DLM        (COM1_BASE + 1)
#define UART_IIR        (COM1_BASE + 2)
#define UART_FCR        (COM1_BASE + 2)
#define UART_LCR        (COM1_BASE + 3)
#define UART_MCR        (COM1_BASE + 4)
#define UART_LSR        (COM1_BASE + 5)
#define UART_MSR        (COM1_BASE + 6)
#define LCR_DLAB        0x80
#define LCR_8N1         0x03
#define DIVISOR_115200  1
#define FCR_ON_CLEAR    0x07            /* enable, clear both FIFOs, trigger at 1 byte */
#define MCR_NORMAL      0x0b            /* DTR, RTS, OUT2 (the IRQ line's gate on a PC) */
#define MCR_LOOP_ALL    0x1f            /* loopback with every modem output on */
#define MCR_LOOP_RTS    0x12            /* loopback with RTS only */
#define MSR_LINES       0xf0
#define IER_RDI         0x01
#define IIR_NO_INT      0x01
#define LSR_DR          0x01
#define LOOP_POLLS      1000
#define RX_RING_MASK    63

/* ---- PIC ------------------------------------------------------------------ */

/* pic_remap: mask everything, run ICW1-4 on both chips, open IRQ 0, 2 and 8. */
pic_remap:
    mov $MASK_ALL, %al
    out %al, $PIC1_DATA
    out %al, $PIC2_DATA
    mov $ICW1_INIT_ICW4, %al
    out %al, $PIC1_CMD
    out %al, $POST_PORT
    out %al, $PIC2_CMD
    out %al, $POST_PORT
    mov $PIC_VECTOR_BASE, %al
    out %al, $PIC1_DATA
    out %al, $POST_PORT
    mov $PIC2_VECTOR, %al
    out %al, $PIC2_DATA
    out %al, $POST_PORT
    mov $ICW3_MASTER, %al
    out %al, $PIC1_DATA
    out %al, $POST_PORT
    mov $ICW3_SLAVE, %al
    out %al, $PIC2_DATA
    out %al, $POST_PORT
    mov $ICW4_8086, %al
    out %al, $PIC1_DATA
    out %al, $POST_PORT
    out %al, $PIC2_DATA
    out %al, $POST_PORT
    mov $MASTER_MASK, %al
    out %al, $PIC1_DATA
    mov $SLAVE_MASK, %al
    out %al, $PIC2_DATA
    PUTS "pic: remapped to vectors 0x20 and 0x28\n"
    PUTS "pic: imr master=0x"
    xor %eax, %eax
    in $PIC1_DATA, %al
    PUTHEX
    PUTS " slave=0x"
    in $PIC2_DATA, %al
    PUTHEX
    PUTS "\n"
    call pic_read_isr
    PUTS "pic: isr=0x"
    PUTHEX
    PUTS "\n"
    ret

/* pic_read_isr: %eax = master ISR | slave ISR << 8 (OCW3), then back to IRR reads. */
pic_read_isr:
    mov $OCW3_READ_ISR, %al
    out %al, $PIC1_CMD
    out %al, $PIC2_CMD
    xor %eax, %eax
    in $PIC2_CMD, %al
    shl $8, %eax
    in $PIC1_CMD, %al
    mov %eax, %edx
    mov $OCW3_READ_IRR, %al
    out %al, $PIC1_CMD
    out %al, $PIC2_CMD
    mov %edx, %eax
    ret

/* pic_set_mask_bits / pic_clear_mask_bits: %bl = bits of the master IMR. */
pic_set_mask_bits:
    in $PIC1_DATA, %al
    or %bl, %al
    out %al, $PIC1_DATA
    ret
pic_clear_mask_bits:
    in $PIC1_DATA, %al
    not %bl
    and %bl, %al
    out %al, $PIC1_DATA
    ret

/* ---- PIT ------------------------------------------------------------------ */

/* pit_read_latched: %eax = the 16-bit count latched in channel 0 (low byte first). */
pit_read_latched:
    xor %eax, %eax
    in $PIT_CH0, %al
    mov %eax, %edx
    in $PIT_CH0, %al
    shl $8, %eax
    or %edx, %eax
    ret

/*
 * pit_program: channel 0 in mode 2 at 100 Hz, then read it back the two ways
 * an OS calibrating a clock does: the counter latch command and the
 * read-back command (status byte first, then the count).
 */
pit_program:
    mov $PIT_CH0_MODE2, %al
    out %al, $PIT_MODE
    mov $(PIT_DIVISOR & 0xff), %al
    out %al, $PIT_CH0
    mov $(PIT_DIVISOR >> 8), %al
    out %al, $PIT_CH0
    PUTS "pit: channel 0 mode 2 divisor 11932 (100 Hz)\n"

    mov $PIT_READBACK_CH0, %al
    out %al, $PIT_MODE
    xor %eax, %eax
    in $PIT_CH0, %al
    and $PIT_STATUS_CFG, %al
    PUTS "pit: read-back status=0x"
    PUTHEX
    PUTS "\n"
    call pit_read_latched
    cmp $PIT_DIVISOR, %eax
    ja .Lpit_bad_count

    mov $PIT_LATCH_CH0, %al
    out %al, $PIT_MODE
    call pit_read_latched
    cmp $PIT_DIVISOR, %eax
    ja .Lpit_bad_count
    mov %eax, %esi
    PUTS "pit: latched count in range\n"   /* time passes: the next latch must differ */
    mov $PIT_LATCH_CH0, %al
    out %al, $PIT_MODE
    call pit_read_latched
    cmp $PIT_DIVISOR, %eax
    ja .Lpit_bad_count
    cmp %esi, %eax
    je .Lpit_stuck
    PUTS "pit: counter runs between latches\n"
    ret
.Lpit_bad_count:
    mov %eax, %esi
    PUTS "pit: FAIL count 0x"
    mov %esi, %eax
    PUTHEX
    PUTS " above the divisor\n"
    FAIL_EXIT
.Lpit_stuck:
    PUTS "pit: FAIL the count did not move between two latches\n"
    FAIL_EXIT

/*
 * pit_channel2_oneshot: Linux's TSC calibration set-up.  Through port 0x61
 * open channel 2's gate with the speaker off, start a 10 ms one-shot (mode
 * 0) and poll OUT2 in port 0x61: low while counting, high at the end.
 */
pit_channel2_oneshot:
    in $PORT_B, %al
    and $~PORTB_SPEAKER, %al
    or $PORTB_GATE2, %al
    out %al, $PORT_B
    mov $PIT_CH2_MODE0, %al
    out %al, $PIT_MODE
    mov $(CH2_COUNT & 0xff), %al
    out %al, $PIT_CH2
    mov $(CH2_COUNT >> 8), %al
    out %al, $PIT_CH2
    in $PORT_B, %al
    test $PORTB_OUT2, %al
    jnz .Lout2_early
    mov $OUT2_POLLS, %ecx
1:  in $PORT_B, %al
    test $PORTB_OUT2, %al
    jnz 2f
    dec %ecx
    jnz 1b
    PUTS "pit: FAIL channel 2 never reached its terminal count (port 0x61 bit 5)\n"
    FAIL_EXIT
2:  and $~(PORTB_GATE2 | PORTB_SPEAKER), %al
    out %al, $PORT_B
    PUTS "pit: channel 2 one-shot, out2 low then high (port 0x61)\n"
    ret
.Lout2_early:
    PUTS "pit: FAIL channel 2 output high right after programming mode 0\n"
    FAIL_EXIT

/*
 * pit_count_ticks: let IRQ 0 run until PIT_TICKS interrupts were counted.
 * The host times the two lines printed around the wait to check the rate.
 */
pit_count_ticks:
    movl $0, pit_ticks
    PUTS "pit: counting 100 ticks\n"
    mov $IRQ0_BIT, %bl
    call pic_clear_mask_bits
1:  cli
    cmpl $PIT_TICKS, pit_ticks
    jae 2f
    sti                             /* STI's shadow makes STI; HLT atomic */
    hlt
    jmp 1b
2:  mov $IRQ0_BIT, %bl
    call pic_set_mask_bits
    PUTS "pit: 100 ticks, isr in handler=0x"
    mov isr_in_irq0, %eax
    PUTHEX
    PUTS "\n"
    ret

/*
 * pit_shutdown: stop channel 0 as Linux does when it stops using the PIT
 * (mode 0 with a zero count: one last edge after 55 ms, then quiet), so
 * that nothing but the RTC ticks while the guest idles.
 */
pit_shutdown:
    mov $PIT_CH0_SHUTDOWN, %al
    out %al, $PIT_MODE
    xor %al, %al
    out %al, $PIT_CH0
    out %al, $PIT_CH0
    ret

/* irq0_body: one PIT tick; the first one records the PIC's ISR as seen from the handler. */
irq0_body:
    incl pit_ticks
    cmpl $1, pit_ticks
    jne 1f
    call pic_read_isr
    mov %eax, isr_in_irq0
1:  mov $OCW2_EOI, %al
    out %al, $PIC1_CMD
    ret

/* ---- RTC ------------------------------------------------------------------ */

/* cmos_read: %al = CMOS register %bl. */
cmos_read:
    mov %bl, %al
    out %al, $CMOS_INDEX
    in $CMOS_DATA, %al
    ret

/* cmos_write: CMOS register %bl = %bh. */
cmos_write:
    mov %bl, %al
    out %al, $CMOS_INDEX
    mov %bh, %al
    out %al, $CMOS_DATA
    ret

/* rtc_wait_not_updating: return once register A's UIP is clear (bounded). */
rtc_wait_not_updating:
    mov $RTC_UIP_POLLS, %ecx
    mov $RTC_REG_A, %bl
1:  call cmos_read
    test $RTC_A_UIP, %al
    jz 2f
    dec %ecx
    jnz 1b
    PUTS "rtc: FAIL update-in-progress never clears\n"
    FAIL_EXIT
2:  ret

/* rtc_snapshot: the seven time fields into the byte array at %edi (raw register values). */
rtc_snapshot:
    call rtc_wait_not_updating
    xor %esi, %esi
1:  movzbl rtc_field_regs(%esi), %ebx
    call cmos_read
    mov %al, (%edi, %esi)
    inc %esi
    cmp $RTC_FIELDS, %esi
    jb 1b
    ret

/* bcd_to_bin: %al (BCD) -> %al (binary); %edx clobbered. */
bcd_to_bin:
    movzbl %al, %eax
    mov %eax, %edx
    shr $4, %eax
    imul $10, %eax, %eax
    and $0xf, %edx
    add %edx, %eax
    ret

/* put2dec: print %eax (< 100) as two decimal digits. */
put2dec:
    mov $10, %ecx
    xor %edx, %edx
    div %ecx
    add $'0', %al
    PUTC
    mov %dl, %al
    add $'0', %al
    PUTC
    ret

/*
 * rtc_print_date: read the clock as an OS does (wait for UIP clear, read
 * every field, read again until two snapshots agree, convert from BCD and
 * 12-hour format as register B says) and print the ISO date, and the
 * time (UTC, as both VMMs keep the RTC by default) when time=1 was given.
 */
rtc_print_date:
1:  mov $rtc_raw, %edi
    call rtc_snapshot
    mov $rtc_raw2, %edi
    call rtc_snapshot
    mov rtc_raw, %eax
    cmp rtc_raw2, %eax
    jne 1b
    mov rtc_raw + 4, %eax
    cmp rtc_raw2 + 4, %eax
    jne 1b
    mov $RTC_REG_B, %bl
    call cmos_read
    mov %al, rtc_reg_b
    xor %esi, %esi                  /* to binary, keeping the PM flag of the hour apart */
2:  movzbl rtc_raw(%esi), %eax
    cmp $2, %esi
    jne 3f
    mov %al, %ah
    and $RTC_HOUR_PM, %ah
    mov %ah, rtc_pm
    and $0x7f, %al
3:  testb $RTC_B_BINARY, rtc_reg_b
    jnz 4f
    call bcd_to_bin
4:  mov %al, rtc_raw(%esi)
    inc %esi
    cmp $RTC_FIELDS, %esi
    jb 2b
    testb $RTC_B_24H, rtc_reg_b     /* 12-hour mode: 12 AM is 0, 1-11 PM are 13-23 */
    jnz 6f
    movzbl rtc_raw + 2, %eax
    cmp $12, %eax
    jne 5f
    xor %eax, %eax
5:  cmpb $0, rtc_pm
    je 7f
    add $12, %eax
7:  mov %al, rtc_raw + 2
6:  PUTS "rtc: date "
    movzbl rtc_raw + 6, %eax        /* century and year */
    call put2dec
    movzbl rtc_raw + 5, %eax
    call put2dec
    mov $'-', %al
    PUTC
    movzbl rtc_raw + 4, %eax
    call put2dec
    mov $'-', %al
    PUTC
    movzbl rtc_raw + 3, %eax
    call put2dec
    PUTS "\n"
    cmpl $0, show_time              /* the time only on request: it differs between runs */
    je 8f
    PUTS "rtc: time "
    movzbl rtc_raw + 2, %eax
    call put2dec
    mov $':', %al
    PUTC
    movzbl rtc_raw + 1, %eax
    call put2dec
    mov $':', %al
    PUTC
    movzbl rtc_raw, %eax
    call put2dec
    PUTS " UTC\n"
8:  ret

/* rtc_ack: read register C (acknowledges IRQ 8); %al = its value. */
rtc_ack:
    mov $RTC_REG_C, %bl
    jmp cmos_read

/* rtc_set_interrupts: register B's PIE and UIE := %cl, then acknowledge what is pending. */
rtc_set_interrupts:
    mov $RTC_REG_B, %bl
    call cmos_read
    and $~(RTC_B_PIE | RTC_B_UIE), %al
    or %cl, %al
    mov %al, %bh
    call cmos_write
    jmp rtc_ack

/* rtc_periodic: the periodic interrupt at 8 Hz through IRQ 8 (slave PIC), RTC_PERIODIC_N times. */
rtc_periodic:
    mov $RTC_REG_A, %bl
    call cmos_read
    and $RTC_A_DIVIDER, %al
    or $RTC_RATE_8HZ, %al
    mov %al, %bh
    call cmos_write
    movl $0, rtc_periodic_irqs
    mov $RTC_B_PIE, %cl
    call rtc_set_interrupts
1:  cli
    cmpl $RTC_PERIODIC_N, rtc_periodic_irqs
    jae 2f
    sti
    hlt
    jmp 1b
2:  xor %ecx, %ecx
    call rtc_set_interrupts
    PUTS "rtc: 4 periodic interrupts at 8 Hz\n"
    ret

/* rtc_idle: PIT off, then HLT through %eax update-ended interrupts (1 Hz): the idle benchmark's wait. */
rtc_idle:
    mov %eax, %edi
    call pit_shutdown
    mov %edi, %eax
    PUTS "rtc: idle for "
    PUTDEC
    PUTS " update interrupts\n"
    movl $0, rtc_update_irqs
    mov $RTC_B_UIE, %cl
    call rtc_set_interrupts
1:  cli
    cmp %edi, rtc_update_irqs
    jae 2f
    sti
    hlt
    jmp 1b
2:  xor %ecx, %ecx
    call rtc_set_interrupts
    PUTS "rtc: "
    mov %edi, %eax
    PUTDEC
    PUTS " update interrupts\n"
    ret

/* irq8_body: read register C (which also lowers IRQ 8), count by cause, EOI slave then master. */
irq8_body:
    call rtc_ack
    test $RTC_C_PF, %al
    jz 1f
    incl rtc_periodic_irqs
1:  test $RTC_C_UF, %al
    jz 2f
    incl rtc_update_irqs
2:  mov $OCW2_EOI, %al
    out %al, $PIC2_CMD
    out %al, $PIC1_CMD
    ret

/* ---- UART ----------------------------------------------------------------- */

/* serial_setup: 115200 8N1, FIFOs on, DTR/RTS/OUT2, no interrupts yet. */
serial_setup:
    xor %al, %al
    mov $UART_IER, %dx
    out %al, (%dx)
    mov $LCR_DLAB, %al
    mov $UART_LCR, %dx
    out %al, (%dx)
    mov $DIVISOR_115200, %al
    mov $UART_DLL, %dx
    out %al, (%dx)
    xor %al, %al
    mov $UART_DLM, %dx
    out %al, (%dx)
    mov $LCR_8N1, %al
    mov $UART_LCR, %dx
    out %al, (%dx)
    mov $FCR_ON_CLEAR, %al
    mov $UART_FCR, %dx
    out %al, (%dx)
    mov $MCR_NORMAL, %al
    mov $UART_MCR, %dx
    out %al, (%dx)
    PUTS "serial: 115200 8n1, fifo on\n"
    ret

/* serial_msr_lines: %eax = MSR bits 4-7 after setting MCR to %al. */
serial_msr_lines:
    mov $UART_MCR, %dx
    out %al, (%dx)
    mov $UART_MSR, %dx
    xor %eax, %eax
    in (%dx), %al
    and $MSR_LINES, %al
    ret

/*
 * serial_loopback: MCR bit 4 wires the transmitter to the receiver and the
 * modem outputs to the inputs.  Nothing may be printed meanwhile: it would
 * loop back too.  Results are printed once the UART is back to normal.
 */
serial_loopback:
    mov $MCR_LOOP_ALL, %al
    call serial_msr_lines
    mov %eax, loop_msr_all
    movl $0, loop_matched
    xor %esi, %esi
1:  movzbl loop_pattern(%esi), %eax
    test %al, %al
    jz 4f
    mov $UART_THR, %dx
    out %al, (%dx)
    mov $LOOP_POLLS, %ecx
    mov $UART_LSR, %dx
2:  in (%dx), %al
    test $LSR_DR, %al
    jnz 3f
    dec %ecx
    jnz 2b
    jmp 4f                          /* nothing came back: reported below */
3:  mov $UART_RBR, %dx
    in (%dx), %al
    cmp loop_pattern(%esi), %al
    jne 4f
    incl loop_matched
    inc %esi
    jmp 1b
4:  mov $MCR_LOOP_RTS, %al
    call serial_msr_lines
    mov %eax, loop_msr_rts
    mov $MCR_NORMAL, %al
    mov $UART_MCR, %dx
    out %al, (%dx)
    mov $UART_LSR, %dx              /* drop anything left in the receiver */
5:  in (%dx), %al
    test $LSR_DR, %al
    jz 6f
    mov $UART_RBR, %dx
    in (%dx), %al
    mov $UART_LSR, %dx
    jmp 5b
6:  PUTS "serial: loopback echoed "
    mov loop_matched, %eax
    PUTDEC
    PUTS " of 4 bytes, msr=0x"
    mov loop_msr_all, %eax
    PUTHEX
    PUTS " then 0x"
    mov loop_msr_rts, %eax
    PUTHEX
    PUTS "\n"
    ret

/*
 * serial_echo: receive %eax bytes through the RX interrupt (IER bit 0, IRQ 4
 * through the PIC) and print each one as the handler hands it over.
 */
serial_echo:
    mov %eax, %edi
    PUTS "serial: echo "
    PUTDEC
    PUTS " bytes received by irq\n"
    movl $0, rx_head
    movl $0, rx_tail
    mov $IER_RDI, %al
    mov $UART_IER, %dx
    out %al, (%dx)
    mov $IRQ4_BIT, %bl
    call pic_clear_mask_bits
    xor %esi, %esi                  /* bytes echoed */
1:  cli
    mov rx_tail, %ecx
    cmp rx_head, %ecx
    je 2f
    and $RX_RING_MASK, %ecx
    movzbl rx_ring(%ecx), %eax
    incl rx_tail
    PUTC
    inc %esi
    cmp %edi, %esi
    jae 3f
    jmp 1b
2:  sti
    hlt
    jmp 1b
3:  xor %al, %al
    mov $UART_IER, %dx
    out %al, (%dx)
    mov $IRQ4_BIT, %bl
    call pic_set_mask_bits
    PUTS "\nserial: "
    mov %esi, %eax
    PUTDEC
    PUTS " bytes echoed\n"
    ret

/* irq4_body: drain the UART while IIR says an interrupt is pending, then EOI. */
irq4_body:
1:  mov $UART_IIR, %dx
    in (%dx), %al
    test $IIR_NO_INT, %al
    jnz 3f
2:  mov $UART_LSR, %dx
    in (%dx), %al
    test $LSR_DR, %al
    jz 1b
    mov $UART_RBR, %dx
    in (%dx), %al
    mov rx_head, %ecx
    and $RX_RING_MASK, %ecx
    mov %al, rx_ring(%ecx)
    incl rx_head
    jmp 2b
3:  mov $OCW2_EOI, %al
    out %al, $PIC1_CMD
    ret

/* irq_other_body: an IRQ nobody asked for (e.g. a firmware timer still pending): count and EOI. */
irq_other_body:
    incl other_irqs
    mov $OCW2_EOI, %al
    out %al, $PIC2_CMD
    out %al, $PIC1_CMD
    ret

/* platform_main: every device in the order an OS brings them up; echo/idle by request. */
platform_main:
    call serial_setup
    call serial_loopback
    call pic_remap
    call pit_program
    call pit_channel2_oneshot
    call pit_count_ticks
    call rtc_print_date
    call rtc_periodic
    mov echo_count, %eax
    test %eax, %eax
    jz 1f
    call serial_echo
1:  mov idle_seconds, %eax
    test %eax, %eax
    jz 2f
    call rtc_idle
2:  ret

    .pushsection .rodata
rtc_field_regs:
    .byte RTC_SEC, RTC_MIN, RTC_HOUR, RTC_DAY, RTC_MONTH, RTC_YEAR, RTC_CENTURY
loop_pattern:
    .asciz "kvm!"
    .popsection

    .pushsection .data
    .balign 4
pit_ticks:          .long 0
isr_in_irq0:        .long 0
rtc_periodic_irqs:  .long 0
rtc_update_irqs:    .long 0
other_irqs:         .long 0
loop_matched:       .long 0
loop_msr_all:       .long 0
loop_msr_rts:       .long 0
rx_head:            .long 0
rx_tail:            .long 0
echo_count:         .long 0
idle_seconds:       .long 0
show_time:          .long 0
rtc_raw:            .skip 8
rtc_raw2:           .skip 8
rtc_reg_b:          .byte 0
rtc_pm:             .byte 0
    .balign 4
rx_ring:            .skip RX_RING_MASK + 1
    .popsection
