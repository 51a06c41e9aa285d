"""HYPERVISOR_xen_version (Xen: common/kernel.c do_xen_version)."""
from __future__ import annotations

import platform
from typing import TYPE_CHECKING

from abi import errno as E
from abi import features as F
from abi import version as V
from abi.x86_pte import PAGE_SIZE
from abi.xen_x86_64 import HYPERVISOR_VIRT_START
from hypercalls import hypercall
from hypercalls.c_args import c_int

if TYPE_CHECKING:
    from pvhyp.domain import Domain
    from pvhyp.hypercall_table import HypercallContext

XEN_MAJOR, XEN_MINOR = 4, 17
XEN_EXTRAVERSION = b".0"
XEN_CAPABILITIES = b"xen-3.0-x86_64"
XEN_CHANGESET = b"pvhyp"
XEN_DENY = b"<denied>"

def _denied(domain: Domain, cmd: int) -> bool:
    """What the policy (hv.xsm.xen_version) keeps from this domain."""
    return domain.hv.xsm.xen_version(domain, cmd) != 0


def _fixed(text: bytes, size: int) -> bytes:
    return text[:size - 1].ljust(size, b"\0")


def feature_submap(domain: Domain, idx: int) -> int | None:
    """The XENFEAT_* bits of submap `idx` for a 64-bit PV domain; None past the last."""
    if idx != 0:
        return None
    bits = (1 << F.XENFEAT_memory_op_vnode_supported
            | 1 << F.XENFEAT_mmu_pt_update_preserve_ad
            | 1 << F.XENFEAT_highmem_assist
            | 1 << F.XENFEAT_gnttab_map_avail_bits
            | 1 << F.XENFEAT_direct_mapped)
    from abi.xen import VMASST_TYPE_pae_extended_cr3
    if domain.vm_assist & (1 << VMASST_TYPE_pae_extended_cr3):
        bits |= 1 << F.XENFEAT_pae_pgdir_above_4gb
    if domain.is_privileged:
        bits |= 1 << F.XENFEAT_dom0
    return bits


@hypercall("xen_version")
def do_xen_version(ctx: HypercallContext, cmd: int, arg: int) -> int:
    cmd = c_int(cmd)
    deny = _denied(ctx.domain, cmd)
    if cmd == V.XENVER_version:
        return (XEN_MAJOR << 16) | XEN_MINOR
    if cmd == V.XENVER_extraversion:
        ctx.write(arg, _fixed(XEN_DENY if deny else XEN_EXTRAVERSION, V.XEN_EXTRAVERSION_LEN))
        return 0
    if cmd == V.XENVER_compile_info:
        python = f"pvhyp on Python {platform.python_version()}".encode()
        ctx.write(arg, b"".join(_fixed(XEN_DENY if deny else value, size) for value, size in (
            (python, 64), (b"pvhyp", 16), (b"", 32), (b"", 32))))
        return 0
    if cmd == V.XENVER_capabilities:
        ctx.write(arg, _fixed(b"" if deny else XEN_CAPABILITIES, V.XEN_CAPABILITIES_INFO_LEN))
        return 0
    if cmd == V.XENVER_platform_parameters:
        ctx.write_struct(V.xen_platform_parameters, arg, {"virt_start": HYPERVISOR_VIRT_START})
        return 0
    if cmd == V.XENVER_changeset:
        ctx.write(arg, _fixed(XEN_DENY if deny else XEN_CHANGESET, V.XEN_CHANGESET_INFO_LEN))
        return 0
    if cmd == V.XENVER_get_features:
        fi = ctx.read_struct(V.xen_feature_info, arg)
        submap = feature_submap(ctx.domain, fi["submap_idx"])
        if submap is None:
            return -E.EINVAL
        ctx.write_struct(V.xen_feature_info, arg, {"submap_idx": fi["submap_idx"], "submap": submap})
        return 0
    if cmd == V.XENVER_pagesize:
        if deny:
            return 0
        return -E.EINVAL if arg else PAGE_SIZE
    if cmd == V.XENVER_guest_handle:
        ctx.write(arg, bytes(16) if deny else bytes(ctx.domain.handle))
        return 0
    if cmd == V.XENVER_commandline:
        ctx.write(arg, XEN_DENY + b"\0" if deny else bytes(1024))
        return 0
    if cmd == V.XENVER_build_id:
        if deny:
            return -E.EPERM
        if arg:
            if ctx.read_struct(V.xen_build_id, arg)["len"] == 0:
                return -E.EINVAL
        return -E.ENODATA              # pvhyp is not built with a build id (Xen: xen_build_id fails)
    return -E.ENOSYS
