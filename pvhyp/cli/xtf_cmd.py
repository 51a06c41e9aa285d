"""`pvhyp xtf DIR`: run XTF's PV64 test kernels, each in a fresh hypervisor, as xtf-runner would.

Every kernel runs under the xl.cfg XTF's runner gives PV tests (type pv,
vcpus 1, memory 128, plus what the test's own build adds: xsa-296 has two
vCPUs), pv-iopl once per variation (cmdline "hypercall" and "vmassist"). The verdict is the last `Test result:` console line; a run
without one (crash, timeout, start-up failure) is CRASH. The exit status is
xtf-runner's for the worst verdict: 0 SUCCESS, 3 SKIP, 4 ERROR, 5 FAILURE,
6 CRASH.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass

from pvhyp.cli.accel import add_accel_argument, apply_accel
from pvhyp.cli.errors import UserError

KERNEL_PREFIX = "test-pv64-"
VARIATIONS = {"pv-iopl": ("hypercall", "vmassist")}
# What XTF's build adds to a test's xl.cfg (its Makefile's VCPUS, its extra.cfg.in).
EXTRA_CONFIG = {"xsa-296": ("vcpus = 2",), "xsa-317": ("max_event_channels = 4096",)}
# xtf-runner's exit status per verdict; the worst verdict wins.
EXIT_STATUS = {"SUCCESS": 0, "SKIP": 3, "ERROR": 4, "FAILURE": 5, "CRASH": 6}
_RESULT = re.compile(rb"Test result: (SUCCESS with warnings|SUCCESS|SKIP|ERROR|FAILURE)")


@dataclass
class Case:
    name: str           # "example", "pv-iopl~hypercall"
    kernel: str
    cmdline: str = ""

    def config(self) -> str:
        lines = [f'name = "xtf-{self.name.replace("~", "-")}"', 'type = "pv"', f'kernel = "{self.kernel}"',
                 "vcpus = 1", "memory = 128"]
        if self.cmdline:
            lines.append(f'cmdline = "{self.cmdline}"')
        lines.extend(EXTRA_CONFIG.get(self.name.split("~")[0], ()))
        return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    name: str
    verdict: str        # SUCCESS, SUCCESS with warnings, SKIP, ERROR, FAILURE, CRASH
    seconds: float
    detail: str = ""    # the reason line (Test result's predecessor, crash line, timeout)

    @property
    def rank(self) -> int:
        return EXIT_STATUS[verdict_class(self.verdict)]


def verdict_class(verdict: str) -> str:
    return "SUCCESS" if verdict.startswith("SUCCESS") else verdict


def default_xtf_dir() -> str | None:
    """$PVHYP_XTF_DIR, else ../shared/xtf beside the project (where the README says they are)."""
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.environ.get("PVHYP_XTF_DIR"), os.path.join(os.path.dirname(project), "shared", "xtf")):
        if candidate and os.path.isdir(candidate):
            return candidate
    return None


def find_cases(directory: str, only: list[str] | None = None) -> list[Case]:
    try:
        entries = sorted(os.listdir(directory))
    except OSError as e:
        raise UserError(f"{directory}: {e.strerror}") from None
    cases = []
    for entry in entries:
        if not entry.startswith(KERNEL_PREFIX):
            continue
        name = entry[len(KERNEL_PREFIX):]
        if only and name not in only:
            continue
        kernel = os.path.abspath(os.path.join(directory, entry))
        for variation in VARIATIONS.get(name, ("",)):
            cases.append(Case(f"{name}~{variation}" if variation else name, kernel, variation))
    if not cases:
        raise UserError(f"no {KERNEL_PREFIX}* kernels in {directory}"
                        + (f" matching {', '.join(only)}" if only else ""))
    return cases


def verdict_from_console(text: bytes) -> tuple[str | None, str]:
    """The last `Test result:` verdict of a console, and the line before it (XTF's reason)."""
    lines = [line.strip() for line in text.replace(b"\r", b"").split(b"\n") if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        m = _RESULT.search(lines[i])
        if m:
            reason = lines[i - 1].decode(errors="replace") if i else ""
            return m.group(1).decode(), reason
    return None, (lines[-1].decode(errors="replace") if lines else "")


def run_case(case: Case, timeout: float) -> Outcome:
    """One kernel in a fresh hypervisor (called in a worker process of its own)."""
    from pvhyp.cli.run_cmd import run_guest
    try:
        result = run_guest(case.config(), f"<xtf {case.name}>", timeout=timeout)
    except Exception as e:
        return Outcome(case.name, "CRASH", 0.0, f"could not run: {e}")
    # The ring is the console xl shows; CONSOLEIO_write carries the same lines.
    verdict, reason = verdict_from_console(result.ring)
    if verdict is None:
        verdict, reason = verdict_from_console(result.console_io)
    if verdict is None:
        detail = {"timeout": f"no result within {timeout:.0f}s",
                  "crash": result.crash_line or "crashed"}.get(result.reason, result.error or result.reason)
        return Outcome(case.name, "CRASH", result.seconds, f"{detail}; last line: {reason}" if reason else detail)
    return Outcome(case.name, verdict, result.seconds, reason)


def run_cases(cases: list[Case], timeout: float, jobs: int, on_done=None) -> list[Outcome]:
    """Each case in a process of its own (spawned: no hypervisor threads inherited), `jobs` at a time."""
    context = multiprocessing.get_context("spawn")
    outcomes: dict[str, Outcome] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context,
                                                max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_case, case, timeout): case for case in cases}
        for future in concurrent.futures.as_completed(futures):
            case = futures[future]
            try:
                outcome = future.result()
            except Exception as e:      # the worker died (a crash of ours, not the guest's)
                outcome = Outcome(case.name, "CRASH", 0.0, f"worker failed: {e!r}")
            outcomes[case.name] = outcome
            if on_done is not None:
                on_done(outcome)
    return [outcomes[case.name] for case in cases]


def worst_exit_status(outcomes: list[Outcome]) -> int:
    return max((o.rank for o in outcomes), default=0)


def add_parser(sub) -> None:
    p = sub.add_parser("xtf", help="run XTF's test-pv64-* kernels, each in a fresh hypervisor",
                       description=__doc__.split("\n\n", 1)[1],
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("dir", nargs="?", help="directory of test-pv64-* kernels (default $PVHYP_XTF_DIR or ../shared/xtf)")
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these tests (e.g. example xsa-188)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per test (default 120)")
    p.add_argument("--jobs", type=int, default=2, help="tests run in parallel (default 2)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each verdict's reason line")
    add_accel_argument(p)
    p.set_defaults(func=run)


def run(args) -> int:
    directory = args.dir or default_xtf_dir()
    if directory is None:
        raise UserError("no XTF directory given (and no $PVHYP_XTF_DIR or ../shared/xtf)")
    cases = find_cases(directory, args.only)
    apply_accel(args)
    width = max(len(c.name) for c in cases)

    def show(o: Outcome) -> None:
        line = f"{o.name:<{width}}  {o.verdict:<21} {o.seconds:6.1f}s"
        if args.verbose or verdict_class(o.verdict) in ("ERROR", "FAILURE", "CRASH"):
            line += f"  {o.detail}"
        print(line, flush=True)

    outcomes = run_cases(cases, args.timeout, args.jobs, show)
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[verdict_class(o.verdict)] = counts.get(verdict_class(o.verdict), 0) + 1
    print("Combined: " + ", ".join(f"{counts[v]} {v}" for v in EXIT_STATUS if v in counts)
          + f" ({len(outcomes)} runs)")
    sys.stdout.flush()
    return worst_exit_status(outcomes)
