"""memory_op: reservations, the M2P's whereabouts, memory maps (common/memory.c,
arch/x86/mm.c, arch/x86/x86_64/mm.c).

For a PV guest the reservation ops speak machine frames: populate_physmap
records pfn->mfn in the M2P and hands the mfn back in the extent list,
decrease_reservation takes mfns. Reservation ops answer with the number of
extents done (Xen's continuation encoding: cmd bits 6+ are the start extent).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from abi import errno as E
from abi import memory as M
from abi import xen_x86_64 as X64
from abi.e820 import E820_RAM
from hypercalls import hypercall
from pvhyp.domain import mm_of
from pvhyp.guest_access import GuestFault, handle_ok

if TYPE_CHECKING:
    from construct import Construct

    from pvhyp.domain import Domain
    from pvhyp.hypercall_table import HypercallContext

MEMOP_EXTENT_SHIFT = 6
MEMOP_CMD_MASK = (1 << MEMOP_EXTENT_SHIFT) - 1
UINT_MAX = 0xFFFF_FFFF
E820MAX = 1024
DOMU_MAX_ORDER, CTLDOM_MAX_ORDER = 9, 12          # CONFIG_DOMU_MAX_ORDER / CONFIG_CTLDOM_MAX_ORDER

_RESERVATION = struct.Struct("<QQIIH6x")         # xen_memory_reservation
_MEMORY_DOMAIN = struct.Struct("<H")
_MACHPHYS_MAPPING = struct.Struct("<QQQ")
_MFN_LIST = struct.Struct("<I4xQI4x")            # xen_machphys_mfn_list
_MEMORY_MAP = struct.Struct("<I4xQ")             # xen_memory_map
_FOREIGN_MEMORY_MAP = struct.Struct("<H6xI4xQ")  # xen_foreign_memory_map
_E820 = struct.Struct("<QQI")
_U64 = struct.Struct("<Q")
assert _RESERVATION.size == M.xen_memory_reservation.sizeof()
assert _MFN_LIST.size == M.xen_machphys_mfn_list.sizeof()
assert _MEMORY_MAP.size == M.xen_memory_map.sizeof()
assert _FOREIGN_MEMORY_MAP.size == M.xen_foreign_memory_map.sizeof()


def max_order(d: Domain) -> int:
    return CTLDOM_MAX_ORDER if d.is_privileged else DOMU_MAX_ORDER


@hypercall("memory_op")
def do_memory_op(ctx: HypercallContext, cmd: int, arg: int) -> int:
    start_extent = cmd >> MEMOP_EXTENT_SHIFT
    op = cmd & MEMOP_CMD_MASK
    if op in (M.XENMEM_increase_reservation, M.XENMEM_decrease_reservation, M.XENMEM_populate_physmap):
        return _reservation_op(ctx, op, start_extent, arg)
    handler = _COMMON_OPS.get(op)
    if handler is not None:
        if op in (M.XENMEM_add_to_physmap, M.XENMEM_add_to_physmap_batch):
            if start_extent > 0xFFFF:
                return -E.EDOM
        elif start_extent:
            return -E.EINVAL
        return handler(ctx, arg)
    # arch_memory_op sees the whole cmd: a start extent matches no op there.
    handler = _ARCH_OPS.get(cmd)
    return handler(ctx, arg) if handler is not None else -E.ENOSYS


def _reservation_op(ctx: HypercallContext, op: int, start_extent: int, arg: int) -> int:
    try:
        extent_list, nr_extents, order, mem_flags, domid = _RESERVATION.unpack(ctx.read(arg, _RESERVATION.size))
    except GuestFault:
        return start_extent
    if nr_extents > UINT_MAX >> MEMOP_EXTENT_SHIFT or start_extent >= nr_extents:
        return start_extent
    d = ctx.hv.domain_by_any_id(ctx.domain, domid)
    if d is None:
        return start_extent
    address_bits = M.XENMEMF_get_address_bits(mem_flags)
    max_page_order = max(ctx.hv.frames.nr_frames - 1, 1).bit_length()
    if address_bits and address_bits < max_page_order + 12 and address_bits <= 12:
        return start_extent
    if ctx.hv.xsm.memory_adjust_reservation(ctx.domain, d):
        return start_extent
    mmu = ctx.hv.mmu
    i = start_extent
    with mmu.lock:
        if op == M.XENMEM_decrease_reservation:
            if not handle_ok(ctx.domain, extent_list + i * 8) or order > max_order(ctx.domain):
                return i
            while i < nr_extents:
                try:
                    gmfn = _U64.unpack(ctx.read(extent_list + i * 8, 8))[0]
                except GuestFault:
                    break
                if any(mmu.guest_remove_page(d, gmfn + j) for j in range(1 << order)):
                    break
                i += 1
            return i
        if op == M.XENMEM_increase_reservation:
            if (extent_list and not handle_ok(ctx.domain, extent_list + i * 8)) or order > max_order(ctx.domain):
                return i
            while i < nr_extents:
                mfn = mmu.alloc_domheap_pages(d, order)
                if mfn is None:
                    break
                if extent_list:
                    try:
                        ctx.write(extent_list + i * 8, _U64.pack(mfn))
                    except GuestFault:
                        break
                i += 1
            return i
        # XENMEM_populate_physmap
        populate_on_demand = mem_flags & M.XENMEMF_populate_on_demand
        if not handle_ok(ctx.domain, extent_list + i * 8) or order > (18 if populate_on_demand else max_order(ctx.domain)):
            return i
        while i < nr_extents:
            try:
                gpfn = _U64.unpack(ctx.read(extent_list + i * 8, 8))[0]
            except GuestFault:
                break
            if populate_on_demand:
                if d is ctx.domain:
                    break
                i += 1                       # PV: nothing to mark
                continue
            mfn = mmu.alloc_domheap_pages(d, order)
            if mfn is None:
                break
            for j in range(1 << order):
                mmu.set_gpfn_from_mfn(d, mfn + j, (gpfn + j) & 0xFFFF_FFFF_FFFF_FFFF)
            try:
                ctx.write(extent_list + i * 8, _U64.pack(mfn))
            except GuestFault:
                break
            i += 1
        return i


def _maximum_ram_page(ctx: HypercallContext, arg: int) -> int:
    return ctx.hv.frames.nr_frames


def _reservation_query(op: int) -> Callable[[HypercallContext, int], int]:
    def query(ctx: HypercallContext, arg: int) -> int:
        (domid,) = _MEMORY_DOMAIN.unpack(ctx.read(arg, 2))
        d = ctx.hv.domain_by_any_id(ctx.domain, domid)
        if d is None:
            return -E.ESRCH
        rc = ctx.hv.xsm.memory_stat_reservation(ctx.domain, d)
        if rc:
            return rc
        if op == M.XENMEM_current_reservation:
            return d.tot_pages
        if op == M.XENMEM_maximum_reservation:
            return d.max_pages
        # XENMEM_maximum_gpfn: PV guests publish nr_pfns in shared_info.arch.max_pfn.
        max_pfn = ctx.hv.memory.read_u64((d.shared_info_mfn << 12) + _SHARED_INFO_MAX_PFN)
        return (max_pfn or 1) - 1
    return query


def _machphys_mapping(ctx: HypercallContext, arg: int) -> int:
    max_mfn = X64.MACH2PHYS_NR_ENTRIES - 1
    if ctx.domain.is_privileged:
        max_mfn = ctx.hv.frames.nr_frames - 1
    start = ctx.hv.m2p_virt_start        # Xen's, unless the CPU engine moved it (pvhyp/kvm/m2p.py)
    ctx.write(arg, _MACHPHYS_MAPPING.pack(start, start + X64.MACH2PHYS_VIRT_END - X64.MACH2PHYS_VIRT_START, max_mfn))
    return 0


def _machphys_mfn_list(ctx: HypercallContext, arg: int) -> int:
    """One mfn per 2 MiB of the M2P (ours is contiguous)."""
    hv = ctx.hv
    max_extents, extent_start, _ = _MFN_LIST.unpack(ctx.read(arg, _MFN_LIST.size))
    m2p_bytes = hv.frames.nr_frames * 8
    i = 0
    while i != max_extents and i * (2 << 20) < m2p_bytes:
        ctx.write(extent_start + i * 8, _U64.pack(hv.m2p_first_mfn + i * 512))
        i += 1
    ctx.write(arg, _MFN_LIST.pack(max_extents, extent_start, i))
    return 0


def _set_memory_map(ctx: HypercallContext, arg: int) -> int:
    domid, nr_entries, buffer = _FOREIGN_MEMORY_MAP.unpack(ctx.read(arg, _FOREIGN_MEMORY_MAP.size))
    if nr_entries > E820MAX:
        return -E.EINVAL
    d = ctx.hv.domain_by_any_id(ctx.domain, domid)
    if d is None:
        return -E.ESRCH
    rc = ctx.hv.xsm.domain_memory_map(ctx.domain, d)
    if rc:
        return rc
    entries = ctx.read(buffer, nr_entries * _E820.size)
    mm_of(d).e820 = entries
    return 0


def _memory_map(ctx: HypercallContext, arg: int) -> int:
    nr_entries, buffer = _MEMORY_MAP.unpack(ctx.read(arg, _MEMORY_MAP.size))
    e820 = mm_of(ctx.domain).e820
    if not e820:
        return -E.ENOSYS
    n = min(nr_entries, len(e820) // _E820.size)
    ctx.write(buffer, e820[:n * _E820.size])
    ctx.write(arg, _MEMORY_MAP.pack(n, buffer))
    return 0


def _machine_memory_map(ctx: HypercallContext, arg: int) -> int:
    rc = ctx.hv.xsm.machine_memory_map(ctx.domain)
    if rc:
        return rc
    nr_entries, buffer = _MEMORY_MAP.unpack(ctx.read(arg, _MEMORY_MAP.size))
    if buffer:
        if nr_entries < 2:
            return -E.EINVAL
        ctx.write(buffer, _E820.pack(0, ctx.hv.memory.size, E820_RAM))
    ctx.write(arg, _MEMORY_MAP.pack(1, buffer))
    return 0


def _physmap_of_pv(struct_: Construct, space_check: Callable[[bytes], int] | None
                   ) -> Callable[[HypercallContext, int], int]:
    """add/remove_from_physmap: only translated guests have a physmap to change."""
    size = struct_.sizeof()

    def op(ctx: HypercallContext, arg: int) -> int:
        head = ctx.read(arg, size)
        domid = struct.unpack_from("<H", head)[0]
        if space_check is not None:
            rc = space_check(head)
            if rc:
                return rc
        d = ctx.hv.domain_by_any_id(ctx.domain, domid)
        if d is None:
            return -E.ESRCH
        return -E.EACCES
    return op


def _add_to_physmap_space(head: bytes) -> int:
    return -E.ENOSYS if struct.unpack_from("<I", head, 4)[0] == M.XENMAPSPACE_gmfn_foreign else 0


def _add_to_physmap_batch_space(head: bytes) -> int:
    return -E.EOPNOTSUPP if struct.unpack_from("<H", head, 2)[0] == M.XENMAPSPACE_gmfn_range else 0


def _claim_pages(ctx: HypercallContext, arg: int) -> int:
    extent_start, nr_extents, order, mem_flags, domid = _RESERVATION.unpack(ctx.read(arg, _RESERVATION.size))
    if extent_start or order or mem_flags:
        return -E.EINVAL
    d = ctx.hv.domains.get(domid)
    if d is None:
        return -E.EINVAL
    return ctx.hv.xsm.claim_pages(ctx.domain, d)


def _exchange(ctx: HypercallContext, arg: int) -> int:
    return -E.ENOSYS


def _shared_info_max_pfn_offset() -> int:
    from abi import xen as X
    s = X.shared_info
    offset = 0
    for sub in s.subcons:
        if sub.name == "arch":
            return offset
        offset += sub.sizeof()
    raise RuntimeError("shared_info has no arch field")


_SHARED_INFO_MAX_PFN = _shared_info_max_pfn_offset()     # arch_shared_info.max_pfn comes first

_COMMON_OPS = {
    M.XENMEM_maximum_ram_page: _maximum_ram_page,
    M.XENMEM_current_reservation: _reservation_query(M.XENMEM_current_reservation),
    M.XENMEM_maximum_reservation: _reservation_query(M.XENMEM_maximum_reservation),
    M.XENMEM_maximum_gpfn: _reservation_query(M.XENMEM_maximum_gpfn),
    M.XENMEM_add_to_physmap: _physmap_of_pv(M.xen_add_to_physmap, _add_to_physmap_space),
    M.XENMEM_add_to_physmap_batch: _physmap_of_pv(M.xen_add_to_physmap_batch, _add_to_physmap_batch_space),
    M.XENMEM_remove_from_physmap: _physmap_of_pv(M.xen_remove_from_physmap, None),
    M.XENMEM_claim_pages: _claim_pages,
    M.XENMEM_exchange: _exchange,
}
_ARCH_OPS = {
    M.XENMEM_machphys_mapping: _machphys_mapping,
    M.XENMEM_machphys_mfn_list: _machphys_mfn_list,
    M.XENMEM_memory_map: _memory_map,
    M.XENMEM_set_memory_map: _set_memory_map,
    M.XENMEM_machine_memory_map: _machine_memory_map,
}
