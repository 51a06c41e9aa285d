"""python -m dom0.xenstored --socket PATH: serve the store on a Unix socket."""

from __future__ import annotations

import argparse
import logging
import signal

from .quotas import Quotas
from .requests import XenStore
from .unix_socket import SocketServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dom0.xenstored", description=__doc__)
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--priv-domid", type=int, default=None,
                        help="a second privileged domain (driver domain)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--ready-file", help="created once the socket accepts connections")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="xenstored: %(message)s")
    engine = XenStore(Quotas(), priv_domid=args.priv_domid)
    engine.trace_enabled = args.verbose
    server = SocketServer(engine, args.socket)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    if args.ready_file:
        with open(args.ready_file, "w") as ready:
            ready.write("ready\n")
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
