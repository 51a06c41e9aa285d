"""The hypervisor process of `pvhyp up`: the hypervisor, dom0 as a process of its own, and their channel.

    python -m pvhyp.cli.hostd --run-dir DIR [--memory MB] [--dom0-memory MB]

Builds the Hypervisor, installs the hypercalls, creates dom0 as a privileged
process domain (domid 0) and starts `python -m dom0` with the client end of
dom0's channel socket. It then waits: if dom0 exits, every guest keeps its
memory and its channel (guest processes are not dom0's to take down) and
the loss is reported on stderr and in DIR/hostd.state. SIGTERM (`pvhyp
down`) stops dom0 (which destroys its guests) and then the hypervisor.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger("pvhyp.hostd")
DOM0_READY_TIMEOUT = 30.0


def _write_state(run_dir: str, **state) -> None:
    tmp = os.path.join(run_dir, "hostd.state.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, os.path.join(run_dir, "hostd.state"))


def _run_x86_vcpus(hv) -> None:
    """Give every x86 PV domain's vCPUs their threads as it is created; they wait in the
    scheduler until the builder has set their registers and the toolstack unpauses them."""
    if getattr(hv, "cpu", None) is None:
        from pvhyp.cpu import runner
        runner.attach(hv)
    hv.domain_create_hooks.append(lambda d: hv.cpu.start_domain(d) if d.paging else None)


class Host:
    def __init__(self, run_dir: str, memory_mb: int, dom0_mb: int, verbose: bool = False):
        import hypercalls
        from pvhyp.channel import create_process_domain
        from pvhyp.channel_server import ChannelServer
        from pvhyp.hypervisor import Hypervisor

        self.run_dir = os.path.abspath(run_dir)
        os.makedirs(self.run_dir, exist_ok=True)
        self.hv = Hypervisor(memory_mb=memory_mb)
        hypercalls.install(self.hv.hypercalls)
        _run_x86_vcpus(self.hv)
        self.channels = ChannelServer(self.hv, on_disconnect=self._on_disconnect)
        self.dom0 = create_process_domain(self.hv, dom0_mb * 256, privileged=True, domid=0)
        self.dom0.name = "Domain-0"
        self.verbose = verbose
        self.stopping = threading.Event()
        self.dom0_alive = False
        self.dom0_proc: subprocess.Popen | None = None

    def _on_disconnect(self, domain, reason: str) -> None:
        if domain.domid == 0:
            return      # reported by the process watcher, with its exit status
        log.info("d%d's channel closed: %s", domain.domid, reason)

    def start_dom0(self) -> None:
        sock = self.channels.attach(self.dom0)
        ready = os.path.join(self.run_dir, "dom0.ready")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [sys.executable, "-m", "dom0", "--run-dir", self.run_dir,
               "--channel-fd", str(sock.fileno()), "--ready-file", ready]
        if self.verbose:
            cmd.append("--verbose")
        with open(os.path.join(self.run_dir, "dom0.log"), "ab") as dom0_log:
            self.dom0_proc = subprocess.Popen(cmd, pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL,
                                              stdout=dom0_log, stderr=dom0_log)
        sock.close()
        deadline = time.monotonic() + DOM0_READY_TIMEOUT
        while not os.path.exists(ready):
            if self.dom0_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dom0 did not start (see {self.run_dir}/dom0.log)")
            time.sleep(0.02)
        self.dom0_alive = True
        self._report()

    def _report(self, note: str = "") -> None:
        guests = sorted(d for d in self.hv.domains if d != 0)
        _write_state(self.run_dir, pid=os.getpid(), dom0_pid=self.dom0_proc.pid if self.dom0_proc else None,
                     dom0_alive=self.dom0_alive, guests=guests, note=note)

    def run(self) -> int:
        while not self.stopping.is_set():
            if self.dom0_alive and self.dom0_proc.poll() is not None:
                self.dom0_alive = False
                guests = sorted(d for d in self.hv.domains if d != 0)
                note = (f"dom0 (pid {self.dom0_proc.pid}) exited with status {self.dom0_proc.returncode}; "
                        f"the hypervisor keeps running {len(guests)} guest(s): {guests}")
                print(f"pvhyp: {note}", file=sys.stderr, flush=True)
                self._report(note)
            self.stopping.wait(0.2)
        return self.shutdown()

    def shutdown(self) -> int:
        if self.dom0_proc is not None and self.dom0_proc.poll() is None:
            self.dom0_proc.terminate()
            try:
                self.dom0_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.dom0_proc.kill()
                self.dom0_proc.wait()
        self.channels.close()
        for domid in sorted(self.hv.domains, reverse=True):
            try:
                self.hv.destroy_domain(domid)
            except Exception:       # a subsystem's teardown bug must not stop the others'
                log.exception("destroying d%d", domid)
        self.dom0_alive = False
        self._report("stopped")
        return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvhyp.cli.hostd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--memory", type=int, default=1024, help="machine memory in MiB")
    parser.add_argument("--dom0-memory", type=int, default=16, help="dom0's memory in MiB")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="hostd: %(name)s: %(message)s", stream=sys.stderr)
    host = Host(args.run_dir, args.memory, args.dom0_memory, args.verbose)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: host.stopping.set())
    with open(os.path.join(host.run_dir, "hostd.pid"), "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        host.start_dom0()
    except RuntimeError as e:
        print(f"pvhyp: {e}", file=sys.stderr)
        host.shutdown()
        return 1
    return host.run()


if __name__ == "__main__":
    sys.exit(main())
