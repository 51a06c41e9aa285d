"""dom0's own work on the timeline: its backends' records, appended to the hypervisor's trace spool.

The hypervisor sees dom0's hypercalls but not what dom0 does between them:
which ring a kick woke, which disk request it served, which packet it
forwarded, which xenstore request it answered. Under `--trace` the
hypervisor passes dom0 the spool's descriptor and its clock origin
(`python -m dom0 --trace-fd N --trace-start T`); dom0 appends its records
to the same file (abi.trace_spool: O_APPEND, whole lines), each on a
`track` of its own (a thread of dom0 in the picture), on the same clock.
Nobody listening: `recorder.enabled` is False and every hook is one test.

Why a file rather than the channel: a record costs dom0 one list append,
not a round trip through the hypervisor, and dom0's records reach the
spool even when the hypervisor is busy with a guest.
"""
from __future__ import annotations

import time
from typing import Any

from abi.io import xs_wire
from abi.trace_spool import DEFAULT_LIMIT, SpoolWriter

# The track (a thread of dom0 on the timeline) of each backend kind's records.
TRACK_OF_KIND = {"vbd": "blkback", "vif": "netback"}
XENSTORED_TRACK = "xenstored"

_NOT_TYPES = {"XS_DEBUG", "XS_TYPE_COUNT", "XS_INVALID", "XS_WATCH_PATH", "XS_WATCH_TOKEN"}  # aliases, indexes
XS_TYPE_NAMES = {value: name for name, value in vars(xs_wire).items()
                 if name.startswith("XS_") and isinstance(value, int) and name not in _NOT_TYPES}


class Dom0Recorder:
    """Off until `open` is called (dom0 started with --trace-fd)."""

    def __init__(self) -> None:
        self.writer: SpoolWriter | None = None
        self.start = 0.0
        self.enabled = False

    def open(self, fd: int, start: float, limit: int = DEFAULT_LIMIT) -> None:
        self.writer = SpoolWriter(fd, limit)
        self.start = start
        self.enabled = True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer, self.enabled = None, False

    def now(self) -> float:
        return time.monotonic() - self.start

    def slice(self, track: str, name: str, started: float, **fields: Any) -> None:
        """Work on `track` from `started` (a now()) until now."""
        if self.writer is not None:
            self.writer.write({"t": started, "dur": self.now() - started, "kind": "dom0", "dom": 0, "vcpu": -1,
                               "track": track, "name": name, **fields})

    def instant(self, track: str, name: str, **fields: Any) -> None:
        if self.writer is not None:
            self.writer.write({"t": self.now(), "kind": "dom0", "dom": 0, "vcpu": -1,
                               "track": track, "name": name, **fields})

    # --- xenstored's request observer (dom0.xenstored.core.Engine.request_observer) ---
    def request(self, domid: int, msg_type: int, payload: bytes, reply_type: int, reply: bytes,
                started: float) -> None:
        path, _, value = payload.partition(b"\0")
        result = reply.rstrip(b"\0").decode(errors="replace")[:40] if reply_type == xs_wire.XS_ERROR else "OK"
        fields = {"value": value[:40].decode(errors="replace")} if msg_type == xs_wire.XS_WRITE else {}
        self.slice(XENSTORED_TRACK, XS_TYPE_NAMES.get(msg_type, f"XS_{msg_type}"), started,
                   client=domid, path=path[:80].decode(errors="replace"), result=result, **fields)


recorder = Dom0Recorder()
