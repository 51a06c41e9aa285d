"""Writable page tables: guest stores to its own (read-only) page tables.

With VMASST_TYPE_writable_pagetables a PV guest writes PTEs with ordinary
instructions; the page-table page is mapped read-only, so the store faults
(#PF, present + write).  Here the faulting instruction is decoded, the value
it would store is computed, and the PV MMU's `ptwr_emulate(vcpu, addr,
data, width)` validates and performs the write.  Then the instruction's
register and flag effects are applied and RIP steps past it.  Linux uses
plain `mov`, `xchg` (ptep_get_and_clear), `cmpxchg`, and locked
`bts/btr/and/or` (set_bit/clear_bit); anything else is a real #PF.
"""
from __future__ import annotations

import capstone
from capstone import x86_const as CX

from pvhyp.guest_access import read_guest_virtual

_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_md.detail = True

_FULL_REGISTER = {}     # register name as capstone prints it -> (64-bit register, width)
for _full, _low8, _low16 in (("rax", "al", "ax"), ("rcx", "cl", "cx"), ("rdx", "dl", "dx"), ("rbx", "bl", "bx"),
                             ("rsp", "spl", "sp"), ("rbp", "bpl", "bp"), ("rsi", "sil", "si"), ("rdi", "dil", "di")):
    _FULL_REGISTER.update({_full: (_full, 8), "e" + _full[1:]: (_full, 4), _low16: (_full, 2), _low8: (_full, 1)})
for _n in range(8, 16):
    _FULL_REGISTER.update({f"r{_n}": (f"r{_n}", 8), f"r{_n}d": (f"r{_n}", 4),
                           f"r{_n}w": (f"r{_n}", 2), f"r{_n}b": (f"r{_n}", 1)})

FLAG_CF, FLAG_PF, FLAG_ZF, FLAG_SF, FLAG_OF = 1 << 0, 1 << 2, 1 << 6, 1 << 7, 1 << 11


def _parity_flag(value: int) -> int:
    return FLAG_PF if bin(value & 0xFF).count("1") % 2 == 0 else 0


def _logic_flags(value: int, width: int) -> int:
    flags = _parity_flag(value)
    if value == 0:
        flags |= FLAG_ZF
    if value >> (width * 8 - 1) & 1:
        flags |= FLAG_SF
    return flags


PTWR_CMPXCHG_FAILED = 1     # pvhyp.mm.ptwr: not written, memory held another value


def _register_with(engine, name: str, value: int, width: int) -> int:
    """The 64-bit register after writing `value` to its low `width` bytes (x86 rules)."""
    if width >= 4:
        return value          # 32-bit writes zero-extend
    mask = (1 << (8 * width)) - 1
    return (engine.read(name) & ~mask) | (value & mask)


class _Unsupported(Exception):
    pass


def _source_value(engine, insn, operand) -> int:
    if operand.type == CX.X86_OP_IMM:
        return operand.imm
    if operand.type == CX.X86_OP_REG:
        name, width = _FULL_REGISTER.get(insn.reg_name(operand.reg), (None, 0))
        if name is None:
            raise _Unsupported(insn.reg_name(operand.reg))
        return engine.read(name) & ((1 << (8 * width)) - 1)
    raise _Unsupported("operand")


def emulate_pagetable_write(entry, fault_addr: int) -> bool:
    """Emulate the store at RIP that faulted on `fault_addr`; False: deliver the #PF."""
    engine = entry.engine
    rip = engine.read("rip")
    code = read_guest_virtual(engine.memory, engine.cr3, rip, 15) or \
        read_guest_virtual(engine.memory, engine.cr3, rip, 0x1000 - (rip & 0xFFF))
    if not code:
        return False
    try:
        insn = next(_md.disasm(code, rip, 1))
    except StopIteration:
        return False
    operands = insn.operands
    if len(operands) != 2 or operands[0].type != CX.X86_OP_MEM:
        return False
    width = operands[0].size
    if width not in (1, 2, 4, 8) or fault_addr & (width - 1):
        return False
    old_raw = read_guest_virtual(engine.memory, engine.cr3, fault_addr, width)
    if old_raw is None:
        return False
    old = int.from_bytes(old_raw, "little")
    mask = (1 << (8 * width)) - 1
    try:
        source = _source_value(engine, insn, operands[1]) & mask
    except _Unsupported:
        return False
    registers: dict[str, int] = {}
    flags_set, flags_cleared = 0, 0
    mnemonic = insn.mnemonic.split()[-1]          # "lock cmpxchg" -> "cmpxchg"
    if mnemonic == "mov":
        new = source
    elif mnemonic == "xchg":
        new = source
        name = _FULL_REGISTER[insn.reg_name(operands[1].reg)][0]
        registers[name] = _register_with(engine, name, old, width)
    elif mnemonic == "cmpxchg":
        expected = engine.read("rax") & mask
        if expected == old:
            new, flags_set = source, FLAG_ZF
        else:
            new, flags_cleared = None, FLAG_ZF
            registers["rax"] = _register_with(engine, "rax", old, width)
    elif mnemonic in ("bts", "btr"):
        if operands[1].type != CX.X86_OP_IMM and source >= width * 8:
            return False                  # a bit offset reaching other memory
        bit = source % (width * 8)
        was_set = old >> bit & 1
        flags_set, flags_cleared = (FLAG_CF, 0) if was_set else (0, FLAG_CF)
        new = old | (1 << bit) if mnemonic == "bts" else old & ~(1 << bit)
    elif mnemonic in ("and", "or"):
        new = old & source if mnemonic == "and" else old | source
        logic = _logic_flags(new, width)
        flags_set, flags_cleared = logic, (FLAG_CF | FLAG_PF | FLAG_ZF | FLAG_SF | FLAG_OF) & ~logic
    else:
        return False
    if new is not None:
        # cmpxchg passes the value it compared with, so the MMU stores only if
        # memory still holds it (another vCPU may have changed the entry).
        expected_old = old if mnemonic == "cmpxchg" else None
        rc = entry.ptwr_emulate(entry.vcpu, fault_addr, new.to_bytes(width, "little"), width,
                                  old=expected_old)
        if rc == PTWR_CMPXCHG_FAILED and mnemonic == "cmpxchg":
            current = read_guest_virtual(engine.memory, engine.cr3, fault_addr, width)
            if current is None:
                return False
            registers["rax"] = _register_with(engine, "rax", int.from_bytes(current, "little"), width)
            flags_set, flags_cleared = 0, FLAG_ZF
        elif rc is False or (rc is not True and rc != 0):
            return False
    if flags_set or flags_cleared:
        registers["rflags"] = (engine.read("rflags") | flags_set) & ~flags_cleared
    registers["rip"] = rip + insn.size
    engine.write_many(registers)
    return True
