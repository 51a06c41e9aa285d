"""HYPERVISOR_sysctl: host-wide queries for the toolstack (Xen's do_sysctl).

Copy in (-EFAULT), interface version (-EACCES), the policy's check
(hv.xsm.sysctl: -EPERM unless the control domain), then the operation; on
success the whole xen_sysctl is copied back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from abi import errno as E
from abi import sysctl as S
from abi.domctl import xen_domctl_getdomaininfo
from hypercalls import hypercall
from hypercalls.domctl import _parse
from pvhyp import domctl as mech

if TYPE_CHECKING:
    from construct import Construct

    from pvhyp.hypercall_table import HypercallContext

SYSCTL_SIZE = S.xen_sysctl.sizeof()
U_OFFSET = SYSCTL_SIZE - 128
INFO_SIZE = xen_domctl_getdomaininfo.sizeof()


def _with_payload(raw: bytes, struct: Construct, value: dict[str, Any]) -> bytes:
    out = bytearray(raw)
    payload = struct.build(value)
    out[U_OFFSET:U_OFFSET + len(payload)] = payload
    return bytes(out)


@hypercall("sysctl")
def do_sysctl(ctx: HypercallContext, u_sysctl: int) -> int:
    raw = ctx.read(u_sysctl, SYSCTL_SIZE)
    if int.from_bytes(raw[4:8], "little") != S.XEN_SYSCTL_INTERFACE_VERSION:
        return -E.EACCES
    cmd = int.from_bytes(raw[0:4], "little")
    rc = ctx.hv.xsm.sysctl(ctx.domain, cmd)
    if rc:
        return rc
    if cmd == S.XEN_SYSCTL_getdomaininfolist:
        op = _parse(S.xen_sysctl_getdomaininfolist, raw, U_OFFSET)
        infos = mech.getdomaininfolist(ctx.hv, ctx.domain, op["first_domain"], op["max_domains"])
        for i, info in enumerate(infos):
            ctx.write(op["buffer"] + i * INFO_SIZE, xen_domctl_getdomaininfo.build(info))
        op["num_domains"] = len(infos)
        ctx.write(u_sysctl, _with_payload(raw, S.xen_sysctl_getdomaininfolist, op))
        return 0
    if cmd == S.XEN_SYSCTL_physinfo:
        caps = S.XEN_SYSCTL_PHYSCAP_pv | S.XEN_SYSCTL_PHYSCAP_gnttab_v1 | S.XEN_SYSCTL_PHYSCAP_gnttab_v2
        ctx.write(u_sysctl, _with_payload(raw, S.xen_sysctl_physinfo, mech.physinfo(ctx.hv, caps)))
        return 0
    return -E.ENOSYS
