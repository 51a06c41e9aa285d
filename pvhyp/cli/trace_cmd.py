"""`pvhyp trace convert IN.jsonl OUT.json` and `pvhyp trace render TRACE OUT.svg`.

convert: a raw trace (`--trace FILE.jsonl`: both processes' records) to the
Chrome trace-event JSON that Perfetto's UI (ui.perfetto.dev, or a local
copy) and chrome://tracing open.
render: a timeline picture drawn by pvhyp itself (pvhyp/timeline/render.py);
docs/img/timeline.svg is made this way (README, "Teaching PV").
"""
from __future__ import annotations

import argparse
import io
import os
import sys

from pvhyp.cli.errors import UserError

RENDER_MAX_BYTES = 256 << 20    # a trace larger than this is cut with --trace-limit or a window first


def add_parser(sub) -> None:
    p = sub.add_parser("trace", help="turn a --trace file into a timeline (convert) or a picture (render)",
                       description="Work with the files `pvhyp run/up --trace FILE` writes.")
    verbs = p.add_subparsers(dest="verb", required=True)
    c = verbs.add_parser("convert", help="a raw trace (.jsonl) to Chrome trace-event JSON (.json)",
                         description="Convert the raw records of `--trace FILE.jsonl` into the Chrome "
                                     "trace-event JSON that Perfetto and chrome://tracing open.")
    c.add_argument("input", help="the raw trace (.jsonl)")
    c.add_argument("output", help="the timeline to write (.json)")
    c.add_argument("--remove-input", action="store_true", help="remove the raw trace once converted")
    c.set_defaults(func=convert)
    r = verbs.add_parser("render", help="draw a timeline picture (SVG) of a trace",
                         description="Draw a trace's timeline: a row per vCPU and dom0 backend, slices "
                                     "coloured by kind, ring kicks as arrows, hypercalls/s, a time axis.")
    r.add_argument("trace", help="a trace: .json (Chrome trace-event) or .jsonl (raw records)")
    r.add_argument("output", help="the picture to write (.svg)")
    r.add_argument("--start", type=float, help="seconds from the trace's first slice (default 0)")
    r.add_argument("--duration", type=float, help="seconds to draw (default: to the end)")
    r.add_argument("--focus", metavar="NAME", help="draw around the first slice whose name contains NAME")
    r.add_argument("--width", type=int, default=1200, help="picture width in pixels (default 1200)")
    r.add_argument("--title", default=None, help="the picture's title")
    r.set_defaults(func=render)
    d = verbs.add_parser("demo", help="trace a Debian boot that reads a disk, and draw one disk read",
                         description="Boot Debian's kernel (`pvhyp image debian`, built on first use) with a "
                                     "scratch disk, trace it to TRACE.json, power it off at its shell, then "
                                     "draw the first disk read (BLKIF_OP_READ) with what surrounds it. "
                                     "docs/img/timeline.svg is made by: "
                                     "bin/pvhyp trace demo /tmp/debian.json docs/img/timeline.svg")
    d.add_argument("trace", help="the timeline to write (.json)")
    d.add_argument("picture", nargs="?", help="also draw it here (.svg)")
    d.add_argument("--focus", default="BLKIF_OP_READ", help="the slice the picture is drawn around")
    d.add_argument("--duration", type=float, default=0.004, help="seconds drawn (default 0.004)")
    d.set_defaults(func=demo)


def _spool_notes(notes: list[str]) -> None:
    for note in notes[:10]:
        print(f"pvhyp: trace: {note}", file=sys.stderr)


def _readable(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such trace file")


def convert(args) -> int:
    from abi.trace_spool import HEADER_KIND
    from pvhyp.timeline.chrome import convert_file
    _readable(args.input)
    if not args.output.endswith(".json"):
        raise UserError(f"{args.output}: the timeline is written as .json (Chrome trace-event JSON)")
    with open(args.input, "rb") as f:
        first = f.readline(4096)
    if HEADER_KIND.encode() not in first:
        raise UserError(f"{args.input}: not a raw pvhyp trace (`--trace FILE.jsonl` writes one)")
    try:
        notes = convert_file(args.input, args.output)
    except OSError as e:
        raise UserError(f"{args.output}: {e.strerror or e}") from None
    _spool_notes(notes)
    if args.remove_input:
        os.unlink(args.input)
    print(f"pvhyp: wrote {args.output} (open it in Perfetto's UI or chrome://tracing)", file=sys.stderr)
    return 0


def load_timeline(path: str):
    """A trace file (.json, or .jsonl converted in memory), checked: (problems, Timeline)."""
    from pvhyp.timeline.check import load_strict, validate
    from pvhyp.timeline.chrome import convert, read_spool, sorted_records
    _readable(path)
    if os.path.getsize(path) > RENDER_MAX_BYTES:
        raise UserError(f"{path}: over {RENDER_MAX_BYTES >> 20} MiB; trace a shorter run (--trace-limit MB)")
    if path.endswith(".jsonl"):
        notes: list[str] = []
        text = io.StringIO()
        convert(sorted_records(read_spool(path, notes)), text, notes)
        raw = text.getvalue()
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read()
    try:
        doc = load_strict(raw)
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
    return validate(doc)


def render(args) -> int:
    from pvhyp.timeline.render import choose_window, render_svg
    if not args.output.endswith(".svg"):
        raise UserError(f"{args.output}: pictures are written as .svg (any browser shows them; "
                        "rsvg-convert or a browser screenshot makes a PNG)")
    if args.width < 400 or args.width > 20000:
        raise UserError(f"--width {args.width}: give 400 to 20000 pixels")
    for name in ("start", "duration"):
        value = getattr(args, name)
        if value is not None and not (value >= 0):
            raise UserError(f"--{name} {value}: give seconds >= 0")
    problems, timeline = load_timeline(args.trace)
    if problems:
        raise UserError(f"{args.trace}: not a well-formed trace ({problems[0]})")
    try:
        window = choose_window(timeline, args.start, args.duration, args.focus)
    except ValueError as e:
        raise UserError(str(e)) from None
    title = args.title or f"pvhyp timeline: {os.path.basename(args.trace)}"
    svg = render_svg(timeline, window, args.width, title)
    try:
        with open(args.output, "w") as f:
            f.write(svg)
    except OSError as e:
        raise UserError(f"{args.output}: {e.strerror or e}") from None
    print(f"pvhyp: wrote {args.output} ({window.span / 1e3:,.1f} ms drawn)", file=sys.stderr)
    return 0


DEMO_TIMEOUT = 600.0            # seconds: the boot takes some ten on the software CPU


def demo(args) -> int:
    import tempfile

    from dom0.images import debian
    from pvhyp.cli.bench_boot import MARKER, guest_config
    from pvhyp.cli.run_cmd import run_guest
    if not args.trace.endswith(".json"):
        raise UserError(f"{args.trace}: the demo's trace is written as .json")
    if args.picture is not None and not args.picture.endswith(".svg"):
        raise UserError(f"{args.picture}: pictures are written as .svg")
    try:
        image = debian.find_or_build()
    except debian.ImageError as e:
        raise UserError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="pvhyp-demo-") as scratch:
        disk = os.path.join(scratch, "scratch.img")
        with open(disk, "wb") as f:
            f.truncate(8 << 20)         # Linux reads its partition table: the disk reads to follow
        config = guest_config(image, 256, name="debian-demo", disks=[f"{disk},raw,xvda,w"])
        with open(os.devnull, "rb") as nothing:
            result = run_guest(config, "<trace demo>", DEMO_TIMEOUT, args.trace, stdin_fd=nothing.fileno(),
                               input_after=MARKER, input_at_end=b"poweroff -f\n")
    if result.reason != "poweroff":
        raise UserError(f"the demo guest did not power off ({result.reason}{': ' + result.error if result.error else ''})")
    print(f"pvhyp: wrote {args.trace} ({result.seconds:.1f} s boot and poweroff)", file=sys.stderr)
    if args.picture is None:
        return 0
    return render(argparse.Namespace(trace=args.trace, output=args.picture, start=None, duration=args.duration,
                                     focus=args.focus, width=1200,
                                     title=f"One disk read during a Debian boot under pvhyp ({args.focus})"))


if __name__ == "__main__":      # `pvhyp up --trace FILE.json`: hostd's conversion after `pvhyp down`
    from pvhyp.cli import main
    sys.exit(main(["trace", *sys.argv[1:]]))
