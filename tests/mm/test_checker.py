"""The checker sees each kind of corruption (written behind the MMU's back)."""
import pytest

from pvhyp.mm.checker import check_invariants

from .mm_kit import Guest, make_hv

P, RW = 0x1, 0x2


@pytest.fixture
def world():
    hv = make_hv()
    g = Guest(hv, 64, read_only_pfns=range(40, 56))
    v = Guest(hv, 32)
    assert check_invariants(hv) == []
    yield hv, g, v
    hv.close()


def _expect(hv, fragment):
    problems = check_invariants(hv)
    assert any(fragment in p for p in problems), problems


def test_page_table_mapped_writable(world):
    hv, g, v = world
    hv.memory.write_u64(g.l1_slot_maddr(20), g.tables.l1s[0] << 12 | P | RW)
    _expect(hv, "writable")


def test_foreign_frame_in_a_table(world):
    hv, g, v = world
    hv.memory.write_u64(g.l1_slot_maddr(20), v.mfn(5) << 12 | P)
    _expect(hv, "foreign")


def test_reference_counts(world):
    hv, g, v = world
    hv.frames.count[g.mfn(9)] += 1
    _expect(hv, "count")
    hv.frames.count[g.mfn(9)] -= 1
    hv.frames.type_count[g.tables.l2] += 1
    _expect(hv, "type count")


def test_disallowed_flags_and_hypervisor_slots(world):
    hv, g, v = world
    hv.memory.write_u64((g.tables.l2 << 12) + 8 * 100, 0)
    hv.memory.write_u64((g.tables.l3 << 12), hv.memory.read_u64(g.tables.l3 << 12) | 0x80)
    _expect(hv, "disallowed")
    hv.memory.write_u64((g.tables.l4 << 12) + 8 * 260, 0x1007)
    _expect(hv, "hypervisor slot")


def test_p2m_and_m2p(world):
    hv, g, v = world
    hv.set_m2p(g.mfn(9), 10)
    _expect(hv, "m2p")
    g.domain.p2m[9] = v.mfn(9)
    _expect(hv, "not its frame")


def test_base_pointer_without_a_reference(world):
    hv, g, v = world
    g.vcpu.guest_table_user = g.mfn(9)
    _expect(hv, "guest_table_user")


def test_declared_holds_are_counted(world):
    from pvhyp.mm.pagetype import PGT_seg_desc_page
    hv, g, v = world
    mmu = hv.mmu
    assert mmu.hold_page(g.mfn(41), g.domain, type_=PGT_seg_desc_page) == 0
    assert mmu.hold_page(g.mfn(9), g.domain, type_=PGT_seg_desc_page) == -22     # mapped writable
    assert check_invariants(hv) == []
    assert g.pin(1, g.mfn(41)) == -22
    mmu.release_page(g.mfn(41), type_=PGT_seg_desc_page)
    assert hv.frames.type_count[g.mfn(41)] == 0
    assert check_invariants(hv) == []
