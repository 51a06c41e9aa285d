"""Where everything goes: xc_dom_build_image with xc_dom_x86's 64-bit PV hooks.

Pure arithmetic over the kernel's parameters and the memory size, so that
`pvhyp inspect` can show the layout without a hypervisor. Pseudo-physical
frames are handed out upwards from pfn 0 while virtual addresses advance in
step from virt_base: kernel, ramdisk (unless MOD_START_PFN lets it stay
unmapped), P2M list (unless INIT_P2M places it elsewhere), start_info,
xenstore and console pages, the boot page tables, the boot stack; then
padding up to the end of the initial mapping (4 MiB aligned, at least 512 KiB
past the last page), then the unmapped ramdisk and the INIT_P2M list with its
own page tables.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from abi.x86_pte import _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, PAGE_SHIFT, PAGE_SIZE
from abi.xen import SIF_MOD_START_PFN
from dom0.builder.errors import BuildError
from dom0.builder.image import KernelImage

PGTBL_LEVELS_X86_64 = 4
PGTBL_LEVEL_SHIFT_X86 = 9
VIRT_BITS_X86_64 = 48
MAPPING_MAX = 2
SIZEOF_PFN_X86_64 = 8
BOOTSTRAP_PADDING = 512 * 1024              # xc_dom_x86: "512kB padding" after the tables

# lvl_prot of xc_dom_x86's x86_64 params: L1 entries, then L2-L4 entries.
L1_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED
UPPER_PROT = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_USER


def bits_to_mask(bits: int) -> int:
    return (1 << bits) - 1


VADDR_MASK = bits_to_mask(VIRT_BITS_X86_64)


@dataclass
class Segment:
    """xc_dom_seg: [vstart, vend) at pseudo-physical frames pfn .. pfn+pages-1."""
    name: str
    vstart: int
    vend: int
    pfn: int
    pages: int


@dataclass
class MappingLevel:
    """xc_dom_x86_mapping_lvl: the virtual range [from_, to] (inclusive) one level's tables cover."""
    from_: int = 0
    to: int = 0
    pfn: int = 0
    pgtables: int = 0


@dataclass
class Mapping:
    """xc_dom_x86_mapping: one mapped area and the page tables built for it."""
    area: MappingLevel = field(default_factory=MappingLevel)
    lvls: list[MappingLevel] = field(default_factory=lambda: [MappingLevel() for _ in range(4)])


@dataclass
class Layout:
    virt_base: int
    total_pages: int
    p2m_size: int
    virt_entry: int
    segments: list[Segment] = field(default_factory=list)
    maps: list[Mapping] = field(default_factory=list)
    # plan_layout allocates these three before it returns the layout.
    kernel: Segment = field(init=False)
    p2m: Segment = field(init=False)
    pgtables: Segment = field(init=False)
    ramdisk: Segment | None = None
    start_info_pfn: int = 0
    xenstore_pfn: int = 0
    console_pfn: int = 0
    bootstack_pfn: int = 0
    virt_pgtab_end: int = 0
    initrd_start: int = 0
    initrd_len: int = 0
    flags: int = 0
    p2m_base: int | None = None           # INIT_P2M when honoured
    hypercall_pfn: int | None = None
    pfn_alloc_end: int = 0
    virt_alloc_end: int = 0

    def pfn_to_virt(self, pfn: int) -> int:
        return self.virt_base + pfn * PAGE_SIZE

    @property
    def nr_pt_frames(self) -> int:
        return self.maps[0].area.pgtables

    @property
    def stack_top(self) -> int:
        return self.pfn_to_virt(self.bootstack_pfn + 1)

    @property
    def start_info_virt(self) -> int:
        return self.pfn_to_virt(self.start_info_pfn)

    def all_pagetable_pfns(self) -> list[int]:
        """Every frame holding a boot page table, of every mapping (read-only in the guest)."""
        pfns: list[int] = []
        for m in self.maps:
            first = m.lvls[PGTBL_LEVELS_X86_64 - 1].pfn
            pfns.extend(range(first, first + m.area.pgtables))
        return pfns


class _Allocator:
    """The allocation state of struct xc_dom_image (pfn_alloc_end / virt_alloc_end)."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def chk_alloc_pages(self, name: str, pages: int) -> None:
        lay = self.layout
        if pages > lay.total_pages - lay.pfn_alloc_end:
            raise BuildError(f"{name} does not fit in memory: needs {pages} pages, "
                             f"{lay.total_pages - lay.pfn_alloc_end} of {lay.total_pages} left")
        lay.pfn_alloc_end += pages
        lay.virt_alloc_end += pages * PAGE_SIZE

    def alloc_pad(self, boundary: int) -> None:
        lay = self.layout
        if boundary & (PAGE_SIZE - 1):
            raise BuildError(f"segment boundary {boundary:#x} is not page aligned")
        if boundary < lay.virt_alloc_end:
            raise BuildError(f"segment boundary {boundary:#x} lies below {lay.virt_alloc_end:#x} "
                             "(segments overlap)")
        self.chk_alloc_pages("padding", (boundary - lay.virt_alloc_end) // PAGE_SIZE)

    def alloc_segment(self, name: str, start: int, size: int) -> Segment:
        if start:
            self.alloc_pad(start)
        lay = self.layout
        pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
        seg = Segment(name, lay.virt_alloc_end, lay.virt_alloc_end + size, lay.pfn_alloc_end, pages)
        self.chk_alloc_pages(name, pages)
        lay.segments.append(seg)
        return seg

    def alloc_page(self, name: str) -> int:
        lay = self.layout
        pfn = lay.pfn_alloc_end
        self.alloc_segment(name, 0, PAGE_SIZE)
        return pfn


def count_pgtables(lay: Layout, from_: int, to: int, pfn: int) -> Mapping:
    """How many tables at each level map [from_, to]; tables already present in an
    earlier mapping are shared rather than counted again (xc_dom_x86's count_pgtables)."""
    if len(lay.maps) == MAPPING_MAX:
        raise BuildError("too many initial mappings")
    pfn_end = pfn + ((to - from_) >> PAGE_SHIFT)
    if pfn_end >= lay.p2m_size:
        raise BuildError(f"not enough memory for the initial mapping "
                         f"({pfn_end:#x} > {lay.p2m_size:#x} pages)")
    for other in lay.maps:
        if from_ < other.area.to and to > other.area.from_:
            raise BuildError("initial mappings overlap")
    m = Mapping()
    m.area.from_ = from_ & VADDR_MASK
    m.area.to = to & VADDR_MASK
    top = PGTBL_LEVELS_X86_64 - 1
    for level in range(top, -1, -1):
        lvl = m.lvls[level]
        lvl.pfn = lay.pfn_alloc_end + m.area.pgtables
        if level == top:
            if not lay.maps:                  # the top-level table is in the first mapping only
                lvl.from_, lvl.to, lvl.pgtables = 0, VADDR_MASK, 1
                m.area.pgtables += 1
            continue
        bits = PAGE_SHIFT + (level + 1) * PGTBL_LEVEL_SHIFT_X86
        mask = bits_to_mask(bits)
        lvl.from_ = m.area.from_ & ~mask
        lvl.to = m.area.to | mask
        for other in lay.maps:
            olvl = other.lvls[level]
            if olvl.from_ == olvl.to:
                continue
            if lvl.from_ >= olvl.from_ and lvl.to <= olvl.to:
                lvl.from_ = lvl.to = 0
                break
            if olvl.from_ <= lvl.from_ <= olvl.to:
                lvl.from_ = olvl.to + 1
            if olvl.from_ <= lvl.to <= olvl.to:
                lvl.to = olvl.from_ - 1
        if lvl.from_ < lvl.to:
            lvl.pgtables = ((lvl.to - lvl.from_) >> bits) + 1
        m.area.pgtables += lvl.pgtables
    return m


def _alloc_pgtables(alloc: _Allocator, lay: Layout, alloc_bootstack: bool) -> None:
    """alloc_pgtables_pv: grow the mapped area until it holds its own tables plus padding."""
    extra_pages = (1 if alloc_bootstack else 0) + BOOTSTRAP_PADDING // PAGE_SIZE
    pages = extra_pages
    while True:
        try_virt_end = (lay.virt_alloc_end + pages * PAGE_SIZE) | bits_to_mask(22)   # 4 MiB aligned
        m = count_pgtables(lay, lay.virt_base, try_virt_end, 0)
        pages = m.area.pgtables + extra_pages
        if lay.virt_alloc_end + pages * PAGE_SIZE <= try_virt_end + 1:
            break
    m.area.pfn = 0
    lay.maps.append(m)
    lay.virt_pgtab_end = try_virt_end + 1
    lay.pgtables = alloc.alloc_segment("page tables", 0, m.area.pgtables * PAGE_SIZE)


def _alloc_p2m_list(alloc: _Allocator, lay: Layout) -> Segment:
    """alloc_p2m_list_x86_64: the P2M array, and with INIT_P2M the tables that map it."""
    size = (lay.p2m_size * SIZEOF_PFN_X86_64 + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if lay.p2m_base is not None:
        m = count_pgtables(lay, lay.p2m_base, lay.p2m_base + size - 1, lay.pfn_alloc_end)
        m.area.pfn = lay.pfn_alloc_end
        for lvl in m.lvls:
            lvl.pfn += size >> PAGE_SHIFT      # its tables follow the list itself
        lay.maps.append(m)
        size += m.area.pgtables << PAGE_SHIFT
    lay.p2m = alloc.alloc_segment("phys2mach", 0, size)
    return lay.p2m


def plan_layout(image: KernelImage, total_pages: int, ramdisk_size: int = 0) -> Layout:
    """The 64-bit PV layout libxenguest would build for `image` in `total_pages` pages."""
    params = image.params
    if total_pages <= 0:
        raise BuildError("the domain has no memory")
    # xen_parse's address check (elf_xen_addr_calc_check) set both.
    assert params.virt_base is not None and params.virt_entry is not None
    lay = Layout(virt_base=params.virt_base, total_pages=total_pages, p2m_size=total_pages,
                 virt_entry=params.virt_entry)
    lay.virt_alloc_end = params.virt_base
    alloc = _Allocator(lay)

    lay.kernel = alloc.alloc_segment("kernel", params.virt_kstart, params.virt_kend - params.virt_kstart)

    unmapped_initrd = params.unmapped_initrd
    if ramdisk_size and not unmapped_initrd:
        lay.ramdisk = alloc.alloc_segment("module0", 0, ramdisk_size)
        lay.initrd_start, lay.initrd_len = lay.ramdisk.vstart, ramdisk_size

    # INIT_P2M is honoured only below virt_base and page aligned.
    p2m_base = params.p2m_base
    if p2m_base is not None and (p2m_base >= params.virt_base or p2m_base & (PAGE_SIZE - 1)):
        p2m_base = None
    lay.p2m_base = p2m_base
    if p2m_base is None:
        _alloc_p2m_list(alloc, lay)

    # alloc_magic_pages_pv
    lay.start_info_pfn = alloc.alloc_page("start info")
    lay.xenstore_pfn = alloc.alloc_page("xenstore")
    lay.console_pfn = alloc.alloc_page("console")

    _alloc_pgtables(alloc, lay, alloc_bootstack=True)
    lay.bootstack_pfn = alloc.alloc_page("boot stack")

    alloc.alloc_pad(lay.virt_pgtab_end)       # everything the boot tables map is RAM

    if ramdisk_size and unmapped_initrd:
        lay.ramdisk = alloc.alloc_segment("module0", 0, ramdisk_size)
        lay.flags |= SIF_MOD_START_PFN
        lay.initrd_start = lay.ramdisk.pfn
        lay.initrd_len = lay.ramdisk.pages * PAGE_SIZE

    if p2m_base is not None:
        p2m = _alloc_p2m_list(alloc, lay)
        p2m.vstart = p2m_base
        p2m.vend = p2m_base + p2m.pages * PAGE_SIZE

    if params.virt_hypercall is not None:
        pfn = (params.virt_hypercall - params.virt_base) >> PAGE_SHIFT
        if not (params.virt_kstart <= params.virt_hypercall < params.virt_kend):
            raise BuildError(f"HYPERCALL_PAGE {params.virt_hypercall:#x} lies outside the kernel "
                             f"({params.virt_kstart:#x}-{params.virt_kend:#x})")
        lay.hypercall_pfn = pfn
    return lay


def pagetable_entries(lay: Layout, p2m: list[int]):
    """(table pfn, index, entry) for every boot page-table entry (setup_pgtables_pv).

    `p2m` maps the layout's pfns to machine frames. L1 entries of frames that hold
    boot page tables are read-only, as Xen requires of page-table frames.
    """
    top = PGTBL_LEVELS_X86_64 - 1
    table_pfns = set(lay.all_pagetable_pfns())
    for level in range(top, -1, -1):
        shift = PAGE_SHIFT + level * PGTBL_LEVEL_SHIFT_X86
        for m1 in lay.maps:
            from_, to = m1.lvls[level].from_, m1.lvls[level].to
            first_table = m1.lvls[level].pfn
            for m2 in lay.maps:
                lvl = m2.lvls[level - 1] if level > 0 else m2.area
                if level > 0 and lvl.pgtables == 0:
                    continue
                if lvl.from_ >= to or lvl.to <= from_:
                    continue
                p_s = (max(from_, lvl.from_) - from_) >> shift
                p_e = (min(to, lvl.to) - from_) >> shift
                pfn = ((max(from_, lvl.from_) - lvl.from_) >> shift) + lvl.pfn
                for p in range(p_s, p_e + 1):
                    if level == 0:
                        prot = L1_PROT & ~_PAGE_RW if pfn in table_pfns else L1_PROT
                    else:
                        prot = UPPER_PROT
                    yield first_table + p // 512, p % 512, (p2m[pfn] << PAGE_SHIFT) | prot
                    pfn += 1
