"""python -m pvguest.run MODULE[:FUNCTION] [ARGS...]: boot a Python guest in this process.

The channel socket is inherited as fd $PVHYP_CHANNEL_FD (the toolstack or a
test made it with connect_domain / ChannelServer.attach). FUNCTION (default
`main`) is called as FUNCTION(kernel, *ARGS); when it returns, the guest
shuts down (SCHEDOP_shutdown) with the SHUTDOWN_* reason it returned
(default poweroff), as a kernel that halts; an exception is a crash.
"""
from __future__ import annotations

import importlib
import sys

from abi.sched import SHUTDOWN_crash, SHUTDOWN_poweroff
from pvguest.hypercall_channel import SocketChannel
from pvguest.kernel import Kernel


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    module_name, _, function_name = argv[0].partition(":")
    entry = getattr(importlib.import_module(module_name), function_name or "main")
    kernel = Kernel(SocketChannel.from_env())
    try:
        reason = entry(kernel, *argv[1:])
    except Exception:
        import traceback
        kernel.console.write(traceback.format_exc())
        kernel.shutdown(SHUTDOWN_crash)
        return 1
    kernel.shutdown(SHUTDOWN_poweroff if reason is None else reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
