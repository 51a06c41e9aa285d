"""The run directory is trusted only once it is shown to be ours (issue 14, defect 2).

A local user who made the run directory first, or who can plant files in it,
must get nothing from root's `pvhyp`: no directory of theirs used, no symlink
followed, no pid signalled that is not the hypervisor's, no config sent to a
socket they listen on. Each test plants one such thing as that user would and
checks the command refuses with one line (exit 2) or goes around it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.toolstack.conftest import Host

NOBODY = 65534
needs_root = pytest.mark.skipif(os.getuid() != 0, reason="planting another user's files needs root")


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2 with one line naming what is wrong."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def private_dir(path) -> str:
    os.mkdir(path, 0o700)
    return str(path)


@needs_root
def test_a_run_directory_another_user_made_is_refused(tmp_path, start_host):
    planted = private_dir(tmp_path / "run")
    os.chown(planted, NOBODY, NOBODY)
    host = Host(planted)
    try:
        refused(host.pvhyp("up", "--memory", "64", check=False), planted, f"uid {NOBODY}")
        refused(host.pvhyp("list", check=False), planted, f"uid {NOBODY}")
        refused(host.pvhyp("down", check=False), planted, f"uid {NOBODY}")
    finally:
        host.pvhyp("down", check=False)
    assert os.listdir(planted) == []            # nothing of ours was put in it


def test_a_run_directory_others_may_enter_is_refused(tmp_path):
    shared = private_dir(tmp_path / "run")
    os.chmod(shared, 0o755)
    host = Host(shared)
    try:
        refused(host.pvhyp("up", "--memory", "64", check=False), shared, "0755")
    finally:
        host.pvhyp("down", check=False)
    assert os.listdir(shared) == []


def test_a_run_directory_that_is_a_symlink_is_refused(tmp_path):
    real = private_dir(tmp_path / "elsewhere")
    link = str(tmp_path / "run")
    os.symlink(real, link)
    host = Host(link)
    try:
        refused(host.pvhyp("up", "--memory", "64", check=False), link, "symlink")
    finally:
        host.pvhyp("down", check=False)
    assert os.listdir(real) == []


def test_the_default_run_directory_is_private_and_not_in_tmp(monkeypatch):
    from dom0.rundir import default_path
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    expected = "/run/pvhyp" if os.getuid() == 0 else "/run/user/1000/pvhyp"
    assert default_path() == expected


def test_files_are_not_written_through_a_planted_symlink(tmp_path, start_host):
    run_dir = private_dir(tmp_path / "run")
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    # where up, hostd and dom0 create files: each goes around the link (O_EXCL after unlinking it)
    for name in ("hostd.state.tmp", "hostd.pid.tmp", "dom0.ready"):
        os.symlink(victim, os.path.join(run_dir, name))
    host = start_host(run_dir, 64)
    try:
        assert host.state()["dom0_alive"]
    finally:
        host.pvhyp("down", check=False)
    assert victim.read_text() == "root's file\n"
    # a log is appended to, never replaced: a link there is refused with one line
    os.unlink(os.path.join(run_dir, "hostd.log"))
    os.symlink(victim, os.path.join(run_dir, "hostd.log"))
    refused(host.pvhyp("up", "--memory", "64", check=False), "hostd.log")
    assert victim.read_text() == "root's file\n"


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_down_signals_no_pid_it_has_not_verified(tmp_path):
    run_dir = private_dir(tmp_path / "run")
    host = Host(run_dir)
    bystander = _sleeper()
    try:
        time.sleep(0.1)
        pid_file = os.path.join(run_dir, "hostd.pid")
        # a bare pid (the old format), then the bystander's own start time: neither is a hostd
        with open(f"/proc/{bystander.pid}/stat") as f:
            start_time = f.read().rsplit(")", 1)[1].split()[19]
        for text in (f"{bystander.pid}\n", f"{bystander.pid} {start_time}\n",
                     "not a pid\n", "-1 0\n"):
            with open(pid_file, "w") as f:
                f.write(text)
            refused(host.pvhyp("down", check=False), "not up")
            assert bystander.poll() is None, f"pvhyp down signalled pid {bystander.pid} from {text!r}"
    finally:
        bystander.kill()
        bystander.wait()


@needs_root
def test_create_sends_nothing_to_a_socket_a_stranger_listens_on(tmp_path):
    run_dir = private_dir(tmp_path / "run")
    fake = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.bind(sys.argv[1])
        os.setgid({NOBODY}); os.setuid({NOBODY})
        s.listen(1)                   # SO_PEERCRED reports who called listen()
        print("ready", flush=True)
        s.settimeout(20)
        c, _ = s.accept()
        c.settimeout(3)
        got = b""
        try:
            while b"\\n" not in got:
                data = c.recv(65536)
                if not data:
                    break
                got += data
        except OSError:
            pass
        print(len(got), flush=True)
        try:
            c.sendall(b'{{"ok": false, "error": "fake dom0"}}\\n')
        except OSError:
            pass
        """), os.path.join(run_dir, "pvhyp.sock")], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline() == "ready\n"
        host = Host(run_dir)
        cfg = tmp_path / "secret.cfg"
        cfg.write_text('name = "secret"\nkernel = "python:pvguest.examples.hello"\nextra = "password=hunter2"\n')
        refused(host.pvhyp("create", str(cfg), check=False), "uid 65534")
        received = fake.communicate(timeout=30)[0].strip()
        assert received == "0", f"the stranger's socket received {received} bytes"
    finally:
        fake.kill()
        fake.wait()


def test_rundir_writes_replace_and_never_follow(tmp_path):
    """The mechanism itself: O_EXCL temporary file renamed over, symlinks refused, owner checked."""
    from dom0.rundir import RunDir, RunDirError
    run_dir = RunDir.open(str(tmp_path / "run"))
    with run_dir:
        assert os.stat(run_dir.path).st_mode & 0o777 == 0o700
        victim = tmp_path / "victim"
        victim.write_text("keep")
        os.symlink(victim, run_dir.join("state.tmp"))
        os.symlink(victim, run_dir.join("state"))
        run_dir.write_atomically("state", b"new")
        assert victim.read_text() == "keep"
        assert not os.path.islink(run_dir.join("state")) and run_dir.read_small("state") == b"new"
        os.symlink(victim, run_dir.join("link"))
        assert run_dir.read_small("link") is None
        with pytest.raises(OSError):
            run_dir.open_log("link")
        run_dir.record_pid(os.getpid())
        # this test is not hostd (its command line says so): the pid is not taken for one
        assert run_dir.running_pid() is None
    os.symlink(tmp_path, tmp_path / "parent-link")
    with RunDir.open(str(tmp_path / "parent-link" / "run")) as same:       # a symlinked parent is fine
        assert same.path == str(tmp_path.resolve() / "run")
    with pytest.raises(RunDirError):
        os.chmod(tmp_path / "run", 0o750)
        RunDir.open(str(tmp_path / "run"))
