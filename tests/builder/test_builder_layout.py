"""The xc_dom_x86 64-bit PV layout, as arithmetic (no hypervisor)."""
from __future__ import annotations

import struct

import pytest

from abi import elfnote
from dom0.builder import BuildError, parse_kernel, plan_layout
from dom0.builder.layout import L1_PROT, PAGE_SIZE, SIF_MOD_START_PFN, UPPER_PROT, pagetable_entries
from tests.builder.builder_kit import make_elf, note, xtf_like_notes

MB = 1 << 20


def test_xtf_like_layout_in_order():
    """kernel at its paddr, then P2M, start_info, xenstore, console, tables, stack; 4 MiB mapped."""
    image = parse_kernel(make_elf())                  # 0x100000..0x103000, hypercall page 0x101000
    lay = plan_layout(image, 128 * MB // PAGE_SIZE)
    names = [s.name for s in lay.segments]
    assert names == ["kernel", "phys2mach", "start info", "xenstore", "console", "page tables", "boot stack"]
    assert (lay.kernel.vstart, lay.kernel.pfn, lay.kernel.pages) == (0x100000, 0x100, 3)
    assert (lay.p2m.vstart, lay.p2m.pages) == (0x103000, 32768 * 8 // PAGE_SIZE)
    assert lay.start_info_pfn == 0x103 + 64
    assert (lay.xenstore_pfn, lay.console_pfn) == (lay.start_info_pfn + 1, lay.start_info_pfn + 2)
    assert lay.pgtables.pfn == lay.console_pfn + 1
    assert lay.nr_pt_frames == lay.pgtables.pages == 5          # L4, L3, L2, two L1s (2 MiB each)
    assert lay.bootstack_pfn == lay.pgtables.pfn + lay.pgtables.pages
    assert lay.stack_top == (lay.bootstack_pfn + 1) * PAGE_SIZE
    assert lay.virt_pgtab_end == 4 * MB
    assert lay.pfn_alloc_end == 4 * MB // PAGE_SIZE               # padded to the end of the mapping
    assert lay.hypercall_pfn == 0x101
    assert lay.virt_pgtab_end - lay.stack_top >= 512 * 1024        # the bootstrap padding


def test_pagetable_entries_map_everything_with_tables_read_only():
    lay = plan_layout(parse_kernel(make_elf()), 128 * MB // PAGE_SIZE)
    p2m = list(range(5000, 5000 + lay.total_pages))
    entries = list(pagetable_entries(lay, p2m))
    l1 = [(t, i, e) for t, i, e in entries if t >= lay.pgtables.pfn + 3]
    assert len(l1) == 1024 and len(entries) == 1 + 1 + 2 + 1024
    table_pfns = set(lay.all_pagetable_pfns())
    for t, i, e in l1:
        pfn = (t - lay.pgtables.pfn - 3) * 512 + i
        assert e >> 12 == p2m[pfn]
        assert e & 0xFFF == (L1_PROT & ~2 if pfn in table_pfns else L1_PROT)
    for _, _, e in entries[:4]:
        assert e & 0xFFF == UPPER_PROT


def test_layout_grows_the_mapping_for_a_big_kernel():
    image = parse_kernel(make_elf(segments=((0x100000, 0x100000, b"\x90" * 16, 0x7F0000),)))
    lay = plan_layout(image, 64 * MB // PAGE_SIZE)
    assert lay.virt_pgtab_end == 12 * MB
    assert lay.nr_pt_frames == 3 + 6


def test_ramdisk_mapped_after_kernel_without_mod_start_pfn():
    lay = plan_layout(parse_kernel(make_elf()), 32 * MB // PAGE_SIZE, ramdisk_size=10000)
    assert [s.name for s in lay.segments][:2] == ["kernel", "module0"]
    assert lay.initrd_start == lay.ramdisk.vstart == 0x103000 and lay.initrd_len == 10000
    assert not lay.flags & SIF_MOD_START_PFN


def debian_like(p2m_base: int = 0x8000000000) -> bytes:
    base = 0xFFFFFFFF80000000
    notes = (note(elfnote.XEN_ELFNOTE_GUEST_OS, b"linux\0") + note(elfnote.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")
             + note(elfnote.XEN_ELFNOTE_VIRT_BASE, struct.pack("<Q", base))
             + note(elfnote.XEN_ELFNOTE_PADDR_OFFSET, struct.pack("<Q", 0))
             + note(elfnote.XEN_ELFNOTE_ENTRY, struct.pack("<Q", base + 0x1000000))
             + note(elfnote.XEN_ELFNOTE_INIT_P2M, struct.pack("<Q", p2m_base))
             + note(elfnote.XEN_ELFNOTE_MOD_START_PFN, struct.pack("<I", 1)))
    return make_elf(segments=((base + 0x1000000, 0x1000000, b"\xf4" * 0x2000, 0x2000),),
                    notes=notes, entry=base + 0x1000000)


def test_init_p2m_and_unmapped_ramdisk():
    lay = plan_layout(parse_kernel(debian_like()), 64 * MB // PAGE_SIZE, ramdisk_size=5000)
    names = [s.name for s in lay.segments]
    assert names == ["kernel", "start info", "xenstore", "console", "page tables", "boot stack",
                     "module0", "phys2mach"]
    assert lay.kernel.pfn == 0x1000
    assert lay.flags & SIF_MOD_START_PFN
    assert lay.initrd_start == lay.ramdisk.pfn == (lay.virt_pgtab_end - lay.virt_base) // PAGE_SIZE
    assert lay.initrd_len == 2 * PAGE_SIZE                     # whole pages, as libxc reports it
    assert lay.p2m.vstart == 0x8000000000 and lay.p2m_base == 0x8000000000
    assert len(lay.maps) == 2
    list_pages = 16384 * 8 // PAGE_SIZE
    assert lay.p2m.pages == list_pages + lay.maps[1].area.pgtables
    assert lay.maps[1].lvls[3].pgtables == 0                   # shares the L4


def test_init_p2m_above_virt_base_is_ignored():
    lay = plan_layout(parse_kernel(debian_like(p2m_base=0xFFFFFFFFC0000000)), 64 * MB // PAGE_SIZE)
    assert lay.p2m_base is None and lay.p2m.vstart > lay.kernel.vstart


@pytest.mark.parametrize("pages, words", [(0, "no memory"), (300, "initial mapping")])
def test_too_little_memory(pages, words):
    with pytest.raises(BuildError, match=words):
        plan_layout(parse_kernel(make_elf()), pages)


def test_kernel_larger_than_memory():
    image = parse_kernel(make_elf(segments=((0x100000, 0x100000, b"\x90" * 16, 0x7F0000),)))
    with pytest.raises(BuildError, match="kernel does not fit"):
        plan_layout(image, 1024)


def test_hypercall_page_outside_kernel():
    image = parse_kernel(make_elf(notes=xtf_like_notes(hypercall_page=0x200000)))
    with pytest.raises(BuildError, match="HYPERCALL_PAGE"):
        plan_layout(image, 8192)


def _notes(virt_base: int, entry: int, p2m_base: int | None, paddr_offset: int) -> bytes:
    notes = (note(elfnote.XEN_ELFNOTE_GUEST_OS, b"linux\0") + note(elfnote.XEN_ELFNOTE_XEN_VERSION, b"xen-3.0\0")
             + note(elfnote.XEN_ELFNOTE_VIRT_BASE, struct.pack("<Q", virt_base))
             + note(elfnote.XEN_ELFNOTE_PADDR_OFFSET, struct.pack("<Q", paddr_offset))
             + note(elfnote.XEN_ELFNOTE_ENTRY, struct.pack("<Q", entry)))
    if p2m_base is not None:
        notes += note(elfnote.XEN_ELFNOTE_INIT_P2M, struct.pack("<Q", p2m_base))
    return notes


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ADDRESSES = st.one_of(st.integers(0, 2**64 - 1), st.sampled_from(
    [0, 0x1000, 0x100000, 0x8000000000, 0xFFFF800000000000, 0xFFFFFFFF80000000, 0xFFFFFFFF7FFFF000,
     0xFFFFFFFFFFFFF000, 2**47 - 0x1000, 2**47]))


@settings(max_examples=200, deadline=None)
@given(virt_base=_ADDRESSES, paddr=st.integers(0, 1 << 26), p2m_base=st.one_of(st.none(), _ADDRESSES),
       paddr_offset=st.integers(0, 1 << 26), pages=st.integers(0, 1 << 15), ramdisk=st.integers(0, 1 << 22))
def test_hostile_addresses_give_build_error_or_consistent_layout(virt_base, paddr, p2m_base, paddr_offset,
                                                                 pages, ramdisk):
    """Whatever the notes say, the layout is refused with a BuildError or is self-consistent:
    every table entry points at a frame of the domain, from a boot page-table frame."""
    entry = (virt_base + paddr - paddr_offset) & (2**64 - 1)
    try:
        image = parse_kernel(make_elf(segments=((entry, paddr, b"\x90" * 0x1000, 0x1000),),
                                      notes=_notes(virt_base, entry, p2m_base, paddr_offset), entry=entry))
        lay = plan_layout(image, pages, ramdisk)
    except BuildError as e:
        assert "\n" not in str(e)
        return
    assert lay.pfn_alloc_end <= pages
    tables = set(lay.all_pagetable_pfns())
    assert all(pfn < pages for pfn in tables)
    p2m = list(range(100, 100 + pages))
    for table_pfn, index, entry_value in pagetable_entries(lay, p2m):
        assert table_pfn in tables and 0 <= index < 512
        assert 100 <= entry_value >> 12 < 100 + pages
