"""dom0.xenbus's grant cache and paged ring, against the real grant table of an in-process hypervisor."""
from __future__ import annotations

import pytest

from abi.io import blkif as B
from abi.io import ring as R
from dom0.block import protocol as P
from dom0.xenbus.grants import GrantCache, GrantMapError, GrantMapper
from dom0.xenbus.ring import BackRingPages, RingOverflow
from pvguest.gnttab import GrantTable
from pvhyp.channel import InProcessChannel, create_process_domain

PAGE = 4096


@pytest.fixture
def pair(hv):
    """(backend channel, frontend channel, the frontend's grant table)."""
    back = InProcessChannel(hv, create_process_domain(hv, 16, privileged=True))
    front = InProcessChannel(hv, create_process_domain(hv, 64))
    return back, front, GrantTable(front, 3 * PAGE)


def page(channel, pfn):
    return channel.memory[pfn * PAGE:(pfn + 1) * PAGE]


def test_persistent_grants_are_mapped_once_and_released_on_disconnect(pair):
    back, front, gt = pair
    refs = [gt.grant_access(back.domid, pfn) for pfn in (10, 11, 12)]
    page(front, 11)[:5] = b"hello"
    mapper = GrantMapper(back, 1 * PAGE)
    cache = GrantCache(mapper, front.domid, persistent=True)
    for _ in range(3):
        views = cache.get(refs, writable=True)
        cache.end_request()
    assert bytes(views[1][:5]) == b"hello" and mapper.live == 3 and len(cache) == 3
    views[2][:3] = b"abc"                        # the backend writes into the guest's page
    assert bytes(page(front, 12)[:3]) == b"abc"
    assert not gt.end_access(refs[0])            # still mapped: the frontend cannot revoke it
    cache.release()
    assert mapper.live == 0 and gt.end_access(refs[0])


def test_without_persistence_each_request_unmaps(pair):
    back, front, gt = pair
    ref = gt.grant_access(back.domid, 20)
    mapper = GrantMapper(back, 1 * PAGE)
    cache = GrantCache(mapper, front.domid, persistent=False)
    cache.get([ref], writable=False)
    assert mapper.live == 1
    cache.end_request()
    assert mapper.live == 0 and gt.end_access(ref)


def test_bad_and_readonly_grants(pair):
    back, front, gt = pair
    ro = gt.grant_access(back.domid, 30, readonly=True)
    mapper = GrantMapper(back, 1 * PAGE)
    cache = GrantCache(mapper, front.domid, persistent=True, max_persistent=1)
    views = cache.get([ro, 4000, 7], writable=False)
    assert isinstance(views[1], GrantMapError) and isinstance(views[2], GrantMapError)
    assert views[0].readonly                                     # fell back to a read-only mapping
    assert isinstance(cache.get([ro], writable=True)[0], GrantMapError)
    other = gt.grant_access(back.domid, 31)
    cache.get([other], writable=True)                            # over the limit: the oldest goes
    cache.end_request()
    assert len(cache) == 1 and mapper.live == 1
    cache.release()


def test_paged_ring_crosses_pages_and_refuses_overflow():
    pages = [memoryview(bytearray(PAGE)) for _ in range(2)]
    ring = BackRingPages(pages, P.ENTRY_SIZE)
    assert ring.nr_ents == 64                    # (8192 - 64) // 112 = 72 -> 64
    contiguous = bytearray(2 * PAGE)
    front = R.FrontRing(R.SharedRing(contiguous, R.RingLayout(P.ENTRY_SIZE, 64, 2 * PAGE)))
    front.sring.init()
    for i in range(40):                          # entries 36.. straddle the page boundary
        front.put_request(P.REQUEST.build({"operation": 0, "nr_segments": 1, "handle": 0, "id": i,
                                           "sector_number": i, "seg": [{"gref": 1, "first_sect": 0,
                                                                       "last_sect": 7}] * 11}))
    front.push_requests()
    pages[0][:], pages[1][:] = contiguous[:PAGE], contiguous[PAGE:]
    taken = ring.take_requests(100)
    assert [P.REQUEST.parse(r)["id"] for r in taken] == list(range(40))
    for i in range(40):
        ring.put_response(P.response(i, 0, 0))
    ring.push_responses()
    contiguous[:PAGE], contiguous[PAGE:] = pages[0], pages[1]
    assert [B.blkif_response.parse(bytes(front.take_response())).id for _ in range(40)] == list(range(40))
    R.SharedRing(pages[0], R.RingLayout(P.ENTRY_SIZE, 64, PAGE)).req_prod = 40 + 65
    with pytest.raises(RingOverflow):
        ring.take_requests(100)


def test_a_frontend_that_never_takes_responses_stalls_only_itself():
    pages = [memoryview(bytearray(PAGE))]
    ring = BackRingPages(pages, P.ENTRY_SIZE)
    shared = R.SharedRing(pages[0], R.RingLayout(P.ENTRY_SIZE, 32, PAGE))
    shared.req_prod = 32
    assert len(ring.take_requests(100)) == 32
    for i in range(32):
        ring.put_response(P.response(i, 0, 0))
    ring.push_responses()
    shared.req_prod = 64                          # "new" requests over unread responses: legal indexes
    assert len(ring.take_requests(100)) == 32     # the backend answers; they were published
    shared.req_prod = 64 + 33
    with pytest.raises(RingOverflow):
        ring.take_requests(100)
