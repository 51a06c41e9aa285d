"""`pvhyp lessons run LESSON.md...`: run the labs of docs/lessons/ as the test suite does.

Every fenced step of the lesson runs in a fresh lab directory (its own
`pvhyp up` run directory); each step prints one line, a failure prints what
the lesson expected beside what came out and ends that lesson. The rules of
the Markdown are in pvhyp/cli/lessons.py.
"""
from __future__ import annotations

import functools
import pathlib

from pvhyp.cli.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("lessons", help="run the teaching labs (docs/lessons/*.md), checking every output")
    lessons_sub = p.add_subparsers(dest="lessons_command", metavar="ACTION", required=True)
    run_p = lessons_sub.add_parser("run", help="run lessons: every command in them, outputs compared")
    run_p.add_argument("lessons", nargs="+", metavar="LESSON.md")
    run_p.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (one lesson only)")
    run_p.add_argument("-v", "--verbose", action="store_true", help="print every step's output")
    run_p.set_defaults(func=run)


def run(args) -> int:
    from pvhyp.cli import lessons

    paths = [pathlib.Path(p) for p in args.lessons]
    for path in paths:
        if not path.is_file():
            raise UserError(f"no lesson file {path}")
    if args.keep and len(paths) > 1:
        raise UserError("--keep takes one lesson")
    if lessons.find_xtf() is None:
        print("pvhyp: note: no XTF kernels ($PVHYP_XTF_DIR); steps using $XTF will fail")
    failed = 0
    for path in paths:
        print(f"== {path}")
        report = functools.partial(_report, path, args.verbose)
        try:
            results = lessons.run_lesson(path, report, pathlib.Path(args.keep) if args.keep else None)
        except lessons.LessonError as e:
            raise UserError(str(e)) from None
        if results and not results[-1].ok:
            failed += 1
    print(f"{len(paths) - failed} of {len(paths)} lessons passed")
    return 1 if failed else 0


def _report(path: pathlib.Path, verbose: bool, result) -> None:
    """One line per step; a failure also shows the lesson's expectation beside the output."""
    from pvhyp.cli import lessons

    mark = "ok  " if result.ok else "FAIL"
    print(f"{mark} {result.seconds:6.1f}s  line {result.step.line}: {result.step.title()}", flush=True)
    if verbose and result.output.strip():
        print("      " + result.output.rstrip().replace("\n", "\n      "))
    if not result.ok:
        print(lessons.describe_failure(result, path))
