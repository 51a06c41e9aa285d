"""A ready-made x86 PV domain for tests, benchmarks and the fuzzer: what a domain
builder leaves behind, without an ELF image.

`build_pv_domain(hv, nr_pages)` populates pfns 0..nr_pages-1, writes a 4-level
table mapping pfn N at virtual address N << 12 (writable, except the frames
listed read-only and the page tables themselves), validates and pins it
through the MMU, and makes it vCPU 0's base pointer. Hypercall arguments can
then live at any virtual address below nr_pages << 12.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pvhyp.mm.pagetype import PGT_l4_page_table

if TYPE_CHECKING:
    from pvhyp.domain import Domain

_PRESENT_RW_USER = 0x7
_PRESENT_USER = 0x5
_ACCESSED = 0x20


@dataclass
class PvTestDomain:
    """What build_pv_domain made: the domain, its page-table frames (mfns) and their pfns."""

    domain: Domain
    l4: int
    l3: int
    l2: int
    l1s: list[int]
    table_pfns: range
    read_only_pfns: set[int] = field(default_factory=set)

    def mfn(self, pfn: int) -> int:
        return self.domain.p2m[pfn]


def build_pv_domain(hv, nr_pages: int, privileged: bool = False, read_only_pfns=(),
                    extra_pages: int = 64, domid: int | None = None, vm_assist: int = 0) -> PvTestDomain:
    if not 8 <= nr_pages <= 512 * 512:
        raise ValueError("a PV test domain needs 8..262144 pages")
    d = hv.create_domain(max_vcpus=1, max_pages=nr_pages + extra_pages, domid=domid,
                         privileged=privileged, paging=True)
    d.vm_assist = vm_assist
    hv.populate(d, nr_pages)
    nr_l1 = (nr_pages + 511) // 512
    first_table = nr_pages - 3 - nr_l1
    table_pfns = range(first_table, nr_pages)
    l4, l3, l2 = (d.p2m[first_table + i] for i in range(3))
    l1s = [d.p2m[first_table + 3 + i] for i in range(nr_l1)]
    ro = set(read_only_pfns) | set(table_pfns)
    mem = hv.memory
    for i, l1 in enumerate(l1s):
        base = l1 << 12
        for j in range(512):
            pfn = i * 512 + j
            if pfn >= nr_pages:
                break
            flags = _PRESENT_USER if pfn in ro else _PRESENT_RW_USER
            mem.write_u64(base + j * 8, (d.p2m[pfn] << 12) | flags | _ACCESSED)
        mem.write_u64((l2 << 12) + i * 8, (l1 << 12) | _PRESENT_RW_USER | _ACCESSED)
    mem.write_u64(l3 << 12, (l2 << 12) | _PRESENT_RW_USER | _ACCESSED)
    mem.write_u64(l4 << 12, (l3 << 12) | _PRESENT_RW_USER | _ACCESSED)
    mmu = hv.mmu
    with mmu.lock:
        rc = mmu.pin_table(d, d, l4, PGT_l4_page_table)
        if rc:
            raise RuntimeError(f"pinning the test domain's L4 failed: {rc}")
        rc = mmu.new_guest_cr3(d.vcpus[0], l4)
        if rc:
            raise RuntimeError(f"loading the test domain's L4 failed: {rc}")
    d.vcpus[0].online = True
    return PvTestDomain(d, l4, l3, l2, l1s, table_pfns, ro)
