"""blkif requests as data: parse a ring entry, check it against the disk, build the response.

Sans-IO: nothing here maps grants or touches an image.  Every entry is the
frontend's, so every field is checked before use, in this order (xen-blkback's
dispatch_rw_block_io and QEMU's xen-block dataplane agree on the outcomes):

    operation not READ/WRITE/WRITE_BARRIER/FLUSH_DISKCACHE/DISCARD/INDIRECT -> EOPNOTSUPP
    INDIRECT whose indirect_op is not READ/WRITE                            -> ERROR
    DISCARD when the disk has no discard, or a secure one                    -> EOPNOTSUPP
    READ/WRITE with 0 segments, more than 11 (INDIRECT: more than advertised) -> ERROR
    a segment with first_sect > last_sect or last_sect past its page         -> ERROR
    a sector range past the end of the disk (or wrapping); none: not checked  -> ERROR
    WRITE, WRITE_BARRIER, FLUSH with data, DISCARD on a read-only disk       -> ERROR

A refused request still gets exactly one response with its id and
operation; nothing the frontend writes raises anything but `Refused`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from abi.fast import codec
from abi.io import blkif as B

REQUEST = codec(B.blkif_request)
INDIRECT = codec(B.blkif_request_indirect)
DISCARD = codec(B.blkif_request_discard)
RESPONSE = codec(B.blkif_response)
SEGMENT = codec(B.blkif_request_segment)
ENTRY_SIZE = B.blkif_sring_entry.sizeof()

DATA_OPS = (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE)
WRITES = (B.BLKIF_OP_WRITE, B.BLKIF_OP_WRITE_BARRIER, B.BLKIF_OP_FLUSH_DISKCACHE)
OP_NAMES = {B.BLKIF_OP_READ: "read", B.BLKIF_OP_WRITE: "write", B.BLKIF_OP_WRITE_BARRIER: "barrier",
            B.BLKIF_OP_FLUSH_DISKCACHE: "flush", B.BLKIF_OP_DISCARD: "discard",
            B.BLKIF_OP_INDIRECT: "indirect"}


class Refused(Exception):
    """The request cannot be carried out: answer `status` (BLKIF_RSP_*), log `reason`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Disk:
    """What the checks need to know about the disk being served."""

    sectors: int
    readonly: bool = False
    discard: bool = True
    max_indirect_segments: int = 0      # 0: INDIRECT not offered


@dataclass
class Segment:
    gref: int
    first_sect: int
    last_sect: int

    @property
    def nbytes(self) -> int:
        return (self.last_sect - self.first_sect + 1) * B.BLKIF_SECTOR_SIZE


@dataclass
class Request:
    """One request, decoded: `operation` is the ring's (INDIRECT stays INDIRECT), `op` the I/O."""

    operation: int
    op: int
    id: int
    sector: int
    segments: list[Segment] = field(default_factory=list)
    nr_segments: int = 0
    indirect_grefs: list[int] = field(default_factory=list)   # pages of segments, still to read
    nr_sectors: int = 0             # DISCARD
    secure: bool = False            # DISCARD flag

    @property
    def is_write(self) -> bool:
        return self.op in WRITES or self.op == B.BLKIF_OP_DISCARD

    @property
    def data_sectors(self) -> int:
        return sum(s.last_sect - s.first_sect + 1 for s in self.segments)


def response(req_id: int, operation: int, status: int) -> bytes:
    return RESPONSE.build({"id": req_id, "operation": operation, "status": status})


def id_and_operation(raw: bytes) -> tuple[int, int]:
    """What a response needs, from any request layout (id sits at the same offset in all)."""
    r = REQUEST.parse(raw)
    return r["id"], r["operation"]


def parse(raw: bytes, disk: Disk) -> Request:
    """A ring entry as a Request, or Refused.  INDIRECT segments come later (`add_indirect`)."""
    operation = raw[0]
    if operation == B.BLKIF_OP_DISCARD:
        d = DISCARD.parse(raw)
        req = Request(operation, operation, d["id"], d["sector_number"], nr_sectors=d["nr_sectors"],
                      secure=bool(d["flag"] & B.BLKIF_DISCARD_SECURE))
        if not disk.discard or req.secure:
            raise Refused(B.BLKIF_RSP_EOPNOTSUPP, "discard not offered" if not disk.discard
                          else "secure discard not offered")
        _check_range(req.sector, req.nr_sectors, disk)
        _check_writable(req, disk)
        return req
    if operation == B.BLKIF_OP_INDIRECT:
        r = INDIRECT.parse(raw)
        req = Request(operation, r["indirect_op"], r["id"], r["sector_number"], nr_segments=r["nr_segments"])
        if not disk.max_indirect_segments:
            raise Refused(B.BLKIF_RSP_EOPNOTSUPP, "indirect requests not offered")
        if req.op not in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE):
            raise Refused(B.BLKIF_RSP_ERROR, f"indirect operation {req.op} is not read or write")
        if not 0 < req.nr_segments <= disk.max_indirect_segments:
            raise Refused(B.BLKIF_RSP_ERROR, f"{req.nr_segments} indirect segments "
                          f"(1..{disk.max_indirect_segments})")
        pages = -(-req.nr_segments // B.BLKIF_SEGS_PER_INDIRECT_FRAME)
        req.indirect_grefs = r["indirect_grefs"][:pages]
        _check_writable(req, disk)
        return req
    if operation not in DATA_OPS:
        raise Refused(B.BLKIF_RSP_EOPNOTSUPP, f"unknown operation {operation}")
    r = REQUEST.parse(raw)
    req = Request(operation, operation, r["id"], r["sector_number"], nr_segments=r["nr_segments"])
    if req.nr_segments > B.BLKIF_MAX_SEGMENTS_PER_REQUEST:
        raise Refused(B.BLKIF_RSP_ERROR, f"{req.nr_segments} segments (at most "
                      f"{B.BLKIF_MAX_SEGMENTS_PER_REQUEST})")
    if req.nr_segments == 0 and operation in (B.BLKIF_OP_READ, B.BLKIF_OP_WRITE):
        raise Refused(B.BLKIF_RSP_ERROR, "read or write without segments")
    req.segments = [Segment(s["gref"], s["first_sect"], s["last_sect"]) for s in r["seg"][:req.nr_segments]]
    check_segments(req, disk)
    return req


def add_indirect(req: Request, pages: list[bytes], disk: Disk) -> None:
    """The segments of an INDIRECT request, from its indirect pages' bytes; then the checks."""
    segs = []
    for i in range(req.nr_segments):
        page, slot = divmod(i, B.BLKIF_SEGS_PER_INDIRECT_FRAME)
        s = SEGMENT.parse(pages[page], slot * SEGMENT.size)
        segs.append(Segment(s["gref"], s["first_sect"], s["last_sect"]))
    req.segments = segs
    check_segments(req, disk)


def check_segments(req: Request, disk: Disk) -> None:
    for i, s in enumerate(req.segments):
        if s.first_sect > s.last_sect or s.last_sect >= B.BLKIF_SECTORS_PER_PAGE:
            raise Refused(B.BLKIF_RSP_ERROR, f"segment {i}: sectors {s.first_sect}..{s.last_sect} "
                          "are not inside one page")
    _check_range(req.sector, req.data_sectors, disk)
    if req.segments or req.op != B.BLKIF_OP_FLUSH_DISKCACHE:
        _check_writable(req, disk)


def _check_range(sector: int, count: int, disk: Disk) -> None:
    # No sectors, no range: xen-blkfront's empty flush carries sector_number (sector_t)-1,
    # and xen-blkback checks the range only when there are sectors.
    if count and sector + count > disk.sectors:
        raise Refused(B.BLKIF_RSP_ERROR, f"sectors {sector}..{sector + count - 1} past the disk's "
                      f"{disk.sectors}")


def _check_writable(req: Request, disk: Disk) -> None:
    if disk.readonly and req.is_write:
        raise Refused(B.BLKIF_RSP_ERROR, f"{OP_NAMES.get(req.op, req.op)} to a read-only disk")
