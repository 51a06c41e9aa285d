"""A trace spool (abi.trace_spool) as Chrome trace-event JSON, streamed, in bounded memory.

What the picture holds (Perfetto's UI and chrome://tracing both open it):
- a process per domain (pid = domid + 1: pid 0 means "no process" to some
  importers), named "d<domid> <name>";
- a thread per vCPU: "guest running" slices (one engine run each), inside
  them the hypercalls as slices named "<hypercall>(<SUB_OP>)" with their
  arguments and the result as Xen's errno name, traps and event upcalls;
- dom0's own work on threads of dom0's process (blkback, netback,
  xenstored): one slice per ring kick handled, one per disk request inside
  it, one per xenstore request, an instant per network frame;
- flows (ph s/f) for ring kicks: a guest's EVTCHNOP_send -> the backend's
  kick slice; the backend's "notify frontend" -> dom0's EVTCHNOP_send ->
  the guest's next event upcall. So one disk read is followed from the
  frontend's request to the response;
- counter tracks per domain: hypercalls/s by hypercall, pinned page-table
  frames by level, mapped grants, pending events.

Rules the writer keeps (the ones Perfetto's JSON importer enforces, and
pvhyp.timeline.check tests): events of a thread are complete slices (ph X)
strictly nested (a child is clamped into its parent: clocks read in two
processes may disagree by a microsecond), timestamps in microseconds, every
flow's s and f share an id and bind to a slice (bp "e" on the f).

Sorting: records are written when a slice ended, by two processes, so the
spool is not in time order; it is sorted in chunks of CHUNK_RECORDS (each
chunk spilled to a temporary file when there is more than one) and merged.
"""
from __future__ import annotations

import collections
import heapq
import itertools
import json
import math
import os
import re
import tempfile
from typing import IO, Any, Iterable, Iterator

from abi.trace_spool import HEADER_KIND, TRUNCATED_KIND
from abi.xen import DOMID_FIRST_RESERVED
from pvhyp.timeline.decode import result_name, subop_name, trap_name

CHUNK_RECORDS = 200_000
RATE_BIN = 0.1                  # seconds per hypercalls/s sample
TINY = 1e-6                     # seconds: a flow endpoint's own slice (a 1 us mark)
MAX_WAITING_FLOWS = 256         # kicks waiting for their receiver, per receiver (a guest may spin)
STALE_FLOW = 0.5                # seconds: a kick nobody handled by then is left unended (no false arrow)
MAX_DOMID = DOMID_FIRST_RESERVED - 1
MAX_VCPUS = 500                 # below DOM0_TRACK_BASE: a vCPU's tid never meets a dom0 track's
MAX_SECONDS = 366 * 86400.0
MAX_TRACKS = 64                 # dom0 tracks drawn; more go on "other"
DOM0_TRACK_BASE = 500           # tid offset of dom0's backend threads (below: vCPUs)
_DOMAIN_NAME_PATH = re.compile(r"/local/domain/(\d{1,5})/name")
ADDRESS_FIELDS = ("rip", "cr2", "handler", "mfn", "error_code")


def pid_of(domid: int) -> int:
    return domid + 1


def _key(rec: dict) -> tuple[float, float]:
    # by start; a parent (longer) before a child starting at the same time
    return (rec["t"], -(rec.get("dur") or 0.0))


def read_spool(path: str, notes: list[str]) -> Iterator[dict]:
    """The spool's records in file order (bad lines noted and skipped)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except ValueError:
                notes.append(f"{path}:{number}: not a JSON record (a line cut short?)")
                continue
            if not isinstance(rec, dict) or "kind" not in rec:
                notes.append(f"{path}:{number}: not a trace record")
                continue
            if rec["kind"] == TRUNCATED_KIND:
                notes.append(f"the spool reached its limit ({rec.get('limit')} bytes): later records were dropped")
                continue
            if rec["kind"] == HEADER_KIND:
                continue
            problem = _malformed(rec)
            if problem:
                if len(notes) < 50:
                    notes.append(f"{path}:{number}: {problem}")
                continue
            yield rec


def _malformed(rec: dict) -> str | None:
    """Why a record cannot be drawn (a spool is a file a user hands us: anything may be in it)."""
    t, dur = rec.get("t"), rec.get("dur", 0.0)
    if not _seconds(t) or not _seconds(dur) or dur < 0:
        return "a record without a sane time (t, dur)"
    if not isinstance(rec.get("dom"), int) or not 0 <= rec["dom"] <= MAX_DOMID:
        return "a record without a domain"
    vcpu = rec.get("vcpu", -1)
    if not isinstance(vcpu, int) or not -1 <= vcpu < MAX_VCPUS or not isinstance(rec["kind"], str):
        return "a record with a bad vcpu or kind"
    if "track" in rec and not (isinstance(rec["track"], str) and len(rec["track"]) <= 40):
        return "a record with a bad track"
    return None


def _seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and -1.0 <= value <= MAX_SECONDS


def sorted_records(records: Iterable[dict]) -> Iterator[dict]:
    """`records` in time order; memory holds one chunk (the rest waits in temporary files)."""
    spills: list[IO[str]] = []
    chunk: list[dict] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= CHUNK_RECORDS:
            spills.append(_spill(chunk))
            chunk = []
    chunk.sort(key=_key)
    if not spills:
        yield from chunk
        return
    streams: list[Iterable[dict]] = [(json.loads(line) for line in f) for f in spills]
    streams.append(chunk)
    try:
        yield from heapq.merge(*streams, key=_key)
    finally:
        for f in spills:
            f.close()


def _spill(chunk: list[dict]) -> IO[str]:
    chunk.sort(key=_key)
    f = tempfile.TemporaryFile("w+")
    for rec in chunk:
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    f.seek(0)
    return f


class ChromeWriter:
    """Turns time-ordered records into trace events, written to `out` as they are made."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.count = 0
        self.threads: dict[tuple[int, int | str], int] = {}     # (domid, vcpu or track) -> tid
        self.processes: dict[int, str] = {}
        self.dom0_tracks: dict[str, int] = {}
        self.open_ends: dict[int, list[float]] = collections.defaultdict(list)   # tid -> ends of open slices
        self.flow_ids = itertools.count(1)
        self.kicks: dict[tuple[int, int], collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=MAX_WAITING_FLOWS))      # (to_dom, to_port) -> flow ids
        self.notifies: dict[int, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=MAX_WAITING_FLOWS))      # dom0 port -> flow ids
        self.rates: dict[int, tuple[int, collections.Counter]] = {}   # domid -> (bin, calls by name)
        self.rate_names: dict[int, set[str]] = collections.defaultdict(set)
        self.pinned: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        self.mapped: collections.Counter = collections.Counter()
        self.last_t = 0.0

    # --- output ---
    def event(self, ev: dict[str, Any]) -> None:
        text = json.dumps(ev, separators=(",", ":"), default=str, allow_nan=False)   # NaN is no JSON
        self.out.write(("" if self.count == 0 else ",\n") + text)
        self.count += 1

    def begin(self) -> None:
        self.out.write('{"displayTimeUnit":"ns","traceEvents":[\n')

    def end(self, notes: list[str]) -> None:
        for domid in list(self.rates):
            self._flush_rate(domid, None)
        for domid, label in sorted(self.processes.items()):
            pid = pid_of(domid)
            self.event({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": label}})
            self.event({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": domid}})
        self.out.write('\n],"otherData":' + json.dumps({"producer": "pvhyp", "notes": notes[:50]}) + "}\n")

    # --- tracks ---
    def process(self, domid: int, name: str | None = None) -> int:
        """The pid of a domain; its name (the last one learnt) is written at the end."""
        if name or domid not in self.processes:
            self.processes[domid] = f"d{domid} {name}" if name else ("d0 Domain-0" if domid == 0 else f"d{domid}")
        return pid_of(domid)

    def thread(self, domid: int, which: int | str) -> tuple[int, int]:
        """(pid, tid) of a vCPU (int) or of a dom0 track (str); tids are unique across processes."""
        pid = self.process(domid)
        if isinstance(which, str) and which not in self.dom0_tracks and len(self.dom0_tracks) >= MAX_TRACKS:
            which = "other"
        tid = self.threads.get((domid, which))
        if tid is None:
            if isinstance(which, int):
                tid = pid * 1000 + which
                name = f"vCPU {which}"
            else:
                tid = pid * 1000 + DOM0_TRACK_BASE + len(self.dom0_tracks)
                self.dom0_tracks[which] = tid
                name = which
            self.threads[domid, which] = tid
            self.event({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}})
            self.event({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": tid,
                        "args": {"sort_index": tid - pid * 1000}})
        return pid, tid

    def slice(self, domid: int, which: int | str, name: str, t: float, dur: float, cat: str,
              args: dict[str, Any]) -> tuple[int, int, float]:
        """A complete slice, clamped into the slice it starts inside; returns (pid, tid, ts in us)."""
        pid, tid = self.thread(domid, which)
        ends = self.open_ends[tid]
        while ends and ends[-1] <= t:
            ends.pop()
        end = t + max(dur, 0.0)
        if ends and end > ends[-1]:
            end = ends[-1]
        ends.append(end)
        ts = _us(t)
        self.event({"ph": "X", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": ts,
                    "dur": max(_us(end) - ts, 0.0), "args": args})
        return pid, tid, ts

    def instant(self, domid: int, which: int | str, name: str, t: float, cat: str, args: dict[str, Any]) -> None:
        pid, tid = self.thread(domid, which)
        self.event({"ph": "i", "s": "t", "name": name, "cat": cat, "pid": pid, "tid": tid, "ts": _us(t),
                    "args": args})

    def counter(self, domid: int, name: str, t: float, values: dict[str, float]) -> None:
        self.event({"ph": "C", "name": name, "pid": self.process(domid), "ts": _us(t), "args": values})

    def flow_start(self, pid: int, tid: int, ts: float, name: str) -> int:
        fid = next(self.flow_ids)
        self.event({"ph": "s", "id": fid, "name": name, "cat": "flow", "pid": pid, "tid": tid, "ts": ts})
        return fid

    def flow_end(self, fid: int, pid: int, tid: int, ts: float, name: str) -> None:
        self.event({"ph": "f", "bp": "e", "id": fid, "name": name, "cat": "flow", "pid": pid, "tid": tid, "ts": ts})

    def _end_flows(self, waiting: Iterable[tuple[int, float]], pid: int, tid: int, t: float, ts: float,
                   name: str) -> None:
        for fid, sent in waiting:
            if t - sent <= STALE_FLOW:
                self.flow_end(fid, pid, tid, ts, name)

    # --- records ---
    def add(self, rec: dict) -> None:
        kind = rec["kind"]
        t = float(rec["t"])
        self.last_t = max(self.last_t, t)
        handler = getattr(self, "_" + kind, None)
        if handler is not None:
            handler(rec, rec["dom"], rec.get("vcpu", -1), t)
        elif kind != HEADER_KIND:
            self.instant(rec["dom"], max(rec.get("vcpu", 0), 0), kind, t, "other", _plain(rec))

    def _domain(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        self.process(domid, rec.get("name") or None)

    def _run(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        self.slice(domid, vcpu, "guest running", t, rec.get("dur", 0.0), "run", {"exit": rec.get("exit")})

    def _hypercall(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        name = str(rec.get("name", "?"))
        args = [a for a in rec.get("args", []) if isinstance(a, int)]
        sub = subop_name(name, args[0]) if args else None
        shown = [sub or hex(args[0])] + [hex(a) for a in args[1:]] if args else []
        title = f"{name}({sub})" if sub else name
        result = rec.get("result")
        self.slice(domid, vcpu, title, t, rec.get("dur", 0.0), "hypercall",
                   {"nr": rec.get("nr"), "args": ", ".join(shown), "result": result_name(result)})
        self._count_rate(domid, name, t)

    def _trap(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        vector = rec.get("vector")
        self.instant(domid, vcpu, f"trap {trap_name(vector) if isinstance(vector, int) else vector}", t, "trap",
                     _plain(rec))

    def _event_upcall(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        pid, tid, ts = self.slice(domid, vcpu, "event upcall", t, TINY, "event", _plain(rec))
        for key in [k for k in self.kicks if k[0] == domid]:        # every kick sent to this domain
            self._end_flows(self.kicks.pop(key), pid, tid, t, ts, "kick")

    def _event(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        op = rec.get("op")
        if op == "send":
            to = (rec.get("to_dom"), rec.get("to_port"))
            pid, tid, ts = self.slice(domid, max(vcpu, 0), f"send port {rec.get('port')} -> d{to[0]}:{to[1]}", t,
                                      TINY, "event", _plain(rec))
            port = rec.get("port")
            if domid == 0 and isinstance(port, int):    # dom0 kicking a frontend: a backend's notify ends here
                self._end_flows(self.notifies.pop(port, ()), pid, tid, t, ts, "notify")
            if isinstance(to[0], int) and isinstance(to[1], int) and to[0] != domid:
                self.kicks[to[0], to[1]].append((self.flow_start(pid, tid, ts, "kick"), t))
        else:
            self.instant(domid, max(vcpu, 0), f"{op} port {rec.get('port')}", t, "event", _plain(rec))

    def _grant(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        op = rec.get("op")
        self.instant(domid, max(vcpu, 0), f"grant {op} d{rec.get('granter', rec.get('to'))} ref {rec.get('ref')}",
                     t, "grant", _plain(rec))
        if op in ("map", "unmap"):
            self.mapped[domid] = max(0, self.mapped[domid] + (1 if op == "map" else -1))
            self.counter(domid, "mapped", t, {"grants": self.mapped[domid]})

    def _mm(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        level = rec.get("level")
        if rec.get("op") not in ("pin", "unpin") or level not in (1, 2, 3, 4):
            return
        pins = self.pinned[domid]
        pins[level] = max(0, pins[level] + (1 if rec["op"] == "pin" else -1))
        self.counter(domid, "pinned", t, {f"L{n} tables": pins[n] for n in (1, 2, 3, 4)})

    def _counter(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        if rec.get("name") == "pending events" and isinstance(rec.get("value"), (int, float)):
            self.counter(domid, "pending", t, {"events": rec["value"]})

    def _dom0(self, rec: dict, domid: int, vcpu: int, t: float) -> None:
        track = str(rec.get("track", "dom0"))
        name = str(rec.get("name", "?"))
        args = _plain(rec)
        port = rec.get("port")
        if name == "notify frontend" and isinstance(port, int):
            pid, tid, ts = self.slice(0, track, name, t, TINY, "backend", args)
            self.notifies[port].append((self.flow_start(pid, tid, ts, "notify"), t))
        elif "dur" in rec:
            pid, tid, ts = self.slice(0, track, name, t, rec["dur"], "backend", args)
            named = _DOMAIN_NAME_PATH.fullmatch(str(rec.get("path", "")))
            if name == "XS_WRITE" and named and rec.get("result") == "OK":   # the toolstack names a domain
                self.process(int(named.group(1)), str(rec.get("value", "")) or None)
            if name.endswith(" kick") and isinstance(port, int):
                self._end_flows(self.kicks.pop((0, port), ()), pid, tid, t, ts, "kick")
        else:
            self.instant(0, track, name, t, "backend", args)

    # --- hypercalls/s ---
    def _count_rate(self, domid: int, name: str, t: float) -> None:
        index = int(t / RATE_BIN)
        current = self.rates.get(domid)
        if current is not None and current[0] != index:
            self._flush_rate(domid, index)
            current = None
        if current is None:
            current = self.rates[domid] = (index, collections.Counter())
        current[1][name] += 1
        self.rate_names[domid].add(name)

    def _flush_rate(self, domid: int, next_index: int | None) -> None:
        index, calls = self.rates.pop(domid)
        names = sorted(self.rate_names[domid])
        self.counter(domid, "hypercalls/s", index * RATE_BIN, {n: calls[n] / RATE_BIN for n in names})
        if next_index is None or next_index > index + 1:    # a quiet stretch reads as zero, not a ramp
            self.counter(domid, "hypercalls/s", (index + 1) * RATE_BIN, {n: 0 for n in names})


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _plain(rec: dict) -> dict[str, Any]:
    """A record's own fields as slice arguments (addresses in hex)."""
    return {k: (hex(v) if k in ADDRESS_FIELDS and isinstance(v, int) else v) for k, v in rec.items()
            if k not in ("t", "dur", "kind", "dom", "vcpu", "track", "name")}


def convert(records: Iterable[dict], out: IO[str], notes: list[str]) -> int:
    """Time-ordered records to a whole trace-event JSON document on `out`; returns the event count."""
    writer = ChromeWriter(out)
    writer.begin()
    writer.process(0)
    for rec in records:
        try:
            writer.add(rec)
        except (TypeError, ValueError, KeyError) as e:
            if len(notes) < 50:
                notes.append(f"record {rec.get('kind')!r} at t={rec.get('t')} skipped: {e}")
    writer.end(notes)
    return writer.count


def convert_file(spool: str, output: str) -> list[str]:
    """A spool file to a Chrome trace-event JSON file (written beside, then renamed); returns notes."""
    notes: list[str] = []
    tmp = output + ".part"
    with open(tmp, "w") as out:
        convert(sorted_records(read_spool(spool, notes)), out, notes)
    os.replace(tmp, output)
    return notes
