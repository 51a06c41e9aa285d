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
from pvguest.examples import write_report


def _report(kernel, report: dict) -> None:
    write_report(kernel, "blkcheck", report)


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
            # a page granted to another domain, not to the backend
            "foreign_gref": front.request(B.BLKIF_OP_READ, 0, [(
                kernel.gnttab.grant_access(kernel.domid + 100, front.data_pfns[1]), 0, 7)]),
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
        # a frontend that does not take its responses: a ring's worth is answered, nothing queues in dom0
        n = front.front.nr_ents
        for _ in range(n):
            front.submit_raw(front.request(B.BLKIF_OP_READ, 0, [(ref, 0, 7)]), notify=False)
        kernel.notify(front.port)
        for _ in range(100):
            if front.sring.rsp_prod == front.front.req_prod_pvt:
                break
            kernel.wait(0.05)
        report["unconsumed_answered"] = (front.sring.rsp_prod - front.front.rsp_cons) & 0xFFFFFFFF
        report["unconsumed_state"] = front.backend_state()
        front.responses(n)
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


def commands(kernel, *args) -> None:
    """Does what the test writes to data/cmd ("SEQ OP ARGS"), answering in data/result/SEQ.

    OPs: attach DEVID [ORDER] | read SECTOR | write SECTOR BYTE | flush | close | quit.
    A disk whose backend starts closing (block-detach) is closed from here, as
    xen-blkfront does, and data/detached says which.
    """
    xs = kernel.xenbus
    home = xs.get_domain_path(kernel.domid)
    xs.watch(f"{home}/data/cmd", "cmd")
    fronts: dict[int, BlkFront] = {}
    done: set[str] = set()
    while True:
        event = xs.read_watch(timeout=0.1)
        for devid, front in list(fronts.items()):
            if front.backend_state() == 5:
                front.close()
                del fronts[devid]
                xs.write(f"{home}/data/detached", str(devid))
        if event is None:
            continue
        try:
            words = xs.read(f"{home}/data/cmd").decode().split()
        except Exception:
            continue
        if not words or words[0] in done:
            continue
        seq, op, rest = words[0], words[1], words[2:]
        done.add(seq)
        try:
            if op == "quit":
                xs.write(f"{home}/data/result/{seq}", "ok")
                return
            if op == "attach":
                front = BlkFront(kernel, int(rest[0]), ring_page_order=int(rest[1]) if len(rest) > 1 else 0)
                fronts[int(rest[0])] = front
                result = json.dumps({"sectors": front.sectors, "info": front.info})
            else:
                front = next(iter(fronts.values()))
                if op == "read":
                    status, data = front.read(int(rest[0]), 512)
                    result = json.dumps([status, data[0]])
                elif op == "write":
                    result = json.dumps(front.write(int(rest[0]), bytes([int(rest[1])]) * 512))
                elif op == "flush":
                    result = json.dumps(front.flush())
                elif op == "close":
                    front.close()
                    fronts.clear()
                    result = "closed"
                else:
                    result = f"unknown op {op}"
        except Exception as e:
            result = f"error: {e}"
        xs.write(f"{home}/data/result/{seq}", result)


def bad_handshake(kernel, *args) -> None:
    """Publishes a ring ref nobody granted and a port that is not one; the backend must refuse and close."""
    report: dict = {}
    try:
        xs = kernel.xenbus
        home = xs.get_domain_path(kernel.domid)
        path = f"{home}/device/vbd/{kernel.params.get('devid', '51712')}"
        backend = xs.read(f"{path}/backend").decode()
        for key, value in (("ring-page-order", kernel.params.get("order", "1")), ("ring-ref0", "4000"),
                           ("ring-ref1", "4001"), ("event-channel", "junk"), ("protocol", "x86_64-abi")):
            xs.write(f"{path}/{key}", value)
        xs.write(f"{path}/state", "3")
        for _ in range(200):
            state = xs.read(f"{backend}/state").decode()
            if state == "5":
                break
            kernel.wait(0.05)
        report["backend_state"] = state
        report["backend_error"] = xs.read(f"{backend}/error").decode()
    except Exception:
        report["error"] = traceback.format_exc()
    _report(kernel, report)
