"""abi/ against Xen 4.17's real public headers, as gcc lays them out."""

import pytest

from abi import registry
from tests.abi import c_layout_kit

U64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def measured():
    status = c_layout_kit.try_install_headers()
    if not c_layout_kit.headers_present():
        pytest.skip(f"Xen public headers missing in /usr/include/xen ({status}); "
                    "install Debian's libxen-dev to run the cross-check")
    if not c_layout_kit.can_compile():
        pytest.skip("no gcc to compile the cross-check program")
    return c_layout_kit.measure()


def test_every_struct_size_matches(measured):
    wrong = [(e.name, e.size, measured["structs"][e.name]["size"])
             for e in c_layout_kit.checked_structs() if e.size != measured["structs"][e.name]["size"]]
    assert wrong == [], "(name, abi size, C size)"


def test_every_field_offset_and_size_matches(measured):
    wrong = []
    for entry in c_layout_kit.checked_structs():
        c_fields = measured["structs"][entry.name]["fields"]
        for f in registry.fields(entry.construct):
            if tuple(c_fields[f.path]) != (f.offset, f.size):
                wrong.append((entry.name, f.path, (f.offset, f.size), tuple(c_fields[f.path])))
    assert wrong == [], "(struct, member, abi (offset, size), C (offset, size))"


def test_every_constant_value_matches(measured):
    wrong = [(c.name, c.value, measured["constants"][c.name])
             for c in registry.constants()
             if c.c_name is not None and (c.value & U64) != (measured["constants"][c.name] & U64)]
    assert wrong == [], "(name, abi value, C value)"


def test_unchecked_structs_say_why():
    for e in registry.structs():
        if e.header is None:
            assert e.why_unchecked, e.name


def test_unchecked_constants_say_why():
    for c in registry.constants():
        if c.c_name is None:
            assert c.why_unchecked, c.name


# Value macros of the headers that abi/ deliberately does not carry.
SUBSET_HEADERS = {"domctl.h", "sysctl.h"}  # only the toolstack's ops, by design
LEFT_OUT = {
    # C syntax and type helpers, not values
    "XEN_FLEX_ARRAY_DIM", "int64_aligned_t", "uint64_aligned_t", "xen_vga_console_info",
    "xen_vga_console_info_t", "xen_wc_sec_hi", "PRI_xen_pfn", "PRIu_xen_pfn", "PRI_xen_ulong",
    "machine_to_phys_mapping",
    # strings of instruction bytes for HVM's forced-emulation prefix
    "XEN_EMULATE_PREFIX", "XEN_CPUID",
    # memory.h's tools-only paging / access / sharing sub-ops (pvhyp has no such tools)
    "XENMEM_paging_op_nominate", "XENMEM_paging_op_evict", "XENMEM_paging_op_prep",
    "XENMEM_access_op_set_access", "XENMEM_access_op_get_access", "XENMEM_access_op_set_access_multi",
    "XENMEM_sharing_op_nominate_gfn", "XENMEM_sharing_op_nominate_gref", "XENMEM_sharing_op_share",
    "XENMEM_sharing_op_debug_gfn", "XENMEM_sharing_op_debug_mfn", "XENMEM_sharing_op_debug_gref",
    "XENMEM_sharing_op_add_physmap", "XENMEM_sharing_op_audit", "XENMEM_sharing_op_range_share",
    "XENMEM_sharing_op_fork", "XENMEM_sharing_op_fork_reset", "XENMEM_SHARING_OP_S_HANDLE_INVALID",
    "XENMEM_SHARING_OP_C_HANDLE_INVALID", "XENMEM_SHARING_OP_FIELD_IS_GREF_FLAG",
    "XENMEM_FORK_WITH_IOMMU_ALLOWED", "XENMEM_FORK_BLOCK_INTERRUPTS", "XENMEM_FORK_RESET_STATE",
    "XENMEM_FORK_RESET_MEMORY",
}


def _include_guard(name: str) -> bool:
    return name.endswith("_H__") or name.endswith("_H")


def test_every_value_macro_of_a_header_is_in_its_module():
    if not c_layout_kit.can_compile():
        pytest.skip("Xen public headers or gcc missing")
    macros = c_layout_kit.header_macros()
    missing = []
    for spec, module in registry.header_modules():
        if spec.header is None or spec.header in SUBSET_HEADERS:
            continue
        for name in sorted(macros.get(spec.header, ())):
            if not (_include_guard(name) or name in LEFT_OUT or hasattr(module, name)):
                missing.append(f"{spec.header}: {name}")
    assert missing == []


def test_the_cross_check_sees_real_values(measured):
    # Guards against a check that compares nothing: known Xen facts.
    assert measured["constants"]["__HYPERVISOR_mmu_update"] == 1
    assert measured["constants"]["EOPNOTSUPP"] == 95
    assert measured["structs"]["start_info"]["size"] == 1168
    assert measured["structs"]["vcpu_guest_context"]["size"] == 5168
    assert measured["structs"]["start_info"]["fields"]["console.domU.evtchn"] == [80, 4]
