"""`pvhyp run` when dom0 fails: the error quotes how dom0 ended and the end of its log,
never a path in the run directory the run has removed (issue 14, defect 7)."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PVHYP = [sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())"]
RUN_DIR = re.compile(r"/tmp/pvhyp-run-\S*")

# Loaded by every Python process on the path: makes dom0's (and only dom0's) start-up fail.
FAILING_DOM0 = '''import os, sys
if "dom0" in sys.orig_argv and "--run-dir" in sys.orig_argv:
    print("planted failure: this dom0 refuses to start", file=sys.stderr, flush=True)
    os._exit(3)
'''


def _config(tmp_path) -> str:
    cfg = tmp_path / "hello.cfg"
    cfg.write_text('name = "hello"\nkernel = "python:pvguest.examples.hello"\nmemory = 4\n')
    return str(cfg)


def _assert_no_removed_path(stderr: str) -> None:
    for path in RUN_DIR.findall(stderr):
        assert os.path.exists(path.rstrip(").,'\"")), f"points at {path}, which is gone:\n{stderr}"


def test_dom0_failing_at_start_up_is_quoted(tmp_path):
    planted = tmp_path / "site"
    planted.mkdir()
    (planted / "sitecustomize.py").write_text(FAILING_DOM0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(planted), ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([*PVHYP, "run", _config(tmp_path)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 70, done.stderr
    assert "dom0 did not start: it exited with status 3" in done.stderr, done.stderr
    assert "planted failure: this dom0 refuses to start" in done.stderr
    _assert_no_removed_path(done.stderr)


def _dom0_of(pid: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"dom0" in argv and b"--run-dir" in argv:
            return int(entry)
    return None


def test_dom0_dying_during_a_run_is_exit_70_with_its_end(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([*PVHYP, "run", _config(tmp_path)], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 60
        while b"Hello from hello" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                seen += os.read(proc.stdout.fileno(), 4096)
        assert b"Hello from hello" in seen, seen
        dom0 = _dom0_of(proc.pid)
        assert dom0 is not None
        os.kill(dom0, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode(errors="replace")
    assert proc.returncode == 70, stderr
    assert "dom0 exited (dom0: it was killed by SIGKILL)" in stderr, stderr
    _assert_no_removed_path(stderr)
