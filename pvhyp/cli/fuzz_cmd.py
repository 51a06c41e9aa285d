"""`pvhyp fuzz`: run the hypercall fuzzer (see pvhyp/fuzz/__init__.py)."""
from __future__ import annotations

import sys

from pvhyp.cli.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("fuzz", help="fuzz the hypercall ABI with the hypervisor's invariants as oracle")
    p.add_argument("--target", choices=("hypercall", "x86"), default="hypercall",
                   help="hypercall: arguments straight into the table (default); x86: an x86 PV domain "
                        "running generated instruction sequences on the CPU engine, mixed with hypercalls")
    p.add_argument("--hypercall", action="append", metavar="NAME", help="only this hypercall (repeatable)")
    p.add_argument("--steps", type=int, help="stop after N hypercalls")
    p.add_argument("--time", type=float, metavar="SEC", help="stop after SEC seconds (default 60 without --steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", default="fuzz-out", help="where reproducers go (default fuzz-out)")
    p.add_argument("--privileged", action="store_true", help="attack as a privileged domain (dom0)")
    p.add_argument("--coverage", action="store_true",
                   help="branch coverage of hypercalls/ and pvhyp/ (engine, CLI and fuzzer excluded), "
                        "traced on the first 100 steps of every 1,000 (tracing every step is ~10x slower)")
    p.add_argument("--replay", metavar="FILE", help="replay a reproducer and report whether it still fails")
    p.set_defaults(func=run)


def run(args) -> int:
    from pvhyp.fuzz import runner
    if args.replay:
        try:
            steps, privileged, kind, world = runner.load_reproducer(args.replay)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot read reproducer {args.replay}: {e}") from e   # a KeyError says only the key
        failure = runner.replay(runner.make_hv_for(world), steps, privileged, world=world)
        if failure is None:
            print(f"{args.replay}: {len(steps)} steps, no failure (was: {kind})")
            return 0
        print(f"{args.replay}: {len(steps)} steps, FAILS: {failure.kind}\n{failure.detail}")
        return 1
    cov = None
    if args.coverage:
        try:
            import coverage
        except ImportError:
            raise UserError("--coverage needs the coverage package (pip install coverage)") from None
        import hypercalls
        import pvhyp
        # The x86 target runs the engine, so pvhyp/cpu is measured (and reported on its own).
        omit = ["*/pvhyp/cli/*", "*/pvhyp/fuzz/*"] + (["*/pvhyp/cpu/*"] if args.target != "x86" else [])
        cov = coverage.Coverage(branch=True, source=[hypercalls.__path__[0], pvhyp.__path__[0]], omit=omit)
    seconds = args.time if args.time is not None else (None if args.steps else 60.0)
    try:
        make_hv = runner.make_cpu_hv if args.target == "x86" else runner.make_hv
        fz = runner.Fuzzer(make_hv, seed=args.seed, hypercalls=args.hypercall,
                           privileged=args.privileged, out_dir=args.out, target=args.target)
    except ValueError as e:
        raise UserError(str(e)) from e      # usually a bad --hypercall; a bug's ValueError keeps its traceback
    live = sys.stderr.isatty()
    try:
        fz.run(steps=args.steps, seconds=seconds, progress=_progress if live else None, sampler=cov)
    finally:
        fz.close()
    if live:
        sys.stderr.write("\n")
    percent, areas = None, {}
    if cov is not None:
        percent = _percent(cov)
        if args.target == "x86":
            areas = {area: _percent(cov, [f"*/{area}/*"]) for area in ("pvhyp/cpu", "pvhyp/pv")}
    _summary(fz, percent, areas)
    return 1 if fz.stats.failures else 0


def _percent(cov, include=None) -> float | None:
    """Branch coverage of what `include` names (everything measured without it)."""
    import io

    import coverage
    try:
        return cov.report(file=io.StringIO(), include=include)
    except coverage.exceptions.NoDataError:     # nothing of it ran while sampling
        return None


def _progress(fz) -> None:
    s = fz.stats
    sys.stderr.write(f"\r[{s.elapsed:7.1f}s] {s.execs:>10,} execs {s.execs / max(s.elapsed, 1e-9):>8,.0f}/s"
                     f"  ops {len(s.ops_seen)}/{len(fz.ops)}  results {s.distinct_results()}"
                     f"  failures {len(s.failures)}")
    sys.stderr.flush()


def _summary(fz, coverage_percent, coverage_areas=None) -> None:
    from abi.errno import ERRNO_NAMES
    s = fz.stats
    print(f"{'hypercall':<32} {'calls':>10} {'ok':>9}  top results")
    for name, counter in sorted(s.per_hypercall.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counter.values())
        # x86 steps end with a run outcome: ok unless the guest crashed or something escaped
        ok = sum(n for r, n in counter.items()
                 if (isinstance(r, int) and r >= 0) or r in ("budget", "kicked", "requested"))
        top = ", ".join(f"{_result_name(r, ERRNO_NAMES)}x{n}" for r, n in counter.most_common(4))
        print(f"{name:<32} {total:>10,} {ok:>9,}  {top}")
    print(f"execs: {s.execs}")
    print(f"execs_per_second: {s.execs / max(s.elapsed, 1e-9):.0f}")
    print(f"hypercalls_covered: {len(s.per_hypercall)}")
    print(f"subops_covered: {len(s.ops_seen)} of {len(fz.ops)} ({len(s.ops_succeeded)} succeeded at least once)")
    print(f"distinct_results: {s.distinct_results()}")
    if coverage_percent is not None:
        print(f"branch_coverage: {coverage_percent:.1f} %")
    for area, percent in (coverage_areas or {}).items():
        print(f"branch_coverage {area}: " + ("not reached" if percent is None else f"{percent:.1f} %"))
    if s.cpu_events:
        print("cpu_events: " + ", ".join(f"{k} {v}" for k, v in sorted(s.cpu_events.items())))
    print(f"failures: {len(s.failures)}")
    for f in s.failures:
        print(f"  {f.kind}: {len(f.steps)} steps -> {f.path or '(not saved)'}")
        print("    " + f.detail.strip().splitlines()[-1])


def _result_name(result, names) -> str:
    if isinstance(result, int) and result < 0:
        return "-" + names.get(-result, str(-result))
    return str(result)
