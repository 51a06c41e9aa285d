"""The acceptance trace: Debian's kernel booting with a scratch disk (`pvhyp trace demo`), its
timeline held to the trace-event rules, with every track the issue names, one disk read
followed from the guest's kick through blkback and back, and the counters. Slow: a boot."""
from __future__ import annotations

import os

import pytest

from tests.trace.trace_kit import HAVE_TRACE_PROCESSOR, SHUTDOWN_SLICE, checked, pvhyp, query

pytestmark = pytest.mark.slow


def test_a_debian_boot_reads_its_disk_on_the_timeline(tmp_path):
    from dom0.images import debian
    try:
        debian.find_or_build(os.environ.get("PVHYP_DEBIAN_DIR"))
    except debian.ImageError as e:
        pytest.skip(str(e))
    trace, picture = tmp_path / "debian.json", tmp_path / "read.svg"
    done = pvhyp("trace", "demo", str(trace), str(picture), timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    timeline = checked(str(trace))
    guest = "d1 debian-demo"
    assert set(timeline.processes.values()) == {"d0 Domain-0", guest}
    assert {"blkback", "xenstored", "vCPU 0"} <= timeline.thread_names("d0 Domain-0")
    vcpu = {s["name"] for s in timeline.slices_on(guest, "vCPU 0")}
    for name in ("guest running", "mmu_update", "mmuext_op", "event_channel_op(EVTCHNOP_send)", "event upcall",
                 "sched_op(SCHEDOP_block)"):
        assert name in vcpu, name
    assert any(i["name"].startswith("trap page_fault") for i in timeline.instants)
    # one read: the kick that served it was drawn from the guest, and its notify goes on to the guest
    blkback = timeline.slices_on("d0 Domain-0", "blkback")
    read = next(s for s in blkback if s["name"] == "BLKIF_OP_READ")
    kick = next(s for s in blkback if s["name"].endswith(" kick") and s["ts"] <= read["ts"] <= s["ts"] + s["dur"])
    into_kick = [s for s, f in timeline.flows if (f["tid"], f["ts"]) == (kick["tid"], kick["ts"])]
    assert into_kick and {timeline.processes[s["pid"]] for s in into_kick} == {guest}
    back = [f for s, f in timeline.flows if s["name"] == "kick" and timeline.processes[f["pid"]] == guest]
    assert back, "no kick from dom0 reached the guest's upcall"
    counters = {(timeline.processes[pid], name) for pid, name in timeline.counters}
    for expected in ((guest, "pinned L4 tables"), (guest, "pinned L1 tables"), ("d0 Domain-0", "mapped grants"),
                     (guest, "pending events"), (guest, "hypercalls/s mmu_update")):
        assert expected in counters, expected
    assert picture.read_text().startswith("<svg") and "BLKIF_OP_READ" in picture.read_text()
    if HAVE_TRACE_PROCESSOR:
        rows = query(str(trace), SHUTDOWN_SLICE.format(name="BLKIF_OP_READ"))
        assert rows and {(r.thread, r.process) for r in rows} == {("blkback", "d0 Domain-0")}
