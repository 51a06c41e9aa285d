"""The issue's check: Perfetto's own trace processor opens a produced trace and finds the tracks
and a known slice.

PyPI's `perfetto` drives the `trace_processor_shell` binary, which it downloads from Perfetto's
servers; no package of PyPI, npm or Debian ships that binary, so on a machine that reaches only
those registries this test needs PVHYP_TRACE_PROCESSOR=/path/to/trace_processor_shell (and
`pip install perfetto`). Everywhere else tests/trace/test_timeline_runs.py holds the same traces
to the importer's rules offline (pvhyp.timeline.check).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pvhyp.cli.xtf_cmd import default_xtf_dir

SHELL = os.environ.get("PVHYP_TRACE_PROCESSOR")
XTF = default_xtf_dir()
pytestmark = pytest.mark.skipif(not SHELL or not os.access(SHELL, os.X_OK) or XTF is None,
                                reason="no trace_processor_shell (set PVHYP_TRACE_PROCESSOR) or no XTF kernels")


def test_trace_processor_sees_the_vcpu_track_and_a_hypercall_slice(tmp_path):
    perfetto = pytest.importorskip("perfetto.trace_processor")
    trace = tmp_path / "xtf.json"
    subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())", "run",
                    "--kernel", os.path.join(XTF, "test-pv64-example"), "--trace", str(trace)],
                   check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    config = perfetto.TraceProcessorConfig(bin_path=SHELL)
    with perfetto.TraceProcessor(trace=str(trace), config=config) as tp:
        rows = list(tp.query("""
            select s.name as slice, t.name as thread, p.name as process
            from slice s join thread_track tt on s.track_id = tt.id
            join thread t using (utid) join process p using (upid)
            where s.name = 'sched_op(SCHEDOP_shutdown)'"""))
        assert [(r.thread, r.process) for r in rows] == [("vCPU 0", "d1 test-pv64-example")]
        threads = {r.name for r in tp.query("select name from thread")}
        assert {"vCPU 0", "xenstored"} <= threads
        counters = {r.name for r in tp.query("select name from counter_track")}
        assert any(name.startswith("hypercalls/s") for name in counters), counters
