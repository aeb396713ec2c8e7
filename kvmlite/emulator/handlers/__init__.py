"""The emulator's instruction handlers, one module per family.

=============  ==============================================================
arith          ALU, shifts, multiply/divide, bit operations, flag instructions
data           MOV family, exchanges, conversions, CMOVcc/SETcc, the stack
control        jumps, calls, returns (near and far), LOOP, JCXZ, UD
string         MOVS/STOS/LODS/CMPS/SCAS/INS/OUTS and REP
segment        segment-register loads, descriptor tables, LAR/LSL/VERR/VERW
interrupt      exception and interrupt delivery, INT n, IRET
privileged     I/O, CLI/STI, CR/DR moves, MSRs, CPUID, TSC, SWAPGS, HLT...
fastcall       SYSCALL/SYSRET, SYSENTER/SYSEXIT
xsave          FXSAVE/XSAVE family, MXCSR, XCR0
sse            SSE moves and SSE2 integer lane operations
=============  ==============================================================

A handler is a plain function ``handler(ex, insn)`` of the
:class:`~kvmlite.emulator.executor.Executor` and the decoded
:class:`~kvmlite.emulator.instruction.Instruction`; it holds the
instruction's semantics only.  Operand access, the privilege and CPUID checks
the opcode row asks for, and fault delivery are the executor's.
"""
