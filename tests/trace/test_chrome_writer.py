"""The spool -> Chrome trace-event converter on records made here: tracks, decoding, nesting, flows,
counters, sorting in bounded memory, and the offline checker that stands in for Perfetto's importer."""
from __future__ import annotations

import io

import pytest

from abi import errno as E
from abi.trace_spool import SpoolWriter
from pvhyp.timeline import chrome
from pvhyp.timeline.check import load_strict, validate


def hypercall(t, dur, dom=1, vcpu=0, name="event_channel_op", args=(4, 0x1000), result=0):
    return {"t": t, "dur": dur, "kind": "hypercall", "dom": dom, "vcpu": vcpu, "nr": 32, "name": name,
            "args": list(args), "result": result}


def disk_read_records():
    """A frontend's kick, dom0's handling with one read inside, the notify and the guest's upcall."""
    return [
        {"t": 1.0, "dur": 0.5, "kind": "run", "dom": 1, "vcpu": 0, "exit": "kicked"},
        hypercall(1.1, 0.01),
        {"t": 1.105, "kind": "event", "dom": 1, "vcpu": 0, "op": "send", "port": 5, "to_dom": 0, "to_port": 7},
        {"t": 1.2, "dur": 0.05, "kind": "dom0", "dom": 0, "vcpu": -1, "track": "blkback",
         "name": "vbd d1/51712 kick", "port": 7, "frontend": 1},
        {"t": 1.21, "dur": 0.02, "kind": "dom0", "dom": 0, "vcpu": -1, "track": "blkback",
         "name": "BLKIF_OP_READ", "id": 3, "sector": 8},
        {"t": 1.24, "kind": "dom0", "dom": 0, "vcpu": -1, "track": "blkback", "name": "notify frontend", "port": 7},
        hypercall(1.241, 0.002, dom=0),
        {"t": 1.242, "kind": "event", "dom": 0, "vcpu": 0, "op": "send", "port": 7, "to_dom": 1, "to_port": 5},
        {"t": 1.3, "kind": "event_upcall", "dom": 1, "vcpu": 0, "rip": 0xffffffff81000000, "handler": 0x1234},
    ]


def converted(records):
    out = io.StringIO()
    notes: list[str] = []
    chrome.convert(chrome.sorted_records(records), out, notes)
    doc = load_strict(out.getvalue())
    problems, timeline = validate(doc)
    assert problems == [], problems
    return doc, timeline, notes


def test_one_disk_read_is_followed_from_the_kick_to_the_upcall():
    _doc, timeline, notes = converted(disk_read_records())
    assert notes == []
    assert timeline.processes[chrome.pid_of(0)] == "d0 Domain-0"
    assert timeline.thread_names("d0 Domain-0") == {"blkback", "vCPU 0"}
    assert [s["name"] for s in timeline.slices_on("d1", "vCPU 0")] == [
        "guest running", "event_channel_op(EVTCHNOP_send)", "send port 5 -> d0:7", "event upcall"]
    # kick -> blkback, notify -> dom0's EVTCHNOP_send, its kick -> the guest's upcall
    ends = {(s["tid"], f["tid"], f["name"]) for s, f in timeline.flows}
    d1v0, d0v0, blkback = (chrome.pid_of(1) * 1000, chrome.pid_of(0) * 1000,
                           chrome.pid_of(0) * 1000 + chrome.DOM0_TRACK_BASE)
    assert ends == {(d1v0, blkback, "kick"), (blkback, d0v0, "notify"), (d0v0, d1v0, "kick")}
    read = next(s for s in timeline.slices if s["name"] == "BLKIF_OP_READ")
    assert read["args"]["sector"] == 8 and read["dur"] == pytest.approx(20_000)


def test_hypercalls_are_decoded_with_xen_names_and_errnos():
    _doc, timeline, _ = converted([hypercall(0.5, 0.001, name="sched_op", args=(2, 0)),
                                   hypercall(0.6, 0.001, result=-E.EINVAL)])
    first, second = sorted(timeline.slices, key=lambda s: s["ts"])
    assert first["name"] == "sched_op(SCHEDOP_shutdown)" and first["args"]["args"].startswith("SCHEDOP_shutdown, 0x0")
    assert second["args"]["result"] == "-EINVAL"


def test_a_child_running_past_its_parent_is_clamped_into_it():
    _doc, timeline, _ = converted([{"t": 1.0, "dur": 0.1, "kind": "run", "dom": 1, "vcpu": 0},
                                   hypercall(1.05, 0.2)])
    child = next(s for s in timeline.slices if s["name"] != "guest running")
    assert child["ts"] + child["dur"] == pytest.approx(1.1e6)


def test_counters_pins_grants_pending_and_hypercall_rates():
    records = [{"t": 0.01, "kind": "mm", "dom": 1, "vcpu": -1, "op": "pin", "level": 4, "mfn": 9},
               {"t": 0.02, "kind": "grant", "dom": 0, "vcpu": 0, "op": "map", "granter": 1, "ref": 8},
               {"t": 0.03, "kind": "counter", "dom": 1, "vcpu": -1, "name": "pending events", "value": 2}]
    records += [hypercall(0.05 + i * 0.001, 0.0001) for i in range(10)]
    _doc, timeline, _ = converted(records)
    d0, d1 = chrome.pid_of(0), chrome.pid_of(1)
    assert timeline.counters[d1, "pinned L4 tables"] == [(10_000.0, 1)]
    assert timeline.counters[d0, "mapped grants"] == [(20_000.0, 1)]
    assert timeline.counters[d1, "pending events"] == [(30_000.0, 2)]
    assert timeline.counters[d1, "hypercalls/s event_channel_op"][0] == (0.0, pytest.approx(100.0))


def test_records_out_of_order_are_sorted_even_past_one_chunk(monkeypatch):
    monkeypatch.setattr(chrome, "CHUNK_RECORDS", 7)         # spill to temporary files
    records = [hypercall(t / 1000, 0.0001) for t in reversed(range(50))]
    _doc, timeline, _ = converted(records)
    starts = [s["ts"] for s in timeline.slices]
    assert starts == sorted(starts) and len(starts) == 50


def test_a_spool_with_bad_lines_and_a_truncation_converts_with_notes(tmp_path):
    spool = tmp_path / "t.jsonl"
    writer = SpoolWriter.create(str(spool), 0.0, limit=4096)
    for i in range(200):
        writer.write(hypercall(i / 1000, 0.0001))
    writer.close()
    with open(spool, "ab") as f:
        f.write(b'{"t": 1, "kind"\n')
    out = tmp_path / "t.json"
    notes = chrome.convert_file(str(spool), str(out))
    assert any("limit" in n for n in notes) and any("not a JSON record" in n for n in notes)
    assert spool.stat().st_size < 4096 + 200
    problems, timeline = validate(load_strict(out.read_text()))
    assert problems == [] and 0 < len(timeline.slices) < 200


def test_the_checker_refuses_what_perfettos_importer_would_drop():
    bad = {"traceEvents": [
        {"ph": "X", "name": "a", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"ph": "X", "name": "b", "pid": 1, "tid": 1, "ts": 5, "dur": 10},        # overlaps a's end
        {"ph": "E", "name": "c", "pid": 1, "tid": 2, "ts": 1},                    # E without B
        {"ph": "C", "name": "n", "pid": 1, "ts": 1, "args": {"v": "x"}},          # not a number
        {"ph": "f", "bp": "e", "id": 9, "name": "k", "cat": "flow", "pid": 1, "tid": 1, "ts": 2},
        {"ph": "Q", "name": "q", "pid": 1, "tid": 1, "ts": 1},
    ]}
    problems, _ = validate(bad)
    joined = "\n".join(problems)
    for expected in ("overlaps", "E without a B", "must be numbers", "f without an s", "unknown ph"):
        assert expected in joined, joined
    assert validate([])[0] == ["not a trace-event document: no traceEvents list"]


def test_hostile_records_become_notes_never_exceptions_and_the_rest_still_checks(tmp_path):
    junk = [{"t": float("nan"), "kind": "run", "dom": 1, "vcpu": 0}, {"t": 1, "kind": "run", "dom": -4, "vcpu": 0},
            {"t": 1, "dur": -1, "kind": "run", "dom": 1, "vcpu": 0}, {"t": 1, "kind": 7, "dom": 1, "vcpu": 0},
            {"t": 1, "kind": "hypercall", "dom": 1, "vcpu": 0, "args": {"a": 1}, "name": ["x"], "result": "z",
             "dur": 0.1},
            {"t": 1, "kind": "dom0", "dom": 0, "vcpu": -1, "track": "x" * 999, "name": "n"},
            {"t": 1, "kind": "event", "dom": 1, "vcpu": 0, "op": "send", "to_dom": "a", "port": None},
            {"t": 1, "kind": "dom0", "dom": 0, "vcpu": -1, "track": "blkback", "name": "notify frontend",
             "port": "p"},
            {"t": 2, "kind": "mm", "dom": 1, "vcpu": -1, "op": "pin", "level": 99},
            {"t": 2, "kind": "counter", "dom": 1, "vcpu": -1, "name": "pending events", "value": "many"},
            {"t": 3, "kind": "no-such-kind", "dom": 1, "vcpu": 3, "x": {"nested": [1, 2]}}]
    junk += [{"t": 4 + i / 100, "dur": 0.001, "kind": "dom0", "dom": 0, "vcpu": -1, "track": f"t{i}", "name": "n"}
             for i in range(100)]
    spool = tmp_path / "junk.jsonl"
    writer = SpoolWriter.create(str(spool), 0.0)
    for rec in junk:
        writer.write(rec)
    writer.close()
    with open(spool, "a") as f:
        f.write('{"t": NaN, "kind": "run", "dom": 1}\n[1, 2]\n\n')
    out = tmp_path / "junk.json"
    notes = chrome.convert_file(str(spool), str(out))
    assert len(notes) >= 5
    problems, timeline = validate(load_strict(out.read_text()))
    assert problems == []
    assert len(timeline.thread_names("d0 Domain-0")) <= chrome.MAX_TRACKS + 1


def test_a_nan_in_a_field_is_a_note_not_invalid_json(tmp_path):
    out = io.StringIO()
    notes: list[str] = []
    chrome.convert([{"t": 1.0, "kind": "trap", "dom": 1, "vcpu": 0, "vector": 14, "cr2": float("nan")}], out, notes)
    load_strict(out.getvalue())
    assert any("skipped" in n for n in notes)
