"""XenAPI speed under `pvhyp up`: VM.get_all_records with 32 VMs, and VM.start of an XTF kernel to Running.

Beside each number, its peer measured in the same run on the same dom0: the toolstack
socket's `list` (JSON lines on a Unix socket, no HTTP, no XML) and `pvhyp create` of the
same kernel through that socket, so what XenAPI's HTTP and XML-RPC layers cost shows.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time

from pvguest.spawn import CODE_ROOT
from pvhyp.cli.errors import UserError

DESCRIPTION = "XenAPI calls/s (VM.get_all_records, 32 VMs) and VM.start-to-Running latency (XTF)"
XTF_KERNEL = "test-pv64-example"


def add_arguments(parser) -> None:
    parser.add_argument("--vms", type=int, default=32, help="VMs (halted configs) in the store")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each rate is measured")
    parser.add_argument("--starts", type=int, default=5, help="VM.start cycles")
    parser.add_argument("--xtf-dir", default=os.environ.get("PVHYP_XTF_DIR") or
                        os.path.join(os.path.dirname(CODE_ROOT), "shared", "xtf"))


def _rate(fn, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def run(args) -> int:
    try:
        import XenAPI
    except ImportError:
        raise UserError("the XenAPI SDK is not installed (pip install XenAPI; bin/setup installs it)") from None
    from dom0.toolstack.api import call
    kernel = os.path.join(args.xtf_dir, XTF_KERNEL)
    if not os.path.exists(kernel):
        raise UserError(f"{kernel}: no XTF kernel (--xtf-dir or $PVHYP_XTF_DIR)")
    base = tempfile.mkdtemp(prefix="pvhyp-bench-api-")
    run_dir, vm_dir = os.path.join(base, "run"), os.path.join(base, "vms")
    os.makedirs(vm_dir)
    for i in range(args.vms):
        with open(os.path.join(vm_dir, f"vm{i}.cfg"), "w") as f:
            f.write(f'name = "vm{i}"\nkernel = "{kernel}"\nmemory = 16\non_poweroff = "destroy"\n')
    _cli("up", "--run-dir", run_dir, "--memory", "512", "--api", "127.0.0.1:0", "--vm-dir", vm_dir)
    try:
        url = open(os.path.join(run_dir, "xapi.url")).read().strip()
        user, password = open(os.path.join(run_dir, "xapi-credentials")).read().strip().split(":", 1)
        session = XenAPI.Session(url)
        session.xenapi.login_with_password(user, password, "1.0", "pvhyp bench api")
        x = session.xenapi
        records = x.VM.get_all_records()
        assert len(records) == args.vms + 1
        api_rate = _rate(x.VM.get_all_records, args.seconds)
        sock = os.path.join(run_dir, "pvhyp.sock")
        list_rate = _rate(lambda: call(sock, "list"), args.seconds)
        vm = x.VM.get_by_name_label("vm0")[0]
        starts, creates = [], []
        for _ in range(args.starts):
            token = getattr(x.event, "from")(["vm"], "", 0.0)["token"]
            t = time.perf_counter()
            x.VM.start(vm, False, False)
            while True:     # Running, as a client following events sees it
                reply = getattr(x.event, "from")(["vm"], token, 5.0)
                token = reply["token"]
                if any(e["ref"] == vm and e["snapshot"]["power_state"] == "Running" for e in reply["events"]):
                    break
            starts.append(time.perf_counter() - t)
            try:
                x.VM.hard_shutdown(vm)
            except XenAPI.Failure:
                pass        # the XTF test finished and powered off first
            text = open(os.path.join(vm_dir, "vm1.cfg")).read()
            t = time.perf_counter()
            reply = call(sock, "create", config=text.replace('"vm1"', '"peer"'), source="peer.cfg")
            creates.append(time.perf_counter() - t)
            call(sock, "destroy", dom=reply["domid"])
        session.xenapi.session.logout()
    finally:
        _cli("down", "--run-dir", run_dir)
    print(f"xapi_vm_get_all_records_{args.vms}_vms: {api_rate:.0f} calls/s")
    print(f"peer_toolstack_socket_list: {list_rate:.0f} calls/s")
    print(f"xapi_vm_start_to_running_xtf: {statistics.median(starts) * 1e3:.0f} ms")
    print(f"peer_toolstack_create_xtf: {statistics.median(creates) * 1e3:.0f} ms")
    return 0


def _cli(*argv: str) -> None:
    from pvhyp.cli import main
    with open(os.devnull, "w") as null:
        with contextlib.redirect_stdout(null):
            if main(list(argv)) != 0:
                raise UserError(f"pvhyp {' '.join(argv)} failed")
