"""HYPERVISOR_physdev_op (Xen: arch/x86/physdev.c) as a PV guest without devices sees it.

pvhyp passes no physical devices or interrupts through, so no domain has a
PIRQ: the per-domain ops answer as Xen does for a PIRQ that is not bound,
and the device-management ops are refused to unprivileged domains (-EPERM,
hv.xsm.physdev_resource) and unsupported for the privileged one (-ENOSYS).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import errno as E
from abi import physdev as P
from hypercalls import hypercall
from hypercalls.c_args import c_int, guest_handle_okay
from pvhyp.domain import evtchn_of, pv_of
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

IOBMP_BYTES = 8192
MAX_IO_PORTS = 65536

_PRIVILEGED_OPS = frozenset({
    P.PHYSDEVOP_apic_read, P.PHYSDEVOP_apic_write, P.PHYSDEVOP_alloc_irq_vector,
    P.PHYSDEVOP_map_pirq, P.PHYSDEVOP_unmap_pirq, P.PHYSDEVOP_manage_pci_add,
    P.PHYSDEVOP_manage_pci_remove, P.PHYSDEVOP_manage_pci_add_ext, P.PHYSDEVOP_restore_msi,
    P.PHYSDEVOP_restore_msi_ext, P.PHYSDEVOP_setup_gsi, P.PHYSDEVOP_pci_mmcfg_reserved,
    P.PHYSDEVOP_pci_device_add, P.PHYSDEVOP_pci_device_remove, P.PHYSDEVOP_prepare_msix,
    P.PHYSDEVOP_release_msix, P.PHYSDEVOP_dbgp_op,
})

def pirq_eoi_gmfn(ctx: HypercallContext, arg: int) -> int:
    mfn = ctx.read_struct(P.physdev_pirq_eoi_gmfn, arg)["gmfn"]
    domain = ctx.domain
    if not ctx.hv.frames.owned_by(mfn, domain.domid):
        return -E.EINVAL
    with domain.lock:
        if domain.pirq_eoi_map_mfn is not None:
            return -E.EBUSY
        domain.pirq_eoi_map_mfn = mfn
    return 0


@hypercall("physdev_op")
def do_physdev_op(ctx: HypercallContext, cmd: int, arg: int) -> int:
    cmd = c_int(cmd)
    if cmd == P.PHYSDEVOP_set_iopl:
        iopl = ctx.read_struct(P.physdev_set_iopl, arg)["iopl"]
        return pv_state.set_iopl(ctx.vcpu, iopl)
    if cmd == P.PHYSDEVOP_set_iobitmap:
        request = ctx.read_struct(P.physdev_set_iobitmap, arg)
        if not guest_handle_okay(ctx, request["bitmap"], IOBMP_BYTES, 1) or request["nr_ports"] > MAX_IO_PORTS:
            return -E.EINVAL
        pv = pv_of(ctx.vcpu)
        pv.iobmp, pv.iobmp_limit = request["bitmap"], request["nr_ports"]
        return 0
    if cmd == P.PHYSDEVOP_eoi:
        ctx.read_struct(P.physdev_eoi, arg)
        return -E.EINVAL                # irq out of range, or no such PIRQ
    if cmd in (P.PHYSDEVOP_pirq_eoi_gmfn_v1, P.PHYSDEVOP_pirq_eoi_gmfn_v2):
        return pirq_eoi_gmfn(ctx, arg)
    if cmd == P.PHYSDEVOP_IRQ_UNMASK_NOTIFY:
        return 0
    if cmd == P.PHYSDEVOP_irq_status_query:
        query = ctx.read_struct(P.physdev_irq_status_query, arg)
        if query["irq"] >= evtchn_of(ctx.domain).nr_pirqs:
            return -E.EINVAL
        ctx.write_struct(P.physdev_irq_status_query, arg, {"irq": query["irq"], "flags": P.XENIRQSTAT_needs_eoi})
        return 0
    if cmd in _PRIVILEGED_OPS:
        return ctx.hv.xsm.physdev_resource(ctx.domain, cmd) or -E.ENOSYS
    return -E.ENOSYS
