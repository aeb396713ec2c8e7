/*
 * exit_loop.c - the C baseline for kvmlite's exit round-trip benchmark.
 *
 * Drives /dev/kvm directly: one VM, 2 MiB of guest RAM at guest-physical 0,
 * one vCPU started straight in 64-bit long mode AT CPL 3 (segments, paging,
 * TSS and EFER set with KVM_SET_SREGS; no boot code runs).  Ring 3 matters:
 * on the nested KVM this project develops on, CPL 0 and real-mode code is
 * emulated by the host at about 1 us per instruction, while ring-3 code runs
 * natively, so only a ring-3 loop measures the exit path and not the emulator.
 *
 * The guest executes one of two loops, RCX = N times, then writes to the
 * "done" port 0x501 and spins:
 *   pio:  out dx, al          (DX = 0x500; allowed at CPL 3 by the TSS I/O
 *                              permission bitmap, see build_guest())
 *   mmio: mov [rbx], al       (RBX = 0xd0000000, mapped by the guest page
 *                              tables but not backed by any memory slot)
 * Every iteration is one exit to this program and one KVM_RUN back in.
 *
 * bench/exit_roundtrip.py builds the very same guest from Python; the two
 * must stay in step (layout constants below, same names there).
 *
 * An optional third argument "0" starts the guest at CPL 0 instead (same
 * code, kernel segments): on the nested KVM an exit from CPL 0 costs about a
 * third of one from CPL 3, so both are worth measuring.
 *
 * A third argument "pm32" is the machine-like baseline of bench/machine_bench.py instead: the state
 * a multiboot kernel starts in (32-bit protected mode, flat segments, paging off, CPL 0) with
 * KVM's in-kernel irqchip, as under `kvmlite run`, looping `in al, dx` (variant "in", answered
 * with 0x60) or `out dx, al` (variant "pio") on PORT (the fourth argument, default 0x500).
 *
 * Usage: exit_loop pio|mmio|in ITERATIONS [3|0|pm32 [PORT]]
 * Prints one line: variant=... cpl=C iterations=N exits=N seconds=S cpu_seconds=S ns_per_exit=X
 * (cpu_seconds: the process's CPU time over the loop, which load on the machine does not inflate)
 * Exit status: 0 ok, 1 usage, 2 KVM failure, 3 unexpected guest exit.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (2u << 20)
#define PML4_ADDR 0x1000u
#define PDPT_ADDR 0x2000u
#define PD_LOW_ADDR 0x3000u  /* maps 0..1 GiB: one 2 MiB page at 0 */
#define PD_MMIO_ADDR 0x4000u /* maps 3..4 GiB: the 2 MiB page holding MMIO_ADDR */
#define GDT_ADDR 0x5000u
#define TSS_ADDR 0x6000u
#define CODE_ADDR 0x10000u
#define STACK_TOP 0x1f0000u

#define PIO_PORT 0x500
#define DONE_PORT 0x501
#define MMIO_ADDR 0xd0000000ull

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_PS 0x80ull

#define CR0_PE 0x1ull
#define CR0_MP 0x2ull
#define CR0_ET 0x10ull
#define CR0_NE 0x20ull
#define CR0_WP 0x10000ull
#define CR0_PG 0x80000000ull
#define CR4_PAE 0x20ull
#define EFER_LME 0x100ull
#define EFER_LMA 0x400ull
#define RFLAGS_FIXED 0x2ull
#define RFLAGS_IOPL3 0x3000ull

#define SEL_USER_DATA 0x1b /* GDT index 3, RPL 3 */
#define SEL_USER_CODE 0x23 /* GDT index 4, RPL 3 */
#define SEL_KERNEL_CODE 0x08
#define SEL_KERNEL_DATA 0x10
#define SEL_TSS 0x28       /* GDT index 5 (16-byte descriptor) */
#define TSS_IOMAP_OFFSET 0x68                    /* I/O bitmap right after the 104-byte TSS */
#define TSS_IOMAP_BYTES (65536 / 8)              /* one bit per port, all zero: all allowed */
#define TSS_LIMIT (TSS_IOMAP_OFFSET + TSS_IOMAP_BYTES) /* includes the 0xff terminator byte */

/* mov dx, 0x500 ; L: out dx, al ; dec rcx ; jnz L ; mov dx, 0x501 ; out dx, al ; jmp $ */
static const uint8_t GUEST_PIO[] = {
	0x66, 0xba, 0x00, 0x05, 0xee, 0x48, 0xff, 0xc9, 0x75, 0xfa,
	0x66, 0xba, 0x01, 0x05, 0xee, 0xeb, 0xfe,
};
/* pm32: mov dx, PORT ; L: in al, dx (or out dx, al) ; dec ecx ; jnz L ; mov dx, 0x501 ; out dx, al ; jmp $ */
static uint8_t GUEST_PM32[] = {
	0x66, 0xba, 0x00, 0x05, 0xee, 0xff, 0xc9, 0x75, 0xfb, 0x66, 0xba, 0x01, 0x05, 0xee, 0xeb, 0xfe,
};
#define PM32_PORT_AT 2
#define PM32_ACCESS_AT 4
/* mov dx, 0x501 ; L: mov [rbx], al ; dec rcx ; jnz L ; out dx, al ; jmp $ */
static const uint8_t GUEST_MMIO[] = {
	0x66, 0xba, 0x01, 0x05, 0x88, 0x03, 0x48, 0xff, 0xc9, 0x75, 0xf9, 0xee, 0xeb, 0xfe,
};

static void die(const char *what)
{
	fprintf(stderr, "exit_loop: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void put64(uint8_t *mem, uint64_t addr, uint64_t value)
{
	memcpy(mem + addr, &value, sizeof(value));
}

static void build_guest(uint8_t *mem, int mmio, int pm32)
{
	if (pm32) {
		memcpy(mem + CODE_ADDR, GUEST_PM32, sizeof(GUEST_PM32));
		return;
	}
	put64(mem, PML4_ADDR, PDPT_ADDR | PTE_P | PTE_RW | PTE_US);
	put64(mem, PDPT_ADDR + 0 * 8, PD_LOW_ADDR | PTE_P | PTE_RW | PTE_US);
	put64(mem, PDPT_ADDR + 3 * 8, PD_MMIO_ADDR | PTE_P | PTE_RW | PTE_US);
	put64(mem, PD_LOW_ADDR, 0 | PTE_P | PTE_RW | PTE_US | PTE_PS);
	put64(mem, PD_MMIO_ADDR + ((MMIO_ADDR >> 21) & 511) * 8, MMIO_ADDR | PTE_P | PTE_RW | PTE_US | PTE_PS);

	/* GDT: null, kernel code/data, user data, user code64, 64-bit TSS. */
	put64(mem, GDT_ADDR + 0x08, 0x00af9b000000ffffull);
	put64(mem, GDT_ADDR + 0x10, 0x00cf93000000ffffull);
	put64(mem, GDT_ADDR + 0x18, 0x00cff3000000ffffull);
	put64(mem, GDT_ADDR + 0x20, 0x00affb000000ffffull);
	put64(mem, GDT_ADDR + 0x28, (uint64_t)TSS_LIMIT | ((uint64_t)TSS_ADDR << 16) | (0x8bull << 40));
	put64(mem, GDT_ADDR + 0x30, 0);
	/*
	 * TSS: RSP0 so that a fault (should one happen) has a ring-0 stack, and
	 * an all-zero I/O permission bitmap.  RFLAGS.IOPL = 3 alone should let
	 * CPL 3 use `out`, but on the nested KVM of platform.md it does not
	 * (the `out` raises #GP and the guest triple-faults), while the bitmap
	 * is honoured; we set both.
	 */
	put64(mem, TSS_ADDR + 4, STACK_TOP);
	mem[TSS_ADDR + 0x66] = TSS_IOMAP_OFFSET & 0xff;
	mem[TSS_ADDR + 0x67] = TSS_IOMAP_OFFSET >> 8;
	mem[TSS_ADDR + TSS_LIMIT] = 0xff;

	if (mmio)
		memcpy(mem + CODE_ADDR, GUEST_MMIO, sizeof(GUEST_MMIO));
	else
		memcpy(mem + CODE_ADDR, GUEST_PIO, sizeof(GUEST_PIO));
}

static void set_long_mode(int vcpu, int cpl)
{
	struct kvm_sregs s;
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = cpl ? SEL_USER_CODE : SEL_KERNEL_CODE, .type = 11,
		.present = 1, .dpl = cpl, .db = 0, .s = 1, .l = 1, .g = 1,
	};
	struct kvm_segment data = {
		.base = 0, .limit = 0xffffffff, .selector = cpl ? SEL_USER_DATA : SEL_KERNEL_DATA, .type = 3,
		.present = 1, .dpl = cpl, .db = 1, .s = 1, .l = 0, .g = 1,
	};
	struct kvm_segment tss = {
		.base = TSS_ADDR, .limit = TSS_LIMIT, .selector = SEL_TSS, .type = 11,
		.present = 1, .dpl = 0, .s = 0,
	};

	if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0)
		die("KVM_GET_SREGS");
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.tr = tss;
	s.ldt.unusable = 1;
	s.ldt.present = 0;
	s.gdt.base = GDT_ADDR;
	s.gdt.limit = 0x37;
	s.idt.base = 0;
	s.idt.limit = 0;
	s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
	s.cr3 = PML4_ADDR;
	s.cr4 = CR4_PAE;
	s.efer = EFER_LME | EFER_LMA;
	if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0)
		die("KVM_SET_SREGS");
}

/* 32-bit protected mode, flat 4 GiB segments, paging off, CPL 0: a multiboot kernel's entry state. */
static void set_pm32(int vcpu)
{
	struct kvm_sregs s;
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = 0x10, .type = 11, .present = 1, .db = 1, .s = 1, .g = 1,
	};
	struct kvm_segment data = {
		.base = 0, .limit = 0xffffffff, .selector = 0x18, .type = 3, .present = 1, .db = 1, .s = 1, .g = 1,
	};

	if (ioctl(vcpu, KVM_GET_SREGS, &s) < 0)
		die("KVM_GET_SREGS");
	s.cs = code;
	s.ds = s.es = s.fs = s.gs = s.ss = data;
	s.cr0 = CR0_PE | CR0_ET;
	if (ioctl(vcpu, KVM_SET_SREGS, &s) < 0)
		die("KVM_SET_SREGS");
}

static double clock_s(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_s(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

int main(int argc, char **argv)
{
	int pm32 = argc >= 4 && strcmp(argv[3], "pm32") == 0;
	if (argc < 3 || argc > (pm32 ? 5 : 4) ||
	    (strcmp(argv[1], "pio") && strcmp(argv[1], "mmio") && strcmp(argv[1], "in")) ||
	    (argc >= 4 && !pm32 && strcmp(argv[3], "0") && strcmp(argv[3], "3")) ||
	    (!pm32 && strcmp(argv[1], "in") == 0) || (pm32 && strcmp(argv[1], "mmio") == 0)) {
		fprintf(stderr, "usage: %s pio|mmio ITERATIONS [3|0] | %s pio|in ITERATIONS pm32 [PORT]\n", argv[0],
			argv[0]);
		return 1;
	}
	int cpl = argc >= 4 && !pm32 ? atoi(argv[3]) : pm32 ? 0 : 3;
	int mmio = strcmp(argv[1], "mmio") == 0;
	int in = strcmp(argv[1], "in") == 0;
	unsigned port = argc == 5 ? (unsigned)strtoul(argv[4], NULL, 0) : PIO_PORT;
	if (pm32) {
		GUEST_PM32[PM32_PORT_AT] = port & 0xff;
		GUEST_PM32[PM32_PORT_AT + 1] = (port >> 8) & 0xff;
		GUEST_PM32[PM32_ACCESS_AT] = in ? 0xec : 0xee;
	}
	char *end;
	unsigned long long iterations = strtoull(argv[2], &end, 0);
	if (*end || iterations == 0) {
		fprintf(stderr, "exit_loop: ITERATIONS must be a positive integer, got '%s'\n", argv[2]);
		return 1;
	}

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("open /dev/kvm");
	if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) {
		fprintf(stderr, "exit_loop: unexpected KVM API version\n");
		return 2;
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	if (pm32 && ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
		die("KVM_CREATE_IRQCHIP");

	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap guest memory");
	build_guest(mem, mmio, pm32);
	struct kvm_userspace_memory_region region = {
		.slot = 0, .flags = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size < (int)sizeof(struct kvm_run))
		die("KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");

	if (pm32)
		set_pm32(vcpu);
	else
		set_long_mode(vcpu, cpl);
	struct kvm_regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_ADDR;
	regs.rsp = STACK_TOP;
	regs.rcx = iterations;
	regs.rbx = MMIO_ADDR;
	regs.rflags = RFLAGS_FIXED | RFLAGS_IOPL3;
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");

	unsigned long long exits = 0;
	double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			die("KVM_RUN");
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == port && !mmio) {
			if (in)
				*((uint8_t *)run + run->io.data_offset) = 0x60;
			exits++;
			continue;
		}
		if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.phys_addr == MMIO_ADDR && mmio) {
			exits++;
			continue;
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == DONE_PORT)
			break;
		fprintf(stderr, "exit_loop: unexpected exit reason %u after %llu exits", run->exit_reason, exits);
		if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
			fprintf(stderr, " (internal error, suberror %u)", run->internal.suberror);
		fprintf(stderr, "\n");
		return 3;
	}
	double seconds = now_s() - t0, cpu_seconds = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
	if (exits != iterations) {
		fprintf(stderr, "exit_loop: counted %llu exits for %llu iterations\n", exits, iterations);
		return 3;
	}
	printf("variant=%s cpl=%d iterations=%llu exits=%llu seconds=%.6f cpu_seconds=%.6f ns_per_exit=%.1f\n",
	       argv[1], cpl, iterations, exits, seconds, cpu_seconds, seconds * 1e9 / (double)exits);
	return 0;
}
