"""python -m dom0 --run-dir DIR --channel-fd N: the dom0 process `pvhyp up` starts."""
from __future__ import annotations

import argparse
import logging
import sys

from abi.trace_spool import DEFAULT_LIMIT
from dom0.console.bounded import CappedStreamHandler
from dom0.daemon import serve
from dom0.rundir import RunDir, RunDirError
from dom0.timeline import recorder
from pvguest.hypercall_channel import SocketChannel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dom0", description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--channel-fd", type=int, required=True,
                        help="inherited socket of dom0's hypercall channel")
    parser.add_argument("--ready-file", help="written once every socket accepts connections")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--trace-fd", type=int, help="inherited trace spool (O_APPEND) for dom0's own records")
    parser.add_argument("--trace-start", type=float, default=0.0, help="the spool's t = 0 (CLOCK_MONOTONIC)")
    parser.add_argument("--trace-limit", type=int, default=DEFAULT_LIMIT, help="the spool's size cap (bytes)")
    args = parser.parse_args(argv)
    if args.trace_fd is not None:
        recorder.open(args.trace_fd, args.trace_start, args.trace_limit)
    # bounded: guests' misdeeds are logged here, and a guest may misbehave forever
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="dom0: %(name)s: %(message)s", handlers=[CappedStreamHandler(sys.stderr)])
    try:
        RunDir.open(args.run_dir, create=False).close()     # ours and private, as hostd found it
    except (RunDirError, OSError) as e:
        print(f"dom0: {e}", file=sys.stderr)
        return 2
    try:
        return serve(SocketChannel.from_fd(args.channel_fd), args.run_dir, args.ready_file)
    finally:
        recorder.close()


if __name__ == "__main__":
    sys.exit(main())
