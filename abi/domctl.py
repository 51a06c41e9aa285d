"""xen/include/public/domctl.h: HYPERVISOR_domctl(xen_domctl *), the toolstack's
per-domain control (the subset pvhyp's toolstack uses).

Every call passes one ``xen_domctl``: the interface version (calls with any
other version fail with -EACCES), the target domain, and the op's struct in
a 128-byte union.  Only a privileged domain may call it.
"""

from construct import Padding, Struct

from abi import arch_x86_xen, xen
from abi.cdefs import (
    XEN_GUEST_HANDLE_64,
    CUnion,
    int32_t,
    int64_t,
    uint8_t,
    uint16_t,
    uint32_t,
    uint64_t,
)

XEN_DOMCTL_INTERFACE_VERSION = 0x00000015  # Xen 4.17

domid_t = xen.domid_t

# --- XEN_DOMCTL_createdomain ---------------------------------------------------------
_XEN_DOMCTL_CDF_hvm = 0
XEN_DOMCTL_CDF_hvm = 1 << _XEN_DOMCTL_CDF_hvm
_XEN_DOMCTL_CDF_hap = 1
XEN_DOMCTL_CDF_hap = 1 << _XEN_DOMCTL_CDF_hap
_XEN_DOMCTL_CDF_s3_integrity = 2
XEN_DOMCTL_CDF_s3_integrity = 1 << _XEN_DOMCTL_CDF_s3_integrity
_XEN_DOMCTL_CDF_oos_off = 3
XEN_DOMCTL_CDF_oos_off = 1 << _XEN_DOMCTL_CDF_oos_off
_XEN_DOMCTL_CDF_xs_domain = 4
XEN_DOMCTL_CDF_xs_domain = 1 << _XEN_DOMCTL_CDF_xs_domain  # the domain runs xenstored
_XEN_DOMCTL_CDF_iommu = 5
XEN_DOMCTL_CDF_iommu = 1 << _XEN_DOMCTL_CDF_iommu
_XEN_DOMCTL_CDF_nested_virt = 6
XEN_DOMCTL_CDF_nested_virt = 1 << _XEN_DOMCTL_CDF_nested_virt
XEN_DOMCTL_CDF_vpmu = 1 << 7
XEN_DOMCTL_CDF_MAX = XEN_DOMCTL_CDF_vpmu

_XEN_DOMCTL_IOMMU_no_sharept = 0
XEN_DOMCTL_IOMMU_no_sharept = 1 << _XEN_DOMCTL_IOMMU_no_sharept
XEN_DOMCTL_IOMMU_MAX = XEN_DOMCTL_IOMMU_no_sharept

XEN_DOMCTL_GRANT_version_mask = 0xF


def XEN_DOMCTL_GRANT_version(version: int) -> int:
    return version & XEN_DOMCTL_GRANT_version_mask


xen_domctl_createdomain = Struct(
    "ssidref" / uint32_t * "IN: security label (XSM); 0",
    "handle" / xen.xen_domain_handle_t * "IN: the domain's UUID",
    "flags" / uint32_t * "IN: XEN_DOMCTL_CDF_*; 0 for a PV guest",
    "iommu_opts" / uint32_t * "IN: XEN_DOMCTL_IOMMU_*",
    "max_vcpus" / uint32_t * "IN",
    "max_evtchn_port" / uint32_t * "IN: highest event-channel port allowed",
    "max_grant_frames" / int32_t * "IN: grant-table frames limit (<0: Xen's default)",
    "max_maptrack_frames" / int32_t * "IN: grant-mapping tracking frames limit (<0: default)",
    "grant_opts" / uint32_t * "IN: highest grant-table version allowed (XEN_DOMCTL_GRANT_version)",
    "vmtrace_size" / uint32_t * "IN: per-vcpu processor trace buffer size; 0",
    "cpupool_id" / uint32_t * "IN",
    "arch" / arch_x86_xen.xen_arch_domainconfig * "IN",
)
xen_domctl_createdomain.docs = (
    "XEN_DOMCTL_createdomain: make an empty, paused domain. xen_domctl.domain is "
    "IN (0: Xen picks) and OUT (the new domid)."
)

# --- XEN_DOMCTL_getdomaininfo -------------------------------------------------------
_XEN_DOMINF_dying = 0
XEN_DOMINF_dying = 1 << _XEN_DOMINF_dying  # being destroyed
_XEN_DOMINF_hvm_guest = 1
XEN_DOMINF_hvm_guest = 1 << _XEN_DOMINF_hvm_guest
_XEN_DOMINF_shutdown = 2
XEN_DOMINF_shutdown = 1 << _XEN_DOMINF_shutdown  # shut down; reason in the shutdown bits
_XEN_DOMINF_paused = 3
XEN_DOMINF_paused = 1 << _XEN_DOMINF_paused
_XEN_DOMINF_blocked = 4
XEN_DOMINF_blocked = 1 << _XEN_DOMINF_blocked  # every vcpu is blocked
_XEN_DOMINF_running = 5
XEN_DOMINF_running = 1 << _XEN_DOMINF_running  # some vcpu is running
_XEN_DOMINF_debugged = 6
XEN_DOMINF_debugged = 1 << _XEN_DOMINF_debugged
_XEN_DOMINF_xs_domain = 7
XEN_DOMINF_xs_domain = 1 << _XEN_DOMINF_xs_domain
_XEN_DOMINF_hap = 8
XEN_DOMINF_hap = 1 << _XEN_DOMINF_hap
# SHUTDOWN_* reason = (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask
XEN_DOMINF_shutdownmask = 255
XEN_DOMINF_shutdownshift = 16
XEN_INVALID_MAX_VCPU_ID = 0xFFFFFFFF  # the domain has no vcpus

xen_domctl_getdomaininfo = Struct(
    "domain" / domid_t * "OUT: the domain described",
    "pad1" / uint16_t,
    "flags" / uint32_t * "OUT: XEN_DOMINF_*",
    "tot_pages" / uint64_t * "OUT: pages the domain holds",
    "max_pages" / uint64_t * "OUT: its limit",
    "outstanding_pages" / uint64_t * "OUT: claimed, not yet allocated",
    "shr_pages" / uint64_t * "OUT: shared pages",
    "paged_pages" / uint64_t * "OUT: paged-out pages",
    "shared_info_frame" / uint64_t * "OUT: frame of its shared_info",
    "cpu_time" / uint64_t * "OUT: ns of cpu time used by all vcpus",
    "nr_online_vcpus" / uint32_t * "OUT",
    "max_vcpu_id" / uint32_t * "OUT: highest vcpu id, or XEN_INVALID_MAX_VCPU_ID",
    "ssidref" / uint32_t * "OUT",
    "handle" / xen.xen_domain_handle_t * "OUT: UUID",
    "cpupool" / uint32_t * "OUT",
    "gpaddr_bits" / uint8_t * "OUT: guest physical address width",
    "pad2" / uint8_t[7],
    "arch_config" / arch_x86_xen.xen_arch_domainconfig * "OUT",
)
xen_domctl_getdomaininfo.docs = (
    "XEN_DOMCTL_getdomaininfo: state of xen_domctl.domain; also the array "
    "element of XEN_SYSCTL_getdomaininfolist."
)

# --- small ops ------------------------------------------------------------------------
xen_domctl_max_mem = Struct(
    "max_memkb" / uint64_t * "IN: memory limit in KiB",
)
xen_domctl_max_mem.docs = "XEN_DOMCTL_max_mem: cap the domain's memory."

xen_domctl_vcpucontext = Struct(
    "vcpu" / uint32_t * "IN",
    Padding(4),
    "ctxt" / XEN_GUEST_HANDLE_64("vcpu_guest_context_t") * "IN (set) / OUT (get): a vcpu_guest_context",
)
xen_domctl_vcpucontext.docs = (
    "XEN_DOMCTL_{set,get}vcpucontext: a vcpu's full register state; how the "
    "domain builder sets the entry point, stack, start_info and page tables."
)

xen_domctl_getvcpuinfo = Struct(
    "vcpu" / uint32_t * "IN",
    "online" / uint8_t * "OUT",
    "blocked" / uint8_t * "OUT",
    "running" / uint8_t * "OUT",
    Padding(1),
    "cpu_time" / uint64_t * "OUT: ns used",
    "cpu" / uint32_t * "OUT: physical cpu",
    Padding(4),
)
xen_domctl_getvcpuinfo.docs = "XEN_DOMCTL_getvcpuinfo: one vcpu's state."

xen_domctl_max_vcpus = Struct(
    "max" / uint32_t * "IN: vcpus to allocate",
)
xen_domctl_max_vcpus.docs = "XEN_DOMCTL_max_vcpus: create the domain's vcpus (once)."

xen_domctl_setdomainhandle = Struct(
    "handle" / xen.xen_domain_handle_t * "IN: new UUID",
)
xen_domctl_setdomainhandle.docs = "XEN_DOMCTL_setdomainhandle."

xen_domctl_hypercall_init = Struct(
    "gmfn" / uint64_t * "IN: guest frame to fill with hypercall stubs",
)
xen_domctl_hypercall_init.docs = "XEN_DOMCTL_hypercall_init: write the hypercall page into a guest frame."

xen_domctl_settimeoffset = Struct(
    "time_offset_seconds" / int64_t * "IN: added to the domain's wallclock",
)
xen_domctl_settimeoffset.docs = "XEN_DOMCTL_settimeoffset."

xen_domctl_address_size = Struct(
    "size" / uint32_t * "IN (set) / OUT (get): 32 or 64",
)
xen_domctl_address_size.docs = "XEN_DOMCTL_{set,get}_address_size: a PV guest's bitness."

# --- the outer struct -----------------------------------------------------------------
XEN_DOMCTL_createdomain = 1
XEN_DOMCTL_destroydomain = 2  # may return -ERESTART-style continuations (-EAGAIN to the tools)
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_unpausedomain = 4
XEN_DOMCTL_getdomaininfo = 5
XEN_DOMCTL_setvcpuaffinity = 9
XEN_DOMCTL_shadow_op = 10
XEN_DOMCTL_max_mem = 11
XEN_DOMCTL_setvcpucontext = 12
XEN_DOMCTL_getvcpucontext = 13
XEN_DOMCTL_getvcpuinfo = 14
XEN_DOMCTL_max_vcpus = 15
XEN_DOMCTL_scheduler_op = 16
XEN_DOMCTL_setdomainhandle = 17
XEN_DOMCTL_setdebugging = 18
XEN_DOMCTL_irq_permission = 19
XEN_DOMCTL_iomem_permission = 20
XEN_DOMCTL_ioport_permission = 21
XEN_DOMCTL_hypercall_init = 22
XEN_DOMCTL_settimeoffset = 24
XEN_DOMCTL_getvcpuaffinity = 25
XEN_DOMCTL_resumedomain = 27
XEN_DOMCTL_sendtrigger = 28
XEN_DOMCTL_subscribe = 29
XEN_DOMCTL_set_address_size = 35
XEN_DOMCTL_get_address_size = 36
XEN_DOMCTL_set_ext_vcpucontext = 42
XEN_DOMCTL_get_ext_vcpucontext = 43
XEN_DOMCTL_set_target = 46
XEN_DOMCTL_set_virq_handler = 66
XEN_DOMCTL_soft_reset = 79
XEN_DOMCTL_get_cpu_policy = 82
XEN_DOMCTL_set_cpu_policy = 83


xen_domctl = Struct(
    "cmd" / uint32_t * "IN: XEN_DOMCTL_*",
    "interface_version" / uint32_t * "IN: XEN_DOMCTL_INTERFACE_VERSION",
    "domain" / domid_t * "IN: target domain (createdomain: also OUT)",
    "_pad" / uint16_t[3],
    "u" / CUnion(
        "createdomain" / xen_domctl_createdomain,
        "getdomaininfo" / xen_domctl_getdomaininfo,
        "max_mem" / xen_domctl_max_mem,
        "vcpucontext" / xen_domctl_vcpucontext,
        "getvcpuinfo" / xen_domctl_getvcpuinfo,
        "max_vcpus" / xen_domctl_max_vcpus,
        "setdomainhandle" / xen_domctl_setdomainhandle,
        "hypercall_init" / xen_domctl_hypercall_init,
        "settimeoffset" / xen_domctl_settimeoffset,
        "address_size" / xen_domctl_address_size,
        "pad" / uint8_t[128] * "sizes the union: 128 bytes, whatever the op",
    ) * "IN/OUT: the op's struct (members of ops pvhyp does not implement are left out)",
)
xen_domctl.docs = "HYPERVISOR_domctl's argument; copied in, acted on, copied back out."
