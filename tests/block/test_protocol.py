"""blkif requests as data (dom0.block.protocol): every hostile entry gets its status, table-driven."""
from __future__ import annotations

import pytest

from abi.io import blkif as B
from dom0.block import protocol as P

DISK = P.Disk(sectors=2048, readonly=False, discard=True, max_indirect_segments=256)
RO = P.Disk(sectors=2048, readonly=True, discard=False, max_indirect_segments=256)


def rw(op=B.BLKIF_OP_READ, sector=0, segs=((7, 0, 7),), nr=None) -> bytes:
    seg = [{"gref": g, "first_sect": f, "last_sect": last} for g, f, last in segs]
    seg += [{"gref": 0, "first_sect": 0, "last_sect": 0}] * (11 - len(seg))
    return B.blkif_request.build({"operation": op, "nr_segments": len(segs) if nr is None else nr,
                                  "handle": 0, "id": 42, "sector_number": sector, "seg": seg[:11]})


def discard(sector=0, count=8, flag=0) -> bytes:
    return B.blkif_request_discard.build({"operation": B.BLKIF_OP_DISCARD, "flag": flag, "handle": 0, "id": 42,
                                          "sector_number": sector, "nr_sectors": count}).ljust(112, b"\0")


def indirect(op=B.BLKIF_OP_READ, nr=3, sector=0) -> bytes:
    return B.blkif_request_indirect.build({"operation": B.BLKIF_OP_INDIRECT, "indirect_op": op, "nr_segments": nr,
                                           "id": 42, "sector_number": sector, "handle": 0,
                                           "indirect_grefs": [9] + [0] * 7}).ljust(112, b"\0")


REFUSED = [
    ("unknown operation", rw(op=99), DISK, B.BLKIF_RSP_EOPNOTSUPP),
    ("reserved operation", rw(op=B.BLKIF_OP_RESERVED_1), DISK, B.BLKIF_RSP_EOPNOTSUPP),
    ("read without segments", rw(segs=()), DISK, B.BLKIF_RSP_ERROR),
    ("write without segments", rw(op=B.BLKIF_OP_WRITE, segs=()), DISK, B.BLKIF_RSP_ERROR),
    ("12 segments", rw(nr=12), DISK, B.BLKIF_RSP_ERROR),
    ("255 segments", rw(nr=255), DISK, B.BLKIF_RSP_ERROR),
    ("segment past its page", rw(segs=((7, 0, 8),)), DISK, B.BLKIF_RSP_ERROR),
    ("segment backwards", rw(segs=((7, 6, 1),)), DISK, B.BLKIF_RSP_ERROR),
    ("range past the disk", rw(sector=2044), DISK, B.BLKIF_RSP_ERROR),
    ("range wrapping 2**64", rw(sector=(1 << 64) - 1), DISK, B.BLKIF_RSP_ERROR),
    ("write to a read-only disk", rw(op=B.BLKIF_OP_WRITE), RO, B.BLKIF_RSP_ERROR),
    ("barrier to a read-only disk", rw(op=B.BLKIF_OP_WRITE_BARRIER), RO, B.BLKIF_RSP_ERROR),
    ("flush with data to a read-only disk", rw(op=B.BLKIF_OP_FLUSH_DISKCACHE), RO, B.BLKIF_RSP_ERROR),
    ("discard not offered", discard(), RO, B.BLKIF_RSP_EOPNOTSUPP),
    ("secure discard", discard(flag=B.BLKIF_DISCARD_SECURE), DISK, B.BLKIF_RSP_EOPNOTSUPP),
    ("discard past the disk", discard(sector=2047, count=2), DISK, B.BLKIF_RSP_ERROR),
    ("discard wrapping", discard(sector=8, count=(1 << 64) - 4), DISK, B.BLKIF_RSP_ERROR),
    ("indirect discard", indirect(op=B.BLKIF_OP_DISCARD), DISK, B.BLKIF_RSP_ERROR),
    ("indirect flush", indirect(op=B.BLKIF_OP_FLUSH_DISKCACHE), DISK, B.BLKIF_RSP_ERROR),
    ("indirect without segments", indirect(nr=0), DISK, B.BLKIF_RSP_ERROR),
    ("indirect over the limit", indirect(nr=257), DISK, B.BLKIF_RSP_ERROR),
    ("indirect not offered", indirect(), P.Disk(2048), B.BLKIF_RSP_EOPNOTSUPP),
    ("indirect write to a read-only disk", indirect(op=B.BLKIF_OP_WRITE), RO, B.BLKIF_RSP_ERROR),
]


@pytest.mark.parametrize("raw,disk,status", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_hostile_entries_get_their_status(raw, disk, status):
    with pytest.raises(P.Refused) as refused:
        P.parse(raw, disk)
    assert refused.value.status == status


def test_good_requests_decode():
    req = P.parse(rw(op=B.BLKIF_OP_WRITE, sector=16, segs=((5, 0, 7), (6, 2, 3))), DISK)
    assert (req.op, req.id, req.sector, req.data_sectors) == (B.BLKIF_OP_WRITE, 42, 16, 10)
    assert [s.gref for s in req.segments] == [5, 6]
    assert P.parse(rw(op=B.BLKIF_OP_FLUSH_DISKCACHE, segs=()), RO).segments == []    # empty flush: fine
    # xen-blkfront's empty flush names sector (sector_t)-1: no sectors, no range to check
    assert P.parse(rw(op=B.BLKIF_OP_FLUSH_DISKCACHE, sector=(1 << 64) - 1, segs=()), DISK).sector == (1 << 64) - 1
    assert P.parse(rw(sector=2040), DISK).sector == 2040                               # the last page
    d = P.parse(discard(sector=8, count=16), DISK)
    assert (d.sector, d.nr_sectors) == (8, 16)


def test_indirect_segments_come_from_their_pages_and_are_checked():
    req = P.parse(indirect(nr=600), P.Disk(1 << 20, max_indirect_segments=1024))
    assert req.indirect_grefs == [9, 0]            # two pages of 512 segments
    page = b"".join(P.SEGMENT.build({"gref": 100 + i, "first_sect": 0, "last_sect": 7}) for i in range(512))
    P.add_indirect(req, [page, page], P.Disk(1 << 20, max_indirect_segments=1024))
    assert len(req.segments) == 600 and req.segments[513].gref == 101
    bad = bytearray(page)
    bad[7 * 8 + 5] = 9          # segment 7: last_sect 9
    req = P.parse(indirect(nr=10), DISK)
    with pytest.raises(P.Refused):
        P.add_indirect(req, [bytes(bad)], DISK)


def test_response_layout():
    raw = P.response(0x1122334455667788, B.BLKIF_OP_WRITE, B.BLKIF_RSP_ERROR)
    r = B.blkif_response.parse(raw)
    assert (r.id, r.operation, r.status) == (0x1122334455667788, B.BLKIF_OP_WRITE, -1)
