"""Data breakpoints (%dr0-3, %dr7) on KVM: the vCPU's own debug registers.

As Xen does for PV guests, the guest's breakpoints go into the real debug
registers (KVM_SET_DEBUGREGS): only data breakpoints (R/W = write or read/write),
the kind the PV layer models. A hit is a #DB at CPL3, which reaches the #DB stub;
its %dr6 B bits go into the guest's %dr6 before the #DB is bounced.
"""
from __future__ import annotations

from abi.x86_regs import X86_DR6_DEFAULT, X86_DR7_DEFAULT
from pvhyp.pv.breakpoints import data_breakpoints

_HIT_BITS = 0xF


class KvmWatchpoints:
    def __init__(self, engine, pv, raise_debug_exception):
        self.engine = engine
        self.pv = pv
        self.raise_debug_exception = raise_debug_exception

    def reload(self) -> None:
        dr7 = self.pv.dr7
        enabled = X86_DR7_DEFAULT
        for bp in data_breakpoints(dr7):
            enabled |= bp.control
        vcpu = self.engine.kvm_vcpu
        dbg = vcpu.get_debugregs()
        for index in range(4):
            dbg.db[index] = self.pv.dr[index]
        dbg.dr7 = enabled
        dbg.dr6 = X86_DR6_DEFAULT
        vcpu.set_debugregs(dbg)

    def debug_exception(self) -> None:
        """A #DB from guest code: a breakpoint hit (B bits) or single-step; bounced to the guest."""
        vcpu = self.engine.kvm_vcpu
        dbg = vcpu.get_debugregs()
        self.pv.dr6 |= int(dbg.dr6) & ~X86_DR6_DEFAULT & 0xFFFF_FFFF & (_HIT_BITS | 0x4000)
        dbg.dr6 = X86_DR6_DEFAULT
        vcpu.set_debugregs(dbg)
        self.raise_debug_exception()
