"""xen/include/public/version.h: HYPERVISOR_xen_version(cmd, arg).

Every sub-op returns its answer in the buffer ``arg`` points at (OUT), except
XENVER_version and XENVER_pagesize, which return it as the hypercall result.
Feature bits for XENVER_get_features are in ``abi.features``.
"""

from construct import Bytes, Struct

from abi import arch_x86_xen
from abi.cdefs import Typedef, uint32_t, unsigned_int

XENVER_version = 0  # result: (major << 16) | minor; arg unused
XENVER_extraversion = 1  # arg: xen_extraversion_t, e.g. ".0\0"
xen_extraversion_t = Typedef("xen_extraversion_t", Bytes(16))
XEN_EXTRAVERSION_LEN = 16

XENVER_compile_info = 2
xen_compile_info = Struct(
    "compiler" / Bytes(64) * "OUT: NUL-terminated text",
    "compile_by" / Bytes(16) * "OUT",
    "compile_domain" / Bytes(32) * "OUT",
    "compile_date" / Bytes(32) * "OUT",
)
xen_compile_info.docs = "XENVER_compile_info: how the hypervisor was built."

XENVER_capabilities = 3  # arg: xen_capabilities_info_t, e.g. "xen-3.0-x86_64 ..."
xen_capabilities_info_t = Typedef("xen_capabilities_info_t", Bytes(1024))
XEN_CAPABILITIES_INFO_LEN = 1024

XENVER_changeset = 4
xen_changeset_info_t = Typedef("xen_changeset_info_t", Bytes(64))
XEN_CHANGESET_INFO_LEN = 64

XENVER_platform_parameters = 5
xen_platform_parameters = Struct(
    "virt_start" / arch_x86_xen.xen_ulong_t * "OUT: lowest virtual address Xen reserves (HYPERVISOR_VIRT_START)",
)
xen_platform_parameters.docs = "XENVER_platform_parameters: where the hypervisor hole starts."

XENVER_get_features = 6
xen_feature_info = Struct(
    "submap_idx" / unsigned_int * "IN: which 32-bit submap",
    "submap" / uint32_t * "OUT: its XENFEAT_* bits",
)
xen_feature_info.docs = "XENVER_get_features: one 32-bit word of the feature bitmap."

XENVER_pagesize = 7  # result: page size in bytes
XENVER_guest_handle = 8  # arg: xen_domain_handle_t, the caller's UUID
XENVER_commandline = 9  # arg: xen_commandline_t (privileged)
xen_commandline_t = Typedef("xen_commandline_t", Bytes(1024))

XENVER_build_id = 10
xen_build_id = Struct(
    "len" / uint32_t * "IN: bytes available after this field; OUT: bytes written",
    # followed by the build id bytes (a flexible array, not part of the struct)
)
xen_build_id.docs = "XENVER_build_id: the hypervisor's build id; the bytes follow len."
