"""The executor with real paging: :class:`PagedOps` over the MMU, page faults with error codes.

Page tables are built by hand in a bytearray standing in for guest RAM; the
executor runs 64-bit code through 4-level paging, and faults must arrive in
the guest's #PF handler with the error code and CR2 the CPU would give.
"""

from __future__ import annotations

import struct

from kvmlite.emulator.cpu import CR0_WP, CS, SS, CpuState
from kvmlite.emulator.executor import Executor
from kvmlite.emulator.ops import PagedOps
from tests.emulator.fakes import make_cpu

RAM = 1 << 22
PML4 = 0x10000
P, RW, US = 1, 2, 4
CODE_VA = 0x400000
CODE_PA = 0x100000
DATA_VA = 0x600000
DATA_PA = 0x101000
USER_VA = 0x800000
USER_PA = 0x102000
STACK_VA = 0x200000  # identity mapped below
IDT = 0x3000
GDT = 0x4000
PF_HANDLER = 0x5000
TSS = 0x6000
PF_VEC = 14


class Ram:
    def __init__(self) -> None:
        self.mem = bytearray(RAM)
        self.next_table = PML4 + 0x1000

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.mem[gpa : gpa + size])

    def write(self, gpa: int, data: bytes) -> None:
        self.mem[gpa : gpa + len(data)] = data

    def q(self, addr: int) -> int:
        return struct.unpack_from("<Q", self.mem, addr)[0]

    def setq(self, addr: int, value: int) -> None:
        struct.pack_into("<Q", self.mem, addr, value)

    def pte_addr(self, va: int) -> int:
        table = PML4
        for shift in (39, 30, 21):
            table = self.q(table + ((va >> shift) & 0x1FF) * 8) & ~0xFFF
        return table + ((va >> 12) & 0x1FF) * 8

    def map(self, va: int, pa: int, flags: int) -> None:
        table = PML4
        for shift in (39, 30, 21):
            slot = table + ((va >> shift) & 0x1FF) * 8
            entry = self.q(slot)
            if not entry & P:
                entry = self.next_table | P | RW | US
                self.next_table += 0x1000
                self.setq(slot, entry)
            table = entry & ~0xFFF
        self.setq(table + ((va >> 12) & 0x1FF) * 8, pa | flags)


def build(code: bytes) -> tuple[Executor, Ram]:
    ram = Ram()
    for page in range(0, 0x300000, 0x1000):  # identity map the low 3 MiB, supervisor only
        ram.map(page, page, P | RW)
    ram.map(CODE_VA, CODE_PA, P)  # read-only, supervisor
    ram.map(DATA_VA, DATA_PA, P | RW)
    ram.map(USER_VA, USER_PA, P | RW | US)
    ram.write(CODE_PA, code)
    # 64-bit interrupt gate for #PF -> PF_HANDLER (hlt).
    low = (PF_HANDLER & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((PF_HANDLER >> 16) & 0xFFFF) << 48)
    ram.setq(IDT + 16 * PF_VEC, low)
    ram.write(PF_HANDLER, b"\xf4")
    ram.setq(GDT + 8, 0x00AF9A000000FFFF)
    ram.setq(GDT + 16, 0x00CF92000000FFFF)
    ram.setq(TSS + 4, STACK_VA - 0x100)  # RSP0
    cpu: CpuState = make_cpu(64, rip=CODE_VA, rsp=STACK_VA)
    cpu.cr3 = PML4
    cpu.cr0 |= CR0_WP  # supervisor writes honour read-only pages
    cpu.idtr.base, cpu.idtr.limit = IDT, 0xFFF
    cpu.gdtr.base, cpu.gdtr.limit = GDT, 0xFF
    cpu.tr.base, cpu.tr.limit = TSS, 0x67
    ops = PagedOps(ram.read, ram.write)
    return Executor(cpu, ops), ram


def test_code_and_data_run_through_page_tables() -> None:
    code = bytes.fromhex("48b8" + struct.pack("<Q", DATA_VA).hex() + "c700efbeadde" + "8b18" + "f4")
    ex, ram = build(code)  # mov rax, DATA_VA; mov dword [rax], 0xdeadbeef; mov ebx, [rax]; hlt
    ex.run(10)
    assert ex.cpu.halted and ex.cpu.rip == CODE_VA + len(code)
    assert ram.read(DATA_PA, 4) == b"\xef\xbe\xad\xde"
    assert ex.cpu.gpr[3] == 0xDEADBEEF
    # The MMU set the Accessed and Dirty bits in the data page's PTE.
    assert ram.q(ram.pte_addr(DATA_VA)) & 0x60 == 0x60


def test_write_to_read_only_page_is_a_page_fault_with_p_and_w() -> None:
    code = bytes.fromhex("48b8" + struct.pack("<Q", CODE_VA).hex() + "c60001" + "f4")
    ex, _ = build(code)  # mov rax, CODE_VA; mov byte [rax], 1
    ex.run(10)
    assert ex.cpu.rip == PF_HANDLER + 1
    assert ex.cpu.cr2 == CODE_VA
    error_code = ex.ops.read_linear(ex.cpu.gpr[4], 8, 0)
    assert int.from_bytes(error_code, "little") == P | RW  # present, write, supervisor


def test_access_to_unmapped_page_reports_not_present() -> None:
    code = bytes.fromhex("48b8" + struct.pack("<Q", 0x7000000).hex() + "8b00" + "f4")
    ex, _ = build(code)  # mov rax, 0x7000000; mov eax, [rax]
    ex.run(10)
    assert ex.cpu.cr2 == 0x7000000
    assert int.from_bytes(ex.ops.read_linear(ex.cpu.gpr[4], 8, 0), "little") == 0
    frame_rip = int.from_bytes(ex.ops.read_linear(ex.cpu.gpr[4] + 8, 8, 0), "little")
    assert frame_rip == CODE_VA + 10


def test_user_mode_access_to_supervisor_page_faults_with_u_bit() -> None:
    # Code in a user page: mov eax, [DATA_VA] (supervisor page) at CPL 3.
    code = bytes.fromhex("8b0425" + struct.pack("<I", DATA_VA).hex() + "f4")
    ex, ram = build(b"")
    ram.write(USER_PA, code)
    cpu = ex.cpu
    cpu.rip = USER_VA
    cpu.cpl = 3
    cpu.segs[CS].selector, cpu.segs[CS].dpl = 0x0B, 3
    cpu.segs[SS].selector, cpu.segs[SS].dpl = 0x13, 3
    cpu.gpr[4] = USER_VA + 0x800
    ex.run(10)
    assert cpu.cr2 == DATA_VA
    assert cpu.cpl == 0
    assert cpu.gpr[4] == STACK_VA - 0x100 - 6 * 8  # stack switched to RSP0 from the TSS
    code_pushed = int.from_bytes(ex.ops.read_linear(cpu.gpr[4], 8, 0), "little")
    assert code_pushed == P | US  # present, read, user


def test_fxsave_straddling_into_an_unmapped_page_faults_before_writing_anything() -> None:
    at = DATA_VA + 0x1000 - 256  # the image's last 256 bytes would go to the unmapped page after DATA_VA
    code = bytes.fromhex("48b8" + struct.pack("<Q", at).hex() + "0fae00" + "f4")
    ex, ram = build(code)  # mov rax, at; fxsave [rax]
    ram.write(DATA_PA + 0xF00, b"\xaa" * 256)
    ex.run(10)
    assert ex.cpu.rip == PF_HANDLER + 1 and ex.cpu.cr2 == DATA_VA + 0x1000
    assert ram.read(DATA_PA + 0xF00, 256) == b"\xaa" * 256  # every page is translated first


def test_fxsave_within_a_page_writes_the_whole_image_and_a_noncanonical_end_is_gp() -> None:
    code = bytes.fromhex("48b8" + struct.pack("<Q", DATA_VA).hex() + "0fae00" + "f4")
    ex, ram = build(code)  # mov rax, DATA_VA; fxsave [rax]
    ex.xsave_area()[160 + 16 * 15 : 160 + 16 * 16] = bytes(range(16))  # XMM15, the image's last register
    ex.run(10)
    assert ex.cpu.halted and ex.cpu.rip == CODE_VA + len(code)
    assert ram.read(DATA_PA, 512) == bytes(ex.xsave_area()[:512])
    assert ram.read(DATA_PA + 400, 16) == bytes(range(16))

    last = 0x0000_7FFF_FFFF_FF00  # 256 bytes below the end of the canonical lower half
    code = bytes.fromhex("48b8" + struct.pack("<Q", last).hex() + "0fae00" + "f4")
    ex, ram = build(code)
    gp_handler = PF_HANDLER + 0x10
    low = (gp_handler & 0xFFFF) | (0x08 << 16) | (0x8E << 40) | (((gp_handler >> 16) & 0xFFFF) << 48)
    ram.setq(IDT + 16 * 13, low)
    ram.write(gp_handler, b"\xf4")
    ex.run(10)
    assert ex.cpu.rip == gp_handler + 1  # #GP(0), not #PF: the end of the image is not canonical
