"""`pvhyp up` / `pvhyp down`: start and stop the hypervisor process and dom0 in the background.

Sockets live under the run directory (default $PVHYP_RUN_DIR, else
/tmp/pvhyp-UID): DIR/pvhyp.sock for the toolstack, DIR/xenstored/socket for
xenstore clients (XENSTORED_PATH=DIR/xenstored/socket xenstore-ls).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from pvhyp.cli.accel import add_accel_argument, apply_accel
from pvhyp.cli.errors import UserError

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def default_run_dir() -> str:
    return os.environ.get("PVHYP_RUN_DIR") or f"/tmp/pvhyp-{os.getuid()}"


def add_run_dir(parser) -> None:
    parser.add_argument("--run-dir", default=None,
                        help="directory of the sockets and logs (default $PVHYP_RUN_DIR or /tmp/pvhyp-UID)")


def running_pid(run_dir: str) -> int | None:
    try:
        with open(os.path.join(run_dir, "hostd.pid")) as f:
            pid = int(f.read().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="start the hypervisor and dom0 in the background")
    add_run_dir(p)
    p.add_argument("--memory", type=int, default=1024, help="machine memory in MiB (default 1024)")
    p.add_argument("--dom0-memory", type=int, default=16, help="dom0's memory in MiB (default 16)")
    p.add_argument("--verbose", action="store_true", help="log every dom0/hypervisor step")
    add_accel_argument(p)
    p.set_defaults(func=up)
    p = sub.add_parser("down", help="stop dom0 (destroying its guests) and the hypervisor")
    add_run_dir(p)
    p.set_defaults(func=down)


def up(args) -> int:
    run_dir = os.path.abspath(args.run_dir or default_run_dir())
    if running_pid(run_dir):
        raise UserError(f"already up in {run_dir} (pvhyp down --run-dir {run_dir} first)")
    if len(os.path.join(run_dir, "xenstored", "socket")) > 100:
        raise UserError(f"run directory path too long for a Unix socket: {run_dir}")
    if args.memory < args.dom0_memory + 8:
        raise UserError(f"--memory {args.memory} leaves no room beside dom0's {args.dom0_memory} MiB")
    os.makedirs(run_dir, exist_ok=True)
    apply_accel(args)
    for stale in ("hostd.state", "hostd.pid", "dom0.ready"):
        try:
            os.unlink(os.path.join(run_dir, stale))
        except FileNotFoundError:
            pass
    cmd = [sys.executable, "-m", "pvhyp.cli.hostd", "--run-dir", run_dir,
           "--memory", str(args.memory), "--dom0-memory", str(args.dom0_memory)]
    if args.verbose:
        cmd.append("--verbose")
    with open(os.path.join(run_dir, "hostd.log"), "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    state_path = os.path.join(run_dir, "hostd.state")
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if os.path.exists(state_path):
            with open(state_path) as f:
                state = json.load(f)
            if state.get("dom0_alive"):
                break
        if proc.poll() is not None:
            raise UserError(f"the hypervisor exited at start-up (status {proc.returncode}); "
                            f"see {run_dir}/hostd.log and {run_dir}/dom0.log")
        if time.monotonic() > deadline:
            proc.terminate()
            raise UserError(f"dom0 did not come up within {START_TIMEOUT:.0f}s; see {run_dir}/dom0.log")
        time.sleep(0.05)
    print(f"pvhyp up: hypervisor pid {proc.pid}, dom0 pid {state['dom0_pid']}, {args.memory} MiB")
    print(f"  cpu:       {state.get('engine', '')}")
    print(f"  toolstack: {run_dir}/pvhyp.sock")
    print(f"  xenstore:  XENSTORED_PATH={run_dir}/xenstored/socket")
    print(f"  logs:      {run_dir}/hostd.log {run_dir}/dom0.log {run_dir}/console/")
    return 0


def down(args) -> int:
    run_dir = os.path.abspath(args.run_dir or default_run_dir())
    pid = running_pid(run_dir)
    if pid is None:
        raise UserError(f"not up in {run_dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while running_pid(run_dir) == pid:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    print(f"pvhyp down: stopped {run_dir}")
    return 0
