"""The trace tests' helpers: a traced `pvhyp run`, the offline check, and Perfetto's trace
processor where one is present: PVHYP_TRACE_PROCESSOR=/path/to/trace_processor_shell.

PyPI's `perfetto` drives that binary but fetches it from Perfetto's servers at run time; no
package of PyPI, npm or Debian ships it, so a machine that reaches only those registries has
none and these checks are skipped there (pvhyp.timeline.check holds every trace to the JSON
importer's rules offline instead).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pvhyp.cli.xtf_cmd import default_xtf_dir
from pvhyp.timeline.check import Timeline, load_strict, validate

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


XTF = default_xtf_dir()
needs_xtf = pytest.mark.skipif(XTF is None, reason="no XTF kernels (../shared/xtf or $PVHYP_XTF_DIR)")
PVHYP = [sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())"]


def pvhyp(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The CLI as a user runs it (a process tree of its own), stdin closed."""
    return subprocess.run([*PVHYP, *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def traced_xtf(trace: str, kernel: str = "test-pv64-example") -> None:
    """`pvhyp run --kernel XTF --trace TRACE`, which must succeed."""
    done = pvhyp("run", "--kernel", os.path.join(XTF or "", kernel), "--trace", trace)
    assert done.returncode == 0, done.stderr[-2000:]


def checked(path: str) -> Timeline:
    """A produced trace, held to the trace-event rules (pvhyp.timeline.check): what it holds."""
    with open(path) as f:
        problems, timeline = validate(load_strict(f.read()))
    assert problems == [], problems[:10]
    return timeline
