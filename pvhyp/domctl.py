"""The mechanisms behind domctl/sysctl: domain lifetime and state for the toolstack.

Xen's common/domctl.c, common/domain.c and arch/x86/domain.c, in the parts a
PV toolstack uses: create (with Xen's config sanitising), kill, controller
pause/unpause, domain info, memory limit, a vCPU's initial context
(arch_set_info_guest / arch_get_info_guest) and the hypercall page. Each
function returns 0 or -errno, as Xen's do; the handlers in hypercalls/domctl.py
and hypercalls/sysctl.py only copy arguments in and results out.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from abi import errno as E
from abi.arch_x86_xen import VGCF_online
from abi.domctl import (
    XEN_INVALID_MAX_VCPU_ID,
    XEN_DOMCTL_CDF_hap,
    XEN_DOMCTL_CDF_hvm,
    XEN_DOMCTL_CDF_iommu,
    XEN_DOMCTL_CDF_nested_virt,
    XEN_DOMCTL_CDF_oos_off,
    XEN_DOMCTL_CDF_s3_integrity,
    XEN_DOMCTL_CDF_vpmu,
    XEN_DOMCTL_CDF_xs_domain,
    XEN_DOMCTL_GRANT_version_mask,
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_shutdown,
    XEN_DOMINF_shutdownshift,
    XEN_DOMINF_xs_domain,
)
from abi.x86_regs import X86_EFLAGS_IF, X86_EFLAGS_IOPL
from abi.xen import DOMID_FIRST_RESERVED, __HYPERVISOR_iret
from pvhyp.memory import PAGE_SHIFT, PAGE_SIZE
from pvhyp.mm.frametable import OutOfMemory
from pvhyp.mm.pagetype import PGT_writable_page
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from pvhyp.domain import VCPU, Domain
    from pvhyp.hypervisor import Hypervisor

MAX_VIRT_CPUS = 128              # pvhyp's limit (each vCPU is a host thread); Xen's x86 allows more
OPT_MAX_GRANT_FRAMES = 64        # Xen's defaults for gnttab_max_frames / gnttab_max_maptrack_frames
OPT_MAX_MAPTRACK_FRAMES = 1024
OPT_GNTTAB_MAX_VERSION = 2
INITIAL_NR_GRANT_FRAMES = 1
CONTROLLER_PAUSE_MAX = 255       # Xen caps the toolstack's pause count (-EOVERFLOW beyond)
SHUTDOWN_CODE_INVALID = 0xFFFF_FFFF
MASK32 = 0xFFFF_FFFF

_CDF_KNOWN = (XEN_DOMCTL_CDF_hvm | XEN_DOMCTL_CDF_hap | XEN_DOMCTL_CDF_s3_integrity
              | XEN_DOMCTL_CDF_oos_off | XEN_DOMCTL_CDF_xs_domain | XEN_DOMCTL_CDF_iommu
              | XEN_DOMCTL_CDF_nested_virt | XEN_DOMCTL_CDF_vpmu)



def is_xenstore_domain(d: "Domain") -> bool:
    return bool(d.config.get("flags", 0) & XEN_DOMCTL_CDF_xs_domain)


# --- creation and destruction ----------------------------------------------------------

def sanitise_domain_config(config: dict) -> int:
    flags = config["flags"]
    if flags & ~_CDF_KNOWN:
        return -E.EINVAL
    if config["grant_opts"] & ~XEN_DOMCTL_GRANT_version_mask:
        return -E.EINVAL
    if config["max_vcpus"] < 1:
        return -E.EINVAL
    if flags & XEN_DOMCTL_CDF_hap and not flags & XEN_DOMCTL_CDF_hvm:
        return -E.EINVAL
    if flags & XEN_DOMCTL_CDF_iommu or config["iommu_opts"]:
        return -E.EINVAL            # no IOMMU here
    if config["vmtrace_size"] or flags & XEN_DOMCTL_CDF_vpmu:
        return -E.EINVAL            # neither vmtrace nor vPMU is available
    # arch_sanitise_domain_config: PV only; PV guests get oos_off.
    if flags & XEN_DOMCTL_CDF_hvm or config["max_vcpus"] > MAX_VIRT_CPUS:
        return -E.EINVAL
    if flags & XEN_DOMCTL_CDF_s3_integrity or flags & XEN_DOMCTL_CDF_nested_virt:
        return -E.EINVAL
    config["flags"] = flags | XEN_DOMCTL_CDF_oos_off
    return 0


def _grant_limits(config: dict) -> int:
    """grant_table_init's argument checks (the table itself is the grant subsystem's)."""
    version = config["grant_opts"] & XEN_DOMCTL_GRANT_version_mask
    if not version or version > OPT_GNTTAB_MAX_VERSION:
        return -E.EINVAL
    if config["max_grant_frames"] < 0:
        config["max_grant_frames"] = OPT_MAX_GRANT_FRAMES
    if config["max_maptrack_frames"] < 0:
        config["max_maptrack_frames"] = OPT_MAX_MAPTRACK_FRAMES
    if not INITIAL_NR_GRANT_FRAMES <= config["max_grant_frames"] <= OPT_MAX_GRANT_FRAMES:
        return -E.EINVAL
    if config["max_maptrack_frames"] > OPT_MAX_MAPTRACK_FRAMES:
        return -E.EINVAL
    return 0


def _pick_domid(hv: "Hypervisor", requested: int) -> int:
    """XEN_DOMCTL_createdomain's domid choice: the one asked for, or the next free after a rover."""
    if 0 < requested < DOMID_FIRST_RESERVED:
        return requested if requested not in hv.domains else -E.EEXIST
    rover = hv.domid_rover
    dom = rover + 1
    while dom != rover:
        if dom == DOMID_FIRST_RESERVED:
            dom = 1
            if dom == rover:
                break
        if dom not in hv.domains:
            hv.domid_rover = dom
            return dom
        dom += 1
    return -E.ENOMEM


def domain_create(hv: "Hypervisor", requested_domid: int, config: dict) -> int:
    """Create a PV domain from a xen_domctl_createdomain; returns its domid or -errno.

    The domain starts paused by the controller (Xen's controller_pause_count = 1):
    the toolstack unpauses it once it is built.
    """
    config = dict(config)
    rc = sanitise_domain_config(config) or _grant_limits(config)
    if rc:
        return rc
    emulation = config.get("arch", {}).get("emulation_flags", 0)
    if emulation:
        return -E.EOPNOTSUPP        # a PV domU emulates nothing
    with hv.lock:
        domid = _pick_domid(hv, requested_domid)
        if domid < 0:
            return domid
        try:
            d = hv.create_domain(max_vcpus=config["max_vcpus"], max_pages=0, domid=domid, config=config)
        except OutOfMemory:
            return -E.ENOMEM        # not even a frame for its shared_info
    d.handle = bytes(config.get("handle", bytes(16)))
    d.controller_pause_count = 1
    d.pause_count += 1
    return domid


def domain_kill(hv: "Hypervisor", caller: "Domain", d: "Domain") -> int:
    if d is caller:
        return -E.EINVAL
    hv.destroy_domain(d.domid)
    return 0


# --- pausing ---------------------------------------------------------------------------

def controller_pause_count(d: "Domain") -> int:
    """The toolstack's share of d.pause_count (Xen's controller_pause_count); a
    domain not made by XEN_DOMCTL_createdomain (dom0, test domains) starts at 0."""
    return d.controller_pause_count


def domain_pause_by_systemcontroller(caller: "Domain", d: "Domain") -> int:
    if d is caller:
        return -E.EINVAL
    with d.lock:
        if controller_pause_count(d) + 1 > CONTROLLER_PAUSE_MAX:
            return -E.EOVERFLOW
        d.controller_pause_count = controller_pause_count(d) + 1
        d.pause_count += 1
    for v in d.vcpus:
        v.kick()
    return 0


def domain_unpause_by_systemcontroller(d: "Domain") -> int:
    with d.lock:
        if controller_pause_count(d) - 1 < 0:
            return -E.EINVAL
        d.controller_pause_count = controller_pause_count(d) - 1
        d.pause_count -= 1
    for v in d.vcpus:
        v.kick()
    return 0


# --- information -----------------------------------------------------------------------

# getdomaininfo/getvcpuinfo report no CPU time and never XEN_DOMINF_running / "running":
# the scheduler's runstate has them (the channel server's domain list reads it there),
# the domctls do not account them yet.
CPU_TIME_NOT_ACCOUNTED = 0


def getdomaininfo(d: "Domain") -> dict:
    """xen_domctl_getdomaininfo of `d` (Xen's getdomaininfo)."""
    flags = XEN_DOMINF_blocked
    online = 0
    max_vcpu_id = XEN_INVALID_MAX_VCPU_ID
    for v in d.vcpus:
        max_vcpu_id = v.vcpu_id
        if v.online:
            if not v.blocked:
                flags &= ~XEN_DOMINF_blocked
            online += 1
    code = SHUTDOWN_CODE_INVALID if d.shutdown_reason is None else d.shutdown_reason
    flags = ((flags if online else 0)
             | (XEN_DOMINF_dying if d.is_dying else 0)
             | (XEN_DOMINF_shutdown if d.is_shut_down else 0)
             | (XEN_DOMINF_paused if controller_pause_count(d) > 0 else 0)
             | (XEN_DOMINF_xs_domain if is_xenstore_domain(d) else 0)
             | (code << XEN_DOMINF_shutdownshift)) & MASK32
    return {
        "domain": d.domid, "pad1": 0, "flags": flags,
        "tot_pages": d.tot_pages, "max_pages": d.max_pages, "outstanding_pages": 0,
        "shr_pages": 0, "paged_pages": 0,
        "shared_info_frame": d.shared_info_mfn,     # PV: the gfn of a frame is its mfn
        "cpu_time": CPU_TIME_NOT_ACCOUNTED, "nr_online_vcpus": online, "max_vcpu_id": max_vcpu_id,
        "ssidref": 0, "handle": bytes(d.handle), "cpupool": 0,
        "gpaddr_bits": 52, "pad2": [0] * 7,
        "arch_config": {"emulation_flags": 0, "misc_flags": 0},
    }


def first_domain_from(hv: "Hypervisor", domid: int):
    """XEN_DOMCTL_getdomaininfo of a missing domid: the next domain at or above it."""
    for candidate in sorted(hv.domains):
        if candidate >= domid:
            return hv.domains[candidate]
    return None


def getdomaininfolist(hv: "Hypervisor", caller: "Domain", first: int, max_domains: int) -> list[dict]:
    infos: list[dict] = []
    for domid in sorted(hv.domains):
        if domid < first:
            continue
        if len(infos) == max_domains:
            break
        d = hv.domains.get(domid)
        if d is None or hv.xsm.getdomaininfo(caller, d):
            continue
        infos.append(getdomaininfo(d))
    return infos


def physinfo(hv: "Hypervisor", capabilities: int) -> dict:
    return {
        "threads_per_core": 1, "cores_per_socket": 1, "nr_cpus": 1, "max_cpu_id": 0,
        "nr_nodes": 1, "max_node_id": 0, "cpu_khz": 1_000_000,
        "capabilities": capabilities, "arch_capabilities": 0, "pad": 0,
        "total_pages": hv.memory.nr_frames, "free_pages": hv.frames.free_frames,
        "scrub_pages": 0, "outstanding_pages": 0, "max_mfn": hv.memory.nr_frames - 1,
        "hw_cap": [0] * 8,
    }


def set_max_mem(d: "Domain", max_memkb: int) -> int:
    """XEN_DOMCTL_max_mem: may go below tot_pages (then no further allocation succeeds)."""
    with d.lock:
        d.max_pages = min(max_memkb >> (PAGE_SHIFT - 10), MASK32)
    return 0


def max_vcpus(caller: "Domain", d: "Domain", count: int) -> int:
    """XEN_DOMCTL_max_vcpus: vCPUs are created with the domain, so only the same number is valid."""
    if d is caller or count != len(d.vcpus):
        return -E.EINVAL
    return 0


def getvcpuinfo(v: "VCPU") -> dict:
    """XEN_DOMCTL_getvcpuinfo's OUT fields."""
    return {"online": int(v.online), "blocked": int(v.blocked),
            "running": 0, "cpu_time": CPU_TIME_NOT_ACCOUNTED, "cpu": 0}


PV64_ADDRESS_SIZE = 64


def set_address_size(size: int) -> int:
    """XEN_DOMCTL_set_address_size: every domain here is 64-bit PV; 32-bit PV (switch_compat)
    is not built in, as in a Xen without CONFIG_PV32."""
    if size == PV64_ADDRESS_SIZE:
        return 0
    return -E.EOPNOTSUPP if size == 32 else -E.EINVAL


# --- vCPU context ----------------------------------------------------------------------

def arch_set_info_guest(v: "VCPU", c: dict) -> int:
    """XEN_DOMCTL_setvcpucontext's arch_set_info_guest: the one PV implementation
    (pvhyp.pv.state, shared with VCPUOP_initialise) loads and validates it; the
    domctl adds what only it does: VGCF_online brings the vCPU up, and the plain
    parsed context stays in `v.initial_context` for the CPU engine and getvcpucontext.
    """
    if v.pv is None:
        return -E.EOPNOTSUPP            # no PV vCPU state attached to this hypervisor
    rc = pv_state.arch_set_info_guest(v, c)
    if rc:
        return rc
    regs = c["user_regs"]
    context = dict(c)
    context["user_regs"] = dict(regs, rflags=(regs["rflags"] & ~X86_EFLAGS_IOPL) | X86_EFLAGS_IF)
    v.initial_context = context
    v.online = bool(c["flags"] & VGCF_online)
    return 0


def arch_get_info_guest(v: "VCPU") -> dict | None:
    """The context last set (Xen reads it back from the live vCPU; the engine may refresh it)."""
    return v.initial_context


# --- the hypercall page ----------------------------------------------------------------

def hypercall_page_bytes() -> bytes:
    """pv_ring3_init_hypercall_page: 32-byte stubs, int3 filler.

    Each stub saves rcx/r11 (clobbered by syscall), loads the number and
    traps; the iret stub pushes the registers Xen's iret expects and does
    not return.
    """
    page = bytearray(b"\xcc" * PAGE_SIZE)
    for i in range(PAGE_SIZE // 32):
        at = i * 32
        if i == __HYPERVISOR_iret:
            stub = b"\x51\x41\x53\x50\xb8" + i.to_bytes(4, "little") + b"\x0f\x05"
        else:
            stub = (b"\x51\x41\x53\xb8" + i.to_bytes(4, "little")
                    + b"\x0f\x05\x41\x5b\x59\xc3")
        page[at:at + len(stub)] = stub
    return bytes(page)


def init_hypercall_page(d: "Domain", gmfn: int) -> int:
    """XEN_DOMCTL_hypercall_init: fill the guest frame `gmfn` (an mfn for PV) with the stubs."""
    hv = d.hv
    if not hv.frames.owned_by(gmfn, d.domid):
        return -E.EINVAL
    mmu = hv.mmu
    with mmu.lock:
        if not mmu.get_page_from_mfn(gmfn, d):
            return -E.EINVAL
        if mmu.get_page_type(gmfn, PGT_writable_page):
            mmu.put_page(gmfn)
            return -E.EPERM        # a page table (or otherwise typed) frame
        hv.memory.write(gmfn << PAGE_SHIFT, hypercall_page_bytes())
        mmu.put_page_and_type(gmfn)
    return 0
