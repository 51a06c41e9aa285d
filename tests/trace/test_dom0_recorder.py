"""dom0's side of the timeline: its records go to the spool it inherited, on the hypervisor's
clock, each on its backend's track; off, every hook is a no-op."""
from __future__ import annotations

import json
import os
import time

from abi.io import xs_wire
from abi.trace_spool import SpoolWriter
from dom0.timeline import XS_TYPE_NAMES, Dom0Recorder


def test_records_land_in_the_shared_spool_on_the_hypervisors_clock(tmp_path):
    path = tmp_path / "spool.jsonl"
    start = time.monotonic() - 5.0
    hypervisor = SpoolWriter.create(str(path), start)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)       # what dom0 inherits
    recorder = Dom0Recorder()
    recorder.instant("netback", "never written")        # off: nothing happens
    recorder.open(fd, start)
    began = recorder.now()
    assert 5.0 <= began < 60
    recorder.instant("netback", "tx frame", bytes=60, vif="vif1.0")
    recorder.slice("blkback", "BLKIF_OP_READ", began, id=3)
    recorder.request(1, xs_wire.XS_WRITE, b"/local/domain/1/name\0guest", xs_wire.XS_WRITE, b"OK\0", began)
    recorder.request(1, xs_wire.XS_READ, b"/nope\0", xs_wire.XS_ERROR, b"ENOENT\0", began)
    recorder.close()
    hypervisor.close()
    records = [json.loads(line) for line in path.read_text().splitlines()][1:]
    assert [r["track"] for r in records] == ["netback", "blkback", "xenstored", "xenstored"]
    assert all(r["kind"] == "dom0" and r["dom"] == 0 and r["t"] >= 5.0 for r in records)
    assert records[1]["dur"] >= 0 and records[1]["id"] == 3
    assert records[2]["name"] == "XS_WRITE" and records[2]["value"] == "guest" and records[2]["client"] == 1
    assert records[3]["name"] == "XS_READ" and records[3]["result"] == "ENOENT" and "value" not in records[3]


def test_xenstore_request_types_have_their_wire_names():
    assert XS_TYPE_NAMES[xs_wire.XS_DIRECTORY] == "XS_DIRECTORY"
    assert XS_TYPE_NAMES[xs_wire.XS_CONTROL] == "XS_CONTROL"
    assert len(XS_TYPE_NAMES) == xs_wire.XS_TYPE_COUNT - 1      # 20 was XS_RESTRICT, gone from the protocol
