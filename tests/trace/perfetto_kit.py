"""Perfetto's trace processor where one is present: PVHYP_TRACE_PROCESSOR=/path/to/trace_processor_shell.

PyPI's `perfetto` drives that binary but fetches it from Perfetto's servers at run time; no
package of PyPI, npm or Debian ships it, so a machine that reaches only those registries has
none and these checks are skipped there (pvhyp.timeline.check holds every trace to the JSON
importer's rules offline instead).
"""
from __future__ import annotations

import os

import pytest

SHELL = os.environ.get("PVHYP_TRACE_PROCESSOR")
HAVE_TRACE_PROCESSOR = bool(SHELL) and os.access(SHELL or "", os.X_OK)
needs_trace_processor = pytest.mark.skipif(not HAVE_TRACE_PROCESSOR,
                                           reason="no trace_processor_shell (set PVHYP_TRACE_PROCESSOR)")

SHUTDOWN_SLICE = """
    select s.name as slice, t.name as thread, p.name as process
    from slice s join thread_track tt on s.track_id = tt.id
    join thread t using (utid) join process p using (upid)
    where s.name = '{name}'"""


def query(trace: str, sql: str) -> list:
    """The rows of `sql` over `trace`, through Perfetto's own trace processor."""
    perfetto = pytest.importorskip("perfetto.trace_processor")
    config = perfetto.TraceProcessorConfig(bin_path=SHELL)
    with perfetto.TraceProcessor(trace=trace, config=config) as tp:
        return list(tp.query(sql))
