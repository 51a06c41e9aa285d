"""Give the calling host thread its Python name where the kernel shows it.

/proc/PID/task/TID/comm (what `top -H`, `ps -L` and `pvhyp bench idle` print)
otherwise says "python" for every thread of the hypervisor process; with the
name a vCPU thread ("d3v0") and the timer thread ("pvhyp-timers") tell
themselves apart when one of them costs CPU.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Callable

_PR_SET_NAME = 15           # <linux/prctl.h>; the kernel keeps 15 bytes and a NUL
_COMM_BYTES = 15

_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):        # not Linux's libc: the names stay Python's own
    _prctl = None


def name_this_thread() -> None:
    """Copy threading.current_thread().name to the kernel (best effort: a name only)."""
    if _prctl is not None:
        _prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:_COMM_BYTES], 0, 0, 0)
