"""`pvhyp bench servers`: the three-server showcase measured: time to serving, memory, the client
checks' numbers and the idle CPU of pvhyp's processes.

It runs `pvhyp demo servers` in a run directory and clone directory of its own (fresh clones:
a first boot, as a user's first run), then the three checks with the real clients (smbclient
put/get of 10 MiB, an lp job until lpstat says completed, curl and 1,000 requests from 10
clients), then sits idle for --idle seconds and reads the CPU time the hypervisor, dom0 and
the passt processes used meanwhile, and stops everything. No peer column: a QEMU TCG run of
the same template (virtio disk and net, three VMs) is not measured here yet.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile
import time

from pvhyp.cli.errors import UserError

DESCRIPTION = "the three-server showcase: time to serving, memory, client numbers, idle CPU"


def add_arguments(parser) -> None:
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement (default 60)")
    parser.add_argument("--keep", action="store_true", help="leave the servers running (prints the run dir)")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` and their threads, in seconds (a process gone counts nothing)."""
    from pvhyp.cli.bench_idle import cpu_ticks
    return sum(cpu_ticks(pid) or 0 for pid in pids) / os.sysconf("SC_CLK_TCK")


def pvhyp_pids(run_dir: str) -> list[int]:
    from dom0.rundir import RunDir
    from pvhyp.cli.demo_cmd import _children, _comm
    from pvhyp.cli.up_cmd import read_state
    with RunDir.open(run_dir, create=False) as rd:
        hyp = rd.running_pid()
        dom0 = read_state(rd).get("dom0_pid")
    pids = [p for p in (hyp, dom0) if isinstance(p, int)]
    if isinstance(dom0, int):
        pids += [p for p in _children(dom0) if _comm(p).startswith("passt")]
    return pids


def run(args) -> int:
    from dom0.servers import clients
    from pvhyp.cli import demo_cmd
    from pvhyp.cli.up_cmd import down
    work = tempfile.mkdtemp(prefix="pvhyp-bench-servers-")
    run_dir = os.path.join(work, "run")
    os.mkdir(run_dir, 0o700)
    demo_args = argparse.Namespace(run_dir=run_dir, smb_port=0, ipp_port=0, http_port=0, fresh=False,
                                   timeout=demo_cmd.DEFAULT_TIMEOUT, state_dir=pathlib.Path(work) / "clones")
    try:
        started = time.monotonic()
        result = demo_cmd.bring_up(demo_args, started)
        ports = result["ports"]
        print()
        for name, seconds in result["serving"].items():
            print(f"serving_{name}: {seconds:.1f} s")
        print(f"all_three_serving: {result['all_serving_s']:.1f} s")
        print(f"guest_memory_configured: {result['guest_memory_mb']} MiB")
        for key, value in result["processes"].items():
            print(f"{key}: {value:.0f}" + ("" if key.endswith("count") else " MiB"))
        try:
            smb = clients.smb_roundtrip(ports["smb"], work)
            print(f"smb_put_10MiB: {smb['put_s']:.2f} s ({smb['mib'] / smb['put_s']:.2f} MiB/s)")
            print(f"smb_get_10MiB: {smb['get_s']:.2f} s ({smb['mib'] / smb['get_s']:.2f} MiB/s)  sha256 equal")
            page = os.path.join(work, "page.txt")
            with open(page, "w") as f:
                f.write("printed by pvhyp bench servers\n")
            job = clients.print_job(ports["print"], page)
            print(f"ipp_job_completed: {job['completed_s']:.2f} s (job {job['job']})")
            curl = clients.curl_page(ports["web"])
            print(f"http_page: {len(curl)} bytes")
            load = clients.http_load(ports["web"])
            print(f"http_requests: {load['ok']}/{load['requests']} ok from {load['clients']} clients, "
                  f"{load['failed']} failed {load['first_failure']}")
            print(f"http_per_second: {load['per_second']:.1f}")
            print(f"http_latency_ms: p50 {load['p50_ms']:.1f}  p90 {load['p90_ms']:.1f}  p99 {load['p99_ms']:.1f}  "
                  f"max {load['max_ms']:.1f}")
        except clients.ClientError as e:
            raise UserError(str(e)) from None
        if args.idle > 0:
            pids = pvhyp_pids(run_dir)
            time.sleep(5.0)         # the load loop's connections closing
            before, t0 = cpu_seconds(pids), time.monotonic()
            time.sleep(args.idle)
            used = cpu_seconds(pids) - before
            print(f"idle_cpu: {100 * used / (time.monotonic() - t0):.1f} % of one core over {args.idle:.0f} s "
                  f"(hypervisor, dom0, passt; three idle servers)")
        print("peer: QEMU TCG running the same template is not measured by this benchmark")
    finally:
        if args.keep:
            print(f"kept: --run-dir {run_dir}")
        else:
            down(argparse.Namespace(run_dir=run_dir))
            shutil.rmtree(work, ignore_errors=True)
    return 0
