"""xen_version for a domU and for the privileged domain."""
from __future__ import annotations

import struct

from abi import errno as E
from abi import features as F
from abi import version as V
from abi.xen_x86_64 import HYPERVISOR_VIRT_START


def test_version_number(guest):
    assert guest.call("xen_version", V.XENVER_version, 0) == 4 << 16 | 17


def test_strings(guest):
    assert guest.call("xen_version", V.XENVER_extraversion, guest.va(0)) == 0
    assert guest.read(0, 16) == b".0".ljust(16, b"\0")
    assert guest.call("xen_version", V.XENVER_capabilities, guest.va(1)) == 0
    assert guest.read(1, 1024).rstrip(b"\0") == b"xen-3.0-x86_64"
    assert guest.call("xen_version", V.XENVER_changeset, guest.va(2)) == 0
    assert guest.call("xen_version", V.XENVER_compile_info, guest.va(3)) == 0
    assert guest.read(3, 64).startswith(b"pvhyp")


def test_platform_parameters_and_pagesize(guest):
    assert guest.call("xen_version", V.XENVER_platform_parameters, guest.va(0)) == 0
    assert struct.unpack("<Q", guest.read(0, 8))[0] == HYPERVISOR_VIRT_START
    assert guest.call("xen_version", V.XENVER_pagesize, 0) == 4096
    assert guest.call("xen_version", V.XENVER_pagesize, guest.va(0)) == -E.EINVAL


def test_features_for_a_64bit_pv_domu(guest):
    va = guest.write(0, struct.pack("<II", 0, 0xFFFF_FFFF))
    assert guest.call("xen_version", V.XENVER_get_features, va) == 0
    submap = struct.unpack("<II", guest.read(0, 8))[1]
    for bit in (F.XENFEAT_mmu_pt_update_preserve_ad, F.XENFEAT_gnttab_map_avail_bits, F.XENFEAT_highmem_assist,
                F.XENFEAT_memory_op_vnode_supported, F.XENFEAT_direct_mapped):
        assert submap & 1 << bit
    for bit in (F.XENFEAT_writable_page_tables, F.XENFEAT_auto_translated_physmap, F.XENFEAT_dom0,
                F.XENFEAT_supervisor_mode_kernel):
        assert not submap & 1 << bit
    assert guest.call("xen_version", V.XENVER_get_features, guest.write(0, struct.pack("<II", 1, 0))) == -E.EINVAL
    assert guest.call("xen_version", V.XENVER_get_features, 0x1000) == -E.EFAULT


def test_privileged_parts_denied_to_a_domu(guest):
    guest.domain.handle = bytes(range(16))
    assert guest.call("xen_version", V.XENVER_guest_handle, guest.va(0)) == 0
    assert guest.read(0, 16) == bytes(range(16))
    assert guest.call("xen_version", V.XENVER_commandline, guest.va(1)) == 0
    assert guest.read(1, 9) == b"<denied>\0"
    assert guest.call("xen_version", V.XENVER_build_id, guest.va(2)) == -E.EPERM
    assert guest.call("xen_version", 11, guest.va(2)) == -E.ENOSYS
    assert guest.call("xen_version", -1 & 0xFFFF_FFFF_FFFF_FFFF, 0) == -E.ENOSYS


def test_dom0_features_and_build_id(guest):
    guest.domain.is_privileged = True
    va = guest.write(0, struct.pack("<II", 0, 0))
    guest.call("xen_version", V.XENVER_get_features, va)
    assert struct.unpack("<II", guest.read(0, 8))[1] & 1 << F.XENFEAT_dom0
    assert guest.call("xen_version", V.XENVER_build_id, guest.write(1, struct.pack("<I", 0))) == -E.EINVAL


def test_bad_buffers_fault(guest):
    for cmd in (V.XENVER_extraversion, V.XENVER_compile_info, V.XENVER_capabilities, V.XENVER_changeset,
                V.XENVER_platform_parameters, V.XENVER_guest_handle):
        assert guest.call("xen_version", cmd, 0xFFFF_8000_0000_0000) == -E.EFAULT
        assert guest.call("xen_version", cmd, guest.va(7, 4090)) == -E.EFAULT
