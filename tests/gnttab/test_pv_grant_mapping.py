"""Grant host mappings into an x86 PV guest's page tables (through the PV MMU)."""
from __future__ import annotations

import struct

import pytest

from abi import grant_table as GA
from abi import xen as X
from pvhyp.guest_access import GuestFault, copy_from_guest
from pvhyp.hypercall_table import HypercallContext
from pvhyp.mm import testbed
from tests.evtchn.evtchn_kit import DATA_PAGE, build

ARGS_VA = 0x6000
MAP_VA = 20 << 12           # mapped by the boot L1 (pfn 20), writable


class PVGuest:
    def __init__(self, hv, nr_pages=64):
        self.hv = hv
        self.tables = testbed.build_pv_domain(hv, nr_pages)
        self.domain = self.tables.domain
        self.domid = self.domain.domid
        self.ctx = HypercallContext(self.domain.vcpus[0])

    def ops(self, cmd, struct_, items):
        size = struct_.sizeof()
        self.ctx.write(ARGS_VA, b"".join(build(struct_, f) for f in items))
        rc = self.hv.hypercalls.dispatch(self.ctx, X.HYPERCALL_NUMBERS["grant_table_op"],
                                         [cmd, ARGS_VA, len(items), 0, 0, 0])
        return rc, [dict(struct_.parse(self.ctx.read(ARGS_VA + i * size, size))) for i in range(len(items))]

    def map(self, dom, ref, flags=GA.GNTMAP_host_map, host_addr=MAP_VA):
        rc, outs = self.ops(GA.GNTTABOP_map_grant_ref, GA.gnttab_map_grant_ref,
                            [{"dom": dom, "ref": ref, "flags": flags, "host_addr": host_addr}])
        assert rc == 0
        return outs[0]

    def unmap(self, handle, host_addr=MAP_VA):
        rc, outs = self.ops(GA.GNTTABOP_unmap_grant_ref, GA.gnttab_unmap_grant_ref,
                            [{"handle": handle, "host_addr": host_addr, "dev_bus_addr": 0}])
        assert rc == 0
        return outs[0]["status"]

    def mfn(self, pfn):
        return self.domain.p2m[pfn]

    def read(self, va, n):
        return copy_from_guest(self.domain.vcpus[0], va, n)

    def pte(self, pfn):
        return self.hv.memory.read_u64(self.tables.l1s[pfn // 512] * 4096 + (pfn % 512) * 8)


@pytest.fixture
def pv(hv):
    return PVGuest(hv)


def test_map_into_page_tables_and_unmap(hv, a, pv):
    a.page(DATA_PAGE)[:8] = b"granted!"
    a.grant(10, pv.domid, DATA_PAGE)
    old = pv.pte(20)
    out = pv.map(a.domid, 10)
    assert out["status"] == GA.GNTST_okay
    mfn = a.domain.pfn_to_mfn(DATA_PAGE)
    assert out["dev_bus_addr"] == mfn << 12
    assert pv.read(MAP_VA, 8) == b"granted!"
    assert a.gstatus(10) == GA.GTF_reading | GA.GTF_writing
    assert pv.unmap(out["handle"]) == GA.GNTST_okay
    assert pv.pte(20) == 0 and a.gstatus(10) == 0
    with pytest.raises(GuestFault):
        pv.read(MAP_VA, 1)
    assert old != 0


def test_contains_pte_and_readonly(hv, a, pv):
    a.page(DATA_PAGE)[:4] = b"ro!!"
    a.grant(11, pv.domid, DATA_PAGE, GA.GTF_permit_access | GA.GTF_readonly)
    pte_maddr = pv.tables.l1s[0] * 4096 + 21 * 8
    out = pv.map(a.domid, 11, GA.GNTMAP_host_map | GA.GNTMAP_contains_pte | GA.GNTMAP_readonly, pte_maddr)
    assert out["status"] == GA.GNTST_okay
    assert pv.read(21 << 12, 4) == b"ro!!"
    assert not pv.pte(21) & 2                                   # no _PAGE_RW
    assert pv.map(a.domid, 11, GA.GNTMAP_host_map | GA.GNTMAP_contains_pte, pte_maddr + 1)["status"] \
        == GA.GNTST_general_error                               # misaligned (and writable on r/o)
    assert pv.unmap(out["handle"], host_addr=pte_maddr) == GA.GNTST_okay


def test_host_address_without_an_l1(hv, a, pv):
    a.grant(12, pv.domid, DATA_PAGE)
    assert pv.map(a.domid, 12, host_addr=1 << 40)["status"] == GA.GNTST_general_error
    assert pv.map(a.domid, 12, host_addr=0xFFFF_8000_0000_0000)["status"] == GA.GNTST_general_error
    assert a.gstatus(12) == 0


def test_unmap_at_the_wrong_address(hv, a, pv):
    a.grant(13, pv.domid, DATA_PAGE)
    out = pv.map(a.domid, 13)
    assert pv.unmap(out["handle"], host_addr=22 << 12) == GA.GNTST_general_error
    assert pv.unmap(out["handle"]) == GA.GNTST_okay


def test_pv_granter_grants_by_mfn(hv, b, pv):
    # The PV guest grants one of its own frames (by MFN, as PV guests do) to process domain b.
    mfn = pv.mfn(30)
    hv.memory.write(mfn << 12, b"pv data")
    rc, outs = pv.ops(GA.GNTTABOP_setup_table, GA.gnttab_setup_table,
                      [{"dom": X.DOMID_SELF, "nr_frames": 1, "frame_list": ARGS_VA + 256}])
    table = struct.unpack("<Q", pv.ctx.read(ARGS_VA + 256, 8))[0]
    hv.memory.write((table << 12) + 8 * 5, struct.pack("<HHI", GA.GTF_permit_access, b.domid, mfn))
    out = b.map_grant(pv.domid, 5)
    assert out["status"] == GA.GNTST_okay and out["dev_bus_addr"] == mfn << 12
    assert bytes(b.ch.map_machine_frame(mfn)[:7]) == b"pv data"
    assert b.unmap_grant(out["handle"]) == GA.GNTST_okay


# --- GNTTABOP_transfer (page flipping) -----------------------------------------------------

def _unmap_own_page(pv, pfn):
    """The guest drops its own mapping of pfn (mmu_update on its boot L1), as it must before giving it away."""
    maddr = pv.tables.l1s[pfn // 512] * 4096 + (pfn % 512) * 8
    pv.ctx.write(ARGS_VA, struct.pack("<QQ", maddr, 0))
    assert pv.hv.hypercalls.dispatch(pv.ctx, X.HYPERCALL_NUMBERS["mmu_update"],
                                     [ARGS_VA, 1, 0, X.DOMID_SELF, 0, 0]) == 0


def transfer(pv, items):
    rc, outs = pv.ops(GA.GNTTABOP_transfer, GA.gnttab_transfer, items)
    assert rc == 0
    return [o["status"] for o in outs]


def test_transfer_gives_the_page_to_the_receiver(hv, b, pv):
    mfn = pv.mfn(30)
    hv.memory.write(mfn << 12, b"flipped page")
    b.grant(9, pv.domid, 77, GA.GTF_accept_transfer)
    assert transfer(pv, [{"mfn": mfn, "domid": b.domid, "ref": 9}]) == [GA.GNTST_bad_page]   # still mapped
    _unmap_own_page(pv, 30)
    pages = pv.domain.tot_pages, b.domain.tot_pages
    assert transfer(pv, [{"mfn": mfn, "domid": b.domid, "ref": 9}]) == [GA.GNTST_okay]
    assert hv.frames.owner[mfn] == b.domid
    assert (pv.domain.tot_pages, b.domain.tot_pages) == (pages[0] - 1, pages[1] + 1)
    assert b.flags(9) == GA.GTF_accept_transfer | GA.GTF_transfer_committed | GA.GTF_transfer_completed
    assert int.from_bytes(b._entry(9)[4:8], "little") == mfn
    assert hv.get_m2p(mfn) == 77
    assert bytes(b.ch.map_machine_frame(mfn)[:12]) == b"flipped page"


def test_transfer_refusals_lose_the_stolen_page(hv, b, pv):
    _unmap_own_page(pv, 31)
    _unmap_own_page(pv, 32)
    m31, m32 = pv.mfn(31), pv.mfn(32)
    b.grant(9, pv.domid, 0, GA.GTF_permit_access)               # not an accept_transfer entry
    assert transfer(pv, [{"mfn": m31, "domid": b.domid, "ref": 9},
                         {"mfn": m32, "domid": 0x7000, "ref": 9},
                         {"mfn": b.domain.pfn_to_mfn(DATA_PAGE), "domid": b.domid, "ref": 9},
                         {"mfn": pv.tables.l4, "domid": b.domid, "ref": 9}]) == \
        [GA.GNTST_general_error, GA.GNTST_bad_domain, GA.GNTST_bad_page, GA.GNTST_bad_page]
    assert hv.frames.owner[m31] == -1 and hv.frames.owner[m32] == -1    # gone, as in Xen


def test_unmap_and_replace_moves_the_other_pte_in(hv, a, pv):
    a.page(DATA_PAGE)[:4] = b"gntd"
    a.grant(14, pv.domid, DATA_PAGE)
    out = pv.map(a.domid, 14)
    pte22 = pv.pte(22)
    rc, outs = pv.ops(GA.GNTTABOP_unmap_and_replace, GA.gnttab_unmap_and_replace,
                      [{"host_addr": MAP_VA, "new_addr": 22 << 12, "handle": out["handle"]}])
    assert rc == 0 and outs[0]["status"] == GA.GNTST_okay
    assert pv.pte(20) == pte22 and pv.pte(22) == 0
    assert pv.read(MAP_VA, 4) == hv.memory.read(pv.mfn(22) << 12, 4)
    assert a.gstatus(14) == 0
