"""Data breakpoints (%dr0-3, %dr7) on KVM: the vCPU's debug registers, or single steps.

As Xen does for PV guests, the guest's breakpoints go into the real debug
registers (KVM_SET_DEBUGREGS) where KVM honours them (the self-test's
`debug_registers`): only data breakpoints (R/W = write or read/write), the kind
the PV layer models. A hit is a #DB at CPL3, which reaches the #DB stub; its
%dr6 B bits go into the guest's %dr6 before the #DB is bounced.

kvm_pvm ignores the debug registers (and KVM_SET_GUEST_DEBUG's hardware
breakpoints and single-step), but it honours EFLAGS.TF at CPL3 (the self-test
proves it). So there, while any data breakpoint is armed, the guest runs one
instruction per KVM_RUN: before each step the instruction is decoded and its
data accesses (explicit memory operands, push/pop/call/ret on the stack) are
checked against the breakpoints; when the step's #DB arrives the instruction
has retired and a hit is raised as the hardware's #DB trap. Every step is an
exit (tens of microseconds): the price is paid only while %dr7 arms a data
breakpoint, which Linux does only for a debugger's watchpoints.
Not modelled: the other implicit accesses (string instructions' second
operand, descriptor tables, the stack writes of exceptions).

The TF that steps is the hypervisor's, not the guest's: it is added on the way
in and taken out of every RFLAGS read back (the guest's own TF is kept, and a
popf/iret that loads TF decides it anew). `mov ss`/`pop ss` hold the step's
#DB for one more instruction, as they hold a breakpoint's: when that
instruction enters the hypervisor (syscall, int) the hit only reaches %dr6
(Xen takes such a #DB in its own context: XSA-260), as unicorn's engine does.
"""
from __future__ import annotations

from dataclasses import dataclass

import capstone
from capstone import x86_const as CX

from abi.x86_regs import DR_STEP, DR_TRAP_MASK, X86_DR6_DEFAULT, X86_DR7_DEFAULT, X86_EFLAGS_TF
from pvhyp.guest_access import read_guest_virtual, write_guest_virtual
from pvhyp.pv.breakpoints import data_breakpoints
from pvhyp.pv.ro_page_fault import _FULL_REGISTER

_DISASSEMBLERS = {bits: capstone.Cs(capstone.CS_ARCH_X86, mode)
                  for bits, mode in ((64, capstone.CS_MODE_64), (32, capstone.CS_MODE_32))}
for _md in _DISASSEMBLERS.values():
    _md.detail = True
_STACK_WRITES = frozenset((CX.X86_INS_PUSH, CX.X86_INS_CALL))
_STACK_READS = frozenset((CX.X86_INS_POP, CX.X86_INS_RET))
_ENTERS_HYPERVISOR = frozenset(("syscall", "sysenter", "int", "int3", "into", "int1"))
_PUSHES_FLAGS = frozenset((CX.X86_INS_PUSHF, CX.X86_INS_PUSHFQ, CX.X86_INS_PUSHFD))
_LOADS_TF = frozenset((CX.X86_INS_POPF, CX.X86_INS_POPFQ, CX.X86_INS_POPFD, CX.X86_INS_IRET, CX.X86_INS_IRETQ,
                       CX.X86_INS_IRETD))


@dataclass
class _Step:
    """The instruction one single step runs, and what it will have hit once it retired."""
    rip: int
    next_rip: int           # where it ends (its fall-through)
    hits: int               # DR6 B bits
    guest_tf: int           # the guest's own EFLAGS.TF before it
    loads_tf: bool          # popf/iret: the TF after it is the guest's
    shadow: bool            # mov ss / pop ss: the #DB is held for one more instruction
    pushes_flags: bool      # pushf: the pushed TF must be the guest's
    held: bool              # it carries a `mov ss` hit: if it enters the hypervisor, only %dr6 keeps it


class KvmWatchpoints:
    def __init__(self, engine, pv, raise_debug_exception) -> None:
        self.engine = engine
        self.pv = pv
        self.raise_debug_exception = raise_debug_exception
        self.stepping = False
        self._armed: list[tuple[int, int, int, bool]] = []     # (B bit, first, last byte, on reads)
        self._step: _Step | None = None
        self._held = 0          # B bits of a `mov ss` whose #DB waits for the next instruction

    def reload(self) -> None:
        """%dr0-3 or %dr7 changed."""
        if self.engine.quirks.debug_registers:
            self._load_debug_registers()
            return
        self._armed = []
        for bp in data_breakpoints(self.pv.dr7):
            first = self.pv.dr[bp.index] & ~(bp.length - 1)
            self._armed.append((1 << bp.index, first, first + bp.length - 1, bp.on_reads))
        if bool(self._armed) != self.stepping:
            self.stepping = bool(self._armed)
            self._step = None
            self._held = 0
            self.engine.trace_flag_changed()

    def _load_debug_registers(self) -> None:
        enabled = X86_DR7_DEFAULT
        for bp in data_breakpoints(self.pv.dr7):
            enabled |= bp.control
        vcpu = self.engine.kvm_vcpu
        dbg = vcpu.get_debugregs()
        for index in range(4):
            dbg.db[index] = self.pv.dr[index]
        dbg.dr7 = enabled
        dbg.dr6 = X86_DR6_DEFAULT
        vcpu.set_debugregs(dbg)

    # --- single stepping (kvm_pvm) -------------------------------------------------
    def guest_rflags(self, rflags: int) -> int:
        """RFLAGS as KVM reported them, without the TF the hypervisor added for its step."""
        step = self._step
        if not self.stepping or (step is not None and step.loads_tf):
            return rflags
        guest_tf = step.guest_tf if step is not None else 0
        return (rflags & ~X86_EFLAGS_TF) | guest_tf

    def before_step(self) -> None:
        """The guest is about to run one instruction (the engine's copy of its registers is fresh)."""
        engine = self.engine
        rip = engine.rip
        insn = self._instruction(rip)
        hits = 0
        if insn is not None:
            for first, size, is_write in self._accesses(insn):
                for bit, bp_first, bp_last, on_reads in self._armed:
                    if (is_write or on_reads) and first <= bp_last and bp_first <= first + size - 1:
                        hits |= bit
        shadow = insn is not None and insn.mnemonic in ("mov", "pop") and insn.op_str.startswith("ss")
        insn_id = insn.id if insn is not None else None
        self._step = _Step(rip, rip + (insn.size if insn is not None else 0), hits | self._held,
                           engine.rflags & X86_EFLAGS_TF, insn_id in _LOADS_TF, shadow, insn_id in _PUSHES_FLAGS,
                           bool(self._held))
        self._held = 0

    def step_interrupted(self) -> None:
        """Another exit than the step's #DB: the instruction faulted (it did not retire), or a
        held #DB's second instruction entered the hypervisor (only %dr6 keeps the hit)."""
        step, self._step = self._step, None
        if step is not None and step.hits and (step.shadow or step.held):
            self.pv.dr6 |= step.hits

    def debug_exception(self) -> None:
        """A #DB from guest code: a breakpoint hit (B bits) or single-step; bounced to the guest."""
        if not self.stepping:
            self._hardware_debug_exception()
            return
        step, self._step = self._step, None
        if step is None:
            return
        if step.pushes_flags:
            self._fix_pushed_flags(step.guest_tf)
        if step.shadow and step.hits and self.engine.rip == step.next_rip:
            # The step's #DB came at once (kvm_pvm does not hold it): hold the hit here.
            following = self._instruction(step.next_rip)
            if following is None or following.mnemonic in _ENTERS_HYPERVISOR:
                self.pv.dr6 |= step.hits    # the #DB lands in the hypervisor, which keeps only %dr6
            else:
                self._held = step.hits
            return
        if step.hits:
            self.pv.dr6 |= step.hits
            self.raise_debug_exception()
        elif step.guest_tf:
            self.pv.dr6 |= DR_STEP
            self.raise_debug_exception()

    def _fix_pushed_flags(self, guest_tf: int) -> None:
        engine = self.engine
        pushed = read_guest_virtual(engine.memory, engine.cr3, engine.rsp, 2)
        if pushed is not None:
            value = (int.from_bytes(pushed, "little") & ~X86_EFLAGS_TF) | guest_tf
            write_guest_virtual(engine.memory, engine.cr3, engine.rsp, value.to_bytes(2, "little"))

    def _hardware_debug_exception(self) -> None:
        vcpu = self.engine.kvm_vcpu
        dbg = vcpu.get_debugregs()
        self.pv.dr6 |= int(dbg.dr6) & (DR_TRAP_MASK | DR_STEP)
        dbg.dr6 = X86_DR6_DEFAULT
        vcpu.set_debugregs(dbg)
        self.raise_debug_exception()

    def _instruction(self, rip: int):
        engine = self.engine
        code = read_guest_virtual(engine.memory, engine.cr3, rip, 15) or \
            read_guest_virtual(engine.memory, engine.cr3, rip, 0x1000 - (rip & 0xFFF))
        if not code:
            return None
        bits = 64 if engine.code_segment_is_64bit() else 32
        return next(_DISASSEMBLERS[bits].disasm(code, rip, 1), None)

    def _accesses(self, insn):
        """(first byte, size, is a write) of the instruction's data accesses."""
        engine = self.engine
        address_mask = (1 << (8 * insn.addr_size)) - 1
        for op in insn.operands:
            if op.type != CX.X86_OP_MEM or insn.id == CX.X86_INS_LEA:
                continue
            mem = op.mem
            address = mem.disp
            if mem.base == CX.X86_REG_RIP:
                address += insn.address + insn.size
            elif mem.base:
                address += self._register(insn, mem.base)
            if mem.index:
                address += self._register(insn, mem.index) * mem.scale
            if mem.segment in (CX.X86_REG_FS, CX.X86_REG_GS):
                address += engine.read("fs_base" if mem.segment == CX.X86_REG_FS else "gs_base")
            if op.access & capstone.CS_AC_READ:
                yield address & address_mask, op.size, False
            if op.access & capstone.CS_AC_WRITE:
                yield address & address_mask, op.size, True
        width = 8 if engine.code_segment_is_64bit() else 4
        if insn.id in _STACK_WRITES:
            yield (engine.rsp - width) & address_mask, width, True
        elif insn.id in _STACK_READS:
            yield engine.rsp & address_mask, width, False

    def _register(self, insn, reg: int) -> int:
        full, width = _FULL_REGISTER.get(insn.reg_name(reg), (None, 8))
        if full is None:
            return 0
        value = self.engine.rsp if full == "rsp" else int(getattr(self.engine.regs, full))
        return value & ((1 << (8 * width)) - 1)
