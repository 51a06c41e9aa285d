"""`pvhyp run --trace FILE.json` on real guests: an XTF kernel on the software CPU, and a Python
guest reading its disk through dom0's blkback. Each trace is held to the trace-event rules
(pvhyp.timeline.check) and must show its tracks and a known slice; `pvhyp up --trace` too."""
from __future__ import annotations

import os
import time

from tests.trace.trace_kit import XTF, checked, needs_xtf, pvhyp, traced_xtf


@needs_xtf
def test_an_xtf_kernel_has_its_vcpu_track_hypercalls_and_counters(tmp_path):
    trace = tmp_path / "xtf.json"
    traced_xtf(str(trace))
    timeline = checked(str(trace))
    assert set(timeline.processes.values()) == {"d0 Domain-0", "d1 test-pv64-example"}
    assert "xenstored" in timeline.thread_names("d0 Domain-0")
    slices = timeline.slices_on("d1 test-pv64-example", "vCPU 0")
    names = [s["name"] for s in slices]
    assert "guest running" in names and "console_io(CONSOLEIO_write)" in names
    shutdown = next(s for s in slices if s["name"] == "sched_op(SCHEDOP_shutdown)")
    assert shutdown["args"]["result"] == "0"
    # the hypercalls happen inside the guest's runs (the engine calls out from its hooks)
    runs = [(s["ts"], s["ts"] + s["dur"]) for s in slices if s["name"] == "guest running"]
    write = next(s for s in slices if s["name"] == "console_io(CONSOLEIO_write)")
    assert any(a <= write["ts"] <= b for a, b in runs)
    d1 = next(pid for pid, name in timeline.processes.items() if name.startswith("d1 "))
    assert (d1, "pinned L4 tables") in timeline.counters
    assert (d1, "hypercalls/s console_io") in timeline.counters
    assert not os.path.exists(str(trace) + ".spool")


def test_a_disk_read_through_dom0_on_blkbacks_track(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * (4 << 20))
    config = tmp_path / "blk.cfg"
    config.write_text('name = "blkguest"\ntype = "pv"\nkernel = "python:pvguest.examples.blkcheck:roundtrip"\n'
                      f'memory = 32\ndisk = ["{disk},raw,xvda,w"]\n')
    spool = tmp_path / "blk.jsonl"
    done = pvhyp("run", str(config), "--trace", str(spool), "--timeout", "60")
    assert done.returncode == 0, done.stderr
    trace = tmp_path / "blk.json"
    converted = pvhyp("trace", "convert", str(spool), str(trace))
    assert converted.returncode == 0, converted.stderr
    timeline = checked(str(trace))
    assert {"blkback", "xenstored", "vCPU 0"} <= timeline.thread_names("d0 Domain-0")
    blkback = timeline.slices_on("d0 Domain-0", "blkback")
    read = next(s for s in blkback if s["name"] == "BLKIF_OP_READ")
    assert read["args"]["status"] == "BLKIF_RSP_OKAY" and read["args"]["frontend"] == 1
    kick = next(s for s in blkback if s["name"].endswith(" kick") and s["ts"] <= read["ts"] <= s["ts"] + s["dur"])
    # the frontend's EVTCHNOP_send is drawn to the kick that served the read
    senders = [s for s, f in timeline.flows if f["ts"] == kick["ts"] and f["tid"] == kick["tid"]]
    assert senders and all(s["pid"] == read["pid"] + 1 for s in senders)
    xs = timeline.slices_on("d0 Domain-0", "xenstored")
    assert any(s["name"] == "XS_WRITE" and s["args"]["path"].endswith("/device/vbd/51712/state") for s in xs)
    d0 = read["pid"]
    assert (d0, "mapped grants") in timeline.counters


def test_frames_between_two_vifs_on_netbacks_track(tmp_path):
    config = tmp_path / "net.cfg"
    config.write_text('name = "netguest"\ntype = "pv"\nkernel = "python:pvguest.examples.netcheck:loop"\n'
                      'memory = 8\nvif = ["bridge=lab", "bridge=lab"]\n')
    trace = tmp_path / "net.json"
    done = pvhyp("run", str(config), "--trace", str(trace), "--timeout", "60")
    assert done.returncode == 0, done.stderr
    timeline = checked(str(trace))
    assert "netback" in timeline.thread_names("d0 Domain-0")
    frames = [i for i in timeline.instants if i["name"] in ("tx frame", "rx frame")]
    assert {"tx frame", "rx frame"} <= {i["name"] for i in frames}
    assert any(s["name"].startswith("vif d1/") and s["name"].endswith(" kick")
               for s in timeline.slices_on("d0 Domain-0", "netback"))


@needs_xtf
def test_up_traces_every_guest_until_down(tmp_path):
    run_dir, trace = tmp_path / "up", tmp_path / "up.json"
    config = tmp_path / "xtf.cfg"
    config.write_text(f'name = "xtfup"\ntype = "pv"\nkernel = "{XTF}/test-pv64-example"\nmemory = 32\n')
    up = pvhyp("up", "--run-dir", str(run_dir), "--memory", "192", "--trace", str(trace))
    assert up.returncode == 0, up.stderr
    try:
        assert pvhyp("create", "--run-dir", str(run_dir), str(config)).returncode == 0
        deadline = time.monotonic() + 60
        while b"xtfup" in pvhyp("list", "--run-dir", str(run_dir)).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        assert pvhyp("down", "--run-dir", str(run_dir)).returncode == 0
    deadline = time.monotonic() + 60           # converted by a process of its own after down
    while not trace.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    timeline = checked(str(trace))
    assert "d1 xtfup" in timeline.processes.values()
    assert any(s["name"] == "sched_op(SCHEDOP_shutdown)" for s in timeline.slices_on("d1 xtfup", "vCPU 0"))
    assert not os.path.exists(str(trace) + ".spool")
