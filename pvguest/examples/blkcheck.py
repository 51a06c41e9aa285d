"""Python guests that use a disk through blkfront and report what they saw (tests read the report).

    kernel = "python:pvguest.examples.blkcheck:roundtrip"   # cmdline "devid=51712 order=0"
    kernel = "python:pvguest.examples.blkcheck:hostile"     # hostile ring entries, one by one

Each writes a JSON report to its xenstore home (data/report) and a line on
its console.
"""
from __future__ import annotations

import hashlib
import json
import traceback

from abi.io import blkif as B
from pvguest.blkfront import BlkFront


def _report(kernel, report: dict) -> None:
    home = kernel.xenbus.get_domain_path(kernel.domid)
    kernel.xenbus.write(f"{home}/data/report", json.dumps(report))
    kernel.console.write(f"blkcheck: {json.dumps(report)}\n")


def _front(kernel) -> BlkFront:
    params = kernel.params
    return BlkFront(kernel, int(params.get("devid", "51712")), ring_page_order=int(params.get("order", "0")),
                    persistent=params.get("persistent", "1") == "1")


def roundtrip(kernel, *args) -> None:
    report: dict = {}
    try:
        front = _front(kernel)
        report.update(sectors=front.sectors, info=front.info, features=front.features)
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(3 * 4096))
        report["write"] = front.write(8, pattern)
        status, data = front.read(8, len(pattern))
        report["read"] = status
        report["read_matches"] = data == pattern
        report["flush"] = front.flush()
        report["discard"] = front.discard(64, 8)
        # indirect: 3 segments listed in data page 5, pointing at data pages 0..2
        segs = [(front.data_refs[i], 0, 7) for i in range(3)]
        r = front.indirect(B.BLKIF_OP_READ, 8, segs, 5)
        report["indirect"] = [r["status"], r["operation"]]
        report["indirect_matches"] = b"".join(bytes(front.data(i)) for i in range(3)) == pattern
        # many requests in one batch: fill the ring, one kick
        n = front.front.nr_ents
        raws = [front.request(B.BLKIF_OP_READ, i * 8, [(front.data_refs[i % 4], 0, 7)]) for i in range(n)]
        for raw in raws:
            front.submit_raw(raw, notify=False)
        kernel.notify(front.port)
        report["batch"] = sorted({r["status"] for r in front.responses(n)})
        report["batch_size"] = n
        if kernel.params.get("write_tag"):
            tag = kernel.params["write_tag"].encode().ljust(512, b"\0")
            report["tag"] = front.write(0, tag)
            report["tag_flush"] = front.flush()
            report["sha"] = hashlib.sha256(tag).hexdigest()
        front.close()
        report["closed"] = True
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)


def hostile(kernel, *args) -> None:
    """Each hostile entry in turn; the report maps its name to the response status (or what happened)."""
    report: dict = {}
    try:
        front = _front(kernel)
        ref = front.data_refs[0]
        cases = {
            "unknown_op": front.request(99, 0, [(ref, 0, 7)]),
            "reserved_op": front.request(B.BLKIF_OP_RESERVED_1, 0, [(ref, 0, 7)]),
            "no_segments": front.request(B.BLKIF_OP_READ, 0, []),
            "too_many_segments": front.request(B.BLKIF_OP_READ, 0, [(ref, 0, 7)] * 11)[:1] + bytes([12])
            + front.request(B.BLKIF_OP_READ, 0, [(ref, 0, 7)] * 11)[2:],
            "segment_past_page": front.request(B.BLKIF_OP_READ, 0, [(ref, 0, 8)]),
            "segment_backwards": front.request(B.BLKIF_OP_READ, 0, [(ref, 5, 2)]),
            "past_the_disk": front.request(B.BLKIF_OP_READ, front.sectors - 4, [(ref, 0, 7)]),
            "sector_wraps": front.request(B.BLKIF_OP_READ, (1 << 64) - 2, [(ref, 0, 7)]),
            "bad_gref": front.request(B.BLKIF_OP_READ, 0, [(4000, 0, 7)]),
            "ungranted_gref": front.request(B.BLKIF_OP_WRITE, 0, [(front.ring_refs[-1] + 900, 0, 7)]),
        }
        for name, raw in cases.items():
            r = front.call(raw)
            report[name] = r["status"]
        report["discard_secure"] = front.discard(0, 8, secure=True)
        report["discard_past_end"] = front.discard(front.sectors, 8)
        report["indirect_bad_op"] = front.indirect(B.BLKIF_OP_DISCARD, 0, [(ref, 0, 7)], 1)["status"]
        report["indirect_too_many"] = front.indirect(B.BLKIF_OP_READ, 0, [(ref, 0, 7)] * 300, 1)["status"]
        # still serving after all that
        report["write_after"] = front.write(0, b"ok".ljust(512, b"\0"))
        status, data = front.read(0, 512)
        report["read_after"] = [status, data[:2].decode(errors="replace")]
        # a producer index far ahead of the ring: the backend disconnects this frontend
        front.set_req_prod(front.front.req_prod_pvt + 10 * front.front.nr_ents)
        try:
            front.wait_backend_state(5, timeout=10)
            report["overflow"] = "closing"
        except Exception as e:
            report["overflow"] = f"not closed: {e}"
        report["backend_error"] = kernel.xenbus.read(f"{front.backend}/error").decode()
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)
