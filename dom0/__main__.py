"""python -m dom0 --run-dir DIR --channel-fd N: the dom0 process `pvhyp up` starts."""
from __future__ import annotations

import argparse
import logging
import sys

from dom0.daemon import serve
from pvguest.hypercall_channel import SocketChannel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dom0", description=__doc__)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--channel-fd", type=int, required=True,
                        help="inherited socket of dom0's hypercall channel")
    parser.add_argument("--ready-file", help="written once every socket accepts connections")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="dom0: %(name)s: %(message)s", stream=sys.stderr)
    return serve(SocketChannel.from_fd(args.channel_fd), args.run_dir, args.ready_file)


if __name__ == "__main__":
    sys.exit(main())
