"""`pvhyp`: the command line. It may import everything (as may pvhyp/host.py, the composition root).

Subcommands live in `pvhyp/cli/*_cmd.py`, each with `add_parser(subparsers)`
that sets `func` on its parser; benchmarks in `pvhyp/cli/bench_*.py`, each
with `DESCRIPTION`, optional `add_arguments(parser)` and `run(args)`, all
reached as `pvhyp bench NAME`. With no subcommand, `pvhyp` runs the main job.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from pvhyp.cli.errors import UserError


def _command_modules():
    import pvhyp.cli as pkg
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if mod.name.endswith("_cmd") or mod.name.startswith("bench_"):
            yield mod.name, importlib.import_module(f"{pkg.__name__}.{mod.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvhyp",
        description="A Xen-compatible PV hypervisor in Python. With no command: run the main job.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="run a benchmark and print `name: value unit` lines")
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, module in _command_modules():
        if name.startswith("bench_"):
            p = bench_sub.add_parser(name[len("bench_"):], help=getattr(module, "DESCRIPTION", None))
            if hasattr(module, "add_arguments"):
                module.add_arguments(p)
            p.set_defaults(func=module.run)
        else:
            module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C means exit status 130 at any moment, even while the command modules
    # (unicorn, capstone, ...) are still importing.
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            from pvhyp.cli.main_job import run as main_job
            func = main_job
        else:
            func = args.func
        return func(args) or 0
    except UserError as e:
        print(f"pvhyp: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`pvhyp abi --json | head`): not an error of ours.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
