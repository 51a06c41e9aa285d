"""One event stream for everything a guest does that the hypervisor sees.

Hypercalls, traps, event deliveries and grant operations are emitted here;
`--trace FILE`, crash diagnostics and tests all read the same records.
Emitting is cheap when nobody listens: callers test `trace.enabled` first,
except for the small always-on history kept per domain for post-mortems.
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
        self._t0 = time.monotonic()

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def add_sink(self, sink: Callable[[dict], None]) -> None:
        self._sinks.append(sink)

    def emit(self, kind: str, domid: int, vcpu: int, **fields) -> None:
        rec = {"t": time.monotonic() - self._t0, "kind": kind, "dom": domid, "vcpu": vcpu, **fields}
        with self._lock:
            hist = self._history.get(domid)
            if hist is None:
                hist = self._history[domid] = collections.deque(maxlen=HISTORY)
            hist.append(rec)
            for sink in self._sinks:
                sink(rec)

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
