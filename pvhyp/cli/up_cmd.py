"""`pvhyp up` / `pvhyp down`: start and stop the hypervisor process and dom0 in the background.

Sockets live under the run directory (--run-dir, else $PVHYP_RUN_DIR, else
/run/pvhyp for root and $XDG_RUNTIME_DIR/pvhyp for others: dom0.rundir says
why and what is checked before it is used): DIR/pvhyp.sock for the toolstack,
DIR/xenstored/socket for xenstore clients (XENSTORED_PATH=DIR/xenstored/socket
xenstore-ls).
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

from dom0.rundir import HOSTD_MODULE, PID_FILE, STATE_FILE, RunDir, RunDirError, default_path
from pvguest.spawn import start_python_module
from pvhyp.cli import xapi_setup
from pvhyp.cli.accel import add_accel_argument, apply_accel
from pvhyp.cli.errors import UserError

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


def run_dir_path(args) -> str:
    return os.path.abspath(args.run_dir or os.environ.get("PVHYP_RUN_DIR") or default_path())


def open_run_dir(args, create: bool = False) -> RunDir:
    """The checked run directory the command names (UserError if it may not be used or is absent)."""
    path = run_dir_path(args)
    try:
        return RunDir.open(path, create=create)
    except RunDirError as e:
        raise UserError(str(e)) from None
    except FileNotFoundError:
        raise UserError(f"not up in {path} (no such run directory)") from None


def add_run_dir(parser) -> None:
    parser.add_argument("--run-dir", default=None,
                        help="directory of the sockets and logs (default $PVHYP_RUN_DIR, else /run/pvhyp "
                             "for root and $XDG_RUNTIME_DIR/pvhyp for others); must be yours, mode 0700")


def dom0_death(run_dir: RunDir) -> str | None:
    """If the hypervisor of `run_dir` runs on without its dom0: what happened and what to do (one line).

    A new dom0 cannot take over running guests (their xenstore tree, rings and consoles
    lived in the dead one), so the only way back is `pvhyp down` (which destroys them) and
    `pvhyp up`; this says so rather than offering a restart that would leave them orphaned.
    """
    if run_dir.running_pid() is None:
        return None
    state = read_state(run_dir)
    if state.get("dom0_alive") is not False:
        return None
    what = str(state.get("note") or "dom0 died")
    where = run_dir.path
    return (f"{what} (its log: {where}/dom0.log). A new dom0 cannot take over running guests (their "
            f"xenstore and consoles died with it): `pvhyp down --run-dir {where}` (destroys them), "
            f"then `pvhyp up`")


def add_parser(sub) -> None:
    p = sub.add_parser("up", help="start the hypervisor and dom0 in the background")
    add_run_dir(p)
    p.add_argument("--memory", type=int, default=1024, help="machine memory in MiB (default 1024)")
    p.add_argument("--dom0-memory", type=int, default=16, help="dom0's memory in MiB (default 16)")
    p.add_argument("--verbose", action="store_true", help="log every dom0/hypervisor step")
    p.add_argument("--api", default="127.0.0.1:8080", metavar="ADDR:PORT|off",
                   help="XenAPI and web console address (default 127.0.0.1:8080, another port if taken; "
                        "any non-loopback address is served over TLS); off: none")
    p.add_argument("--vm-dir", default=None, help="the XenAPI's VMs and templates: xl configs "
                   "(default RUN_DIR/vms; '# xapi: template' marks a template)")
    add_accel_argument(p)
    p.set_defaults(func=up)
    p = sub.add_parser("down", help="stop dom0 (destroying its guests) and the hypervisor")
    add_run_dir(p)
    p.set_defaults(func=down)


def up(args) -> int:
    run_dir = open_run_dir(args, create=True)
    with run_dir:
        return _up(args, run_dir)


def _up(args, run_dir: RunDir) -> int:
    if run_dir.running_pid():
        died = dom0_death(run_dir)
        raise UserError(f"already up in {run_dir.path}, but {died}" if died
                        else f"already up in {run_dir.path} (pvhyp down --run-dir {run_dir.path} first)")
    if len(run_dir.join("xenstored", "socket")) > 100:
        raise UserError(f"run directory path too long for a Unix socket: {run_dir.path}")
    from pvhyp.host import host_memory_mb
    if args.memory > host_memory_mb():
        raise UserError(f"--memory {args.memory} MiB is more than this host's {host_memory_mb()} MiB")
    if args.memory < args.dom0_memory + 8:
        raise UserError(f"--memory {args.memory} leaves no room beside dom0's {args.dom0_memory} MiB")
    apply_accel(args, announce=False)     # the "cpu:" line below says which engine runs
    for stale in (STATE_FILE, PID_FILE, "dom0.ready", xapi_setup.URL_FILE):
        run_dir.remove(stale)
    api_password = xapi_setup.prepare(run_dir, args.api, args.vm_dir)
    hostd_args = ["--run-dir", run_dir.path, "--memory", str(args.memory), "--dom0-memory", str(args.dom0_memory)]
    if args.verbose:
        hostd_args.append("--verbose")
    try:
        log = run_dir.open_log("hostd.log")
    except OSError as e:
        raise UserError(f"{run_dir.join('hostd.log')}: cannot open: {e.strerror}") from None
    try:
        proc = start_python_module(HOSTD_MODULE, hostd_args, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=log, start_new_session=True)
    finally:
        os.close(log)
    where = run_dir.path
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        state = read_state(run_dir)
        if state.get("dom0_alive"):
            break
        if proc.poll() is not None:
            raise UserError(f"the hypervisor exited at start-up (status {proc.returncode}); "
                            f"see {where}/hostd.log and {where}/dom0.log")
        if time.monotonic() > deadline:
            proc.terminate()
            raise UserError(f"dom0 did not come up within {START_TIMEOUT:.0f}s; see {where}/dom0.log")
        time.sleep(0.05)
    print(f"pvhyp up: hypervisor pid {proc.pid}, dom0 pid {state['dom0_pid']}, {args.memory} MiB")
    print(f"  cpu:       {state.get('engine', '')}")
    print(f"  toolstack: {where}/pvhyp.sock")
    print(f"  xenstore:  XENSTORED_PATH={where}/xenstored/socket")
    print(f"  logs:      {where}/hostd.log {where}/dom0.log {where}/console/")
    xapi_setup.report(run_dir, api_password)
    return 0


def read_state(run_dir: RunDir) -> dict:
    raw = run_dir.read_small(STATE_FILE)
    try:
        state = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def down(args) -> int:
    with open_run_dir(args) as run_dir:
        pidfd = run_dir.open_hostd()
        if pidfd is None:
            raise UserError(f"not up in {run_dir.path}")
        try:
            # Signalled through the pidfd: the process checked, even if its pid were reused meanwhile.
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not select.select([pidfd], [], [], STOP_TIMEOUT)[0]:      # readable once it exited
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                select.select([pidfd], [], [], STOP_TIMEOUT)
        except ProcessLookupError:
            pass        # it exited by itself meanwhile
        finally:
            os.close(pidfd)
        print(f"pvhyp down: stopped {run_dir.path}")
    return 0
