"""Reads of the read-only M2P at its ABI address, where kvm_pvm cannot map it.

Xen's ABI puts the read-only machine-to-phys table at MACH2PHYS_VIRT_START (L4
slot 256) and guests such as XTF read it there directly. kvm_pvm keeps that
slot for itself (the self-test finds a user page mapped there not present), so
the guest's read faults; the faulting load is completed here from the same
tables the CPU would have walked. Linux asks XENMEM_machphys_mapping where the
table is, and the KVM machine answers with an alias in slot 257, which runs at
native speed. Only plain `mov reg, [mem]` loads are completed (what a C
compiler emits for an array read); anything else is bounced as the #PF it was.
"""
from __future__ import annotations

import capstone
from capstone import x86_const

from abi.xen_x86_64 import MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START
from pvhyp.guest_access import GuestFault, read_guest_virtual, walk

M2P_ALIAS_VIRT_START = 0xFFFF_8080_0000_0000       # L4 slot 257, reserved in Xen's layout
_DISASSEMBLER = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_DISASSEMBLER.detail = True
_GPR64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_GPR32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi", "ebp": "rbp",
          "esp": "rsp", **{f"r{n}d": f"r{n}" for n in range(8, 16)}}


def in_m2p(va: int) -> bool:
    return MACH2PHYS_VIRT_START <= va < MACH2PHYS_VIRT_END


def complete_m2p_load(engine, cr2: int) -> bool:
    """Complete the load at the guest's RIP that faulted on `cr2`; False if it is not one."""
    rip = engine.read("rip")
    code = read_guest_virtual(engine.memory, engine.cr3, rip, 15)
    if code is None:
        return False
    insn = next(_DISASSEMBLER.disasm(code, rip, 1), None)
    if insn is None or insn.id != x86_const.X86_INS_MOV or len(insn.operands) != 2:
        return False
    dest, source = insn.operands
    if dest.type != x86_const.X86_OP_REG or source.type != x86_const.X86_OP_MEM:
        return False
    name = insn.reg_name(dest.reg)
    size = source.size
    if name in _GPR64 and size == 8:
        register, zero_extend = name, False
    elif name in _GPR32 and size == 4:
        register, zero_extend = _GPR32[name], True
    else:
        return False
    if (cr2 & (size - 1)) or not in_m2p(cr2 + size - 1):
        return False
    try:
        maddr = walk(engine.memory, engine.cr3 >> 12, cr2, write=False)
    except GuestFault:
        return False
    value = int.from_bytes(engine.memory.read(maddr, size), "little")
    engine.write_many({register: value if zero_extend or size == 8 else value, "rip": rip + insn.size})
    return True
