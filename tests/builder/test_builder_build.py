"""Building real XTF kernels into fresh domains, through dom0's channel, and checking the result."""
from __future__ import annotations

import struct

import pytest

from abi.cdefs import plain
from abi.xen import SIF_MOD_START_PFN, __HYPERVISOR_iret, start_info
from dom0.builder import build_pv_domain, parse_kernel
from dom0.builder.layout import PAGE_SIZE
from pvhyp.domctl import hypercall_page_bytes
from pvhyp.guest_access import GuestFault, walk
from tests.builder.builder_kit import compress, make_bzimage, xtf_kernels

MEMORY_MB = 128        # the xl.cfg the XTF tests run under


def guest_read(hv, l4: int, va: int, n: int) -> bytes:
    return hv.memory.read(walk(hv.memory, l4, va, write=False, user=False), n)


def check_built(hv, result, kernel: bytes, cmdline: bytes = b"") -> None:
    d = hv.domains[result.domid]
    lay, p2m = result.layout, result.p2m
    l4 = result.l4_mfn
    assert d.p2m == p2m and d.tot_pages == lay.total_pages == MEMORY_MB * 256

    # P2M list in the guest and the M2P agree with the domain's frames
    mfn_list = guest_read(hv, l4, lay.p2m.vstart, 8 * len(p2m))
    assert list(struct.unpack(f"<{len(p2m)}Q", mfn_list)) == p2m
    for pfn in range(0, len(p2m), 97):
        assert hv.get_m2p(p2m[pfn]) == pfn and hv.frames.owned_by(p2m[pfn], d.domid)

    # start_info, as the guest sees it at rsi
    regs = d.vcpus[0].initial_context["user_regs"]
    si = plain(start_info.parse(guest_read(hv, l4, regs["rsi"], start_info.sizeof())))
    assert si["magic"].rstrip(b"\0") == b"xen-3.0-x86_64"
    assert si["nr_pages"] == len(p2m)
    assert si["shared_info"] == d.shared_info_mfn * PAGE_SIZE
    assert si["pt_base"] == lay.pgtables.vstart and si["nr_pt_frames"] == lay.nr_pt_frames
    assert si["mfn_list"] == lay.p2m.vstart
    assert si["store_mfn"] == p2m[lay.xenstore_pfn]
    assert si["console"]["domU"]["mfn"] == p2m[lay.console_pfn]
    assert si["cmd_line"].split(b"\0")[0] == cmdline
    assert (si["first_p2m_pfn"], si["nr_p2m_frames"]) == (0, 0)

    # every pfn of the initial mapping at virt_base + pfn * 4 KiB; page tables read-only
    for pfn in list(range(0, lay.virt_pgtab_end // PAGE_SIZE, 61)) + [lay.bootstack_pfn]:
        va = lay.virt_base + pfn * PAGE_SIZE
        assert walk(hv.memory, l4, va, write=False, user=False) == p2m[pfn] * PAGE_SIZE
    for pfn in lay.all_pagetable_pfns():
        with pytest.raises(GuestFault):
            walk(hv.memory, l4, lay.virt_base + pfn * PAGE_SIZE, write=True, user=False)
    walk(hv.memory, l4, lay.stack_top - 8, write=True, user=False)
    with pytest.raises(GuestFault):
        walk(hv.memory, l4, lay.virt_pgtab_end, write=False, user=False)

    # the kernel's segments at their physical addresses (but for the hypercall page, now Xen's)
    elf, params = result.image.elf, result.image.params
    for seg in elf.segments:
        va = params.virt_kstart + seg.paddr - elf.pstart
        loaded = bytearray(guest_read(hv, l4, va, seg.filesz))
        expected = bytearray(elf.data[seg.offset:seg.offset + seg.filesz])
        if params.virt_hypercall is not None and va <= params.virt_hypercall < va + seg.filesz:
            at = params.virt_hypercall - va
            loaded[at:at + PAGE_SIZE] = expected[at:at + PAGE_SIZE] = bytes(len(expected[at:at + PAGE_SIZE]))
        assert loaded == expected

    # hypercall page: Xen's stubs
    if lay.hypercall_pfn is not None:
        page = guest_read(hv, l4, result.image.params.virt_hypercall, PAGE_SIZE)
        assert page == hypercall_page_bytes()
        assert page[0] != 0xC3                       # XTF panics on a stub that only returns
        assert page[0:14] == bytes.fromhex("51415 3b8000000000f05415b59c3".replace(" ", ""))
        iret = page[__HYPERVISOR_iret * 32:__HYPERVISOR_iret * 32 + 11]
        assert iret == bytes.fromhex("51415350b8170000000f05")

    # pinned and validated by the PV MMU: typed L4, and (adjust_guest_l1e) user-accessible mappings,
    # so the guest kernel in ring 3 reaches its own pages
    from pvhyp.mm.pagetype import PGT_l4_page_table
    assert hv.frames.pinned[l4] and hv.frames.type[l4] == PGT_l4_page_table
    entry = result.image.params.virt_entry
    walk(hv.memory, l4, entry, write=False, user=True)

    # vCPU 0 as Xen starts a PV64 guest
    v = d.vcpus[0]
    assert v.online and v.kernel_mode and v.guest_table == l4
    assert regs["rip"] == result.image.params.virt_entry
    assert regs["rsp"] == lay.stack_top
    assert regs["cs"] == 0xE033 and regs["ss"] == 0xE02B and regs["ds"] == 0
    assert regs["rflags"] & 0x200
    assert v.initial_context["ctrlreg"][3] == l4 << 12


@pytest.mark.parametrize("path", xtf_kernels(), ids=lambda p: p.name)
def test_build_xtf_kernel(machine, path):
    hv, _dom0, xc = machine
    kernel = path.read_bytes()
    domid = xc.domain_create(max_vcpus=1)
    result = build_pv_domain(xc, domid, kernel, MEMORY_MB, cmdline="hypercall")
    check_built(hv, result, kernel, b"hypercall")
    info = xc.domain_getinfo(domid)
    assert info["tot_pages"] == MEMORY_MB * 256 and info["nr_online_vcpus"] == 1
    xc.domain_destroy(domid)
    assert domid not in hv.domains


def test_build_with_ramdisk_and_bzimage(machine, xtf_example):
    hv, _dom0, xc = machine
    ramdisk = bytes(range(256)) * 40
    domid = xc.domain_create()
    result = build_pv_domain(xc, domid, make_bzimage(compress(xtf_example, "xz")), MEMORY_MB, ramdisk=ramdisk)
    check_built(hv, result, xtf_example)
    lay = result.layout
    assert result.start_info["mod_start"] == lay.ramdisk.vstart and result.start_info["mod_len"] == len(ramdisk)
    assert not result.start_info["flags"] & SIF_MOD_START_PFN
    assert guest_read(hv, result.l4_mfn, lay.ramdisk.vstart, len(ramdisk)) == ramdisk


def test_vcpu_context_round_trip(machine, xtf_example):
    hv, _dom0, xc = machine
    domid = xc.domain_create()
    result = build_pv_domain(xc, domid, xtf_example, MEMORY_MB)
    got = xc.vcpu_getcontext(domid, 0)
    assert got["user_regs"]["rip"] == result.context["user_regs"]["rip"]
    assert got["ctrlreg"][3] == result.l4_mfn << 12 and got["kernel_sp"] == result.layout.stack_top


def test_a_domain_too_small_fails_cleanly(machine, xtf_example):
    from dom0.builder import BuildError
    hv, _dom0, xc = machine
    domid = xc.domain_create()
    with pytest.raises(BuildError):
        build_pv_domain(xc, domid, xtf_example, 1)
    assert hv.domains[domid].tot_pages == 0          # refused before anything was allocated


def test_parse_once_build_twice(machine, xtf_example):
    hv, _dom0, xc = machine
    image = parse_kernel(xtf_example)
    a = build_pv_domain(xc, xc.domain_create(), image, 16)
    b = build_pv_domain(xc, xc.domain_create(), image, 16)
    assert a.domid != b.domid and not set(a.p2m) & set(b.p2m)


def debian_kernel():
    """A Debian PV kernel + initramfs as `pvhyp image debian` leaves them ($PVHYP_DEBIAN_DIR or its cache)."""
    import os
    import pathlib
    for directory in (os.environ.get("PVHYP_DEBIAN_DIR"), pathlib.Path.home() / ".cache/pvhyp/debian"):
        if directory and (pathlib.Path(directory) / "vmlinuz").is_file():
            return pathlib.Path(directory)
    return None


def test_build_debian_kernel(machine):
    """bzImage + xz, VIRT_BASE/ENTRY/INIT_P2M/MOD_START_PFN, a segment at vaddr 0: all of libxc's PV paths."""
    directory = debian_kernel()
    if directory is None:
        pytest.skip("no Debian kernel ($PVHYP_DEBIAN_DIR or ~/.cache/pvhyp/debian from `pvhyp image debian`)")
    hv, _dom0, xc = machine
    ramdisk = (directory / "initrd.img").read_bytes() if (directory / "initrd.img").exists() else b"\0" * 4096
    domid = xc.domain_create()
    result = build_pv_domain(xc, domid, (directory / "vmlinuz").read_bytes(), MEMORY_MB, ramdisk=ramdisk,
                             cmdline="console=hvc0")
    lay, si, l4 = result.layout, result.start_info, result.l4_mfn
    assert si["flags"] & SIF_MOD_START_PFN and si["mod_len"] >= len(ramdisk)
    from dom0.builder.image import module_contents, module_size
    assert hv.memory.read(result.p2m[si["mod_start"]] * PAGE_SIZE, 64) == \
        module_contents(ramdisk, module_size(ramdisk)[0])[:64]
    assert si["mfn_list"] == lay.p2m_base and (si["first_p2m_pfn"], si["nr_p2m_frames"]) == (lay.p2m.pfn, lay.p2m.pages)
    mfn_list = guest_read(hv, l4, si["mfn_list"], 8 * len(result.p2m))
    assert list(struct.unpack(f"<{len(result.p2m)}Q", mfn_list)) == result.p2m
    entry = result.image.params.virt_entry
    assert walk(hv.memory, l4, entry, write=False, user=False) == \
        result.p2m[(entry - lay.virt_base) >> 12] * PAGE_SIZE + (entry & 0xFFF)


def test_gzip_ramdisk_is_handed_over_decompressed(machine, xtf_example):
    """xc_dom_build_module: a gzip module is gunzipped into a segment of its size + 16."""
    import gzip
    hv, _dom0, xc = machine
    cpio = b"070701" + bytes(range(256)) * 30
    result = build_pv_domain(xc, xc.domain_create(), xtf_example, 16, ramdisk=gzip.compress(cpio))
    assert result.start_info["mod_len"] == len(cpio) + 16
    assert guest_read(hv, result.l4_mfn, result.start_info["mod_start"], len(cpio) + 16) == cpio + bytes(16)
    broken = bytearray(gzip.compress(cpio))
    broken[20:40] = bytes(20)
    result = build_pv_domain(xc, xc.domain_create(), xtf_example, 16, ramdisk=bytes(broken))
    assert guest_read(hv, result.l4_mfn, result.start_info["mod_start"], len(broken)) == bytes(broken)
