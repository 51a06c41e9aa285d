"""xen/include/public/memory.h: HYPERVISOR_memory_op(cmd, arg).

A PV domain's memory is a set of machine frames (MFNs) that the guest indexes
by its own pseudo-physical numbers (PFNs) through its p2m array; these ops
grow and shrink that set, report the machine-to-phys (M2P) table, the memory
map, and map special pages (shared_info, grant frames) into the physmap.

Ops returning a count return it as the hypercall result (e.g. the number of
extents done).  The e820 entries of XENMEM_memory_map are in ``abi.e820``.
"""

from construct import Padding, Struct

from abi import arch_x86_xen, xen
from abi.cdefs import (
    XEN_GUEST_HANDLE,
    CUnion,
    uint16_t,
    uint32_t,
    uint64_t,
    unsigned_int,
)

domid_t = xen.domid_t
xen_pfn_t = arch_x86_xen.xen_pfn_t
xen_ulong_t = arch_x86_xen.xen_ulong_t

XENMEM_increase_reservation = 0  # arg: xen_memory_reservation
XENMEM_decrease_reservation = 1  # arg: xen_memory_reservation
XENMEM_populate_physmap = 6  # arg: xen_memory_reservation


# xen_memory_reservation.mem_flags: address width in bits 0-7, NUMA node+1 in 8-15.
def XENMEMF_address_bits(bits: int) -> int:
    return bits


def XENMEMF_get_address_bits(flags: int) -> int:
    return flags & 0xFF


def XENMEMF_node(node: int) -> int:
    return (node + 1) << 8


def XENMEMF_get_node(flags: int) -> int:
    return ((flags >> 8) - 1) & 0xFF


XENMEMF_populate_on_demand = 1 << 16
XENMEMF_exact_node_request = 1 << 17
XENMEMF_vnode = 1 << 18


def XENMEMF_exact_node(node: int) -> int:
    return XENMEMF_node(node) | XENMEMF_exact_node_request


xen_memory_reservation = Struct(
    "extent_start" / XEN_GUEST_HANDLE("xen_pfn_t")
    * "increase: OUT allocated MFNs; decrease: IN frames to free; populate: IN PFNs, OUT frames",
    "nr_extents" / xen_ulong_t * "IN: number of extents",
    "extent_order" / unsigned_int * "IN: each extent is 2**order pages",
    "mem_flags" / unsigned_int * "IN: XENMEMF_*",
    "domid" / domid_t * "IN: DOMID_SELF unless privileged",
    Padding(6),
)
xen_memory_reservation.docs = (
    "XENMEM_{increase,decrease}_reservation, XENMEM_populate_physmap: the "
    "result is the number of extents done (fewer means it ran out or failed)."
)

XENMEM_exchange = 11
xen_memory_exchange = Struct(
    "in" / xen_memory_reservation * "IN: extents to give up",
    "out" / xen_memory_reservation * "IN/OUT: PFNs to populate; OUT: the new frames",
    "nr_exchanged" / xen_ulong_t * "OUT: input extents exchanged; must be 0 on entry",
)
xen_memory_exchange.docs = "XENMEM_exchange: trade frames for others (e.g. below 4 GiB), same total size."

XENMEM_maximum_ram_page = 2  # result: highest machine frame with RAM
xen_memory_domain = Struct(
    "domid" / domid_t * "IN",
)
xen_memory_domain.docs = "Argument of XENMEM_{current,maximum}_reservation and XENMEM_maximum_gpfn."
XENMEM_current_reservation = 3  # result: pages the domain has
XENMEM_maximum_reservation = 4  # result: pages it may have
XENMEM_maximum_gpfn = 14  # result: highest PFN in use

XENMEM_machphys_mfn_list = 5
xen_machphys_mfn_list = Struct(
    "max_extents" / unsigned_int * "IN: size of extent_start",
    Padding(4),
    "extent_start" / XEN_GUEST_HANDLE("xen_pfn_t") * "OUT: MFN of each 2 MiB piece of the M2P table",
    "nr_extents" / unsigned_int * "OUT: entries written",
    Padding(4),
)
xen_machphys_mfn_list.docs = "XENMEM_machphys_mfn_list: the frames holding the M2P table (for tools to map it)."
XENMEM_machphys_compat_mfn_list = 25

XENMEM_machphys_mapping = 12
xen_machphys_mapping = Struct(
    "v_start" / xen_ulong_t * "OUT: where the M2P table is mapped",
    "v_end" / xen_ulong_t * "OUT",
    "max_mfn" / xen_ulong_t * "OUT: largest MFN the table covers",
)
xen_machphys_mapping.docs = "XENMEM_machphys_mapping: the read-only M2P table's place in the guest's address space."

XENMAPSPACE_shared_info = 0  # idx: 0
XENMAPSPACE_grant_table = 1  # idx: grant frame (| XENMAPIDX_grant_table_status)
XENMAPSPACE_gmfn = 2  # idx: a frame of our own, moved to gpfn
XENMAPSPACE_gmfn_range = 3  # idx..idx+size
XENMAPSPACE_gmfn_foreign = 4  # another domain's frame (batch op only)
XENMAPSPACE_dev_mmio = 5  # Arm only

XENMEM_add_to_physmap = 7
XENMAPIDX_grant_table_status = 0x80000000
xen_add_to_physmap = Struct(
    "domid" / domid_t * "IN",
    "size" / uint16_t * "IN: frames, for XENMAPSPACE_gmfn_range",
    "space" / unsigned_int * "IN: XENMAPSPACE_*",
    "idx" / xen_ulong_t * "IN: index in that space",
    "gpfn" / xen_pfn_t * "IN: where to put it in the physmap",
)
xen_add_to_physmap.docs = "XENMEM_add_to_physmap: place a special page at a PFN (translated guests)."

XENMEM_add_to_physmap_batch = 23
xen_add_to_physmap_batch_extra = CUnion(
    "foreign_domid" / domid_t * "for XENMAPSPACE_gmfn_foreign",
    "res0" / uint16_t * "otherwise: 0",
)
xen_add_to_physmap_batch_extra.docs = "The per-space extra argument of xen_add_to_physmap_batch."

xen_add_to_physmap_batch = Struct(
    "domid" / domid_t * "IN",
    "space" / uint16_t * "IN: XENMAPSPACE_*",
    "size" / uint16_t * "IN: entries in the three arrays",
    "u" / xen_add_to_physmap_batch_extra * "IN",
    "idxs" / XEN_GUEST_HANDLE("xen_ulong_t") * "IN",
    "gpfns" / XEN_GUEST_HANDLE("xen_pfn_t") * "IN",
    "errs" / XEN_GUEST_HANDLE("int") * "OUT: per-entry result",
)
xen_add_to_physmap_batch.docs = "XENMEM_add_to_physmap_batch: many add_to_physmap at once."

XENMEM_remove_from_physmap = 15
xen_remove_from_physmap = Struct(
    "domid" / domid_t * "IN",
    Padding(6),
    "gpfn" / xen_pfn_t * "IN",
)
xen_remove_from_physmap.docs = "XENMEM_remove_from_physmap: unmap whatever is at a PFN."

XENMEM_memory_map = 9  # the caller's pseudo-physical map
XENMEM_machine_memory_map = 10  # the host's (privileged)
XENMEM_set_memory_map = 13  # arg: xen_foreign_memory_map (tools set a domain's map)
xen_memory_map = Struct(
    "nr_entries" / unsigned_int * "IN: room in buffer, in entries; OUT: entries stored",
    Padding(4),
    "buffer" / XEN_GUEST_HANDLE("void") * "IN: array of e820entry (20 bytes each)",
)
xen_memory_map.docs = "XENMEM_memory_map / XENMEM_machine_memory_map: an E820-style map."

xen_foreign_memory_map = Struct(
    "domid" / domid_t * "IN: the domain whose map is set",
    Padding(6),
    "map" / xen_memory_map * "IN",
)
xen_foreign_memory_map.docs = "XENMEM_set_memory_map: the toolstack sets a domain's memory map."

XENMEM_set_pod_target = 16
XENMEM_get_pod_target = 17
xen_pod_target = Struct(
    "target_pages" / uint64_t * "IN (set)",
    "tot_pages" / uint64_t * "OUT",
    "pod_cache_pages" / uint64_t * "OUT",
    "pod_entries" / uint64_t * "OUT",
    "domid" / domid_t * "IN",
    Padding(6),
)
xen_pod_target.docs = "XENMEM_{set,get}_pod_target: populate-on-demand balloon target (HVM)."

# Tools-only ops (memory paging, access, sharing); numbers only.
XENMEM_get_sharing_freed_pages = 18
XENMEM_get_sharing_shared_pages = 19
XENMEM_paging_op = 20
XENMEM_access_op = 21
XENMEM_sharing_op = 22
XENMEM_claim_pages = 24  # arg: xen_memory_reservation with extent_start 0
XENMEM_get_vnumainfo = 26
XENMEM_reserved_device_memory_map = 27
XENMEM_RDM_ALL = 1  # xen_reserved_device_memory_map.flags: every region, not one device's

xen_reserved_device_memory = Struct(
    "start_pfn" / xen_pfn_t,
    "nr_pages" / xen_ulong_t,
)
xen_reserved_device_memory.docs = "One range of XENMEM_reserved_device_memory_map's answer."

XENMEM_acquire_resource = 28
XENMEM_resource_ioreq_server = 0
XENMEM_resource_grant_table = 1
XENMEM_resource_vmtrace_buf = 2
XENMEM_resource_grant_table_id_shared = 0
XENMEM_resource_grant_table_id_status = 1
XENMEM_resource_ioreq_server_frame_bufioreq = 0

xen_mem_acquire_resource = Struct(
    "domid" / domid_t * "IN: owner of the resource",
    "type" / uint16_t * "IN: XENMEM_resource_*",
    "id" / uint32_t * "IN: type-specific id",
    "nr_frames" / uint32_t * "IN/OUT: frames to map; with frame_list 0, OUT: the resource's size",
    "pad" / uint32_t * "IN: 0",
    "frame" / uint64_t * "IN: first frame of the resource to map",
    "frame_list" / XEN_GUEST_HANDLE("xen_pfn_t") * "IN/OUT: PV caller: OUT the MFNs",
)
xen_mem_acquire_resource.docs = "XENMEM_acquire_resource: map a domain's resource (grant table, ioreq pages) by frame."

xen_vmemrange = Struct(
    "start" / uint64_t,
    "end" / uint64_t,
    "flags" / unsigned_int,
    "nid" / unsigned_int * "virtual NUMA node",
)
xen_vmemrange.docs = "One memory range of a virtual NUMA node."

xen_vnuma_topology_info = Struct(
    "domid" / domid_t * "IN",
    "pad" / uint16_t,
    "nr_vnodes" / unsigned_int * "IN: room; OUT: count",
    "nr_vcpus" / unsigned_int * "IN: room; OUT: count",
    "nr_vmemranges" / unsigned_int * "IN: room; OUT: count",
    "vdistance" / CUnion("h" / XEN_GUEST_HANDLE("uint"), "pad" / uint64_t) * "OUT: nr_vnodes**2 distances",
    "vcpu_to_vnode" / CUnion("h" / XEN_GUEST_HANDLE("uint"), "pad" / uint64_t) * "OUT",
    "vmemrange" / CUnion("h" / XEN_GUEST_HANDLE("xen_vmemrange_t"), "pad" / uint64_t) * "OUT",
)
xen_vnuma_topology_info.docs = "XENMEM_get_vnumainfo: the domain's virtual NUMA layout."
