"""`--trace FILE` and `--trace-limit MB` of `pvhyp run` and `pvhyp up`: the options and the session
they open on a host (pvhyp.timeline.session), kept apart from `pvhyp trace` so that the run and
up commands do not import the commands that import them."""
from __future__ import annotations

import argparse

from abi.trace_spool import DEFAULT_LIMIT
from pvhyp.cli.errors import UserError


def open_trace(host, path: str | None, limit: int | None):
    """--trace PATH on a pvhyp.host.Host (before dom0 starts): a text trace of the guests, or
    (.json/.jsonl) a timeline session, which dom0 appends its own records to."""
    if not path:
        return None
    from pvhyp.timeline.session import TraceSession, output_format
    if output_format(path) == "text":
        from pvhyp.cli.trace_format import trace_to_file
        trace_to_file(host.hv.trace, path, skip_domids={0})
        return None
    try:
        session = TraceSession(host.hv, path, limit or DEFAULT_LIMIT)
    except OSError as e:
        raise UserError(f"--trace {path}: {e.strerror or e}") from None
    host.trace_session = session
    return session


def add_trace_arguments(p, when: str = "") -> None:
    """--trace FILE and --trace-limit MB (`pvhyp run` and `pvhyp up`)."""
    p.add_argument("--trace", metavar="FILE",
                   help="trace the run to FILE: .json = a timeline Perfetto and chrome://tracing open "
                        "(every domain, dom0's backends, flows, counters); .jsonl = the raw records "
                        "(`pvhyp trace convert` makes the .json later); any other name = one line per "
                        "hypercall, trap and event delivery of the guests" + (f"; {when}" if when else ""))
    p.add_argument("--trace-limit", metavar="MB", type=_megabytes, default=DEFAULT_LIMIT,
                   help=f"stop recording once the trace holds this many MiB (default {DEFAULT_LIMIT >> 20})")


def _megabytes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of MiB")
    return value << 20
