"""Validation of guest page tables: what may go in an entry, at every level (Xen's mm.c rules)."""
from abi import errno as E
from pvhyp.mm.pagetype import PGT_l1_page_table, PGT_l4_page_table, PGT_writable_page

from .mm_kit import Guest

P, RW, US, PWT, PCD, PSE, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x80, 0x100
NX = 1 << 63


def test_pin_l1_mapping_own_pages(hv, guest):
    t = guest.mfn(40)
    guest.write_frame_entries(t, {0: guest.mfn(8) << 12 | P | RW, 1: guest.mfn(9) << 12 | P})
    assert guest.pin(1, t) == 0
    f = hv.frames
    assert (f.type[t], f.type_count[t], f.pinned[t], f.validated[t]) == (PGT_l1_page_table, 1, 1, 1)
    assert f.type[guest.mfn(8)] == PGT_writable_page and f.type_count[guest.mfn(8)] == 2
    # Kernel mappings are made user-accessible (64-bit PV kernels run in ring 3).
    assert hv.memory.read_u64(t << 12) & US
    assert guest.pin(1, t) == -E.EINVAL          # already pinned
    assert guest.unpin(t) == 0
    assert guest.unpin(t) == -E.EINVAL           # not pinned
    assert f.type_count[t] == 0 and f.type_count[guest.mfn(8)] == 1


def test_a_page_table_cannot_map_itself_writable(hv, guest):
    t = guest.mfn(41)
    guest.write_frame_entries(t, {3: t << 12 | P | RW})
    assert guest.pin(1, t) == -E.EBUSY
    guest.write_frame_entries(t, {3: t << 12 | P})
    assert guest.pin(1, t) == 0


def test_a_writably_mapped_page_cannot_become_a_page_table(guest):
    assert guest.pin(1, guest.mfn(8)) == -E.EINVAL


def test_l1_flags(guest):
    t = guest.mfn(42)
    for flags, rc in ((PCD, -E.EINVAL), (PWT, -E.EINVAL), (PSE, -E.EINVAL), (G, 0), (NX, 0), (0xE00, 0)):
        guest.write_frame_entries(t, {0: guest.mfn(9) << 12 | P | flags})
        assert guest.pin(1, t) == rc, hex(flags)
        if rc == 0:
            assert guest.unpin(t) == 0


def test_l1_targets(hv, guest, other):
    t = guest.mfn(43)
    cases = [
        (other.mfn(10), -E.EBUSY),                  # another domain's frame
        (hv.frames.nr_frames + 5, -E.EPERM),        # MMIO: no I/O rights
        ((1 << 40) - 1, -E.EINVAL),                 # the all-ones frame number
        (hv.m2p_first_mfn, -E.EBUSY),               # the hypervisor's
        (0, -E.EBUSY),
        (hv.frames._free[-1], -E.EBUSY),            # a free frame
    ]
    for mfn, rc in cases:
        guest.write_frame_entries(t, {7: mfn << 12 | P})
        assert guest.pin(1, t) == rc, hex(mfn)


def test_l2_refuses_superpages_and_data_pages(guest):
    l2, l1 = guest.mfn(44), guest.mfn(45)
    guest.write_frame_entries(l2, {0: guest.mfn(46) << 12 | P | RW | PSE})
    assert guest.pin(2, l2) == -E.EINVAL
    guest.write_frame_entries(l2, {0: guest.mfn(9) << 12 | P | RW})      # writable data, not an L1
    assert guest.pin(2, l2) == -E.EINVAL
    guest.write_frame_entries(l2, {0: l1 << 12 | P | RW})
    assert guest.pin(2, l2) == 0
    assert guest.pin(1, l1) == 0                                        # typed already: pin adds a ref
    assert guest.unpin(l2) == 0
    assert guest.unpin(l1) == 0


def test_l4_hypervisor_slots_are_filled_and_protected(hv):
    hv.xen_l4_slots = {257: 0x1234063, 270: 0x5678063}
    guest = Guest(hv, 64, read_only_pfns=range(40, 56))
    l4 = guest.mfn(47)
    guest.write_frame_entries(l4, {256: 0xdead007, 257: 0xbeef007, 300: 0})
    assert guest.pin(4, l4) == 0
    assert hv.memory.read_u64((l4 << 12) + 257 * 8) == 0x1234063
    assert hv.memory.read_u64((l4 << 12) + 256 * 8) == 0
    rc, done = guest.mmu_update([((l4 << 12) + 260 * 8, 0)])
    assert (rc, done) == (-E.EINVAL, 0)
    assert guest.unpin(l4) == 0


def test_linear_page_tables_read_only(hv, guest):
    l4 = guest.tables.l4
    rc, _ = guest.mmu_update([((l4 << 12) + 5 * 8, l4 << 12 | P | RW)])
    assert rc == -E.EINVAL
    rc, _ = guest.mmu_update([((l4 << 12) + 5 * 8, l4 << 12 | P)])
    assert rc == 0
    # Another L4 mapped read-only into this one: a reference, and linear counts.
    l4b = guest.mfn(48)
    assert guest.pin(4, l4b) == 0
    rc, _ = guest.mmu_update([((l4 << 12) + 6 * 8, l4b << 12 | P)])
    assert rc == 0
    assert hv.frames.type_count[l4b] == 2 and hv.frames.linear_pt_count[l4b] == -1
    assert guest.unpin(l4b) == 0
    rc, _ = guest.mmu_update([((l4 << 12) + 6 * 8, 0), ((l4 << 12) + 5 * 8, 0)])
    assert rc == 0
    assert hv.frames.type_count[l4b] == 0


def test_full_hierarchy_pins_and_unpins(hv, guest):
    l4, l3, l2, l1 = (guest.mfn(p) for p in (49, 50, 51, 52))
    guest.write_frame_entries(l1, {i: guest.mfn(8 + i) << 12 | P | RW for i in range(20)})
    guest.write_frame_entries(l2, {3: l1 << 12 | P | RW})
    guest.write_frame_entries(l3, {0: l2 << 12 | P | RW})
    guest.write_frame_entries(l4, {1: l3 << 12 | P | RW})
    assert guest.pin(4, l4) == 0
    f = hv.frames
    assert all(f.validated[m] and f.type_count[m] == 1 for m in (l3, l2, l1))
    assert f.type[l4] == PGT_l4_page_table
    assert guest.unpin(l4) == 0
    assert all(f.type_count[m] == 0 and not f.validated[m] for m in (l4, l3, l2, l1))
    assert all(f.type_count[guest.mfn(8 + i)] == 1 for i in range(20))


def test_failed_validation_rolls_back(hv, guest, other):
    l2, l1a, l1b = guest.mfn(53), guest.mfn(54), guest.mfn(55)
    guest.write_frame_entries(l1a, {0: guest.mfn(8) << 12 | P | RW})
    guest.write_frame_entries(l1b, {0: other.mfn(8) << 12 | P})
    guest.write_frame_entries(l2, {0: l1a << 12 | P, 1: l1b << 12 | P})
    f = hv.frames
    before = f.type_count[guest.mfn(8)], f.count[other.mfn(8)]
    assert guest.pin(2, l2) == -E.EBUSY
    assert f.type_count[l1a] == 0 and f.type_count[l2] == 0
    assert (f.type_count[guest.mfn(8)], f.count[other.mfn(8)]) == before
