"""A target without a VM for the gdb stub's tests: memory, registers and scripted stops."""

from __future__ import annotations

from kvmlite.gdb import registers as R
from kvmlite.gdb.target import SIGINT, BreakKind, StopEvent, StopQueue, TargetError


class FakeTarget:
    """Two vCPUs over 64 KiB of memory at 0x1000; ``resume`` stops at the first breakpoint ahead."""

    def __init__(self, arch: str = R.ARCH_32, cpus: int = 2) -> None:
        self._arch = arch
        self.memory = bytearray(0x10000)
        self.base = 0x1000
        pc = "rip" if arch == R.ARCH_64 else "eip"
        self.pc = pc
        self.regs = [{pc: 0x1000 + 0x10 * i, "eflags": 2, "cs": 8} for i in range(cpus)]
        self.breakpoints: set[tuple[BreakKind, int, int]] = set()
        self.resumed: list[dict[int, str]] = []
        self.events = StopQueue()
        self.detached = self.killed = False
        self.monitor_commands: list[str] = []

    def arch(self) -> str:
        return self._arch

    def cpus(self) -> list[int]:
        return list(range(len(self.regs)))

    def read_registers(self, cpu: int) -> dict[str, int]:
        return dict(self.regs[cpu])

    def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        self.regs[cpu].update(values)

    def _span(self, addr: int, length: int) -> slice:
        if addr < self.base or addr + length > self.base + len(self.memory):
            raise TargetError(f"{addr:#x} is not mapped")
        return slice(addr - self.base, addr - self.base + length)

    def read_memory(self, cpu: int, addr: int, length: int) -> bytes:
        return bytes(self.memory[self._span(addr, length)])

    def write_memory(self, cpu: int, addr: int, data: bytes) -> None:
        self.memory[self._span(addr, len(data))] = data

    def add_breakpoint(self, kind: BreakKind, addr: int, length: int) -> None:
        self.breakpoints.add((kind, addr, length))

    def remove_breakpoint(self, kind: BreakKind, addr: int, length: int) -> None:
        self.breakpoints.discard((kind, addr, length))

    def resume(self, actions: dict[int, str]) -> None:
        self.resumed.append(dict(actions))
        cpu = min(actions)
        if actions[cpu] == "s":
            self.regs[cpu][self.pc] += 1
            self.events.put(StopEvent(cpu))
            return
        soft = sorted(a for k, a, _ in self.breakpoints if k == BreakKind.SOFTWARE)
        ahead = [a for a in soft if a > self.regs[cpu][self.pc]]
        if ahead:
            self.regs[cpu][self.pc] = ahead[0]
            self.events.put(StopEvent(cpu, reason="swbreak"))
        else:
            self.events.put(StopEvent(exit_status=0x85))

    def wait(self, timeout: float) -> StopEvent | None:
        return self.events.get(timeout)

    def stop_fd(self) -> int:
        return self.events.fileno()

    def interrupt(self) -> None:
        self.events.put(StopEvent(0, SIGINT))

    def detach(self) -> None:
        self.detached = True

    def kill(self) -> None:
        self.killed = True

    def close(self) -> None:
        self.events.close()

    def monitor(self, command: str) -> str:
        self.monitor_commands.append(command)
        return f"you said {command}"
