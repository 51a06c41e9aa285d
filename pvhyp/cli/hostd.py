"""The hypervisor process of `pvhyp up`: the hypervisor, dom0 as a process of its own, and their channel.

    python -m pvhyp.cli.hostd --run-dir DIR [--memory MB] [--dom0-memory MB]

Builds the host (pvhyp.host.Host: the hypervisor with every subsystem and
handler, dom0 as a privileged process domain, domid 0) and starts `python -m
dom0` with the client end of dom0's channel socket. It then waits: if dom0
exits, every guest keeps its memory and its channel (guest processes are not
dom0's to take down) and the loss is reported on stderr and in
DIR/hostd.state. SIGTERM (`pvhyp
down`) stops dom0 (which destroys its guests) and then the hypervisor.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys

from dom0.console.bounded import CappedStreamHandler
from pvguest.spawn import start_python_module
from pvhyp.cli.errors import UserError
from pvhyp.cli.trace_options import open_trace
from pvhyp.host import Host


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvhyp.cli.hostd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--memory", type=int, default=1024, help="machine memory in MiB")
    parser.add_argument("--dom0-memory", type=int, default=16, help="dom0's memory in MiB")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--trace", help="trace every domain to this file (see `pvhyp up --trace`)")
    parser.add_argument("--trace-limit", type=int, default=None, help="the trace's size cap in bytes")
    args = parser.parse_args(argv)
    # bounded: guests' misdeeds are logged here, and a guest may misbehave forever
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hostd: %(name)s: %(message)s", handlers=[CappedStreamHandler(sys.stderr)])
    host = Host(args.run_dir, args.memory, args.dom0_memory, args.verbose)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: host.stopping.set())
    host.rundir.record_pid(os.getpid())
    try:
        session = open_trace(host, args.trace, args.trace_limit)
    except UserError as e:
        print(f"pvhyp: {e}", file=sys.stderr)
        return 2
    try:
        try:
            host.start_dom0()
        except RuntimeError as e:
            print(f"pvhyp: {e} (see {host.dom0_log})", file=sys.stderr)
            host.shutdown()
            return 1
        return host.run()
    finally:
        if session is not None:         # dom0 has ended: the spool is whole
            session.close(convert=False)
            if session.format == "chrome":
                # converted by a process of its own: `pvhyp down` waits for us only so long
                start_python_module("pvhyp.cli.trace_cmd", ["convert", session.spool_path, session.output,
                                                            "--remove-input"],
                                    stdin=subprocess.DEVNULL, start_new_session=True)


if __name__ == "__main__":
    sys.exit(main())
