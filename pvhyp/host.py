"""The composition root: the one place that builds a whole host.

`build_hypervisor()` makes a Hypervisor, attaches its subsystems explicitly and
in a fixed order, installs the hypercall handlers and, when asked, the CPU
engine. `Host` is what `pvhyp up` runs (that hypervisor, and dom0 as a process
of its own over a socket channel); `OneShot` is `pvhyp run`'s (a Host and one
guest created through dom0's toolstack, watched until it shuts down). Every
CLI command, benchmark, the fuzzer and the tests' fixtures build their
hypervisors here (as Firecracker's builder.rs builds its VMs).

Like the CLI, this module may import everything: it installs `hypercalls`
into the table (the rest of pvhyp reaches handlers only through the table)
and speaks to dom0's toolstack.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
from typing import TYPE_CHECKING, Callable

import hypercalls
from abi import sched as sched_abi
from abi.sched import SHUTDOWN_NAMES
from dom0.console.bounded import TailBuffer
from dom0.rundir import STATE_FILE, RunDir
from pvguest.spawn import start_python_module
from pvhyp import console, event_channel, grant_table, sched
from pvhyp import time as timekeeping
from pvhyp.channel import create_process_domain
from pvhyp.channel_server import ChannelServer
from pvhyp.diagnose import SymbolMap, disassemble_at
from pvhyp.hypervisor import Hypervisor
from pvhyp.mm import mmu
from pvhyp.pv import state as pv_state

if TYPE_CHECKING:
    from dom0.toolstack.config import DomainConfig
    from pvhyp.domain import Domain
    from pvhyp.timeline.session import TraceSession

log = logging.getLogger("pvhyp.hostd")

# The subsystems every hypervisor has, attached in this order: their domain-create hooks
# run in it (the MMU's books exist before anything maps a frame) and a later one may
# build on an earlier one (the PV vCPU state's descriptor checks hook into hv.mmu; time
# and the scheduler find vcpu.pv made). A missing module is an ImportError here, not a
# skipped part.
SUBSYSTEMS = (mmu, event_channel, grant_table, pv_state, timekeeping, sched, console)

DOM0_READY_TIMEOUT = 30.0
DOM0_MB = 16                    # dom0's memory under `pvhyp run`
ONESHOT_SLACK_MB = 64           # beside the guest and dom0 under `pvhyp run` (hypervisor tables, rings)
HISTORY_SHOWN = 6               # hypercalls named in a crash line
DOM0_LOG_LINES_SHOWN = 15       # lines of dom0's log quoted when a one-shot run loses dom0
CONSOLE_DRAIN_SECONDS = 2.0
RUN_TAIL_BYTES = 1 << 20        # of console_io and of the ring, kept in memory by `pvhyp run`


class MachineTooSmall(ValueError):
    """More machine memory asked for than this host has: one line, before anything is allocated."""


def host_memory_mb() -> int:
    """This host's physical memory in MiB: the most a hypervisor of ours may be given (its machine
    memory is touched page by page as guests are populated, so more would end in the OOM killer)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def oneshot_memory_mb(guest_mb: int) -> int:
    """The machine memory `pvhyp run` gives its hypervisor for a guest of `guest_mb` MiB."""
    return guest_mb + DOM0_MB + ONESHOT_SLACK_MB


def build_hypervisor(memory_mb: int, *, cpu: bool, accel: str | None = None) -> Hypervisor:
    """A hypervisor with `memory_mb` MiB of machine memory, every subsystem and every handler.

    `cpu`: attach the CPU engine (x86 PV guests run on vCPU threads; it must come before
    any guest L4 is validated, as it fills hv.xen_l4_slots). Without it, guests are
    process domains or are driven straight through the hypercall table (tests, the fuzzer).
    `accel`: auto|kvm|unicorn (pvhyp.kvm.choice); default $PVHYP_ACCEL, else unicorn (the
    CLI's commands default to auto). hv.cpu.engine_line says which engine runs and why.
    """
    if memory_mb > host_memory_mb():
        raise MachineTooSmall(f"{memory_mb} MiB of machine memory is more than this host's {host_memory_mb()} MiB")
    hv = Hypervisor(memory_mb)
    for subsystem in SUBSYSTEMS:
        subsystem.attach(hv)
    hypercalls.install(hv.hypercalls)
    if cpu:
        # unicorn is loaded only by hosts that run x86 guests; a unicorn whose internals
        # moved stops the program here, with one line (the probe runs once per process).
        from pvhyp.cpu import runner, unicorn_quirks
        unicorn_quirks.require_supported_unicorn()
        runner.attach(hv)
        _attach_accelerator(hv, accel)
    return hv


def _attach_accelerator(hv: Hypervisor, accel: str | None) -> None:
    """KVM replaces the software CPU's engine when chosen (pvhyp.kvm.choice)."""
    from pvhyp.kvm import choice
    chosen = choice.choose_engine(accel or choice.accel_from_environment("unicorn"))
    assert hv.cpu is not None
    if chosen.quirks is not None:
        from pvhyp.kvm import machine
        machine.attach(hv, chosen.quirks)
    hv.cpu.engine_line = chosen.line


class Host:
    """The hypervisor of `pvhyp up` with dom0 as a privileged process domain (domid 0) whose
    process, `python -P -m dom0`, holds the client end of its channel socket."""

    def __init__(self, run_dir: str, memory_mb: int, dom0_mb: int, verbose: bool = False):
        # Checked (ours, 0700) and held open: every file of ours in it is reached through it.
        self.rundir = RunDir.open(run_dir)
        self.run_dir = self.rundir.path
        self.hv = build_hypervisor(memory_mb, cpu=True)
        self.hv.domain_create_hooks.append(self._start_x86_vcpus)
        self.channels = ChannelServer(self.hv, on_disconnect=self._on_disconnect)
        self.dom0 = create_process_domain(self.hv, dom0_mb * 256, privileged=True, domid=0)
        self.dom0.name = "Domain-0"
        self.verbose = verbose
        self.stopping = threading.Event()
        self.dom0_alive = False
        self.dom0_proc: subprocess.Popen[bytes] | None = None
        # --trace: a pvhyp.timeline.session.TraceSession, whose spool dom0 appends its records to
        self.trace_session: TraceSession | None = None

    def _start_x86_vcpus(self, domain: Domain) -> None:
        """Every x86 PV domain's vCPUs get their threads as it is created; they wait in the
        scheduler until the builder has set their registers and the toolstack unpauses them."""
        if domain.paging:
            assert self.hv.cpu is not None      # built with cpu=True
            self.hv.cpu.start_domain(domain)

    def _on_disconnect(self, domain: Domain, reason: str) -> None:
        if domain.domid == 0:
            return      # reported by the process watcher, with its exit status
        log.info("d%d's channel closed: %s", domain.domid, reason)

    def start_dom0(self) -> None:
        sock = self.channels.attach(self.dom0)
        ready = self.rundir.join("dom0.ready")
        self.rundir.remove("dom0.ready")
        args = ["--run-dir", self.run_dir, "--channel-fd", str(sock.fileno()), "--ready-file", ready]
        if self.verbose:
            args.append("--verbose")
        trace_args, trace_fds = self.trace_session.dom0_args() if self.trace_session is not None else ([], [])
        args += trace_args
        dom0_log = self.rundir.open_log("dom0.log")
        try:
            self.dom0_proc = start_python_module("dom0", args, pass_fds=[sock.fileno(), *trace_fds],
                                                 stdin=subprocess.DEVNULL, stdout=dom0_log, stderr=dom0_log)
        finally:
            os.close(dom0_log)
        sock.close()
        deadline = time.monotonic() + DOM0_READY_TIMEOUT
        while not os.path.exists(ready):
            if self.dom0_proc.poll() is not None:
                raise RuntimeError(f"dom0 did not start: {self.dom0_exit()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dom0 was not ready within {DOM0_READY_TIMEOUT:.0f}s")
            time.sleep(0.02)
        self.dom0_alive = True
        self._report()

    @property
    def dom0_log(self) -> str:
        return os.path.join(self.run_dir, "dom0.log")

    def dom0_exit(self) -> str:
        """How dom0's process ended, in words ("it exited with status 1", "it was killed by SIGKILL")."""
        code = self.dom0_proc.poll() if self.dom0_proc is not None else None
        if code is None:
            return "it is still running"
        if code < 0:
            try:
                return f"it was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"it was killed by signal {-code}"
        return f"it exited with status {code}"

    def dom0_log_tail(self, lines: int = DOM0_LOG_LINES_SHOWN) -> list[str]:
        """The last lines of dom0's log, for a report that outlives the run directory."""
        try:
            with open(self.dom0_log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]

    def _report(self, note: str = "") -> None:
        guests = sorted(d for d in self.hv.domains if d != 0)
        state = dict(pid=os.getpid(), dom0_pid=self.dom0_proc.pid if self.dom0_proc else None,
                     engine=self.hv.cpu.engine_line if self.hv.cpu is not None else "",
                     dom0_alive=self.dom0_alive, guests=guests, note=note)
        self.rundir.write_atomically(STATE_FILE, json.dumps(state).encode())

    def run(self) -> int:
        while not self.stopping.is_set():
            if self.dom0_alive and self.dom0_proc is not None and self.dom0_proc.poll() is not None:
                self.dom0_alive = False
                guests = sorted(d for d in self.hv.domains if d != 0)
                note = (f"dom0 (pid {self.dom0_proc.pid}) died: {self.dom0_exit()}; "
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


class GuestRefused(Exception):
    """dom0's toolstack refused to create the guest (its configuration): the user's to fix."""


class OneShot:
    """A hypervisor, dom0 and one guest; `wait()` until the guest shuts down."""

    def __init__(self, config_text: str, source: str, memory_mb: int,
                 console_io_sink: Callable[[int, bytes], None] | None = None,
                 ring_sink: Callable[[bytes], None] | None = None):
        self.config_text = config_text
        self.source = source
        self.console_io_sink = console_io_sink
        self.ring_sink = ring_sink
        self.run_dir = tempfile.mkdtemp(prefix="pvhyp-run-", dir="/tmp")
        self.host = Host(self.run_dir, oneshot_memory_mb(memory_mb), DOM0_MB)
        self.hv = self.host.hv
        self.done = threading.Event()
        self.domid: int | None = None
        self.shutdown_reason: int | None = None
        self.crash_line: str | None = None
        # What `pvhyp run` keeps of each stream in memory: the last RUN_TAIL_BYTES (a guest may print forever).
        self.console_io = TailBuffer(RUN_TAIL_BYTES)
        self._ring_fd: int | None = None
        self._ring = TailBuffer(RUN_TAIL_BYTES)
        self._closed = False
        self.stdin_closed = False
        # stdin is a terminal in keystroke mode (pvhyp.cli.run_cmd.terminal_keystrokes): bytes go as typed
        self.keystrokes = False
        # A byte on stdin that ends the run as Ctrl-C does (`pvhyp run` sets Ctrl-] in keystroke mode).
        self.detach: int | None = None
        # Input waits until the guest printed this (a shell may drop what came before it)...
        self.input_after: bytes | None = None
        # ...and this line goes to the guest when piped input ends.
        self.input_at_end = b""
        self.hv.console_sinks.append(self._on_console_io)
        self.hv.domain_create_hooks.append(self._watch)

    # --- hypervisor side (vCPU threads) ----------------------------------
    def _watch(self, domain: Domain) -> None:
        if domain.domid != 0:
            domain.on_shutdown.append(self._on_shutdown)

    def _on_console_io(self, domid: int, data: bytes) -> None:
        if domid == 0:
            return
        self.console_io.append(data)
        if self.console_io_sink is not None:
            self.console_io_sink(domid, data)

    def _on_shutdown(self, domain: Domain, reason: int) -> None:
        if self.domid is not None and domain.domid != self.domid:
            return
        self.shutdown_reason = reason
        if reason == sched_abi.SHUTDOWN_crash:
            try:
                self.crash_line = crash_line(self.hv, domain, SymbolMap.beside(self._config.kernel))
            except Exception as e:      # a diagnostic must never hide the crash itself
                self.crash_line = f"d{domain.domid} crashed (no details: {e!r})"
        self.done.set()

    # --- lifecycle ---------------------------------------------------------
    def start(self) -> int:
        from dom0.toolstack.api import call
        self.host.start_dom0()
        # One shutdown ends the run: dom0 keeps the domain (and its console) until we are done.
        text = self.config_text.rstrip("\n") + '\non_poweroff = "preserve"\non_reboot = "preserve"\n' \
            'on_crash = "preserve"\n'
        reply = call(os.path.join(self.run_dir, "pvhyp.sock"), "create", timeout=120.0,
                     config=text, source=self.source)
        if not reply.get("ok"):
            raise GuestRefused(reply.get("error", "dom0 refused to create the guest"))
        self.domid = reply["domid"]
        try:
            self._ring_fd = os.open(reply["tty"], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            attrs = termios.tcgetattr(self._ring_fd)
            attrs[3] &= ~termios.ECHO       # our input lines are the guest's to echo
            termios.tcsetattr(self._ring_fd, termios.TCSANOW, attrs)
        except OSError:
            self._ring_fd = None
        domain = self.hv.domains.get(self.domid)
        if domain is not None and domain.is_shut_down and not self.done.is_set():
            assert domain.shutdown_reason is not None       # set with is_shut_down (Domain.shutdown)
            self._on_shutdown(domain, domain.shutdown_reason)
        return self.domid

    def pump(self, seconds: float, stdin_fd: int | None = None) -> None:
        """Move console ring output to ring_sink (and stdin lines to the guest) for a while."""
        fds = [fd for fd in (self._ring_fd, stdin_fd) if fd is not None]
        if not fds:
            time.sleep(seconds)
            return
        readable, _, _ = select.select(fds, [], [], seconds)
        if self._ring_fd in readable:
            self._read_ring()
        if stdin_fd is not None and stdin_fd in readable:
            data = os.read(stdin_fd, 4096)
            if not data:
                # End of a piped script: keep running, with the closing line if there is one.
                self.stdin_closed = True
                data = self.input_at_end
            if self.detach is not None and self.detach in data:
                raise KeyboardInterrupt
            if data and self._ring_fd is not None:
                try:
                    os.write(self._ring_fd, data if self.keystrokes else data.replace(b"\n", b"\r"))
                except OSError:
                    pass

    def _input_open(self) -> bool:
        if self.input_after is None:
            return True
        if self.input_after in self._ring:
            self.input_after = None
            return True
        return False

    def _read_ring(self) -> None:
        while self._ring_fd is not None:
            try:
                data = os.read(self._ring_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                os.close(self._ring_fd)
                self._ring_fd = None
                return
            if not data:
                return
            self._ring.append(data)
            if self.ring_sink is not None:
                self.ring_sink(data)

    def wait(self, timeout: float | None = None, stdin_fd: int | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return "timeout"
            proc = self.host.dom0_proc
            if not self.host.dom0_alive or proc is None or proc.poll() is not None:
                return "error"
            self.pump(0.05, None if self.stdin_closed or not self._input_open() else stdin_fd)
        self._drain_ring()
        if self.shutdown_reason is None:
            return "crash"
        return SHUTDOWN_NAMES.get(self.shutdown_reason, "crash")

    def _drain_ring(self) -> None:
        """dom0 drains the ring once more when it sees the shutdown, then marks the log."""
        log_path = self._console_log
        deadline = time.monotonic() + CONSOLE_DRAIN_SECONDS
        while time.monotonic() < deadline:
            self.pump(0.05)
            try:
                with open(log_path, "rb") as f:
                    if b"[pvhyp: " in f.read():
                        break
            except OSError:
                break
        self.pump(0.05)

    @functools.cached_property
    def _config(self) -> DomainConfig:
        from dom0.toolstack.config import parse_config
        return parse_config(self.config_text, self.source)

    @property
    def _console_log(self) -> str:
        """The guest's console log that dom0's console backend writes."""
        return os.path.join(self.run_dir, "console", f"guest-{self._config.name}.log")

    def ring_text(self) -> bytes:
        """Everything the guest wrote on its console ring (the pty may have dropped some; the log has it)."""
        log_path = self._console_log
        try:
            with open(log_path, "rb") as f:
                return f.read()
        except OSError:
            return self._ring.getvalue()

    def explain_failure(self, what: str) -> str:
        """`what` went wrong: with how dom0 ended and the end of its log, quoted here because
        close() removes the run directory the log is in."""
        ended = self.host.dom0_exit()
        if self.host.dom0_proc is not None and self.host.dom0_proc.poll() is not None and ended not in what:
            what = f"{what} (dom0: {ended})"
        tail = self.host.dom0_log_tail()
        if not tail:
            return f"{what}; dom0's log was empty"
        return f"{what}; the end of dom0's log (removed with the run directory):\n" + "\n".join(
            f"    {line}" for line in tail)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ring_fd is not None:
            os.close(self._ring_fd)
            self._ring_fd = None
        try:
            self.host.shutdown()
        finally:
            self.host.rundir.close()
            # The machine memory stays mapped: a vCPU thread may still be leaving unicorn.
            shutil.rmtree(self.run_dir, ignore_errors=True)


def crash_line(hv: Hypervisor, domain: Domain, symbols: SymbolMap | None = None) -> str:
    """reason, faulting RIP (and its function, given symbols), the instruction there,
    the last hypercalls: one line."""
    vcpu = domain.vcpus[0]
    cpu = vcpu.arch
    # A process domain's vCPU has no engine (vcpu.arch is None): no registers to show.
    reason = (cpu.crash_reason if cpu is not None else None) or "the guest asked for it (SCHEDOP_shutdown crash)"
    parts = [f"d{domain.domid} crashed: {reason}"]
    if cpu is not None:
        try:
            rip = cpu.engine.read("rip")
            where = symbols.describe(rip) if symbols is not None else None
            parts.append(f"rip {rip:#x}{f' ({where})' if where else ''}: {disassemble_at(vcpu, rip)}")
        except Exception:
            pass
    calls = [r for r in hv.trace.history(domain.domid) if r["kind"] == "hypercall"][-HISTORY_SHOWN:]
    if calls:
        parts.append("last hypercalls: " + ", ".join(
            f"{r['name']}({', '.join(hex(a) for a in r['args'][:3])})={r['result']}" for r in calls))
    return "; ".join(parts)
