"""The block backend ("vbd"): io/blkif.h served from a disk image, as Linux 6.1's xen-blkfront expects.

Backend keys published before InitWait: sectors, info (VDISK_READONLY,
VDISK_CDROM), sector-size 512, physical-sector-size, feature-flush-cache,
feature-discard (+ discard-granularity, discard-alignment, discard-secure),
feature-persistent, feature-max-indirect-segments, max-ring-page-order.
Frontend keys read on connect: ring-ref or ring-page-order + ring-refN,
event-channel, protocol (x86_64-abi, the native layout; anything else is
refused), feature-persistent.

Serving a kick: every waiting request is taken (a copy, dom0.xenbus.ring),
checked (dom0.block.protocol: a bad one gets BLKIF_RSP_ERROR or
EOPNOTSUPP and nothing else happens), carried out on the image straight
from/into the granted pages, answered; the whole batch's responses are
published together and the frontend kicked once.  Requests run in ring
order, one after the other, so a FLUSH or barrier is answered only after
every earlier write and an fsync (or NBD flush); a WRITE is answered once
its data is in the image.  A host I/O error (disk full, unreadable) is the
guest's I/O error; only a broken ring (req_prod more than a ring ahead)
disconnects the frontend.
"""
from __future__ import annotations

import errno
import logging
import struct
import time

from abi.io import blkif as B
from dom0.block import protocol as P
from dom0.block.image import DiskImage, open_image
from dom0.block.vdev import vdev_name
from dom0.timeline import recorder
from dom0.xenbus import DeviceError, GrantCache, GrantMapError, parse_uint
from dom0.xenbus.backend import MAX_RING_PAGE_ORDER, BackendDevice
from dom0.xenbus.ring import RingOverflow

log = logging.getLogger("dom0.block")

MAX_INDIRECT_SEGMENTS = 256         # xen-blkback's MAX_INDIRECT_SEGMENTS
MAX_PERSISTENT_GRANTS = 1056        # xen-blkback's default max_persistent_grants
PHYSICAL_SECTOR_SIZE = 4096
DISCARD_GRANULARITY = 4096
NATIVE_PROTOCOL = "x86_64-abi"
LOG_EVERY = 5.0                     # seconds between repeated refusal logs of one device
_ID = struct.Struct("<Q")
OP_NAMES = {v: k for k, v in sorted(vars(B).items()) if k.startswith("BLKIF_OP_") and isinstance(v, int)}
STATUS_NAMES = {v: k for k, v in sorted(vars(B).items()) if k.startswith("BLKIF_RSP_") and isinstance(v, int)}


def parse_params(params: str) -> tuple[str, str]:
    """libxl's qdisk `params`, "FORMAT:PATH" (or a bare PATH: raw), as (format, path)."""
    fmt, sep, path = params.partition(":")
    if sep and fmt in ("raw", "qcow", "qcow2", "vhd", "qed"):
        return fmt, path
    return "raw", params


class BlockKind:
    """The "vbd" device kind: opens each disk's image when plugged, serves it once connected."""

    name = "vbd"

    def __init__(self, work_dir: str):
        self.work_dir = work_dir        # qemu-nbd sockets and logs
        self.images: dict[tuple[int, int], DiskImage] = {}

    def features(self, device: BackendDevice) -> dict[str, str]:
        fmt, path = parse_params(device.params.get("params", ""))
        if not path:
            raise DeviceError("no image (backend key params)")
        readonly = device.params.get("mode", "w") != "w"
        try:
            image = open_image(path, fmt, readonly, self.work_dir, f"vbd-{device.domid}-{device.devid}")
        except OSError as e:
            raise DeviceError(f"cannot open {path}: {e.strerror or e}") from None
        self.images[device.domid, device.devid] = image
        info = (B.VDISK_READONLY if image.readonly else 0) | (
            B.VDISK_CDROM if device.params.get("device-type") == "cdrom" else 0)
        keys = {
            "sectors": str(image.sectors), "info": str(info),
            "sector-size": str(B.BLKIF_SECTOR_SIZE), "physical-sector-size": str(PHYSICAL_SECTOR_SIZE),
            "feature-flush-cache": "1", "feature-persistent": "1",
            "feature-max-indirect-segments": str(MAX_INDIRECT_SEGMENTS),
            "max-ring-page-order": str(MAX_RING_PAGE_ORDER),
        }
        if image.can_discard and device.params.get("discard-enable", "1") != "0":     # xl's no-discard
            keys.update({"feature-discard": "1", "discard-granularity": str(DISCARD_GRANULARITY),
                         "discard-alignment": "0", "discard-secure": "0"})
        return keys

    def connect(self, device: BackendDevice, frontend: dict[str, str]) -> BlockConnection:
        image = self.images.get((device.domid, device.devid))
        if image is None:
            raise DeviceError("the image is closed")
        protocol = frontend.get("protocol", NATIVE_PROTOCOL)
        if protocol != NATIVE_PROTOCOL:
            raise DeviceError(f"protocol {protocol[:40]!r} is not supported (only {NATIVE_PROTOCOL})")
        persistent = parse_uint(frontend, "feature-persistent", 1, default=0) == 1
        pages = device.map_ring(frontend, "ring-ref", MAX_RING_PAGE_ORDER)
        device.bind_event(frontend)
        discard = image.can_discard and device.params.get("discard-enable", "1") != "0"
        return BlockConnection(device, image, pages, device.grant_cache(persistent, MAX_PERSISTENT_GRANTS),
                               discard)

    def release(self, device: BackendDevice) -> None:
        image = self.images.pop((device.domid, device.devid), None)
        if image is not None:
            try:
                image.flush()
            except OSError as e:
                log.warning("%s: flushing on release: %s", device.name, e)
            image.close()

    def describe(self, device: BackendDevice) -> dict[str, object]:
        image = self.images.get((device.domid, device.devid))
        return {"devid": device.devid, "vdev": device.params.get("dev") or vdev_name(device.devid),
                "target": parse_params(device.params.get("params", ""))[1],
                "mode": device.params.get("mode", "w"),
                "sectors": image.sectors if image else 0,
                "format": image.description.split()[0] if image else "?"}


class BlockConnection:
    def __init__(self, device: BackendDevice, image: DiskImage, pages: list[memoryview], grants: GrantCache,
                 discard: bool):
        self.device = device
        self.image = image
        self.ring = device.back_ring(pages, P.ENTRY_SIZE)
        self.grants = grants
        self.disk = P.Disk(image.sectors, image.readonly, discard, MAX_INDIRECT_SEGMENTS)
        self.stats = {"requests": 0, "refused": 0, "io_errors": 0}
        self._last_log = 0.0
        self._quiet = 0

    # --- the ring ---

    def rings(self) -> dict[str, tuple[memoryview, int, int, int]]:
        """For `pvhyp inspect DOM --rings` (dom0/toolstack/inspect.py): the shared page and
        the private indexes of each ring this connection serves."""
        r = self.ring
        return {"blkif": (r.header, r.req_cons, r.rsp_prod_pvt, r.nr_ents)}

    def on_event(self) -> None:
        budget = 4 * self.ring.nr_ents          # then give other devices their turn
        while budget > 0:
            try:
                batch = self.ring.take_requests(budget)
            except RingOverflow as e:
                self.device.fault(str(e))
                return
            for raw in batch:
                self.ring.put_response(self.serve(raw))
            budget -= len(batch)
            if batch and self.ring.push_responses():
                self.device.notify()
            if not batch or not self.ring.more_requests():
                return

    def serve(self, raw: bytes) -> bytes:
        """One request in, its response out; nothing the request holds can raise past here."""
        req_id, operation = _ID.unpack_from(raw, 8)[0], raw[0]
        self.stats["requests"] += 1
        started = recorder.now() if recorder.enabled else None
        req: P.Request | None = None
        try:
            req = P.parse(raw, self.disk)
            operation = req.op if req.operation == B.BLKIF_OP_INDIRECT else req.operation
            if req.indirect_grefs:
                pages = self._views(req.indirect_grefs, writable=False)
                P.add_indirect(req, [bytes(p) for p in pages], self.disk)
            self._execute(req)
            status = B.BLKIF_RSP_OKAY
        except P.Refused as e:
            self.stats["refused"] += 1
            self._note(f"request {req_id} refused: {e}")
            status = e.status
        except OSError as e:
            self.stats["io_errors"] += 1
            self._note(f"request {req_id}: host I/O error: {e.strerror or e}")
            status = (B.BLKIF_RSP_EOPNOTSUPP if e.errno in (errno.EOPNOTSUPP, errno.ENOTSUP)
                      and operation == B.BLKIF_OP_DISCARD else B.BLKIF_RSP_ERROR)
        finally:
            self.grants.end_request()
        if operation == B.BLKIF_OP_INDIRECT:
            operation = raw[1]          # indirect_op: what xen-blkfront checks the response against
        if started is not None:         # the timeline: one slice per request, inside its kick's
            recorder.slice("blkback", OP_NAMES.get(operation, f"op {operation}"), started, id=req_id,
                           sector=req.sector if req else None, segments=len(req.segments) if req else None,
                           status=STATUS_NAMES.get(status, status), frontend=self.device.domid)
        return P.response(req_id, operation, status)

    def _views(self, grefs: list[int], writable: bool) -> list[memoryview]:
        views = []
        for v in self.grants.get(grefs, writable):
            if isinstance(v, GrantMapError):
                raise P.Refused(B.BLKIF_RSP_ERROR, str(v))
            views.append(v)
        return views

    def _execute(self, req: P.Request) -> None:
        op = req.op
        if op == B.BLKIF_OP_DISCARD:
            self.image.discard(req.sector * B.BLKIF_SECTOR_SIZE, req.nr_sectors * B.BLKIF_SECTOR_SIZE)
            return
        offset = req.sector * B.BLKIF_SECTOR_SIZE
        if op == B.BLKIF_OP_WRITE_BARRIER:
            self.image.flush()          # everything before it is on disk first
        if req.segments:
            pages = self._views([s.gref for s in req.segments], writable=op == B.BLKIF_OP_READ)
            views = [page[s.first_sect * B.BLKIF_SECTOR_SIZE:(s.last_sect + 1) * B.BLKIF_SECTOR_SIZE]
                     for page, s in zip(pages, req.segments)]
            if op == B.BLKIF_OP_READ:
                if any(v.readonly for v in views):
                    raise P.Refused(B.BLKIF_RSP_ERROR, "read into a page granted read-only")
                self.image.read_into(offset, views)
            else:
                self.image.write_from(offset, views)
        if op in (B.BLKIF_OP_FLUSH_DISKCACHE, B.BLKIF_OP_WRITE_BARRIER):
            self.image.flush()

    def _note(self, message: str) -> None:
        """Log a refusal, at most one line per LOG_EVERY seconds per device (a frontend may flood)."""
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            extra = f" ({self._quiet} more since the last line)" if self._quiet else ""
            log.warning("%s: %s%s", self.device.name, message, extra)
            self._last_log, self._quiet = now, 0
        else:
            self._quiet += 1

    def disconnect(self) -> None:
        try:
            self.image.flush()
        except OSError as e:
            log.warning("%s: flush on disconnect: %s", self.device.name, e)
        log.info("%s: disconnected after %s", self.device.name, self.stats)

