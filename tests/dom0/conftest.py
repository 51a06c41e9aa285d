"""Helpers for tests that run process domains in processes of their own."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pvhyp.channel_server import ChannelServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def spawn_guest(sock, entry: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`python -m pvguest.run ENTRY ARGS` holding `sock` as its channel."""
    child_env = dict(os.environ, PVHYP_CHANNEL_FD=str(sock.fileno()),
                     PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "pvguest.run", entry, *args],
                            pass_fds=[sock.fileno()], env=child_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sock.close()
    return proc


def run_python(sock, code: str, timeout: float = 30) -> str:
    """Run `code` in a fresh interpreter that has the channel as $PVHYP_CHANNEL_FD; its output."""
    env = dict(os.environ, PVHYP_CHANNEL_FD=str(sock.fileno()),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], pass_fds=[sock.fileno()], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    sock.close()
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def server(hv):
    disconnects = []
    s = ChannelServer(hv, on_disconnect=lambda d, reason: disconnects.append((d.domid, reason)))
    s.disconnects = disconnects
    yield s
    s.close()


@pytest.fixture(name="run_python")
def run_python_fixture():
    return run_python


@pytest.fixture(name="spawn_guest")
def spawn_guest_fixture():
    return spawn_guest
