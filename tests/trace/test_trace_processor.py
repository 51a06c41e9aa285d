"""The issue's check: Perfetto's own trace processor opens a produced trace and finds the tracks
and a known slice (where PVHYP_TRACE_PROCESSOR names a trace_processor_shell: tests/trace/perfetto_kit.py)."""
from __future__ import annotations

import pytest

from tests.trace.trace_kit import SHUTDOWN_SLICE, XTF, needs_trace_processor, query, traced_xtf


@needs_trace_processor
@pytest.mark.skipif(XTF is None, reason="no XTF kernels")
def test_trace_processor_sees_the_vcpu_track_and_a_hypercall_slice(tmp_path):
    trace = str(tmp_path / "xtf.json")
    traced_xtf(trace)
    rows = query(trace, SHUTDOWN_SLICE.format(name="sched_op(SCHEDOP_shutdown)"))
    assert [(r.thread, r.process) for r in rows] == [("vCPU 0", "d1 test-pv64-example")]
    assert {"vCPU 0", "xenstored"} <= {r.name for r in query(trace, "select name from thread")}
    counters = {r.name for r in query(trace, "select name from counter_track")}
    assert any(name.startswith("hypercalls/s") for name in counters), counters
