"""Toolstack latencies under `pvhyp up`: bring-up, create-to-console, a toolstack request, destroy."""
from __future__ import annotations

import os
import subprocess
import tempfile
import time

from pvguest.spawn import python_command, python_env

DESCRIPTION = "pvhyp up, create a Python guest until its console greets, list, destroy, down"


def add_arguments(parser) -> None:
    parser.add_argument("--guests", type=int, default=5, help="create/destroy cycles")


def _pvhyp(env, *args) -> None:
    subprocess.run(python_command(["-c", "import sys; from pvhyp.cli import main; sys.exit(main())", *args]),
                   env=python_env(env), check=True, capture_output=True)


def run(args) -> int:
    from dom0.toolstack.api import call
    run_dir = tempfile.mkdtemp(prefix="pvhyp-bench-")
    env = dict(os.environ, PVHYP_RUN_DIR=run_dir)
    sock = os.path.join(run_dir, "pvhyp.sock")
    cfg = os.path.join(run_dir, "g.cfg")
    t = time.perf_counter()
    _pvhyp(env, "up", "--memory", "256")
    up = time.perf_counter() - t
    creates, destroys = [], []
    try:
        for i in range(args.guests):
            with open(cfg, "w") as f:
                f.write(f'name = "bench{i}"\nkernel = "python:pvguest.examples.hello"\nmemory = 4\n')
            t = time.perf_counter()
            reply = call(sock, "create", config=open(cfg).read(), source=cfg)
            log = os.path.join(run_dir, "console", f"guest-bench{i}.log")
            while "Hello from" not in (open(log).read() if os.path.exists(log) else ""):
                time.sleep(0.002)
            creates.append(time.perf_counter() - t)
            t = time.perf_counter()
            call(sock, "destroy", dom=reply["domid"])
            destroys.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(100):
            call(sock, "list")
        listing = (time.perf_counter() - t) / 100
    finally:
        t = time.perf_counter()
        _pvhyp(env, "down")
        down = time.perf_counter() - t
    print(f"up: {up * 1e3:.0f} ms")
    print(f"create_to_console_greeting: {sorted(creates)[len(creates) // 2] * 1e3:.0f} ms")
    print(f"destroy: {sorted(destroys)[len(destroys) // 2] * 1e3:.1f} ms")
    print(f"toolstack_list_request: {listing * 1e3:.2f} ms")
    print(f"down: {down * 1e3:.0f} ms")
    return 0
