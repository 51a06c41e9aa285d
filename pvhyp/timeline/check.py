"""The offline check of a Chrome trace-event file, and a loader that summarises it for tests.

Perfetto's own trace processor (`trace_processor_shell`) is what the issue
asks a test to open our traces with; PyPI's `perfetto` downloads that binary
at run time, which a machine reaching only the package registries cannot
(tests/trace/test_trace_processor.py runs it where PVHYP_TRACE_PROCESSOR
names one). Everywhere else this module holds a trace to the rules Perfetto's
JSON importer applies, strictly:

- the document is {"traceEvents": [...]} (other keys allowed);
- every event has a known ph, a name, integer pid/tid, and (except M) a
  numeric ts >= 0;
- X slices have dur >= 0 and, per thread, nest strictly (a slice starting
  inside another ends inside it): the importer drops improperly nested ones;
- B/E pair up per thread, in order;
- C events carry numeric args only; i events a scope t, p or g;
- M events are process_name/thread_name/*_sort_index with their argument;
- a flow's f has an s with the same cat, name and id before it (the importer's
  v1 flow key), and each end lies inside a slice of its own thread (what the
  importer binds it to); an s without an f is allowed (a kick nobody handled).
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Any

PHASES = set("XBEiIC") | {"s", "t", "f", "M"}
METADATA = {"process_name": "name", "thread_name": "name", "process_sort_index": "sort_index",
            "thread_sort_index": "sort_index", "process_labels": "labels"}
EPSILON = 0.001         # us: the writer rounds to nanoseconds


@dataclass
class Timeline:
    """What a trace holds, by name: for tests and `pvhyp trace render`."""
    processes: dict[int, str] = field(default_factory=dict)                 # pid -> name
    threads: dict[tuple[int, int], str] = field(default_factory=dict)      # (pid, tid) -> name
    slices: list[dict[str, Any]] = field(default_factory=list)             # X events (and closed B/E)
    instants: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[tuple[int, str], list[tuple[float, float]]] = field(default_factory=dict)
    flows: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)   # (s, f)

    def thread_names(self, process_name: str) -> set[str]:
        pids = {pid for pid, name in self.processes.items() if name == process_name}
        return {name for (pid, _tid), name in self.threads.items() if pid in pids}

    def slices_on(self, process_name: str, thread_name: str) -> list[dict[str, Any]]:
        keys = {key for key, name in self.threads.items()
                if name == thread_name and self.processes.get(key[0]) == process_name}
        return [s for s in self.slices if (s["pid"], s["tid"]) in keys]


def load_strict(text: str) -> Any:
    """JSON as the standard has it: Python's NaN/Infinity extensions are refused (importers choke)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def validate(doc: Any) -> tuple[list[str], Timeline]:
    """(problems, what the trace holds); no problems means Perfetto's importer takes every event."""
    problems: list[str] = []
    timeline = Timeline()
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        return ["not a trace-event document: no traceEvents list"], timeline
    begun: dict[tuple[int, int], list[dict[str, Any]]] = collections.defaultdict(list)
    flow_starts: dict[Any, dict[str, Any]] = {}
    flow_ends: list[dict[str, Any]] = []
    for index, ev in enumerate(doc["traceEvents"]):
        where = f"event {index}"
        if not isinstance(ev, dict):
            problems.append(f"{where}: not an object")
            continue
        ph = ev.get("ph")
        if ph not in PHASES:
            problems.append(f"{where}: unknown ph {ph!r}")
            continue
        if not isinstance(ev.get("pid"), int) or (ph not in ("C", "M") and not isinstance(ev.get("tid"), int)):
            problems.append(f"{where}: pid/tid must be integers")
            continue
        if not isinstance(ev.get("name"), str):
            problems.append(f"{where}: no name")
            continue
        if ph == "M":
            _metadata(ev, where, problems, timeline)
            continue
        ts = ev.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts < 0:
            problems.append(f"{where}: ts must be a number >= 0")
            continue
        key = (ev["pid"], ev.get("tid", 0))
        if ph == "X":
            dur = ev.get("dur")
            if not isinstance(dur, (int, float)) or dur < 0:
                problems.append(f"{where}: an X event needs dur >= 0")
                continue
            timeline.slices.append(ev)
        elif ph == "B":
            begun[key].append(ev)
        elif ph == "E":
            if not begun[key]:
                problems.append(f"{where}: E without a B on its thread")
                continue
            b = begun[key].pop()
            timeline.slices.append({**b, "ph": "X", "dur": ts - b["ts"]})
        elif ph in ("i", "I"):
            if ev.get("s", "t") not in ("t", "p", "g"):
                problems.append(f"{where}: instant scope {ev.get('s')!r}")
            timeline.instants.append(ev)
        elif ph == "C":
            args = ev.get("args")
            if not isinstance(args, dict) or not all(isinstance(v, (int, float)) for v in args.values()):
                problems.append(f"{where}: a counter's args must be numbers")
                continue
            for arg, value in args.items():
                timeline.counters.setdefault((ev["pid"], f"{ev['name']} {arg}"), []).append((ts, value))
        elif ph == "s":
            if ev.get("id") is None:
                problems.append(f"{where}: a flow start without an id")
                continue
            flow_starts[ev.get("cat"), ev["name"], ev["id"]] = ev     # a v1 flow is (cat, name, id)
        elif ph == "f":
            flow_ends.append(ev)
    for key, left in begun.items():
        if left:
            problems.append(f"thread {key}: {len(left)} B events never ended")
    problems += _nesting(timeline.slices)
    enclosing = _SliceIndex(timeline.slices)
    for f in flow_ends:
        s = flow_starts.get((f.get("cat"), f["name"], f.get("id")))
        if s is None:
            problems.append(f"flow {f.get('id')}: f without an s")
            continue
        if f["ts"] + EPSILON < s["ts"]:
            problems.append(f"flow {f.get('id')}: ends before it starts")
        for end, what in ((s, "start"), (f, "end")):
            if not enclosing.encloses(end["pid"], end["tid"], end["ts"]):
                problems.append(f"flow {f.get('id')}: its {what} lies in no slice of its thread")
        timeline.flows.append((s, f))
    return problems, timeline


def _metadata(ev: dict[str, Any], where: str, problems: list[str], timeline: Timeline) -> None:
    arg = METADATA.get(ev["name"])
    args = ev.get("args")
    if arg is None or not isinstance(args, dict) or arg not in args:
        problems.append(f"{where}: metadata {ev['name']!r} without its {arg or 'known name'}")
        return
    if ev["name"] == "process_name":
        timeline.processes[ev["pid"]] = str(args["name"])
    elif ev["name"] == "thread_name":
        timeline.threads[ev["pid"], ev["tid"]] = str(args["name"])


def _nesting(slices: list[dict[str, Any]]) -> list[str]:
    problems = []
    by_thread: dict[tuple[int, int], list[dict[str, Any]]] = collections.defaultdict(list)
    for s in slices:
        by_thread[s["pid"], s["tid"]].append(s)
    for key, events in by_thread.items():
        open_ends: list[float] = []
        for s in sorted(events, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= s["ts"] + EPSILON:
                open_ends.pop()
            end = s["ts"] + s["dur"]
            if open_ends and end > open_ends[-1] + EPSILON:
                problems.append(f"thread {key}: slice {s['name']!r} at {s['ts']} overlaps its parent's end")
                if len(problems) > 20:
                    return problems
            open_ends.append(end)
    return problems


class _SliceIndex:
    def __init__(self, slices: list[dict[str, Any]]):
        self.by_thread: dict[tuple[int, int], list[tuple[float, float]]] = collections.defaultdict(list)
        for s in slices:
            self.by_thread[s["pid"], s["tid"]].append((s["ts"], s["ts"] + s["dur"]))

    def encloses(self, pid: int, tid: int, ts: float) -> bool:
        return any(start - EPSILON <= ts <= end + EPSILON for start, end in self.by_thread.get((pid, tid), ()))
