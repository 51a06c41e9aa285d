"""mmu_update, mmuext_op, update_va_mapping(_otherdomain): Xen's x86 mm.c entry points.

Each copies requests in one at a time (a fault stops the batch with -EFAULT,
as in Xen), calls the PV MMU (hv.mmu, under its lock), and reports how many
were done through the guest's `pdone` pointer.
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from abi import errno as E
from abi import xen as X
from hypercalls import hypercall
from pvhyp.guest_access import GuestFault, handle_ok
from pvhyp.mm.flush import flush_tlb
from pvhyp.mm.pagetype import (
    PGT_l1_page_table,
    PGT_l2_page_table,
    PGT_l3_page_table,
    PGT_l4_page_table,
)

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain
    from pvhyp.hypercall_table import HypercallContext
    from pvhyp.mm.mmu import PVMMU

_MMU_UPDATE = struct.Struct("<QQ")          # mmu_update: ptr, val
_MMUEXT_OP = struct.Struct("<I4xQQ")        # mmuext_op: cmd, arg1, arg2
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
assert _MMU_UPDATE.size == X.mmu_update.sizeof() and _MMUEXT_OP.size == X.mmuext_op.sizeof()

_PIN_TYPES = {
    X.MMUEXT_PIN_L1_TABLE: PGT_l1_page_table,
    X.MMUEXT_PIN_L2_TABLE: PGT_l2_page_table,
    X.MMUEXT_PIN_L3_TABLE: PGT_l3_page_table,
    X.MMUEXT_PIN_L4_TABLE: PGT_l4_page_table,
}


def _signed32(x: int) -> int:
    x &= 0xFFFF_FFFF
    return x - (1 << 32) if x & (1 << 31) else x


def _begin(ctx: HypercallContext, count: int, pdone: int) -> tuple[int, int]:
    """The MMU_UPDATE_PREEMPTED convention: a continued batch carries `done` in *pdone."""
    done = 0
    if count & X.MMU_UPDATE_PREEMPTED:
        count &= ~X.MMU_UPDATE_PREEMPTED
        if pdone:
            try:
                done = _U32.unpack(ctx.read(pdone, 4))[0]
            except GuestFault:
                pass
    return count, done


def _prologue(ctx: HypercallContext, handle: int, count: int, pdone: int, foreigndom: int
              ) -> tuple[int | None, int, int, int]:
    """What mmu_update and mmuext_op do before their loops (as in Xen):
    (early result or None, count, done so far, foreigndom)."""
    count &= 0xFFFF_FFFF
    foreigndom &= 0xFFFF_FFFF
    if count == X.MMU_UPDATE_PREEMPTED and not handle:
        # The continuation that only finishes dropping an old_guest_table.
        return _signed32(foreigndom), 0, 0, foreigndom
    count, done = _begin(ctx, count, pdone)
    if not handle_ok(ctx.domain, handle):
        return -E.EFAULT, 0, 0, foreigndom
    return None, count, done, foreigndom


def _report_done(ctx: HypercallContext, pdone: int, done: int) -> None:
    if pdone:
        try:
            ctx.write(pdone, _U32.pack(done & 0xFFFF_FFFF))
        except GuestFault:
            pass


def vcpumask_to_vcpus(ctx: HypercallContext, d: Domain, bmap: int) -> list[VCPU] | None:
    """The vCPUs named by a guest bitmap (Xen's vcpumask_to_pcpumask); None on a fault."""
    vcpus: list[VCPU] = []
    nr = len(d.vcpus)
    offs = 0
    while offs * 64 < nr:
        try:
            word = _U64.unpack(ctx.read(bmap + offs * 8, 8))[0]
        except GuestFault:
            return None
        bias = offs * 64
        while word:
            bit = (word & -word).bit_length() - 1
            word &= word - 1
            if bias + bit >= nr:
                return vcpus
            vcpus.append(d.vcpus[bias + bit])
        offs += 1
    return vcpus


@hypercall("mmu_update")
def do_mmu_update(ctx: HypercallContext, ureqs: int, count: int, pdone: int, foreigndom: int) -> int:
    early, count, done, foreigndom = _prologue(ctx, ureqs, count, pdone, foreigndom)
    if early is not None:
        return early
    d, v = ctx.domain, ctx.vcpu
    mmu = ctx.hv.mmu
    with mmu.lock:
        pt_owner: Domain | None = d
        pt_dom = foreigndom >> 16
        if pt_dom:
            pt_owner = ctx.hv.domains.get(pt_dom - 1)
            if pt_owner is None:
                return -E.ESRCH
            if pt_owner is not d:
                if not pt_owner.vcpus:
                    _report_done(ctx, pdone, done)
                    return -E.EINVAL
                v = pt_owner.vcpus[0]
        pg_owner = mmu.get_pg_owner(d, foreigndom)
        if pg_owner is None:
            _report_done(ctx, pdone, done)
            return -E.ESRCH
        rc = 0
        changed = False
        i = 0
        try:
            while i < count:
                try:
                    ptr, val = _MMU_UPDATE.unpack(ctx.read(ureqs + i * 16, 16))
                except GuestFault:
                    rc = -E.EFAULT
                    break
                cmd = ptr & 7
                if cmd in (X.MMU_NORMAL_PT_UPDATE, X.MMU_PT_UPDATE_PRESERVE_AD, X.MMU_PT_UPDATE_NO_TRANSLATE):
                    rc = ctx.hv.xsm.mmu_update(d, pt_owner, pg_owner)
                    if not rc:
                        rc, _ = mmu.mmu_normal_update(v, pt_owner, pg_owner, ptr - cmd, val, cmd)
                        changed = changed or not rc
                elif cmd == X.MMU_MACHPHYS_UPDATE:
                    rc = ctx.hv.xsm.mmu_update(d, None, pg_owner)
                    if not rc:
                        rc = mmu.machphys_update(d, pt_owner, pg_owner, ptr >> 12, val)
                else:
                    rc = -E.ENOSYS
                if rc:
                    break
                i += 1
        finally:
            if changed:
                flush_tlb(pt_owner)
    _report_done(ctx, pdone, done + i)
    return rc


@hypercall("mmuext_op")
def do_mmuext_op(ctx: HypercallContext, uops: int, count: int, pdone: int, foreigndom: int) -> int:
    early, count, done, foreigndom = _prologue(ctx, uops, count, pdone, foreigndom)
    if early is not None:
        return early
    currd, curr = ctx.domain, ctx.vcpu
    mmu = ctx.hv.mmu
    with mmu.lock:
        pg_owner = mmu.get_pg_owner(currd, foreigndom)
        if pg_owner is None:
            return -E.ESRCH
        rc = ctx.hv.xsm.mmuext_op(currd, pg_owner)
        if rc:
            return rc
        i = 0
        while i < count:
            try:
                cmd, arg1, arg2 = _MMUEXT_OP.unpack(ctx.read(uops + i * 24, 24))
            except GuestFault:
                rc = -E.EFAULT
                break
            rc = _mmuext_one(ctx, mmu, curr, currd, pg_owner, cmd, arg1, arg2)
            if rc:
                break
            i += 1
    _report_done(ctx, pdone, done + i)
    return rc


def _mmuext_one(ctx: HypercallContext, mmu: PVMMU, curr: VCPU, currd: Domain, pg_owner: Domain,
                cmd: int, arg1: int, arg2: int) -> int:
    foreign = currd is not pg_owner
    if cmd in _PIN_TYPES:
        return mmu.pin_table(currd, pg_owner, arg1, _PIN_TYPES[cmd])
    if cmd == X.MMUEXT_UNPIN_TABLE:
        return mmu.unpin_table(pg_owner, arg1)
    if cmd == X.MMUEXT_NEW_BASEPTR:
        return -E.EPERM if foreign else mmu.new_guest_cr3(curr, arg1)
    if cmd == X.MMUEXT_NEW_USER_BASEPTR:
        return -E.EPERM if foreign else mmu.new_user_baseptr(curr, arg1)
    if cmd in (X.MMUEXT_TLB_FLUSH_LOCAL, X.MMUEXT_INVLPG_LOCAL):
        if foreign:
            return -E.EPERM
        flush_tlb(currd, [curr])
        return 0
    if cmd in (X.MMUEXT_TLB_FLUSH_MULTI, X.MMUEXT_INVLPG_MULTI):
        if foreign:
            return -E.EPERM
        vcpus = vcpumask_to_vcpus(ctx, currd, arg2)
        if vcpus is None:
            return -E.EINVAL
        flush_tlb(currd, vcpus)
        return 0
    if cmd in (X.MMUEXT_TLB_FLUSH_ALL, X.MMUEXT_INVLPG_ALL):
        if foreign:
            return -E.EPERM
        flush_tlb(currd)
        return 0
    if cmd == X.MMUEXT_FLUSH_CACHE:
        if foreign:
            return -E.EPERM
        return 0 if currd.is_privileged else -E.EACCES
    if cmd == X.MMUEXT_FLUSH_CACHE_GLOBAL:
        if foreign:
            return -E.EPERM
        return 0 if currd.is_privileged else -E.EINVAL
    if cmd == X.MMUEXT_SET_LDT:
        ents = arg2 & 0xFFFF_FFFF
        ptr = arg1 if ents else 0
        if foreign:
            return -E.EPERM
        if ents > 8192 or (ents and (ptr & 0xFFF or not handle_ok(currd, ptr))):
            return -E.EINVAL
        mmu.set_ldt(curr, ptr, ents)
        flush_tlb(currd, [curr])
        return 0
    if cmd == X.MMUEXT_CLEAR_PAGE:
        return mmu.clear_page(pg_owner, arg1)
    if cmd == X.MMUEXT_COPY_PAGE:
        return mmu.copy_page(pg_owner, arg1, arg2)
    if cmd in (X.MMUEXT_MARK_SUPER, X.MMUEXT_UNMARK_SUPER):
        return -E.EOPNOTSUPP
    return -E.ENOSYS


def _update_va_mapping(ctx: HypercallContext, va: int, val: int, flags: int, pg_owner: Domain) -> int:
    d, v = ctx.domain, ctx.vcpu
    mmu = ctx.hv.mmu
    with mmu.lock:
        rc = mmu.update_va_mapping(v, va, val, pg_owner)
    if rc:
        return rc
    # The flush (Xen: only after a successful update).
    flush_type = flags & X.UVMF_FLUSHTYPE_MASK
    if flush_type not in (X.UVMF_TLB_FLUSH, X.UVMF_INVLPG):
        # No flush asked for; the engine still must not keep a stale entry
        # for a mapping that lost rights, so flush this vCPU anyway.
        flush_tlb(d, [v])
        return 0
    bmap = flags & ~X.UVMF_FLUSHTYPE_MASK
    if bmap == X.UVMF_LOCAL:
        flush_tlb(d, [v])
    elif bmap == X.UVMF_ALL:
        flush_tlb(d)
    else:
        vcpus = vcpumask_to_vcpus(ctx, d, bmap)
        flush_tlb(d, [v] + (vcpus or []))
        if vcpus is None:
            return -E.EFAULT
    return 0


@hypercall("update_va_mapping")
def do_update_va_mapping(ctx: HypercallContext, va: int, val: int, flags: int) -> int:
    return _update_va_mapping(ctx, va, val, flags, ctx.domain)


@hypercall("update_va_mapping_otherdomain")
def do_update_va_mapping_otherdomain(ctx: HypercallContext, va: int, val: int, flags: int, domid: int) -> int:
    mmu = ctx.hv.mmu
    with mmu.lock:
        pg_owner = mmu.get_pg_owner(ctx.domain, domid)
    if pg_owner is None:
        return -E.ESRCH
    return _update_va_mapping(ctx, va, val, flags, pg_owner)
