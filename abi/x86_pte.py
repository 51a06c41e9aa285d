"""x86-64 page-table entry bits: architectural, not from a Xen header.

Xen's public headers never define PTE bits (guests use their own copies from
the CPU manuals), yet a PV MMU validates every entry the guest writes, so the
hypervisor needs them.  They come from the Intel SDM / AMD APM, volume 3,
"4-level paging".  The registry marks this module as having no header, and the
header cross-check leaves it out for that reason.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1) & 0xFFFFFFFFFFFFFFFF

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3  # write-through
_PAGE_PCD = 1 << 4  # cache disable
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6  # L1 entries only
_PAGE_PSE = 1 << 7  # L2/L3: maps a large page (PAT bit in an L1 entry)
_PAGE_PAT = 1 << 7  # in an L1 entry
_PAGE_GLOBAL = 1 << 8  # L1 entries only
_PAGE_AVAIL = 0x7 << 9  # bits 9-11: ignored by the CPU, free for software
_PAGE_NX = 1 << 63  # no execute (needs EFER.NXE)

# Bits 12-51 hold the frame number of the next level (or of the page).
PADDR_BITS = 52
PTE_FRAME_MASK = ((1 << PADDR_BITS) - 1) & ~(PAGE_SIZE - 1)

# Page-table geometry.
PAGETABLE_ORDER = 9
L1_PAGETABLE_ENTRIES = 1 << PAGETABLE_ORDER
L1_PAGETABLE_SHIFT = 12
L2_PAGETABLE_SHIFT = 21
L3_PAGETABLE_SHIFT = 30
L4_PAGETABLE_SHIFT = 39


def pte_mfn(entry: int) -> int:
    """The frame number an entry points at."""
    return (entry & PTE_FRAME_MASK) >> PAGE_SHIFT


# Index of a virtual address's entry in its table at each level (Xen's names).
def l1_table_offset(va: int) -> int:
    return (va >> L1_PAGETABLE_SHIFT) & (L1_PAGETABLE_ENTRIES - 1)


def l2_table_offset(va: int) -> int:
    return (va >> L2_PAGETABLE_SHIFT) & (L1_PAGETABLE_ENTRIES - 1)


def l3_table_offset(va: int) -> int:
    return (va >> L3_PAGETABLE_SHIFT) & (L1_PAGETABLE_ENTRIES - 1)


def l4_table_offset(va: int) -> int:
    return (va >> L4_PAGETABLE_SHIFT) & (L1_PAGETABLE_ENTRIES - 1)
