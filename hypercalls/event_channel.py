"""HYPERVISOR_event_channel_op and its pre-3.2 form event_channel_op_compat.

One dispatcher as Xen's do_event_channel_op: copy the op's struct in, run
the op in pvhyp.event_channel, copy the OUT fields back on success. Xen
copies back the very struct it read, so bytes the op does not set
(padding, other union members) go back as the guest wrote them: results
are patched into the bytes read, never rebuilt from zeros.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi import errno as E
from abi import event_channel as A
from hypercalls import hypercall
from hypercalls.fields import field_offset, patch, read_op
from pvhyp import event_channel as ev

if TYPE_CHECKING:
    from pvhyp.hypercall_table import HypercallContext

_STATUS_U = field_offset(A.evtchn_status, "u")


def _status_out(raw: bytearray, st: dict[str, Any]) -> bytearray:
    patch(A.evtchn_status, raw, status=st["status"], vcpu=st["vcpu"])
    u = st["u"]
    if "unbound" in u:
        raw[_STATUS_U:_STATUS_U + 2] = u["unbound"]["dom"].to_bytes(2, "little")
    elif "interdomain" in u:
        raw[_STATUS_U:_STATUS_U + 2] = u["interdomain"]["dom"].to_bytes(2, "little")
        raw[_STATUS_U + 4:_STATUS_U + 8] = u["interdomain"]["port"].to_bytes(4, "little")
    elif "pirq" in u or "virq" in u:
        raw[_STATUS_U:_STATUS_U + 4] = next(iter(u.values())).to_bytes(4, "little")
    return raw


# op -> (struct, run(ctx, fields) -> rc, OUT field names copied back on success)
def _alloc_unbound(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_alloc_unbound(ctx.domain, f)


def _bind_interdomain(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_bind_interdomain(ctx.domain, f)


def _bind_virq(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_bind_virq(ctx.domain, f)


def _bind_ipi(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_bind_ipi(ctx.domain, f)


def _bind_pirq(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_bind_pirq(ctx.domain, f)


def _close(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_close(ctx.domain, f["port"])


def _send(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_send(ctx.domain, f["port"], ctx.vcpu.vcpu_id)


def _status(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_status(ctx.domain, f)


def _bind_vcpu(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_bind_vcpu(ctx.domain, f["port"], f["vcpu"])


def _unmask(ctx: HypercallContext, f: dict[str, Any]) -> int:
    return ev.evtchn_unmask(ctx.domain, f["port"])


def _reset(ctx: HypercallContext, f: dict[str, Any]) -> int:
    d = ctx.hv.domain_by_any_id(ctx.domain, f["dom"])
    if d is None:
        return -E.ESRCH
    rc = ctx.hv.xsm.evtchn_reset(ctx.domain, d)
    if rc:
        return rc
    return ev.evtchn_reset(ctx.domain, d)


def _fifo_unavailable(ctx: HypercallContext, f: dict[str, Any] | None) -> int:
    # pvhyp offers the 2-level ABI only; guests fall back to it on any error.
    return -E.ENOSYS


def _init_control(ctx: HypercallContext, f: dict[str, Any]) -> int:
    """Xen's evtchn_fifo_init_control checks, in its order, so bad requests get Xen's errors
    (XSA-188's test); a good one still gets -ENOSYS: the FIFO ABI is not offered."""
    from pvhyp.mm.pagetype import PGT_writable_page
    d = ctx.domain
    if f["vcpu"] >= len(d.vcpus):
        return -E.ENOENT
    if f["offset"] > 4096 - A.evtchn_fifo_control_block.sizeof() or f["offset"] & 7:
        return -E.EINVAL
    mmu = ctx.hv.mmu
    # map_guest_page: an x86 PV guest's gfn is its mfn (a process domain's goes through
    # its p2m); the page must be its own and writable
    gfn = f["control_gfn"]
    mfn = gfn if d.paging else d.pfn_to_mfn(gfn)
    if mfn >= mmu.frames.nr_frames or mmu.get_page_and_type_from_mfn(mfn, PGT_writable_page, d):
        return -E.EINVAL
    mmu.put_page_and_type(mfn)
    return _fifo_unavailable(ctx, f)


OPS = {
    A.EVTCHNOP_alloc_unbound: (A.evtchn_alloc_unbound, _alloc_unbound, ("port",)),
    A.EVTCHNOP_bind_interdomain: (A.evtchn_bind_interdomain, _bind_interdomain, ("local_port",)),
    A.EVTCHNOP_bind_virq: (A.evtchn_bind_virq, _bind_virq, ("port",)),
    A.EVTCHNOP_bind_ipi: (A.evtchn_bind_ipi, _bind_ipi, ("port",)),
    A.EVTCHNOP_bind_pirq: (A.evtchn_bind_pirq, _bind_pirq, ("port",)),
    A.EVTCHNOP_close: (A.evtchn_close, _close, ()),
    A.EVTCHNOP_send: (A.evtchn_send, _send, ()),
    A.EVTCHNOP_status: (A.evtchn_status, _status, None),
    A.EVTCHNOP_bind_vcpu: (A.evtchn_bind_vcpu, _bind_vcpu, ()),
    A.EVTCHNOP_unmask: (A.evtchn_unmask, _unmask, ()),
    A.EVTCHNOP_reset: (A.evtchn_reset, _reset, ()),
}
FIFO_OPS = (A.EVTCHNOP_init_control, A.EVTCHNOP_expand_array, A.EVTCHNOP_set_priority)

# The ops the legacy hypercall forwards (Xen's do_event_channel_op_compat).
COMPAT_OPS = (A.EVTCHNOP_bind_interdomain, A.EVTCHNOP_bind_virq, A.EVTCHNOP_bind_pirq,
              A.EVTCHNOP_close, A.EVTCHNOP_send, A.EVTCHNOP_status, A.EVTCHNOP_alloc_unbound,
              A.EVTCHNOP_bind_ipi, A.EVTCHNOP_bind_vcpu, A.EVTCHNOP_unmask)
_COMPAT_U = field_offset(A.evtchn_op, "u")


@hypercall("event_channel_op")
def do_event_channel_op(ctx: HypercallContext, cmd: int, arg: int) -> int:
    cmd &= 0xFFFF_FFFF          # Xen's `int cmd`
    if cmd == A.EVTCHNOP_init_control:
        _, fields = read_op(ctx, A.evtchn_init_control, arg)
        return _init_control(ctx, fields)
    if cmd in FIFO_OPS:
        return _fifo_unavailable(ctx, None)
    entry = OPS.get(cmd)
    if entry is None:
        return -E.ENOSYS
    struct, run, outs = entry
    raw, fields = read_op(ctx, struct, arg)
    rc = run(ctx, fields)
    if rc == 0 and outs != ():
        if outs is None:
            _status_out(raw, fields)
        else:
            patch(struct, raw, **{name: fields[name] for name in outs})
        ctx.write(arg, bytes(raw))
    return rc


@hypercall("event_channel_op_compat")
def do_event_channel_op_compat(ctx: HypercallContext, uop: int) -> int:
    raw = ctx.read(uop, A.evtchn_op.sizeof())
    cmd = int.from_bytes(raw[:4], "little")
    if cmd not in COMPAT_OPS:
        return -E.ENOSYS
    return do_event_channel_op(ctx, cmd, uop + _COMPAT_U)
