"""One traced run: the spool both processes append to, the counter sampler, the conversion at the end.

The output's suffix chooses the format (`output_format`): `.json` is the
Chrome trace-event JSON (the spool is kept beside it while the run goes
on, converted and removed at the end), `.jsonl` is the spool itself
(`pvhyp trace convert` turns it into `.json` later), anything else the
one-line-per-record text of pvhyp/cli/trace_format.

Counters come from records (hypercalls/s, pinned tables, mapped grants)
except pending events, which a guest clears in its own memory without a
hypercall: a sampler thread reads each domain's shared_info bitmaps every
SAMPLE_SECONDS instead.
"""
from __future__ import annotations

import os
import threading

from abi.trace_spool import DEFAULT_LIMIT, SpoolWriter
from pvhyp.event_channel.two_level import OFF_EVTCHN_MASK, OFF_EVTCHN_PENDING
from pvhyp.memory import PAGE_SHIFT

SAMPLE_SECONDS = 0.05
_BITMAP_BYTES = 64 * 8          # shared_info's evtchn_pending/evtchn_mask: 64 xen_ulong_t each
SPOOL_SUFFIX = ".spool"


def output_format(path: str) -> str:
    """"chrome" (.json), "jsonl" (the spool), or "text" (one line per record)."""
    if path.endswith(".json"):
        return "chrome"
    if path.endswith(".jsonl"):
        return "jsonl"
    return "text"


class TraceSession:
    """Spools a hypervisor's records (and dom0's, once `dom0_args` went on dom0's command line)."""

    def __init__(self, hv, output: str, limit: int = DEFAULT_LIMIT):
        self.hv = hv
        self.output = output
        self.format = output_format(output)
        if self.format == "text":
            raise ValueError("a text trace needs no session (pvhyp.cli.trace_format.trace_to_file)")
        self.spool_path = output if self.format == "jsonl" else output + SPOOL_SUFFIX
        self.writer = SpoolWriter.create(self.spool_path, hv.trace.start, limit)
        self.limit = limit
        hv.trace.add_sink(self.writer.write)
        self._named: dict[int, str] = {}
        self._pending: dict[int, int] = {}
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="trace-sampler", daemon=True)
        self._sampler.start()
        self.closed = False

    def dom0_args(self) -> tuple[list[str], list[int]]:
        """dom0's command-line arguments and the descriptor it inherits to append its own records."""
        return (["--trace-fd", str(self.writer.fd), "--trace-start", repr(self.hv.trace.start),
                 "--trace-limit", str(self.limit)], [self.writer.fd])

    # --- the sampler ---
    def _sample_loop(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                self.sample()
            except Exception:       # a domain going away under us: the next sample is whole again
                continue

    def sample(self) -> None:
        hv = self.hv
        buf = hv.memory.buf
        trace = hv.trace
        for domain in list(hv.domains.values()):
            name = str(domain.name or "")
            if self._named.get(domain.domid) != name:     # the timeline's process names
                self._named[domain.domid] = name
                trace.record("domain", domain.domid, -1, name=name)
            mfn = domain.shared_info_mfn
            if not mfn:
                continue
            base = mfn << PAGE_SHIFT
            pending = int.from_bytes(buf[base + OFF_EVTCHN_PENDING:base + OFF_EVTCHN_PENDING + _BITMAP_BYTES], "little")
            mask = int.from_bytes(buf[base + OFF_EVTCHN_MASK:base + OFF_EVTCHN_MASK + _BITMAP_BYTES], "little")
            count = (pending & ~mask).bit_count()
            if self._pending.get(domain.domid) != count:      # a counter track draws steps: changes only
                self._pending[domain.domid] = count
                trace.record("counter", domain.domid, -1, name="pending events", value=count)

    # --- the end ---
    def close(self, convert: bool = True) -> list[str]:
        """Stop recording and write the output; returns the converter's notes (empty: all well).
        convert=False leaves a .json's spool for someone else to convert (`pvhyp trace convert`)."""
        if self.closed:
            return []
        self.closed = True
        self._stop.set()
        self._sampler.join(timeout=1.0)
        self.hv.trace.remove_sink(self.writer.write)
        self.writer.close()
        if self.format != "chrome" or not convert:
            return []
        from pvhyp.timeline.chrome import convert_file
        try:
            return convert_file(self.spool_path, self.output)
        finally:
            try:
                os.unlink(self.spool_path)
            except OSError:
                pass
