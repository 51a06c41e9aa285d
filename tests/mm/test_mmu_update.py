"""HYPERVISOR_mmu_update: entry updates at every level, success counts, foreign domains, M2P."""
import struct

from abi import errno as E
from abi import xen as X

from .mm_kit import BUF_VA, DONE_VA, REQS_VA, Guest

P, RW, A, D = 0x1, 0x2, 0x20, 0x40


def test_update_l1_entry_and_count(hv, guest):
    maddr = guest.l1_slot_maddr(20)
    rc, done = guest.mmu_update([(maddr, guest.mfn(21) << 12 | P | RW)])
    assert (rc, done) == (0, 1)
    guest.ctx.write(21 << 12, b"via pfn 21")
    assert guest.ctx.read(20 << 12, 10) == b"via pfn 21"


def test_batch_stops_at_first_failure(hv, guest, other):
    reqs = [(guest.l1_slot_maddr(20), guest.mfn(22) << 12 | P),
            (guest.l1_slot_maddr(21), other.mfn(9) << 12 | P),
            (guest.l1_slot_maddr(22), 0)]
    assert guest.mmu_update(reqs) == (-E.EBUSY, 1)
    assert hv.memory.read_u64(guest.l1_slot_maddr(22)) != 0


def test_unknown_command(guest):
    assert guest.mmu_update([(guest.l1_slot_maddr(20) | 4, 0)]) == (-E.ENOSYS, 0)


def test_table_of_another_domain_or_nowhere(hv, guest, other):
    assert guest.mmu_update([((other.tables.l1s[0] << 12), 0)]) == (-E.EINVAL, 0)
    assert guest.mmu_update([(hv.frames.nr_frames << 12, 0)]) == (-E.EINVAL, 0)
    assert guest.mmu_update([((1 << 63) | 8, 0)]) == (-E.EINVAL, 0)


def test_plain_write_to_an_untyped_page(hv, guest):
    assert guest.mmu_update([((guest.mfn(30) << 12) + 16, 0x1122334455667788)]) == (0, 1)
    assert hv.memory.read_u64((guest.mfn(30) << 12) + 16) == 0x1122334455667788


def test_preserve_ad_keeps_accessed_and_dirty(hv, guest):
    maddr = guest.l1_slot_maddr(20)
    hv.memory.write_u64(maddr, hv.memory.read_u64(maddr) | A | D)
    new = guest.mfn(20) << 12 | P | RW
    assert guest.mmu_update([(maddr | X.MMU_PT_UPDATE_PRESERVE_AD, new)]) == (0, 1)
    assert hv.memory.read_u64(maddr) & (A | D) == A | D


def test_flags_that_change_validation_rules(hv, guest):
    l2 = guest.tables.l2
    assert guest.mmu_update([((l2 << 12) + 100 * 8, guest.mfn(24) << 12 | P | RW | 0x80)]) == (-E.EINVAL, 0)
    assert guest.mmu_update([(guest.l1_slot_maddr(20), guest.mfn(20) << 12 | P | 0x10)]) == (-E.EINVAL, 0)


def test_foreign_domain_argument(hv, guest, other):
    assert guest.mmu_update([(guest.l1_slot_maddr(20), other.mfn(9) << 12 | P)], other.domid) == (-E.EPERM, 0)
    assert guest.mmu_update([(guest.l1_slot_maddr(20), 0)], 0x7F00) == (-E.ESRCH, 0)
    assert guest.mmu_update([(guest.l1_slot_maddr(20), 0)], guest.domid) == (-E.ESRCH, 0)


def test_privileged_foreign_mapping(hv, other):
    dom0 = Guest(hv, 64, privileged=True, domid=0)
    maddr = dom0.l1_slot_maddr(20)
    assert dom0.mmu_update([(maddr, other.mfn(9) << 12 | P | RW)], other.domid) == (0, 1)
    assert dom0.domain.mm.foreign_maps[other.mfn(9) << 1 | 1] == 1
    # Never another domain's page table, writable.
    assert dom0.mmu_update([(maddr, other.tables.l1s[0] << 12 | P | RW)], other.domid) == (-E.EBUSY, 0)
    assert dom0.mmu_update([(maddr, other.tables.l1s[0] << 12 | P)], other.domid) == (0, 1)
    # Not the foreign domain's tables above L1 through a foreign pg_owner.
    assert dom0.mmu_update([((dom0.tables.l2 << 12) + 9 * 8, 0)], other.domid) == (-E.EINVAL, 0)
    assert dom0.mmu_update([(maddr, 0)]) == (0, 1)
    assert not dom0.domain.mm.foreign_maps


def test_machphys_update(hv, guest, other):
    mfn = guest.mfn(30)
    assert guest.mmu_update([(mfn << 12 | X.MMU_MACHPHYS_UPDATE, 40)]) == (0, 1)
    assert hv.get_m2p(mfn) == 40
    assert guest.domain.p2m[40] == mfn and guest.domain.p2m[30] == 2 ** 64 - 1
    assert guest.mmu_update([(other.mfn(3) << 12 | X.MMU_MACHPHYS_UPDATE, 1)]) == (-E.EINVAL, 0)
    assert guest.mmu_update([(mfn << 12 | X.MMU_MACHPHYS_UPDATE, 30)]) == (0, 1)


def test_bad_request_pointer(hv, guest):
    assert guest.call("mmu_update", 0xFFFF_8000_0000_0000, 1, DONE_VA, X.DOMID_SELF) == -E.EFAULT
    guest.ctx.write(DONE_VA, b"\0" * 4)
    assert guest.call("mmu_update", 0x7F_0000_0000, 1, DONE_VA, X.DOMID_SELF) == -E.EFAULT
    assert guest.done() == 0


def test_preempted_count_convention(hv, guest):
    # A continued batch: the done count already reported is read back and added to.
    guest.ctx.write(DONE_VA, struct.pack("<I", 5))
    guest.ctx.write(REQS_VA, struct.pack("<QQ", guest.l1_slot_maddr(20), guest.mfn(20) << 12 | P | RW))
    assert guest.call("mmu_update", REQS_VA, 1 | 1 << 31, DONE_VA, X.DOMID_SELF) == 0
    assert guest.done() == 6
    assert guest.call("mmu_update", 0, 1 << 31, 0, 0xFFFF_FFEA) == -22
    assert guest.call("mmu_update", BUF_VA, 0, DONE_VA, X.DOMID_SELF) == 0
