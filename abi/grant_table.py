"""xen/include/public/grant_table.h: HYPERVISOR_grant_table_op(cmd, args, count).

A domain shares a page by writing an entry in its grant table (an array of
grant_entry_v1/v2 in frames it got from GNTTABOP_setup_table), naming the
domain allowed in and the frame; the index is the grant reference it passes
on (via xenstore).  The peer then maps or copies through the reference.

Ops take an array of ``count`` structs; per-entry results come back in each
entry's ``status`` (GNTST_*), the hypercall itself returns 0 or a -errno.
"""

from construct import Padding, Struct

from abi import arch_x86_xen, xen
from abi.cdefs import XEN_GUEST_HANDLE, CUnion, Typedef, int16_t, uint16_t, uint32_t, uint64_t

grant_ref_t = Typedef("grant_ref_t", uint32_t)
grant_handle_t = Typedef("grant_handle_t", uint32_t)
grant_status_t = Typedef("grant_status_t", uint16_t)
domid_t = xen.domid_t
xen_pfn_t = arch_x86_xen.xen_pfn_t

# --- the grant table itself (written by the granting guest) ---------------------------
grant_entry_v1 = Struct(
    "flags" / uint16_t * "GTF_*: type in bits 0-1 (guest), reading/writing (Xen)",
    "domid" / domid_t * "the domain allowed to use this grant",
    "frame" / uint32_t * "the granted frame (permit_access/accept_transfer), or the transferred MFN (Xen)",
)
grant_entry_v1.docs = "Version 1 grant entry: 8 bytes, 512 per page."

GNTTAB_NR_RESERVED_ENTRIES = 8  # references below this are the toolstack's
GNTTAB_RESERVED_CONSOLE = 0  # the console ring
GNTTAB_RESERVED_XENSTORE = 1  # the xenstore ring

# grant entry flags: the type (guest-written)
GTF_invalid = 0 << 0
GTF_permit_access = 1 << 0  # domid may map/copy the frame
GTF_accept_transfer = 2 << 0  # domid may transfer a page into this entry
GTF_transitive = 3 << 0  # v2: domid may use another domain's grant (trans_domid, gref)
GTF_type_mask = 3 << 0
# subflags for permit_access
_GTF_readonly = 2
GTF_readonly = 1 << _GTF_readonly  # guest: read-only access only
_GTF_reading = 3
GTF_reading = 1 << _GTF_reading  # Xen: the grant is mapped/being read
_GTF_writing = 4
GTF_writing = 1 << _GTF_writing  # Xen: the grant is mapped/being written
_GTF_PWT = 5
GTF_PWT = 1 << _GTF_PWT
_GTF_PCD = 6
GTF_PCD = 1 << _GTF_PCD
_GTF_PAT = 7
GTF_PAT = 1 << _GTF_PAT
_GTF_sub_page = 8
GTF_sub_page = 1 << _GTF_sub_page  # v2: only [page_off, page_off+length) is granted
# subflags for accept_transfer
_GTF_transfer_committed = 2
GTF_transfer_committed = 1 << _GTF_transfer_committed
_GTF_transfer_completed = 3
GTF_transfer_completed = 1 << _GTF_transfer_completed

grant_entry_header = Struct(
    "flags" / uint16_t * "GTF_*",
    "domid" / domid_t,
)
grant_entry_header.docs = "Common first half of a v2 grant entry."

grant_entry_v2 = CUnion(
    "hdr" / grant_entry_header,
    "full_page" / Struct(
        "hdr" / grant_entry_header,
        "pad0" / uint32_t,
        "frame" / uint64_t,
    ) * "whole-page grant or transfer",
    "sub_page" / Struct(
        "hdr" / grant_entry_header,
        "page_off" / uint16_t,
        "length" / uint16_t,
        "frame" / uint64_t,
    ) * "GTF_sub_page: a byte range of the frame",
    "transitive" / Struct(
        "hdr" / grant_entry_header,
        "trans_domid" / domid_t,
        "pad0" / uint16_t,
        "gref" / grant_ref_t,
    ) * "GTF_transitive: a grant of trans_domid's, passed on",
    "__spacer" / uint32_t[4],
)
grant_entry_v2.docs = "Version 2 grant entry (a union, 16 bytes); status bits live in separate status frames."

# --- ops --------------------------------------------------------------------------------
GNTTABOP_map_grant_ref = 0
GNTTABOP_unmap_grant_ref = 1
GNTTABOP_setup_table = 2
GNTTABOP_dump_table = 3
GNTTABOP_transfer = 4
GNTTABOP_copy = 5
GNTTABOP_query_size = 6
GNTTABOP_unmap_and_replace = 7
GNTTABOP_set_version = 8
GNTTABOP_get_status_frames = 9
GNTTABOP_get_version = 10
GNTTABOP_swap_grant_ref = 11
GNTTABOP_cache_flush = 12

gnttab_map_grant_ref = Struct(
    "host_addr" / uint64_t * "IN: virtual address to map at (or PTE address with GNTMAP_contains_pte)",
    "flags" / uint32_t * "IN: GNTMAP_*",
    "ref" / grant_ref_t * "IN: grant reference in dom's table",
    "dom" / domid_t * "IN: the granting domain",
    "status" / int16_t * "OUT: GNTST_*",
    "handle" / grant_handle_t * "OUT: pass to unmap",
    "dev_bus_addr" / uint64_t * "OUT: bus address for GNTMAP_device_map",
)
gnttab_map_grant_ref.docs = "GNTTABOP_map_grant_ref: map a peer's granted frame into our address space."

gnttab_unmap_grant_ref = Struct(
    "host_addr" / uint64_t * "IN: address it was mapped at (0: no host mapping)",
    "dev_bus_addr" / uint64_t * "IN: device mapping to remove (0: none)",
    "handle" / grant_handle_t * "IN: from the map op",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(2),
)
gnttab_unmap_grant_ref.docs = "GNTTABOP_unmap_grant_ref: undo a map_grant_ref."

gnttab_setup_table = Struct(
    "dom" / domid_t * "IN: DOMID_SELF, or another domain if privileged",
    Padding(2),
    "nr_frames" / uint32_t * "IN: grant-table frames wanted",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(6),
    "frame_list" / XEN_GUEST_HANDLE("xen_pfn_t") * "OUT: array receiving the frames' GFNs",
)
gnttab_setup_table.docs = "GNTTABOP_setup_table: grow the grant table and learn its frames (to map them)."

gnttab_dump_table = Struct(
    "dom" / domid_t * "IN",
    "status" / int16_t * "OUT: GNTST_*",
)
gnttab_dump_table.docs = "GNTTABOP_dump_table: print a domain's grant table on Xen's console (debug)."

gnttab_transfer = Struct(
    "mfn" / xen_pfn_t * "IN: our page to give away",
    "domid" / domid_t * "IN: receiving domain",
    Padding(2),
    "ref" / grant_ref_t * "IN: its accept_transfer grant",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(6),
)
gnttab_transfer.docs = "GNTTABOP_transfer: hand a page's ownership to another domain."

_GNTCOPY_source_gref = 0
GNTCOPY_source_gref = 1 << _GNTCOPY_source_gref  # source.u is a grant ref, not a frame
_GNTCOPY_dest_gref = 1
GNTCOPY_dest_gref = 1 << _GNTCOPY_dest_gref

gnttab_copy_ptr = Struct(
    "u" / CUnion(
        "ref" / grant_ref_t,
        "gmfn" / xen_pfn_t,
    ) * "IN: grant ref (GNTCOPY_*_gref) or our own frame",
    "domid" / domid_t * "IN: owner of the page",
    "offset" / uint16_t * "IN: byte offset in the page",
    Padding(4),
)
gnttab_copy_ptr.docs = "One end of a GNTTABOP_copy."

gnttab_copy = Struct(
    "source" / gnttab_copy_ptr * "IN",
    "dest" / gnttab_copy_ptr * "IN",
    "len" / uint16_t * "IN: bytes; neither end may cross its page",
    "flags" / uint16_t * "IN: GNTCOPY_*",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(2),
)
gnttab_copy.docs = "GNTTABOP_copy: copy bytes between pages by grant or frame, without mapping them."

gnttab_query_size = Struct(
    "dom" / domid_t * "IN",
    Padding(2),
    "nr_frames" / uint32_t * "OUT: frames in use",
    "max_nr_frames" / uint32_t * "OUT: limit",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(2),
)
gnttab_query_size.docs = "GNTTABOP_query_size: current and maximum grant-table frames."

gnttab_unmap_and_replace = Struct(
    "host_addr" / uint64_t * "IN: the grant mapping to remove",
    "new_addr" / uint64_t * "IN: address whose mapping moves in its place (and is cleared)",
    "handle" / grant_handle_t * "IN",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(2),
)
gnttab_unmap_and_replace.docs = "GNTTABOP_unmap_and_replace: unmap a grant, putting another page's mapping there."

gnttab_set_version = Struct(
    "version" / uint32_t * "IN/OUT: 1 or 2 wanted; the version in force",
)
gnttab_set_version.docs = "GNTTABOP_set_version: choose the grant entry format (before granting anything)."

gnttab_get_status_frames = Struct(
    "nr_frames" / uint32_t * "IN: size of frame_list",
    "dom" / domid_t * "IN",
    "status" / int16_t * "OUT: GNTST_*",
    "frame_list" / XEN_GUEST_HANDLE("uint64_t") * "OUT: status frames' GFNs",
)
gnttab_get_status_frames.docs = "GNTTABOP_get_status_frames: where the v2 status words live."

gnttab_get_version = Struct(
    "dom" / domid_t * "IN",
    "pad" / uint16_t,
    "version" / uint32_t * "OUT",
)
gnttab_get_version.docs = "GNTTABOP_get_version: a domain's grant-table version."

gnttab_swap_grant_ref = Struct(
    "ref_a" / grant_ref_t * "IN",
    "ref_b" / grant_ref_t * "IN",
    "status" / int16_t * "OUT: GNTST_*",
    Padding(2),
)
gnttab_swap_grant_ref.docs = "GNTTABOP_swap_grant_ref: exchange two of our (unused) grant entries."

GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTTAB_CACHE_SOURCE_GREF = 1 << 31  # a.ref is a grant ref rather than a.dev_bus_addr

gnttab_cache_flush = Struct(
    "a" / CUnion(
        "dev_bus_addr" / uint64_t,
        "ref" / grant_ref_t,
    ) * "IN",
    "offset" / uint16_t * "IN: offset in the page",
    "length" / uint16_t * "IN: bytes",
    "op" / uint32_t * "IN: GNTTAB_CACHE_*",
)
gnttab_cache_flush.docs = "GNTTABOP_cache_flush: clean/invalidate caches over a granted range (Arm)."

# map/unmap flags
_GNTMAP_device_map = 0
GNTMAP_device_map = 1 << _GNTMAP_device_map  # map for device DMA too
_GNTMAP_host_map = 1
GNTMAP_host_map = 1 << _GNTMAP_host_map  # map into the CPU's address space
_GNTMAP_readonly = 2
GNTMAP_readonly = 1 << _GNTMAP_readonly
_GNTMAP_application_map = 3
GNTMAP_application_map = 1 << _GNTMAP_application_map  # the mapping is user accessible
_GNTMAP_contains_pte = 4
GNTMAP_contains_pte = 1 << _GNTMAP_contains_pte  # host_addr is the machine address of a PTE
_GNTMAP_guest_avail0 = 16
GNTMAP_guest_avail_mask = (0xFFFFFFFF << _GNTMAP_guest_avail0) & 0xFFFFFFFF  # bits the guest may use

# per-entry status codes
GNTST_okay = 0
GNTST_general_error = -1
GNTST_bad_domain = -2
GNTST_bad_gntref = -3
GNTST_bad_handle = -4
GNTST_bad_virt_addr = -5
GNTST_bad_dev_addr = -6
GNTST_no_device_space = -7
GNTST_permission_denied = -8
GNTST_bad_page = -9
GNTST_bad_copy_arg = -10  # the copy crosses a page boundary
GNTST_address_too_big = -11
GNTST_eagain = -12  # paged out; retry
GNTST_no_space = -13

# Message per status, indexed by -status.
GNTTABOP_error_msgs = (
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
)
