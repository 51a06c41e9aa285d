"""Code in the working directory never runs in our processes (issue 14, defect 8).

`python -m` puts the working directory first on sys.path: a `tty.py` where
root ran `pvhyp up` was imported into dom0. Modules that hostd, dom0 and a
Python guest import are planted in the working directory, each writing a
marker when imported; `pvhyp up` + `create` + `down` and `pvhyp run` are run
from there (the CLI itself as its console script would, without the working
directory on its path), and no marker may appear.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.toolstack.conftest import ROOT

# Imported by dom0 (tty: the console backend; selectors: its loop), hostd (unicorn, capstone),
# every process of ours (construct, through abi) and the Python guest runner (importlib's users).
PLANTED = ("tty", "selectors", "construct", "unicorn", "capstone", "dom0", "pvguest", "abi", "traceback")


def plant(directory) -> list[str]:
    markers = []
    for name in PLANTED:
        marker = os.path.join(directory, f"imported-{name}")
        (directory / f"{name}.py").write_text(f"open({marker!r}, 'w').close()\n")
        markers.append(marker)
    return markers


def pvhyp_from(cwd, env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # -P: the CLI as its console script runs (no working directory on the path); what it starts is the test
    return subprocess.run([sys.executable, "-P", "-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                           *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_nothing_in_the_working_directory_is_imported(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    markers = plant(work)
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = dict(os.environ, PVHYP_RUN_DIR=str(run_dir), PYTHONPATH=ROOT)
    (work / "hello.cfg").write_text('name = "planted"\nkernel = "python:pvguest.examples.hello"\nmemory = 4\n')
    up = pvhyp_from(work, env, "up", "--memory", "64")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        created = pvhyp_from(work, env, "create", "hello.cfg")
        assert created.returncode == 0, created.stdout + created.stderr
        log = run_dir / "console" / "guest-planted.log"
        deadline = time.monotonic() + 30
        while b"Hello from planted" not in (log.read_bytes() if log.exists() else b""):
            assert time.monotonic() < deadline, "the Python guest never said hello"
            time.sleep(0.05)
    finally:
        pvhyp_from(work, env, "down")
    (work / "crash.cfg").write_text('name = "once"\nkernel = "python:pvguest.examples.hostile:crasher"\n'
                                    'memory = 4\n')
    run = pvhyp_from(work, env, "run", "--timeout", "60", "crash.cfg")
    assert run.returncode == 1, run.stdout + run.stderr        # the guest crashes, as it is written to
    assert [m for m in markers if os.path.exists(m)] == []


def test_the_module_starter_cleans_the_path():
    from pvguest.spawn import CODE_ROOT, python_env, python_module_command
    assert python_module_command("dom0", ["--x"])[1:] == ["-P", "-m", "dom0", "--x"]
    env = python_env({"PYTHONPATH": os.pathsep.join(["", ".", "rel/dir", "/abs/dir"]), "HOME": "/root"})
    assert env["PYTHONSAFEPATH"] == "1" and env["HOME"] == "/root"
    assert env["PYTHONPATH"].split(os.pathsep) == [CODE_ROOT, "/abs/dir"]
