"""Domain destruction drops every type and reference; frames others still map wait."""
from pvhyp.mm.frametable import DOMID_FREE, DOMID_ORPHAN

from .mm_kit import Guest

P, RW = 0x1, 0x2


def test_linear_entries_may_not_chain(hv, guest):
    other_l4 = guest.mfn(40)
    guest.write_frame_entries(other_l4, {5: guest.tables.l4 << 12 | P})
    assert guest.pin(4, other_l4) == 0
    # The boot L4 is used linearly now: it may not hold linear entries itself.
    assert guest.mmu_update([((guest.tables.l4 << 12) + 7 * 8, other_l4 << 12 | P)]) == (-22, 0)
    assert guest.unpin(other_l4) == 0
    assert guest.mmu_update([((guest.tables.l4 << 12) + 7 * 8, other_l4 << 12 | P)]) == (-22, 0)
    assert guest.pin(4, other_l4) == 0
    assert hv.frames.linear_pt_count[guest.tables.l4] == -1


def test_everything_is_freed(hv):
    free = hv.frames.free_frames
    g = Guest(hv, 128, read_only_pfns=range(40, 60))
    l4, l1 = g.mfn(40), g.mfn(41)
    g.write_frame_entries(l1, {0: g.mfn(9) << 12 | P | RW})
    g.write_frame_entries(l4, {0: g.tables.l3 << 12 | P | RW, 3: l4 << 12 | P})
    assert g.pin(4, l4) == 0 and g.pin(1, l1) == 0
    assert g.mmu_update([((g.tables.l4 << 12) + 7 * 8, l4 << 12 | P)]) == (0, 1)   # linear cycle
    hv.destroy_domain(g.domid)
    assert hv.frames.free_frames == free
    assert all(hv.frames.count[m] == 0 and hv.frames.type_count[m] == 0 for m in range(hv.frames.nr_frames)
               if hv.frames.owner[m] == DOMID_FREE)


def test_foreign_mapped_frames_outlive_their_domain(hv):
    dom0 = Guest(hv, 64, privileged=True, domid=0)
    victim = Guest(hv, 32)
    mfn = victim.mfn(9)
    assert dom0.mmu_update([(dom0.l1_slot_maddr(20), mfn << 12 | P | RW)], victim.domid) == (0, 1)
    hv.destroy_domain(victim.domid)
    assert hv.frames.owner[mfn] == DOMID_ORPHAN
    assert not any(o == victim.domid for o in hv.frames.owner)
    free = hv.frames.free_frames
    assert dom0.mmu_update([(dom0.l1_slot_maddr(20), 0)]) == (0, 1)
    assert hv.frames.owner[mfn] == DOMID_FREE and hv.frames.free_frames == free + 1
