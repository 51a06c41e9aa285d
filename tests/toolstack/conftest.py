"""`pvhyp up` in a temporary run directory, and the CLI as a user runs it (a separate process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Host:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.root = ROOT
        self.env = dict(os.environ, PVHYP_RUN_DIR=run_dir,
                        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def pvhyp(self, *args: str, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                               *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, **kwargs)
        if check:
            assert proc.returncode == 0, f"pvhyp {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return proc

    def state(self) -> dict:
        with open(os.path.join(self.run_dir, "hostd.state")) as f:
            return json.load(f)

    def xenstore(self, tool: str, *args: str) -> str:
        """Debian's xenstore-utils against our xenstored (skips where they are not installed)."""
        import shutil
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (Debian's xenstore-utils) is not installed")
        out = subprocess.run([tool, *args], env=dict(self.env, XENSTORED_PATH=self.xenstored_socket),
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    @property
    def xenstored_socket(self) -> str:
        return os.path.join(self.run_dir, "xenstored", "socket")

    def config(self, name: str, kernel: str, **settings) -> str:
        path = os.path.join(self.run_dir, f"{name}.cfg")
        lines = [f'name = "{name}"', f'kernel = "{kernel}"', "memory = 4"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def console_log(self, name: str) -> str:
        try:
            with open(os.path.join(self.run_dir, "console", f"guest-{name}.log"), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_for_console_client(self, proc: subprocess.Popen) -> None:
        """Until `pvhyp console` (or `create -c`) in `proc` holds the guest's pty open: what it
        reads on stdin from then on goes to the guest, and it relays the guest's output."""
        def holds_a_pty() -> bool:
            fd_dir = f"/proc/{proc.pid}/fd"
            for fd in os.listdir(fd_dir) if proc.poll() is None else ():
                try:
                    if os.readlink(os.path.join(fd_dir, fd)).startswith("/dev/pts/"):
                        return True
                except OSError:         # closed since listdir
                    pass
            return False
        self.wait_for(holds_a_pty, what="the console client on the guest's pty")

    def wait_for(self, predicate, timeout: float = 20.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)


def start_host(run_dir: str, memory_mb: int = 192, extra: tuple[str, ...] = ()) -> Host:
    host = Host(run_dir)
    host.pvhyp("up", "--memory", str(memory_mb), *extra)
    return host


@pytest.fixture(name="start_host", scope="session")
def start_host_fixture():
    return start_host


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = start_host(str(tmp_path_factory.mktemp("up")))
    yield h
    h.pvhyp("down", check=False)
