"""`pvhyp demo servers`: a file, a print and a web server, cloned from one Debian template, reached
from the host (issue 15's showcase; dom0/servers says what each piece is).

What it does, reusing whatever is there already:
1. the template disk (dom0.images.servers: built once into ~/.cache/pvhyp/servers-template);
2. a copy-on-write clone per server (examples/servers/NAME.cfg cloned into
   ~/.cache/pvhyp/servers/: own MAC, UUID, hostname; a second run boots the same clones,
   so batagor's share keeps what was written to it);
3. `pvhyp up` if the run directory has no hypervisor (else the running one);
4. creates the servers not running yet, on bridge `servers`, each with one forward from
   127.0.0.1 (free ports unless --smb-port/--ipp-port/--http-port say which);
5. waits until each answers in its own protocol, then prints where each is, the time from
   the command to "all three serving", the guests' memory and pvhyp's own.
Afterwards they are ordinary domains: `pvhyp list`, `console`, `shutdown`, `destroy`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import time

from pvhyp.cli.errors import UserError
from pvhyp.cli.up_cmd import add_run_dir, open_run_dir, read_state, run_dir_path

DEFAULT_TIMEOUT = 1800.0
DOM0_MEMORY_MB = 16
HEADROOM_MB = 64                 # beside the guests and dom0: page tables of the frame table, slack
PORTS_FILE = "ports.json"        # the host ports of the last run, for servers found running
PORT_FLAGS = {"smb": "smb_port", "print": "ipp_port", "web": "http_port"}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="showcases: `pvhyp demo servers` (a file, a print and a web server)")
    p.add_argument("scenario", choices=["servers"], help="which showcase")
    add_run_dir(p)
    p.add_argument("--smb-port", type=_port, default=0, help="host port for batagor's SMB (default: a free one)")
    p.add_argument("--ipp-port", type=_port, default=0, help="host port for mieayam's IPP (default: a free one)")
    p.add_argument("--http-port", type=_port, default=0, help="host port for ketoprak's HTTP (default: a free one)")
    p.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT,
                   help=f"seconds to wait for all three to serve (default {DEFAULT_TIMEOUT:.0f})")
    p.add_argument("--state-dir", type=pathlib.Path, default=None,
                   help="where the clones live (default ~/.cache/pvhyp/servers)")
    p.add_argument("--fresh", action="store_true",
                   help="clone the template again (the old clones' disks go: batagor's share starts empty)")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 < s <= 86400)")
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args) -> int:
    started = time.monotonic()
    result = bring_up(args, started)
    print_summary(result, started)
    return 0


def bring_up(args, started: float) -> dict:
    """Steps 1-5 of the module docstring; what was brought up (for the summary and the benchmark)."""
    from dom0.images import servers as template
    from dom0.images.debian import ImageError
    from dom0.servers import probes, scenario

    chosen = {role: getattr(args, flag) for role, flag in PORT_FLAGS.items()}
    picked = [port for port in chosen.values() if port]
    if len(set(picked)) != len(picked):
        raise UserError("--smb-port, --ipp-port and --http-port must differ")
    state_dir = args.state_dir or scenario.STATE_DIR
    try:
        print("template: building or reusing the servers template ...", flush=True)
        image = template.build()
    except ImageError as e:
        raise UserError(str(e)) from None
    print(f"template: {image['image']} ({time.monotonic() - started:.1f} s)", flush=True)
    running = {d["name"]: d for d in _list_if_up(args)}
    try:
        if args.fresh:
            if any(server.name in running for server in scenario.SERVERS):
                raise UserError("--fresh: destroy the running servers first (pvhyp destroy NAME)")
            scenario.remove_clones(state_dir)
        scenario.check_template(state_dir, image["image"])
    except scenario.ScenarioError as e:
        raise UserError(str(e)) from None
    configs = {}
    for server in scenario.SERVERS:
        try:
            path, made = scenario.ensure_clone(server, state_dir)
        except scenario.ScenarioError as e:
            raise UserError(str(e)) from None
        configs[server.name] = path
        print(f"{server.name}: {'cloned the template into' if made else 'reusing its clone'} {path}", flush=True)
    memory = sum(scenario.memory_mb(path) for path in configs.values())
    _ensure_up(args, memory + DOM0_MEMORY_MB + HEADROOM_MB)
    running = {d["name"]: d for d in _request(args, "list")["domains"]}
    ports = _read_ports(state_dir)
    for server in scenario.SERVERS:
        role = server.role
        if server.name in running:
            if not ports.get(role):
                raise UserError(f"{server.name} is running but its host port is unknown: "
                                f"`pvhyp destroy {server.name}` and run again")
            if chosen[role] and chosen[role] != ports[role]:
                raise UserError(f"{server.name} is running with host port {ports[role]}, not {chosen[role]}: "
                                f"`pvhyp destroy {server.name}` first to change it")
            print(f"{server.name}: already running (id {running[server.name]['domid']})", flush=True)
            continue
        ports[role] = chosen[role] or free_port()
        try:
            text = scenario.boot_config(configs[server.name], server, ports[role])
        except scenario.ScenarioError as e:
            raise UserError(str(e)) from None
        reply = _request(args, "create", config=text, source=str(configs[server.name]),
                         cwd=str(configs[server.name].parent))
        print(f"{server.name}: started (id {reply['domid']}), 127.0.0.1:{ports[role]} -> "
              f"{server.service.port}", flush=True)
    _write_ports(state_dir, ports)
    deadline = started + args.timeout
    serving: dict[str, float] = {}
    waiting = list(scenario.SERVERS)
    while waiting:
        _check_still_there(args, waiting)
        for server in list(waiting):
            if probes.answers(server.role, ports[server.role]):
                serving[server.name] = time.monotonic() - started
                waiting.remove(server)
                print(f"{server.name}: {server.service.what} answers ({serving[server.name]:.1f} s)", flush=True)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise UserError(f"{names} not serving after {args.timeout:.0f} s (see `pvhyp console NAME`)")
        if waiting:
            time.sleep(2.0)
    return {"ports": ports, "serving": serving, "all_serving_s": time.monotonic() - started,
            "guest_memory_mb": memory, "processes": process_memory(args), "state_dir": str(state_dir),
            "configs": {name: str(path) for name, path in configs.items()}}


def _list_if_up(args) -> list[dict]:
    """The domains of the running hypervisor, or none if it is not up."""
    from dom0.rundir import RunDir, RunDirError
    try:
        with RunDir.open(run_dir_path(args), create=False) as run_dir:
            if not run_dir.running_pid():
                return []
    except FileNotFoundError:
        return []
    except RunDirError as e:
        raise UserError(str(e)) from None
    return _request(args, "list")["domains"]


def _check_still_there(args, waiting) -> None:
    """While waiting: a server that went (crashed, destroyed) or a hypervisor that went ends the wait."""
    names = {d["name"]: d for d in _request(args, "list")["domains"]}
    for server in waiting:
        if server.name not in names:
            raise UserError(f"{server.name} is gone before it served (see its console log in the run directory)")
        if set(str(names[server.name].get("state", ""))[3:]) & set("scd"):     # shutdown, crashed, dying
            raise UserError(f"{server.name} stopped before it served (state {names[server.name]['state']})")


def _ensure_up(args, memory_mb: int) -> None:
    from dom0.rundir import RunDir, RunDirError
    path = run_dir_path(args)
    try:
        with RunDir.open(path, create=False) as run_dir:
            if run_dir.running_pid():
                print(f"pvhyp: using the hypervisor up in {path}", flush=True)
                return
    except FileNotFoundError:
        pass
    except RunDirError as e:
        raise UserError(str(e)) from None
    from pvhyp.cli import up_cmd
    memory_mb = max(1024, (memory_mb + 255) // 256 * 256)
    up_args = up_cmd.up_arguments("--memory", str(memory_mb), "--dom0-memory", str(DOM0_MEMORY_MB),
                                  "--accel", os.environ.get("PVHYP_ACCEL") or "auto")
    up_args.run_dir = args.run_dir
    up_cmd.up(up_args)


def _request(args, cmd: str, **kwargs) -> dict:
    from pvhyp.cli.xl_cmd import _request as request
    return request(args, cmd, **kwargs)


def _read_ports(state_dir: pathlib.Path) -> dict:
    try:
        ports = json.loads((state_dir / PORTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(ports, dict):
        return {}
    return {role: port for role, port in ports.items()
            if role in PORT_FLAGS and isinstance(port, int) and 1 <= port <= 65535}


def _write_ports(state_dir: pathlib.Path, ports: dict) -> None:
    partial = state_dir / f".{PORTS_FILE}.partial"
    partial.write_text(json.dumps(ports))
    os.replace(partial, state_dir / PORTS_FILE)


def process_memory(args) -> dict:
    """pvhyp's own processes (MiB): the hypervisor (its own memory apart from the machine memory
    memfd, whose touched pages are the guests'), dom0 and its passt uplinks."""
    with open_run_dir(args) as run_dir:
        hyp = run_dir.running_pid()
        dom0 = read_state(run_dir).get("dom0_pid")
    out: dict = {}
    if hyp:
        status = _proc_status(hyp)
        out["hypervisor_mb"] = (status.get("RssAnon", 0) + status.get("RssFile", 0)) / 1024
        out["machine_memory_touched_mb"] = status.get("RssShmem", 0) / 1024
    if isinstance(dom0, int):
        status = _proc_status(dom0)
        out["dom0_mb"] = (status.get("RssAnon", 0) + status.get("RssFile", 0)) / 1024
        passts = [pid for pid in _children(dom0) if _comm(pid).startswith("passt")]
        out["passt_mb"] = sum(_proc_status(pid).get("VmRSS", 0) for pid in passts) / 1024
        out["passt_count"] = len(passts)
    return out


def _proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status."""
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                parts = value.split()
                if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
                    fields[key] = int(parts[0])
    except OSError:
        pass
    return fields


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def print_summary(result: dict, started: float) -> None:
    from dom0.images import servers as template
    from dom0.servers import scenario
    ports = result["ports"]
    print()
    for server in scenario.SERVERS:
        port = ports[server.role]
        how = {"smb": f"smbclient //127.0.0.1/{template.SHARE} -p {port} "
                      f"-U {template.SMB_USER}%{template.SMB_PASSWORD}",
               "print": f"lp -h 127.0.0.1:{port} -d {template.PRINTER} FILE; lpstat -h 127.0.0.1:{port} "
                        f"-W completed -o {template.PRINTER}",
               "web": f"curl http://127.0.0.1:{port}/"}[server.role]
        print(f"  {server.name:<9} {server.service.what:<19} 127.0.0.1:{port:<5}  {how}")
    print(f"all three serving {result['all_serving_s']:.1f} s after the command")
    procs = result["processes"]
    print(f"guest memory: {result['guest_memory_mb']} MiB configured for the three "
          f"({procs.get('machine_memory_touched_mb', 0):.0f} MiB of machine memory touched so far)")
    print(f"pvhyp's own processes: hypervisor {procs.get('hypervisor_mb', 0):.0f} MiB, "
          f"dom0 {procs.get('dom0_mb', 0):.0f} MiB, passt {procs.get('passt_mb', 0):.0f} MiB "
          f"({procs.get('passt_count', 0)} processes)")
    print("they are ordinary domains: pvhyp list | console NAME (root / pvhyp) | shutdown NAME | destroy NAME")
