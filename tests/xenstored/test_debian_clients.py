"""Debian's own xenstore-utils (libxenstore 4.17) against our Unix socket
transport running as a real subprocess."""

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = ("xenstore-write", "xenstore-read", "xenstore-ls", "xenstore-watch", "xenstore-rm",
         "xenstore-list", "xenstore-chmod", "xenstore-exists")


def _ensure_xenstore_utils() -> bool:
    if all(shutil.which(tool) for tool in TOOLS):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "xenstore-utils"], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return all(shutil.which(tool) for tool in TOOLS)


@pytest.fixture(scope="module")
def xenstored(tmp_path_factory):
    if not _ensure_xenstore_utils():
        pytest.skip("xenstore-utils not available")
    run_dir = tmp_path_factory.mktemp("run")
    socket_path = run_dir / "xenstored" / "socket"
    ready = run_dir / "ready"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dom0.xenstored", "--socket", str(socket_path),
         "--ready-file", str(ready)], cwd=ROOT)
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert proc.poll() is None, "xenstored exited early"
        assert time.monotonic() < deadline, "xenstored did not start"
        time.sleep(0.02)
    env = dict(os.environ, XENSTORED_PATH=str(socket_path))
    yield env
    proc.terminate()
    proc.wait(timeout=5)
    assert not socket_path.exists()


def run(env, *argv, check=True):
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)
    if check:
        assert result.returncode == 0, (argv, result.stderr)
    return result


def test_write_read_ls(xenstored):
    run(xenstored, "xenstore-write", "/vm/1/name", "guest-one", "/vm/1/memory", "512")
    assert run(xenstored, "xenstore-read", "/vm/1/name").stdout == "guest-one\n"
    listing = run(xenstored, "xenstore-ls", "/vm").stdout
    assert '1 = ""' in listing and 'name = "guest-one"' in listing
    assert run(xenstored, "xenstore-list", "/vm/1").stdout.split() == ["name", "memory"]


def test_missing_node_fails(xenstored):
    result = run(xenstored, "xenstore-read", "/does/not/exist", check=False)
    assert result.returncode != 0
    assert run(xenstored, "xenstore-exists", "/does/not", check=False).returncode != 0


def test_chmod_and_rm(xenstored):
    run(xenstored, "xenstore-write", "/perm/node", "v")
    run(xenstored, "xenstore-chmod", "/perm/node", "n5", "r6")
    assert "(n5,r6)" in run(xenstored, "xenstore-ls", "-p", "/perm").stdout
    run(xenstored, "xenstore-rm", "/perm")
    assert run(xenstored, "xenstore-exists", "/perm", check=False).returncode != 0


def test_watch(xenstored):
    watcher = subprocess.Popen(["xenstore-watch", "-n", "3", "/watched"], env=xenstored,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "/watched"  # the initial event
        run(xenstored, "xenstore-write", "/watched/a", "1")
        run(xenstored, "xenstore-write", "/watched", "2")
        out, _ = watcher.communicate(timeout=10)
    finally:
        watcher.kill()
    assert out.split() == ["/watched/a", "/watched"]


def test_big_directory_through_libxenstore(xenstored):
    names = [f"entry{i:03d}-{'x' * 50}" for i in range(100)]
    args = []
    for name in names:
        args += [f"/big/{name}", "v"]
    run(xenstored, "xenstore-write", *args)
    # More than XENSTORE_PAYLOAD_MAX of names: libxenstore falls back to
    # XS_DIRECTORY_PART after E2BIG.
    assert run(xenstored, "xenstore-list", "/big").stdout.split() == names
