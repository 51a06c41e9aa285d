"""`--accel auto|kvm|unicorn` for the commands that run x86 guests (run, up, xtf).

The choice reaches every process the command starts (hostd, XTF's workers) as
$PVHYP_ACCEL, which pvhyp.host.build_hypervisor reads (and decides the same way:
the self-test is per process); the one line saying which engine runs and why goes
to stderr here.
"""
from __future__ import annotations

import os
import sys

from pvhyp.cli.errors import UserError


def add_accel_argument(parser) -> None:
    parser.add_argument("--accel", choices=("auto", "kvm", "unicorn"), default=os.environ.get("PVHYP_ACCEL") or "auto",
                        help="CPU engine: kvm (/dev/kvm), unicorn (software), auto (kvm when its "
                             "self-test passes; the default, unless $PVHYP_ACCEL names one)")


def apply_accel(args, announce: bool = True) -> str:
    """Decide the engine, say so on stderr (unless the caller does, once its guest started:
    bad input stays a one-line error), and pass the question on to child processes; its line."""
    from pvhyp.kvm.choice import ACCEL_ENV, choose_engine
    from pvhyp.kvm.vm import KvmUnavailable
    try:
        chosen = choose_engine(args.accel)
    except KvmUnavailable as err:
        raise UserError(f"--accel kvm: {err}") from None
    os.environ[ACCEL_ENV] = args.accel      # each process decides again, from the same question
    if announce:
        print(f"pvhyp: {chosen.line}", file=sys.stderr, flush=True)
    return chosen.line
