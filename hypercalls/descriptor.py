"""HYPERVISOR_set_gdt and HYPERVISOR_update_descriptor (Xen: pv/descriptor-tables.c)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from abi import errno as E
from abi.arch_x86_xen import FIRST_RESERVED_GDT_ENTRY
from hypercalls import hypercall
from hypercalls.c_args import c_uint
from pvhyp.pv import descriptors as pv_descriptors
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext


@hypercall("set_gdt")
def do_set_gdt(ctx: HypercallContext, frame_list: int, entries: int) -> int:
    entries = c_uint(entries)
    if entries > FIRST_RESERVED_GDT_ENTRY:
        return -E.EINVAL
    nr_frames = (entries + pv_descriptors.GDT_ENTRIES_PER_FRAME - 1) // pv_descriptors.GDT_ENTRIES_PER_FRAME
    frames = list(struct.unpack(f"<{nr_frames}Q", ctx.read(frame_list, 8 * nr_frames)))
    with pv_state.domain_lock(ctx.domain):
        return pv_descriptors.pv_set_gdt(ctx.vcpu, frames, entries)


@hypercall("update_descriptor")
def do_update_descriptor(ctx: HypercallContext, maddr: int, desc: int) -> int:
    with pv_state.domain_lock(ctx.domain):
        return pv_descriptors.update_descriptor(ctx.vcpu, maddr, desc)
