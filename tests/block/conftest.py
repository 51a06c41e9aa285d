"""A real `pvhyp up` (hypervisor + dom0 processes) whose block backend the tests' Python guests use."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from pvguest.xenbus import SocketTransport, Xenbus, XenbusError
from tests.toolstack.conftest import start_host


class BlockHost:
    def __init__(self, host):
        self.host = host
        self.xs = Xenbus(SocketTransport(host.xenstored_socket))
        self.seq = itertools.count(1)

    def __getattr__(self, name):
        return getattr(self.host, name)

    def read(self, path: str) -> str | None:
        try:
            return self.xs.read(path).decode()
        except XenbusError:
            return None

    def domid(self, name: str) -> int:
        return int(self.host.pvhyp("domid", name).stdout)

    def report(self, name: str, timeout: float = 30) -> dict:
        """The guest's JSON report, from its console log (its xenstore home goes with it)."""
        def line():
            found = [ln for ln in self.host.console_log(name).splitlines() if ln.startswith("blkcheck: ")]
            return found[-1] if found else None
        raw = self.host.wait_for(line, timeout=timeout,
                                 what=f"{name}'s report (console: {self.host.console_log(name)[-500:]})")
        return json.loads(raw[len("blkcheck: "):])

    def command(self, name: str, *words, timeout: float = 30) -> str:
        domid = self.domid(name)
        seq = str(next(self.seq))
        self.xs.write(f"/local/domain/{domid}/data/cmd", " ".join([seq, *map(str, words)]))
        return self.host.wait_for(lambda: self.read(f"/local/domain/{domid}/data/result/{seq}"),
                                  timeout=timeout, what=f"{name}: {' '.join(map(str, words))}")

    def pvhyp_in(self, cwd: str, *args: str) -> subprocess.CompletedProcess:
        """The CLI run from `cwd` (relative paths in its arguments are the user's)."""
        proc = subprocess.run([sys.executable, "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                               *args], env=self.host.env, cwd=cwd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def dom0_log(self) -> str:
        with open(os.path.join(self.host.run_dir, "dom0.log"), errors="replace") as f:
            return f.read()

    def wait_gone(self, name: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while name in self.host.pvhyp("list").stdout:
            assert time.monotonic() < deadline, f"{name} still listed"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def bhost(tmp_path_factory):
    h = start_host(str(tmp_path_factory.mktemp("blk")))
    yield BlockHost(h)
    h.pvhyp("down", check=False)
