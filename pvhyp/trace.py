"""One event stream for everything a guest does that the hypervisor sees.

Hypercalls, traps, event deliveries and grant operations are emitted here;
`--trace FILE`, crash diagnostics and tests all read the same records.
Emitting is cheap when nobody listens: callers test `trace.enabled` first,
except for the small always-on history kept per domain for post-mortems.

A record is a dict: `t` (seconds since `start`, on the host's monotonic
clock, which dom0's process shares), `kind`, `dom`, `vcpu`, then the kind's
fields. A record that covers a stretch of time (a hypercall, a vCPU's run
in the engine) gives its own `t` (when it began) and `dur` (seconds): it is
emitted once it ended, so records are not in time order (the timeline
converter, pvhyp/timeline, sorts them).
"""
from __future__ import annotations

import collections
import json
import threading
import time
from typing import Callable

HISTORY = 64   # records kept per domain for crash diagnostics


class Trace:
    def __init__(self) -> None:
        self._sinks: list[Callable[[dict], None]] = []
        self._history: dict[int, collections.deque] = {}
        self._lock = threading.Lock()
        self.start = time.monotonic()     # t = 0; dom0 is told it so that its records line up

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def add_sink(self, sink: Callable[[dict], None]) -> None:
        self._sinks.append(sink)

    def now(self) -> float:
        """The `t` of a record made now (a slice's start, taken before the work it times)."""
        return time.monotonic() - self.start

    def emit(self, kind: str, domid: int, vcpu: int, **fields) -> None:
        rec = {"t": time.monotonic() - self.start, "kind": kind, "dom": domid, "vcpu": vcpu, **fields}
        with self._lock:
            hist = self._history.get(domid)
            if hist is None:
                hist = self._history[domid] = collections.deque(maxlen=HISTORY)
            hist.append(rec)
            for sink in self._sinks:
                sink(rec)

    def record(self, kind: str, domid: int, vcpu: int, **fields) -> None:
        """To the sinks only: the timeline's own records (vCPU runs, pins), which would crowd the
        hypercalls out of a domain's short post-mortem history."""
        rec = {"t": time.monotonic() - self.start, "kind": kind, "dom": domid, "vcpu": vcpu, **fields}
        for sink in self._sinks:
            sink(rec)

    def remove_sink(self, sink: Callable[[dict], None]) -> None:
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    def remember(self, kind: str, domid: int, vcpu: int, **fields) -> None:
        """Keep a record in the domain's history only (always on, no sinks)."""
        if self._sinks:
            self.emit(kind, domid, vcpu, **fields)
            return
        hist = self._history.get(domid)
        if hist is None:
            hist = self._history[domid] = collections.deque(maxlen=HISTORY)
        hist.append({"kind": kind, "dom": domid, "vcpu": vcpu, **fields})

    def history(self, domid: int) -> list[dict]:
        return list(self._history.get(domid, ()))

    def forget(self, domid: int) -> None:
        self._history.pop(domid, None)


def format_record(rec: dict) -> str:
    """One line per record: time, d<dom>v<vcpu>, kind, then the fields."""
    head = f"{rec.get('t', 0.0):12.6f} d{rec['dom']}v{rec['vcpu']} {rec['kind']}"
    rest = {k: v for k, v in rec.items() if k not in ("t", "dom", "vcpu", "kind")}
    return head + " " + json.dumps(rest, default=str, separators=(",", ":"))
