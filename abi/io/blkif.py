"""xen/include/public/io/blkif.h: the PV block device protocol.

The frontend (in the guest) puts ``blkif_request`` on the ring; each names
up to 11 segments, a granted page each with a sector range inside it
(sectors are 512 bytes, whatever the disk's sector size).  The backend does
the I/O through the grants and answers with ``blkif_response`` (same ``id``).
Connection details (ring-ref, event-channel, feature-*) go through xenstore.
"""

from construct import Padding, Struct

from abi import grant_table
from abi.cdefs import Typedef, int16_t, uint8_t, uint16_t, uint64_t
from abi.io import ring

blkif_vdev_t = Typedef("blkif_vdev_t", uint16_t)
blkif_sector_t = Typedef("blkif_sector_t", uint64_t)

BLKIF_OP_READ = 0
BLKIF_OP_WRITE = 1
BLKIF_OP_WRITE_BARRIER = 2  # write, ordered after all earlier ones (feature-barrier)
BLKIF_OP_FLUSH_DISKCACHE = 3  # flush the disk's write cache (feature-flush-cache)
BLKIF_OP_RESERVED_1 = 4
BLKIF_OP_DISCARD = 5  # blkif_request_discard (feature-discard)
BLKIF_OP_INDIRECT = 6  # blkif_request_indirect (feature-max-indirect-segments)

BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8

blkif_request_segment = Struct(
    "gref" / grant_table.grant_ref_t * "granted page of the data",
    "first_sect" / uint8_t * "first 512-byte sector of the page used",
    "last_sect" / uint8_t * "last one (inclusive)",
    Padding(2),
)
blkif_request_segment.docs = "One page of a request's data."

blkif_request = Struct(
    "operation" / uint8_t * "BLKIF_OP_*",
    "nr_segments" / uint8_t * "segments used (1..11 for read/write)",
    "handle" / blkif_vdev_t * "virtual device (from xenstore)",
    Padding(4),
    "id" / uint64_t * "echoed in the response",
    "sector_number" / blkif_sector_t * "start, in 512-byte sectors",
    "seg" / blkif_request_segment[BLKIF_MAX_SEGMENTS_PER_REQUEST],
)
blkif_request.docs = "Frontend -> backend: read or write up to 11 pages."

BLKIF_DISCARD_SECURE = 1 << 0

blkif_request_discard = Struct(
    "operation" / uint8_t * "BLKIF_OP_DISCARD",
    "flag" / uint8_t * "BLKIF_DISCARD_SECURE",
    "handle" / blkif_vdev_t,
    Padding(4),
    "id" / uint64_t,
    "sector_number" / blkif_sector_t,
    "nr_sectors" / uint64_t,
)
blkif_request_discard.docs = "BLKIF_OP_DISCARD's layout of a ring request."

blkif_request_indirect = Struct(
    "operation" / uint8_t * "BLKIF_OP_INDIRECT",
    "indirect_op" / uint8_t * "BLKIF_OP_READ or BLKIF_OP_WRITE",
    "nr_segments" / uint16_t * "segments, listed in the indirect pages",
    Padding(4),
    "id" / uint64_t,
    "sector_number" / blkif_sector_t,
    "handle" / blkif_vdev_t,
    Padding(2),
    "indirect_grefs" / grant_table.grant_ref_t[BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST]
    * "pages holding blkif_request_segment arrays",
    Padding(4),
)
blkif_request_indirect.docs = "BLKIF_OP_INDIRECT: more segments than fit in a request."

blkif_response = Struct(
    "id" / uint64_t * "the request's id",
    "operation" / uint8_t * "the request's operation",
    Padding(1),
    "status" / int16_t * "BLKIF_RSP_*",
    Padding(4),
)
blkif_response.docs = "Backend -> frontend: the outcome of one request."

BLKIF_RSP_EOPNOTSUPP = -2
BLKIF_RSP_ERROR = -1
BLKIF_RSP_OKAY = 0

blkif_sring_entry, blkif_sring = ring.DEFINE_RING_TYPES(blkif_request, blkif_response)

# blkif counts in 512-byte sectors whatever the disk's sector size, and a
# segment lies inside one 4 KiB page (io/blkif.h says so in prose only).
BLKIF_SECTOR_SIZE = 512
BLKIF_SECTORS_PER_PAGE = 4096 // BLKIF_SECTOR_SIZE
# Segments one indirect page holds (Linux's BLKIF_SEGS_PER_INDIRECT_FRAME).
BLKIF_SEGS_PER_INDIRECT_FRAME = 4096 // 8

NOT_IN_HEADER = {
    name: "pvhyp's name for a size io/blkif.h states in prose (Linux's xen-blkfront has them)"
    for name in ("BLKIF_SECTOR_SIZE", "BLKIF_SECTORS_PER_PAGE", "BLKIF_SEGS_PER_INDIRECT_FRAME")
}

# virtual disk flags (xenstore "info")
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4
