"""`pvhyp run` as a user runs it: a real process tree (hypervisor, dom0, guest), exit statuses, --trace."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from pvhyp.cli.xtf_cmd import default_xtf_dir

XTF = default_xtf_dir()
needs_xtf = pytest.mark.skipif(XTF is None, reason="no XTF kernels (../shared/xtf or $PVHYP_XTF_DIR)")
PVHYP = [sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())"]


def pvhyp(*args, timeout=120):
    return subprocess.run([*PVHYP, *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def read_until(stream, needle: bytes, timeout: float = 60.0) -> bytes:
    """What `stream` (a pipe) gave until `needle` appeared in it, it ended, or the timeout."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(stream.fileno(), 4096) if ready else b""
        if not chunk:
            break
        seen += chunk
    return seen


@needs_xtf
def test_poweroff_is_exit_0_with_both_consoles_and_a_trace(tmp_path):
    trace = tmp_path / "trace"
    done = pvhyp("run", "--kernel", os.path.join(XTF, "test-pv64-example"), "--trace", str(trace))
    assert done.returncode == 0, done.stderr
    assert b"Test result: SUCCESS" in done.stdout            # the PV console ring
    assert b"(d1) Test result: SUCCESS" in done.stderr       # CONSOLEIO_write, as Xen's serial line
    lines = trace.read_text().splitlines()
    assert any(" d1v0 hypercall 29 sched_op(SCHEDOP_shutdown" in line for line in lines), lines[-5:]
    assert any(" d1v0 hypercall 18 console_io(CONSOLEIO_write" in line for line in lines)


def test_bad_kernel_is_one_line_and_exit_2(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not an elf")
    done = pvhyp("run", "--kernel", str(junk))
    assert done.returncode == 2
    assert done.stderr.decode().strip().count("\n") == 0 and "not an ELF" in done.stderr.decode()
    missing = pvhyp("run", str(tmp_path / "missing.cfg"))
    assert missing.returncode == 2 and b"cannot read" in missing.stderr


@needs_xtf
def test_interrupt_destroys_the_guest_and_exits_130():
    proc = subprocess.Popen([*PVHYP, "run", "--kernel", os.path.join(XTF, "test-pv64-selftest")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    started = read_until(proc.stderr, b"(d1) ")       # the guest runs: its first console_io line
    assert b"(d1) " in started, started
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode in (130, 0)      # 0 only if the guest finished first
