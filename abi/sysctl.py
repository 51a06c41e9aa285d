"""xen/include/public/sysctl.h: HYPERVISOR_sysctl(xen_sysctl *), host-wide
queries and control for the toolstack (the subset pvhyp's toolstack uses).

Like domctl: one ``xen_sysctl`` with the interface version and a 128-byte
union holding the op's struct; privileged domains only.
"""

from construct import Padding, Struct

from abi import xen
from abi.cdefs import XEN_GUEST_HANDLE_64, CUnion, uint8_t, uint32_t, uint64_t

XEN_SYSCTL_INTERFACE_VERSION = 0x00000015  # Xen 4.17

xen_sysctl_readconsole = Struct(
    "clear" / uint8_t * "IN: empty the ring after reading",
    "incremental" / uint8_t * "IN: start at index rather than the oldest byte",
    "pad0" / uint8_t,
    "pad1" / uint8_t,
    "index" / uint32_t * "IN: start index (incremental); OUT: index after the last byte read",
    "buffer" / XEN_GUEST_HANDLE_64("char") * "IN: where to copy",
    "count" / uint32_t * "IN: room in buffer; OUT: bytes copied",
    Padding(4),
)
xen_sysctl_readconsole.docs = "XEN_SYSCTL_readconsole: read Xen's console ring (xl dmesg)."

# xen_sysctl_physinfo.capabilities
_XEN_SYSCTL_PHYSCAP_hvm = 0
XEN_SYSCTL_PHYSCAP_hvm = 1 << _XEN_SYSCTL_PHYSCAP_hvm
_XEN_SYSCTL_PHYSCAP_pv = 1
XEN_SYSCTL_PHYSCAP_pv = 1 << _XEN_SYSCTL_PHYSCAP_pv
_XEN_SYSCTL_PHYSCAP_directio = 2
XEN_SYSCTL_PHYSCAP_directio = 1 << _XEN_SYSCTL_PHYSCAP_directio
_XEN_SYSCTL_PHYSCAP_hap = 3
XEN_SYSCTL_PHYSCAP_hap = 1 << _XEN_SYSCTL_PHYSCAP_hap
_XEN_SYSCTL_PHYSCAP_shadow = 4
XEN_SYSCTL_PHYSCAP_shadow = 1 << _XEN_SYSCTL_PHYSCAP_shadow
_XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share = 5
XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share = 1 << _XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share
XEN_SYSCTL_PHYSCAP_vmtrace = 1 << 6
XEN_SYSCTL_PHYSCAP_vpmu = 1 << 7
XEN_SYSCTL_PHYSCAP_gnttab_v1 = 1 << 8
XEN_SYSCTL_PHYSCAP_gnttab_v2 = 1 << 9
XEN_SYSCTL_PHYSCAP_MAX = XEN_SYSCTL_PHYSCAP_gnttab_v2

xen_sysctl_physinfo = Struct(
    "threads_per_core" / uint32_t * "OUT",
    "cores_per_socket" / uint32_t * "OUT",
    "nr_cpus" / uint32_t * "OUT: cpus online",
    "max_cpu_id" / uint32_t * "OUT",
    "nr_nodes" / uint32_t * "OUT: NUMA nodes online",
    "max_node_id" / uint32_t * "OUT",
    "cpu_khz" / uint32_t * "OUT",
    "capabilities" / uint32_t * "OUT: XEN_SYSCTL_PHYSCAP_*",
    "arch_capabilities" / uint32_t * "OUT",
    "pad" / uint32_t,
    "total_pages" / uint64_t * "OUT: host RAM in pages",
    "free_pages" / uint64_t * "OUT",
    "scrub_pages" / uint64_t * "OUT: freed, awaiting scrubbing",
    "outstanding_pages" / uint64_t * "OUT: claimed by domains",
    "max_mfn" / uint64_t * "OUT: highest possible MFN",
    "hw_cap" / uint32_t[8] * "OUT: CPUID feature words",
)
xen_sysctl_physinfo.docs = "XEN_SYSCTL_physinfo: the host's cpus and memory (xl info)."

xen_sysctl_sched_id = Struct(
    "sched_id" / uint32_t * "OUT: XEN_SCHEDULER_*",
)
xen_sysctl_sched_id.docs = "XEN_SYSCTL_sched_id: which scheduler runs."

xen_sysctl_getdomaininfolist = Struct(
    "first_domain" / xen.domid_t * "IN: lowest domid to report",
    Padding(2),
    "max_domains" / uint32_t * "IN: room in buffer",
    "buffer" / XEN_GUEST_HANDLE_64("xen_domctl_getdomaininfo_t") * "IN: array of xen_domctl_getdomaininfo",
    "num_domains" / uint32_t * "OUT: entries written, in domid order",
    Padding(4),
)
xen_sysctl_getdomaininfolist.docs = "XEN_SYSCTL_getdomaininfolist: getdomaininfo for many domains (xl list)."

xen_sysctl_cpuinfo = Struct(
    "idletime" / uint64_t * "OUT: ns idle",
)
xen_sysctl_cpuinfo.docs = "One physical cpu in XEN_SYSCTL_getcpuinfo's answer."

xen_sysctl_getcpuinfo = Struct(
    "max_cpus" / uint32_t * "IN: room in info",
    Padding(4),
    "info" / XEN_GUEST_HANDLE_64("xen_sysctl_cpuinfo_t") * "IN: array of xen_sysctl_cpuinfo",
    "nr_cpus" / uint32_t * "OUT",
    Padding(4),
)
xen_sysctl_getcpuinfo.docs = "XEN_SYSCTL_getcpuinfo: per-cpu idle time."

XEN_SYSCTL_readconsole = 1
XEN_SYSCTL_tbuf_op = 2
XEN_SYSCTL_physinfo = 3
XEN_SYSCTL_sched_id = 4
XEN_SYSCTL_perfc_op = 5
XEN_SYSCTL_getdomaininfolist = 6
XEN_SYSCTL_debug_keys = 7
XEN_SYSCTL_getcpuinfo = 8
XEN_SYSCTL_availheap = 9
XEN_SYSCTL_get_pmstat = 10
XEN_SYSCTL_cpu_hotplug = 11
XEN_SYSCTL_pm_op = 12
XEN_SYSCTL_page_offline_op = 14
XEN_SYSCTL_lockprof_op = 15
XEN_SYSCTL_cputopoinfo = 16
XEN_SYSCTL_numainfo = 17
XEN_SYSCTL_cpupool_op = 18
XEN_SYSCTL_scheduler_op = 19
XEN_SYSCTL_coverage_op = 20
XEN_SYSCTL_psr_cmt_op = 21
XEN_SYSCTL_pcitopoinfo = 22
XEN_SYSCTL_psr_alloc = 23
XEN_SYSCTL_get_cpu_levelling_caps = 25
XEN_SYSCTL_get_cpu_featureset = 26
XEN_SYSCTL_livepatch_op = 27
XEN_SYSCTL_get_cpu_policy = 29

xen_sysctl = Struct(
    "cmd" / uint32_t * "IN: XEN_SYSCTL_*",
    "interface_version" / uint32_t * "IN: XEN_SYSCTL_INTERFACE_VERSION",
    "u" / CUnion(
        "readconsole" / xen_sysctl_readconsole,
        "physinfo" / xen_sysctl_physinfo,
        "sched_id" / xen_sysctl_sched_id,
        "getdomaininfolist" / xen_sysctl_getdomaininfolist,
        "getcpuinfo" / xen_sysctl_getcpuinfo,
        "pad" / uint8_t[128] * "sizes the union: 128 bytes, whatever the op",
    ) * "IN/OUT: the op's struct (members of ops pvhyp does not implement are left out)",
)
xen_sysctl.docs = "HYPERVISOR_sysctl's argument; copied in, acted on, copied back out."
