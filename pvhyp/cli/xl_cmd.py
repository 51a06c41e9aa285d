"""xl's domain commands, talking to dom0's toolstack over DIR/pvhyp.sock.

create [-c] CFG, list, console DOM, destroy, shutdown, reboot, pause,
unpause, info, dmesg, vcpu-list, uptime, domid, domname; output laid out as
xl lays it out.
"""
from __future__ import annotations

import os
import select
import sys
import termios
import tty

from dom0.rundir import UntrustedListener
from pvhyp.cli.errors import UserError
from pvhyp.cli.up_cmd import add_run_dir, dom0_death, open_run_dir, read_state

DETACH = 0x1D           # Ctrl-]


def _request(args, cmd: str, **kwargs) -> dict:
    from dom0.toolstack.api import call
    with open_run_dir(args) as run_dir:         # checked as ours before its socket is trusted
        path = run_dir.join("pvhyp.sock")
        try:
            reply = call(path, cmd, **kwargs)
        except UntrustedListener as e:
            raise UserError(str(e)) from None
        except OSError as e:    # refused, missing, closed, timed out: say why, if we can tell
            died = dom0_death(run_dir)
            if died:
                raise UserError(died) from None
            if run_dir.running_pid() is None:
                raise UserError(f"not up in {run_dir.path} (no hypervisor process; start one with `pvhyp up`)") from None
            if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
                raise UserError(f"no dom0 toolstack at {path} yet (is `pvhyp up` still starting?)") from None
            raise UserError(f"talking to dom0 at {path}: {e}") from None
    if not reply.get("ok"):
        raise UserError(reply.get("error", "dom0 refused"))
    return reply


def read_config_file(path: str) -> str:
    """A config file as text (bounded, UTF-8): anything wrong with it is a UserError (exit 2)."""
    from dom0.toolstack.config import ConfigError, read_config
    try:
        return read_config(path)
    except ConfigError as e:
        raise UserError(str(e)) from None


def _console(args, dom) -> int:
    reply = _request(args, "console", dom=dom)
    return attach_console(reply["tty"], sys.stdin, sys.stdout)


def attach_console(tty_path: str, stdin, stdout) -> int:
    """Relay a pty to the terminal until Ctrl-] (as xenconsole does)."""
    fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    in_fd, out_fd = stdin.fileno(), stdout.fileno()
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None
    try:
        if saved is not None:
            tty.setraw(in_fd)
        while True:
            readable, _, _ = select.select([fd, in_fd], [], [])
            if fd in readable:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    return 0        # the console went away (domain destroyed)
                if not data:
                    return 0
                os.write(out_fd, data)
            if in_fd in readable:
                data = os.read(in_fd, 4096)
                if not data or DETACH in data:
                    head = data.split(bytes([DETACH]), 1)[0] if data else b""
                    if head:
                        os.write(fd, head)
                    return 0
                os.write(fd, data)
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        os.close(fd)


def create(args) -> int:
    text = read_config_file(args.config)
    if args.overrides:
        # xl create's trailing KEY=VALUE arguments: extra config lines, later ones win
        text = text.rstrip("\n") + "\n" + "\n".join(args.overrides) + "\n"
    reply = _request(args, "create", config=text, source=args.config, cwd=os.getcwd())
    for warning in reply.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"Parsing config from {args.config}")
    print(f"Started domain {reply['name']} (id={reply['domid']})")
    if args.console:
        return _console(args, reply["domid"])
    return 0


def list_(args) -> int:
    domains = _request(args, "list")["domains"]
    if args.doms:
        wanted = set(args.doms)
        missing = wanted - {d["name"] for d in domains} - {str(d["domid"]) for d in domains}
        if missing:
            raise UserError(f"no domain {sorted(missing)[0]!r}")
        domains = [d for d in domains if d["name"] in wanted or str(d["domid"]) in wanted]
    print(f"{'Name':<40}{'ID':>5}{'Mem':>7}{'VCPUs':>6}{'State':>11}{'Time(s)':>10}")
    for d in domains:
        print(f"{d['name']:<40}{d['domid']:>5}{d['mem']:>7}{d['vcpus']:>6}{d['state']:>11}{d['time']:>10.1f}")
    return 0


def info(args) -> int:
    reply = _request(args, "info")
    reply.pop("ok")
    reply["cpu_engine"] = _engine_line(args)
    for key, value in reply.items():
        print(f"{key:<22}: {value}")
    return 0


def _engine_line(args) -> str:
    """Which CPU engine the running hypervisor chose, and why (hostd writes it to hostd.state)."""
    with open_run_dir(args) as run_dir:
        state = read_state(run_dir)
    return str(state.get("engine", "unknown"))


def dmesg(args) -> int:
    sys.stdout.write(_request(args, "dmesg")["text"])
    return 0


def vcpu_list(args) -> int:
    reply = _request(args, "vcpu-list", dom=args.dom)
    print(f"{'Name':<32}{'ID':>5}{'VCPU':>6}{'CPU':>5}{'State':>7}{'Time(s)':>9} Affinity (Hard / Soft)")
    for v in reply["vcpus"]:
        state = (v["state"] + "-") if v["online"] else "--p"
        print(f"{v['name']:<32}{v['domid']:>5}{v['vcpu']:>6}{'-':>5}{state:>7}{'-':>9} all / all")
    return 0


def uptime(args) -> int:
    reply = _request(args, "uptime")
    print(f"{'Name':<32}{'ID':>5} Uptime")
    for d in reply["domains"]:
        secs = int(d["uptime"])
        print(f"{d['name']:<32}{d['domid']:>5} {secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}")
    return 0


def _simple(cmd: str, key: str | None = None):
    def run(args) -> int:
        reply = _request(args, cmd, **{("name" if cmd == "domid" else "domid" if cmd == "domname" else "dom"): args.dom})
        if key is not None:
            print(reply[key])
        return 0
    return run


def _shutdown(args) -> int:
    """xl shutdown/reboot [-a] [-w] [DOM]: ask, then optionally wait until each is gone or shut down."""
    cmd = args.command
    if args.all == (args.dom is not None):
        raise UserError(f"{cmd}: give a domain or -a, not both or neither")
    targets = ([d["domid"] for d in _request(args, "list")["domains"] if d["domid"] != 0]
               if args.all else [_request(args, "domid", name=args.dom)["domid"]])
    for domid in targets:
        _request(args, cmd, dom=domid)
    if args.wait:
        import time
        deadline = time.monotonic() + args.timeout
        pending = set(targets)
        while pending:
            states = {d["domid"]: d["state"] for d in _request(args, "list")["domains"]}
            # gone (destroyed), or shut down and preserved; a restarted guest has a new id
            pending = {d for d in pending if d in states and states[d][3] != "s"}
            if pending and time.monotonic() > deadline:
                raise UserError(f"{cmd}: domain(s) {sorted(pending)} still running after {args.timeout:.0f}s")
            time.sleep(0.1)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("create", help="create a domain from an xl.cfg file (xl create)")
    add_run_dir(p)
    p.add_argument("-c", dest="console", action="store_true", help="attach to its console")
    p.add_argument("config", help="xl.cfg file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help='extra config lines, e.g. memory=64 \'extra="quiet"\'')
    p.set_defaults(func=create)
    p = sub.add_parser("list", help="list domains (xl list)")
    add_run_dir(p)
    p.add_argument("doms", nargs="*", metavar="DOM", help="only these domains")
    p.set_defaults(func=list_)
    p = sub.add_parser("console", help="attach to a domain's console; Ctrl-] detaches")
    add_run_dir(p)
    p.add_argument("dom")
    p.set_defaults(func=lambda args: _console(args, args.dom))
    for name, help_text in (("shutdown", "ask a domain to power off (control/shutdown)"),
                            ("reboot", "ask a domain to reboot (control/shutdown)")):
        p = sub.add_parser(name, help=help_text)
        add_run_dir(p)
        p.add_argument("-a", dest="all", action="store_true", help="every guest")
        p.add_argument("-w", dest="wait", action="store_true", help="wait until it has shut down")
        p.add_argument("--timeout", type=float, default=60.0, help="how long -w waits (seconds)")
        p.add_argument("dom", nargs="?")
        p.set_defaults(func=_shutdown)
    for name, help_text, key in (
            ("destroy", "destroy a domain at once", None),
            ("pause", "pause a domain", None),
            ("unpause", "unpause a domain", None),
            ("domid", "a domain's id from its name", "domid"),
            ("domname", "a domain's name from its id", "name")):
        p = sub.add_parser(name, help=help_text)
        add_run_dir(p)
        p.add_argument("dom")
        p.set_defaults(func=_simple(name, key))
    for name, fn, help_text in (("info", info, "hypervisor information"),
                                ("dmesg", dmesg, "console_io output of every domain"),
                                ("uptime", uptime, "domain uptimes")):
        p = sub.add_parser(name, help=help_text)
        add_run_dir(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("vcpu-list", help="list vCPUs")
    add_run_dir(p)
    p.add_argument("dom", nargs="?")
    p.set_defaults(func=vcpu_list)
