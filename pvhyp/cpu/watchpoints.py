"""Data breakpoints (%dr0-3 with %dr7 R/W = write or read/write): the hardware's, for PV guests.

Xen leaves a PV guest's breakpoints in the real debug registers; unicorn has
none, so each enabled data breakpoint becomes a unicorn memory hook over its
bytes. A hit sets its B bit in %dr6 and, once the instruction has retired,
raises #DB (a trap: the frame's RIP is the next instruction). After `mov ss`
/ `pop ss` the CPU holds the #DB until one more instruction has retired; when
that instruction enters the hypervisor (syscall, int), Xen takes the #DB in
its own context and only keeps the %dr6 bits (XSA-260), so none is raised.
"""
from __future__ import annotations

import capstone
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE

from pvhyp.guest_access import GuestFault, read_guest_virtual, walk
from pvhyp.pv.breakpoints import data_breakpoints

_DISASSEMBLER = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


class Watchpoints:
    """The enabled data breakpoints of one engine.

    A hit is seen by a memory hook, inside the access (RIP is the hitting
    instruction: unicorn syncs it before memory hooks).  Stopping the run there
    would re-execute the instruction (unicorn resumes at its start), so the hook
    only asks the native gate to stop before the *next* instruction; while any
    breakpoint is armed the gate's per-instruction stub is installed for that.
    """

    def __init__(self, engine, pv, raise_debug_exception):
        self.engine = engine
        self.pv = pv
        self.raise_debug_exception = raise_debug_exception
        self._hooks: list = []
        self._hit_bits = 0
        self._hit_rip = 0

    def reload(self) -> None:
        """%dr0-3 or %dr7 changed: hooks for exactly the enabled data breakpoints."""
        uc = self.engine.uc
        for hook in self._hooks:
            uc.hook_del(hook)
        self._hooks = []
        for bp in data_breakpoints(self.pv.dr7):
            start = self.pv.dr[bp.index] & ~(bp.length - 1)
            kinds = UC_HOOK_MEM_WRITE | (UC_HOOK_MEM_READ if bp.on_reads else 0)
            maddr = self._machine_address(start)
            if maddr is None:
                continue        # not mapped now: the breakpoint arms when %dr7 is next written
            self._hooks.append(uc.hook_add(kinds, self._hit, 1 << bp.index, maddr, maddr + bp.length - 1))
        # Hooks take effect in code translated after this (arming flushes the
        # translations): stop at this instruction's end.
        self.engine.gate.arm_instruction_stops(bool(self._hooks))
        uc.ctl_flush_tb()
        self.engine.defer_after_stop(lambda: None)

    def _machine_address(self, va: int) -> int | None:
        # unicorn reports data accesses by physical address: the hook covers the frame the
        # breakpoint's address maps to when it is set (an alias of that frame hits it too)
        try:
            return walk(self.engine.memory, self.engine.cr3 >> 12, va, write=False, user=False)
        except GuestFault:
            return None

    def _hit(self, uc, access, address, size, value, bit) -> None:
        if not self._hit_bits:
            self._hit_rip = self.engine.read("rip")
            self.engine.gate.stop_before_instruction()
            self.engine.defer_to_next_stop(self._raise)
        self._hit_bits |= bit

    def _instruction(self, rip: int):
        code = read_guest_virtual(self.engine.memory, self.engine.cr3, rip, 16) or b""
        return next(_DISASSEMBLER.disasm(code, rip, 1), None)

    def _raise(self) -> None:
        """The hitting instruction has retired (the run stopped before the next one)."""
        self.engine.gate.cancel_instruction_stop()
        bits, self._hit_bits = self._hit_bits, 0
        if not bits:
            return
        self.pv.dr6 |= bits
        done = self._instruction(self._hit_rip)
        if done is not None and done.mnemonic in ("mov", "pop") and done.op_str.startswith("ss"):
            nxt = self._instruction(self.engine.read("rip"))
            if nxt is None or nxt.mnemonic in ("syscall", "sysenter", "int", "int3", "into", "int1"):
                return          # the #DB lands in the hypervisor, which keeps only %dr6
            # The CPU holds the #DB for one more instruction.
            self.engine.gate.stop_before_instruction(after=1)
            self.engine.defer_to_next_stop(self._raise_held)
            return
        self.raise_debug_exception()

    def _raise_held(self) -> None:
        self.engine.gate.cancel_instruction_stop()
        self.raise_debug_exception()
