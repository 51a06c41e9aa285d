"""HYPERVISOR_domctl: the toolstack's per-domain operations (Xen's do_domctl).

The order of checks is Xen's: copy in (-EFAULT), interface version (-EACCES),
target lookup (-ESRCH), then the one policy check (hv.xsm.domctl; the dummy
policy: only the control domain, -EPERM; getdomaininfo also lets a xenstore
domain in), then the operation. Results are copied back as the whole
xen_domctl, as Xen does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi import domctl as D
from abi import errno as E
from abi.arch_x86_xen import vcpu_guest_context
from abi.cdefs import plain
from abi.xen import DOMID_FIRST_RESERVED
from hypercalls import hypercall
from pvhyp import domctl as mech

if TYPE_CHECKING:
    from construct import Construct

    from pvhyp.domain import Domain
    from pvhyp.hypercall_table import HypercallContext

DOMCTL_SIZE = D.xen_domctl.sizeof()
U_OFFSET = DOMCTL_SIZE - 128          # the op union follows cmd, interface_version, domain, pad
_HEADER = {"cmd": 0, "interface_version": 4, "domain": 8}


def _field(raw: bytes, name: str, size: int) -> int:
    at = _HEADER[name]
    return int.from_bytes(raw[at:at + size], "little")


def _parse(struct: Construct, raw: bytes, offset: int = U_OFFSET) -> dict[str, Any]:
    parsed: dict[str, Any] = plain(struct.parse(raw[offset:offset + struct.sizeof()]))
    return parsed


def _with_payload(raw: bytes, struct: Construct, value: dict[str, Any], domain: int | None = None) -> bytes:
    out = bytearray(raw)
    payload = struct.build(value)
    out[U_OFFSET:U_OFFSET + len(payload)] = payload
    if domain is not None:
        out[8:10] = domain.to_bytes(2, "little")
    return bytes(out)


@hypercall("domctl")
def do_domctl(ctx: HypercallContext, u_domctl: int) -> int:
    raw = ctx.read(u_domctl, DOMCTL_SIZE)
    if _field(raw, "interface_version", 4) != D.XEN_DOMCTL_INTERFACE_VERSION:
        return -E.EACCES
    cmd = _field(raw, "cmd", 4)
    domid = _field(raw, "domain", 2)
    hv, caller = ctx.hv, ctx.domain

    d = None
    if cmd != D.XEN_DOMCTL_createdomain:
        d = hv.get_domain(domid)
        if d is None and cmd != D.XEN_DOMCTL_getdomaininfo:
            return -E.ESRCH

    if cmd == D.XEN_DOMCTL_getdomaininfo:
        if d is None:
            if domid >= DOMID_FIRST_RESERVED:
                return -E.EINVAL
            d = mech.first_domain_from(hv, domid)
            if d is None:
                return -E.ESRCH
        rc = hv.xsm.domctl(caller, d, cmd)
        if rc:
            return rc
        info = mech.getdomaininfo(d)
        ctx.write(u_domctl, _with_payload(raw, D.xen_domctl_getdomaininfo, info, domain=info["domain"]))
        return 0

    rc = hv.xsm.domctl(caller, d, cmd)
    if rc:
        return rc
    handler = _OPS.get(cmd)
    if handler is None:
        return -E.ENOSYS
    return handler(ctx, u_domctl, raw, d)  # type: ignore[arg-type]  # None only for createdomain, which ignores it


def _createdomain(ctx: HypercallContext, u_domctl: int, raw: bytes, _d: Domain | None) -> int:
    config = _parse(D.xen_domctl_createdomain, raw)
    domid = mech.domain_create(ctx.hv, _field(raw, "domain", 2), config)
    if domid < 0:
        return domid
    out = bytearray(raw)
    out[8:10] = domid.to_bytes(2, "little")
    ctx.write(u_domctl, bytes(out))
    return 0


def _destroydomain(ctx: HypercallContext, _u: int, _raw: bytes, d: Domain) -> int:
    return mech.domain_kill(ctx.hv, ctx.domain, d)


def _pausedomain(ctx: HypercallContext, _u: int, _raw: bytes, d: Domain) -> int:
    return mech.domain_pause_by_systemcontroller(ctx.domain, d)


def _unpausedomain(_ctx: HypercallContext, _u: int, _raw: bytes, d: Domain) -> int:
    return mech.domain_unpause_by_systemcontroller(d)


def _max_mem(_ctx: HypercallContext, _u: int, raw: bytes, d: Domain) -> int:
    return mech.set_max_mem(d, _parse(D.xen_domctl_max_mem, raw)["max_memkb"])


def _max_vcpus(ctx: HypercallContext, _u: int, raw: bytes, d: Domain) -> int:
    return mech.max_vcpus(ctx.domain, d, _parse(D.xen_domctl_max_vcpus, raw)["max"])


def _setvcpucontext(ctx: HypercallContext, _u: int, raw: bytes, d: Domain) -> int:
    op = _parse(D.xen_domctl_vcpucontext, raw)
    vcpu_id = op["vcpu"]
    if d is ctx.domain or vcpu_id >= len(d.vcpus):
        return -E.EINVAL
    if op["ctxt"] == 0:
        return -E.EOPNOTSUPP        # vcpu_reset: not offered (a built domain is destroyed instead)
    context = plain(vcpu_guest_context.parse(ctx.read(op["ctxt"], vcpu_guest_context.sizeof())))
    v = d.vcpus[vcpu_id]
    with d.lock:
        return mech.arch_set_info_guest(v, context)


def _getvcpucontext(ctx: HypercallContext, u_domctl: int, raw: bytes, d: Domain) -> int:
    op = _parse(D.xen_domctl_vcpucontext, raw)
    vcpu_id = op["vcpu"]
    if vcpu_id >= len(d.vcpus) or d.vcpus[vcpu_id] is ctx.vcpu:
        return -E.EINVAL
    context = mech.arch_get_info_guest(d.vcpus[vcpu_id])
    if context is None:
        return -E.ENODATA
    ctx.write(op["ctxt"], vcpu_guest_context.build(context))
    ctx.write(u_domctl, raw)
    return 0


def _getvcpuinfo(ctx: HypercallContext, u_domctl: int, raw: bytes, d: Domain) -> int:
    op = _parse(D.xen_domctl_getvcpuinfo, raw)
    if op["vcpu"] >= len(d.vcpus):
        return -E.EINVAL
    op.update(mech.getvcpuinfo(d.vcpus[op["vcpu"]]))
    ctx.write(u_domctl, _with_payload(raw, D.xen_domctl_getvcpuinfo, op))
    return 0


def _setdomainhandle(_ctx: HypercallContext, _u: int, raw: bytes, d: Domain) -> int:
    d.handle = bytes(_parse(D.xen_domctl_setdomainhandle, raw)["handle"])
    return 0


def _set_address_size(_ctx: HypercallContext, _u: int, raw: bytes, _d: Domain | None) -> int:
    return mech.set_address_size(_parse(D.xen_domctl_address_size, raw)["size"])


def _get_address_size(ctx: HypercallContext, u_domctl: int, raw: bytes, _d: Domain | None) -> int:
    ctx.write(u_domctl, _with_payload(raw, D.xen_domctl_address_size, {"size": mech.PV64_ADDRESS_SIZE}))
    return 0


def _hypercall_init(_ctx: HypercallContext, _u: int, raw: bytes, d: Domain) -> int:
    return mech.init_hypercall_page(d, _parse(D.xen_domctl_hypercall_init, raw)["gmfn"])


_OPS = {
    D.XEN_DOMCTL_createdomain: _createdomain,
    D.XEN_DOMCTL_destroydomain: _destroydomain,
    D.XEN_DOMCTL_pausedomain: _pausedomain,
    D.XEN_DOMCTL_unpausedomain: _unpausedomain,
    D.XEN_DOMCTL_max_mem: _max_mem,
    D.XEN_DOMCTL_max_vcpus: _max_vcpus,
    D.XEN_DOMCTL_setvcpucontext: _setvcpucontext,
    D.XEN_DOMCTL_getvcpucontext: _getvcpucontext,
    D.XEN_DOMCTL_hypercall_init: _hypercall_init,
    D.XEN_DOMCTL_getvcpuinfo: _getvcpuinfo,
    D.XEN_DOMCTL_setdomainhandle: _setdomainhandle,
    D.XEN_DOMCTL_set_address_size: _set_address_size,
    D.XEN_DOMCTL_get_address_size: _get_address_size,
}
