"""Translation blocks: guest code decoded once per basic block and run as a list of callables.

QEMU's TCG translates a guest basic block into host code once and runs it
until the guest writes to the page it came from; this is the same idea with
Python callables as the "host code" (:mod:`.fastops` specialises the common
operand forms; every other instruction runs its generic handler).

* **Blocks.**  A :class:`TranslationBlock` holds, for each instruction, the
  callable, the decoded instruction and the offset of its end from the block's
  start.  A block never crosses a 4 KiB page (an instruction that straddles a
  page runs through :meth:`Executor.step`) and ends after a control transfer,
  after an instruction whose handler can change the CPU's mode, privilege,
  interrupt shadow or paging (anything outside the data, arithmetic, string and
  SSE families: the runner re-reads the mode after such a block), or after
  :data:`MAX_BLOCK_INSNS` instructions.
* **Caches.**  Blocks are kept by (guest-physical address, context) where the
  context is the code size, the stack size and the user/supervisor bit of
  fetches; a *jump cache* maps a linear RIP to its block (QEMU's
  ``tb_jmp_cache``), emptied whenever the MMU drops translations (CR3 loads,
  INVLPG, paging-mode changes), and each block remembers the block that last
  followed it (a chain link checked against the jump cache's generation).
* **Invalidation.**  The physical pages holding blocks are registered with the
  ops (:meth:`~.ops.EmulatorOps.watch_code`); a write by the guest to such a
  page drops every block of that page, and the block running stops after the
  writing instruction, so self-modifying code runs its new bytes.  Writes made
  from outside the CPU (a device's DMA, the VMM loading code) are caught by
  revalidation: each block keeps the bytes it was decoded from and compares
  them with guest memory once per *epoch* (the backend starts one each time
  it resumes the vCPU, i.e. after every exit to the VMM).

Exceptions stay exact: RIP is committed before each instruction, faults roll
back to it and are delivered as :meth:`Executor.step` does; device exits leave
the instruction to be replayed.  Guest debugging (breakpoints, single-step,
watchpoints) runs through ``step()`` and never enters blocks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kvmlite.emulator import decoder as D
from kvmlite.emulator import fastops
from kvmlite.errors import DecodeError

if TYPE_CHECKING:
    from kvmlite.emulator.executor import Executor

log = logging.getLogger(__name__)

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MAX_BLOCK_INSNS = 64
#: Blocks kept before the cache is emptied (a guest that keeps loading new code must not grow us).
MAX_BLOCKS = 1 << 15

#: Handler modules whose instructions cannot change the mode, CPL, interrupt shadow or paging.
_PLAIN_MODULES = frozenset(
    f"kvmlite.emulator.handlers.{m}" for m in ("arith", "data", "string", "sse")
)
#: Handlers of the plain modules that end a block anyway (they change IF, or are control transfers).
_BRANCHES = frozenset(("jmp", "jcc", "call", "call_ind", "jmp_ind", "ret", "loop", "jcxz"))
_ENDS_BLOCK = frozenset(("popf",))
#: Generic handlers known not to read or write the arithmetic flags: no lazy-flag sync before them.
_FLAGLESS = frozenset(
    (
        "mov", "movzx", "movsx", "movbe", "lea", "xchg", "cbw", "cwd", "bswap", "nop", "push", "pop",
        "pusha", "popa", "enter", "leave", "call", "call_ind", "jmp", "jmp_ind", "ret", "jcxz",
        "movs", "stos", "lods", "xlatb", "not",
    )
)  # fmt: skip


class TranslationBlock:
    """One decoded basic block; see the module docstring."""

    __slots__ = (
        "bound", "bound_rip", "code", "ctx", "epoch", "link", "link_gen", "link_lin", "ops", "phys",
        "refresh", "size", "valid",
    )  # fmt: skip

    def __init__(self, phys: int, ctx: int, ops: list[tuple[Any, D.Instruction, int]], code: bytes) -> None:
        self.phys = phys
        self.ctx = ctx
        self.ops = ops
        self.code = code
        self.size = len(code)
        self.valid = True
        self.refresh = False  # the last instruction may change the mode: re-read it after the block
        self.epoch = -1
        self.link: TranslationBlock | None = None
        self.link_lin = -1
        self.link_gen = -1
        self.bound: list[tuple[Any, D.Instruction, int, int]] = []
        self.bound_rip = -1

    def bind(self, rip: int, ipmask: int) -> list[tuple[Any, D.Instruction, int, int]]:
        """The ops with absolute (start, next) RIPs for an entry at ``rip`` (kept for the next entry).

        Invalidation empties this list in place, which also ends a ``for`` loop running over it
        after the instruction that wrote the code (CPython's list iterator re-reads the length).
        """
        self.bound = [
            (fn, insn, (rip + end - insn.length) & ipmask, (rip + end) & ipmask) for fn, insn, end in self.ops
        ]
        self.bound_rip = rip
        return self.bound

    def kill(self) -> None:
        self.valid = False
        self.bound.clear()


class BlockCache:
    """The blocks of one executor: by (physical address, context), by code page, and by linear RIP."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[int, int], TranslationBlock] = {}
        self.pages: dict[int, list[TranslationBlock]] = {}
        self.jump: dict[int, TranslationBlock] = {}
        self.generation = 0  # bumped whenever the jump cache is emptied (chain links die with it)
        self.epoch = 0
        self.translated = 0
        self.invalidations = 0
        #: called when a page starts holding blocks (its writes must now be seen)
        self.on_new_page: Callable[[], None] = lambda: None

    def flush_jump_cache(self) -> None:
        self.jump.clear()
        self.generation += 1

    def add(self, tb: TranslationBlock) -> None:
        if len(self.blocks) >= MAX_BLOCKS:
            self.clear()
        self.blocks[(tb.phys, tb.ctx)] = tb
        ppn = tb.phys >> PAGE_SHIFT
        if ppn not in self.pages:
            self.pages[ppn] = []
            self.on_new_page()
        self.pages[ppn].append(tb)
        self.translated += 1

    def invalidate_page(self, ppn: int) -> None:
        """The guest wrote to physical page ``ppn``: drop its blocks."""
        tbs = self.pages.pop(ppn, None)
        if not tbs:
            return
        for tb in tbs:
            tb.kill()
            self.blocks.pop((tb.phys, tb.ctx), None)
        self.invalidations += 1
        self.flush_jump_cache()

    def clear(self) -> None:
        for tbs in self.pages.values():
            for tb in tbs:
                tb.kill()
        self.blocks.clear()
        self.pages.clear()
        self.flush_jump_cache()


#: Held around every LOCK-prefixed instruction and XCHG with memory (implicitly locked): with SMP each
#: vCPU is a thread, and Python may switch threads between a handler's read and its write; no other
#: vCPU's locked instruction may run there (its plain stores may: on hardware they could too).
ATOMIC = threading.Lock()


def is_locked(insn: D.Instruction) -> bool:
    return insn.lock or (insn.row.name == "xchg" and any(op.kind == D.OP_MEM for op in insn.operands))


def atomic(handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` run under :data:`ATOMIC`."""

    def run(ex: Executor, insn: D.Instruction) -> Any:
        with ATOMIC:
            return handler(ex, insn)

    return run


def translate(ex: Executor, phys: int, code: bytes) -> TranslationBlock:
    """Decode the block starting at ``code`` (the bytes from ``phys`` to the end of its page).

    An empty block (its first instruction straddles the page or does not
    decode) tells the runner to use ``step()``, which raises what it must.
    """
    mode, stack_size, ctx = ex.mode, ex.stack_size, ex.tb_ctx
    ops: list[tuple[Any, D.Instruction, int]] = []
    pos = 0
    end = len(code)
    refresh = False
    while pos < end and len(ops) < MAX_BLOCK_INSNS:
        try:
            insn = D.decode(code[pos : pos + D.MAX_INSN_LENGTH], mode)
        except DecodeError:  # truncated at the page end, or #UD: step() will deal with it
            break
        row = insn.row
        handler = row.handler
        if handler is None:
            break
        fast = fastops.specialise(insn, mode, stack_size, ex.cpu.gpr)
        name = row.name
        plain = handler.__module__ in _PLAIN_MODULES or name in _BRANCHES
        if fast is None:
            fast = ex.generic_handler(row, sync=row.name not in _FLAGLESS)
        if is_locked(insn):
            fast = atomic(fast)
        pos += insn.length
        ops.append((fast, insn, pos))
        if not plain or name in _BRANCHES or name in _ENDS_BLOCK:
            refresh = not plain
            break
    tb = TranslationBlock(phys, ctx, ops, bytes(code[:pos]))
    tb.refresh = refresh
    return tb
