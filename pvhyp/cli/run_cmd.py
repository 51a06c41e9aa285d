"""`pvhyp run`: one-shot hypervisor + dom0 + one guest in the foreground.

The same code path as `pvhyp up` + `pvhyp create`: pvhyp.cli.hostd.Host
builds the hypervisor in this process and starts dom0 (xenstored, console
backend, toolstack) as a process of its own; the guest is created through
dom0's toolstack API, so dom0's builder and rings serve it exactly as
under `pvhyp up`. This process watches the guest's Domain directly: its
shutdown ends the run, with an exit status that says how.

`run_guest()` is the programmatic form (used by `pvhyp xtf` and the
conformance tests): it returns a RunResult with both consoles captured.
"""
from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field

from pvhyp.cli import UserError
from pvhyp.cli.xl_cmd import DETACH
from pvhyp.diagnose import SymbolMap, disassemble_at

from abi.sched import SHUTDOWN_NAMES
# Exit status by shutdown reason (documented in --help).
EXIT_STATUS = {"poweroff": 0, "crash": 1, "reboot": 3, "watchdog": 4, "suspend": 5, "soft_reset": 6,
               "timeout": 7, "error": 70, "interrupted": 130}
EXIT_HELP = ("exit status: 0 poweroff, 1 crash, 2 bad config/kernel, 3 reboot, 4 watchdog, "
             "5 suspend, 6 soft_reset, 7 --timeout reached, 70 hypervisor/dom0 failure, "
             "130 interrupted (Ctrl-C, or Ctrl-] on a terminal, destroys the guest)")
DOM0_MB = 16
HISTORY_SHOWN = 6
CONSOLE_DRAIN_SECONDS = 2.0


@dataclass
class RunResult:
    domid: int | None
    reason: str                 # a SHUTDOWN_NAMES value, or "timeout" / "error" / "interrupted"
    seconds: float
    console_io: bytes = b""     # what the guest wrote with CONSOLEIO_write
    ring: bytes = b""           # what the guest wrote on its PV console ring
    crash_line: str | None = None
    error: str | None = None
    history: list = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS.get(self.reason, 1)


def build_config(args) -> tuple[str, str]:
    """The xl.cfg text and its name, from CONFIG or from --kernel and friends."""
    if args.config:
        try:
            with open(args.config) as f:
                text = f.read()
        except OSError as e:
            raise UserError(f"{args.config}: cannot read: {e.strerror}") from None
        source = args.config
    elif args.kernel:
        text = f'name = "{os.path.basename(args.kernel)}"\ntype = "pv"\nkernel = "{os.path.abspath(args.kernel)}"\n'
        source = "<command line>"
    else:
        raise UserError("give an xl.cfg file or --kernel FILE")
    extra = []
    if args.kernel and args.config:
        extra.append(f'kernel = "{os.path.abspath(args.kernel)}"')
    if args.ramdisk:
        extra.append(f'ramdisk = "{os.path.abspath(args.ramdisk)}"')
    if args.cmdline is not None:
        extra.append(f"cmdline = {_quote(args.cmdline)}")
    if args.memory is not None:
        extra.append(f"memory = {args.memory}")
    if args.vcpus is not None:
        extra.append(f"vcpus = {args.vcpus}")
    if extra:
        text = text.rstrip("\n") + "\n" + "\n".join(extra) + "\n"
    return text, source


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_config(text: str, source: str):
    """Parse as dom0 will, and check the files are readable: bad input is a UserError (exit 2)."""
    from dom0.toolstack.config import ConfigError, parse_config
    try:
        cfg = parse_config(text, source)
    except ConfigError as e:
        raise UserError(str(e)) from None
    for path in filter(None, (cfg.kernel, cfg.ramdisk)):
        if cfg.python_guest and path == cfg.kernel:
            continue
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e.strerror}") from None
    return cfg


class OneShot:
    """A hypervisor, dom0 and one guest; `wait()` until the guest shuts down."""

    def __init__(self, config_text: str, source: str, memory_mb: int, trace_path: str | None = None,
                 console_io_sink=None, ring_sink=None):
        from pvhyp.cli.hostd import Host
        self.config_text = config_text
        self.source = source
        self.console_io_sink = console_io_sink
        self.ring_sink = ring_sink
        self.run_dir = tempfile.mkdtemp(prefix="pvhyp-run-", dir="/tmp")
        self.host = Host(self.run_dir, memory_mb + DOM0_MB + 64, DOM0_MB)
        self.hv = self.host.hv
        self.done = threading.Event()
        self.domid: int | None = None
        self.shutdown_reason: int | None = None
        self.crash_line: str | None = None
        self.console_io = bytearray()
        self._ring_fd: int | None = None
        self._ring = bytearray()
        self._closed = False
        self.stdin_closed = False
        # stdin is a terminal in keystroke mode (see terminal_keystrokes): bytes go as typed
        self.keystrokes = False
        # Input waits until the guest printed this (a shell may drop what came before it)...
        self.input_after: bytes | None = None
        # ...and this line goes to the guest when piped input ends.
        self.input_at_end = b""
        self.hv.console_sinks.append(self._on_console_io)
        self.hv.domain_create_hooks.append(self._watch)
        if trace_path:
            from pvhyp.cli.trace_format import trace_to_file
            trace_to_file(self.hv.trace, trace_path, skip_domids={0})

    # --- hypervisor side (vCPU threads) ----------------------------------
    def _watch(self, domain) -> None:
        if domain.domid != 0:
            domain.on_shutdown.append(self._on_shutdown)

    def _on_console_io(self, domid: int, data: bytes) -> None:
        if domid == 0:
            return
        self.console_io += data
        if self.console_io_sink is not None:
            self.console_io_sink(domid, data)

    def _on_shutdown(self, domain, reason: int) -> None:
        if self.domid is not None and domain.domid != self.domid:
            return
        self.shutdown_reason = reason
        if reason == 3:
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
            raise UserError(reply.get("error", "dom0 refused to create the guest"))
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
            if self.keystrokes and DETACH in data:
                raise KeyboardInterrupt          # Ctrl-] on the terminal: as Ctrl-C was
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
            self._ring += data
            if self.ring_sink is not None:
                self.ring_sink(data)

    def wait(self, timeout: float | None = None, stdin_fd: int | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return "timeout"
            if not self.host.dom0_alive or self.host.dom0_proc.poll() is not None:
                return "error"
            self.pump(0.05, None if self.stdin_closed or not self._input_open() else stdin_fd)
        self._drain_ring()
        return SHUTDOWN_NAMES.get(self.shutdown_reason, "crash")

    def _drain_ring(self) -> None:
        """dom0 drains the ring once more when it sees the shutdown, then marks the log."""
        log_path = os.path.join(self.run_dir, "console", f"guest-{self._config.name}.log")
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
    def _config(self):
        from dom0.toolstack.config import parse_config
        return parse_config(self.config_text, self.source)

    def ring_text(self) -> bytes:
        """Everything the guest wrote on its console ring (the pty may have dropped some; the log has it)."""
        log_path = os.path.join(self.run_dir, "console", f"guest-{self._config.name}.log")
        try:
            with open(log_path, "rb") as f:
                return f.read()
        except OSError:
            return bytes(self._ring)

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
            # The machine memory stays mapped: a vCPU thread may still be leaving unicorn.
            shutil.rmtree(self.run_dir, ignore_errors=True)


def crash_line(hv, domain, symbols: SymbolMap | None = None) -> str:
    """reason, faulting RIP (and its function, given symbols), the instruction there,
    the last hypercalls: one line."""
    vcpu = domain.vcpus[0]
    cpu = vcpu.arch
    reason = getattr(cpu, "crash_reason", None) or "the guest asked for it (SCHEDOP_shutdown crash)"
    parts = [f"d{domain.domid} crashed: {reason}"]
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


def run_guest(config_text: str, source: str = "<config>", timeout: float | None = None,
              trace_path: str | None = None, console_io_sink=None, ring_sink=None,
              stdin_fd: int | None = None, input_after: bytes | None = None,
              input_at_end: bytes = b"") -> RunResult:
    """Boot one guest in a fresh hypervisor, wait for its shutdown (or the timeout), tear down.

    Lines read from `stdin_fd` go to the guest's console, once it printed
    `input_after` (if given); `input_at_end` follows when that input ends.
    """
    cfg = check_config(config_text, source)
    started = time.monotonic()
    run = OneShot(config_text, source, cfg.memory, trace_path, console_io_sink, ring_sink)
    run.input_after, run.input_at_end = input_after, input_at_end
    run.keystrokes = stdin_fd is not None and os.isatty(stdin_fd)
    try:
        try:
            domid = run.start()
        except UserError:
            raise
        except Exception as e:
            return RunResult(None, "error", time.monotonic() - started, error=f"start-up failed: {e!r}")
        try:
            reason = run.wait(timeout, stdin_fd)
        except KeyboardInterrupt:
            reason = "interrupted"
        error = "dom0 exited" if reason == "error" else None
        return RunResult(domid, reason, time.monotonic() - started, bytes(run.console_io), run.ring_text(),
                         run.crash_line, error, run.hv.trace.history(domid))
    finally:
        run.close()


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="boot one guest in a one-shot hypervisor + dom0, in the foreground",
                       description="Boot one PV guest (hypervisor and dom0 in this process tree) and "
                                   "stay in the foreground until it shuts down. The guest's console ring "
                                   "goes to stdout (lines typed on stdin go to it); its CONSOLEIO_write "
                                   "output goes to stderr as (dN) lines, as on Xen's serial console. "
                                   + EXIT_HELP + ".")
    p.add_argument("config", nargs="?", help="xl.cfg file (or give --kernel)")
    p.add_argument("--kernel", help="PV kernel (overrides the config's)")
    p.add_argument("--ramdisk", help="initial ramdisk")
    p.add_argument("--cmdline", help="kernel command line")
    p.add_argument("--memory", type=int, help="guest memory in MiB (default 128)")
    p.add_argument("--vcpus", type=int, help="number of vCPUs (default 1)")
    p.add_argument("--trace", metavar="FILE",
                   help="write one line per hypercall, trap and event delivery of the guest to FILE")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 7)")
    p.set_defaults(func=run)


@contextlib.contextmanager
def terminal_keystrokes(fd: int | None):
    """On a terminal: every key goes to the guest as typed (Ctrl-C, Tab, arrows; the guest
    echoes), output keeps its newline handling, and Ctrl-] ends the run (as it detaches
    `pvhyp console`). Anything else: untouched."""
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.ICRNL | termios.IXON)                                   # iflag
    mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)  # lflag
    mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run(args) -> int:
    text, source = build_config(args)
    return run_in_foreground(text, source, args.timeout, args.trace)


def run_in_foreground(text: str, source: str, timeout: float | None = None, trace: str | None = None,
                      input_after: bytes | None = None, input_at_end: bytes = b"") -> int:
    """`pvhyp run`'s console and exit status: ring on stdout, console_io on stderr, stdin to the guest."""
    out, err = sys.stdout.buffer, sys.stderr

    def ring_out(data: bytes) -> None:
        out.write(data)
        out.flush()

    pending = {}

    def console_io_out(domid: int, data: bytes) -> None:
        # Xen's serial console: whole lines, each tagged with the domain
        buf = pending.get(domid, b"") + data
        *lines, pending[domid] = buf.split(b"\n")
        for line in lines:
            err.write(f"(d{domid}) {line.decode(errors='replace')}\n")
        err.flush()

    # A terminal or a pipe: lines typed (or piped) go to the guest's console.
    stdin_fd = None if sys.stdin is None or sys.stdin.closed else sys.stdin.fileno()
    with terminal_keystrokes(stdin_fd):
        result = run_guest(text, source, timeout, trace, console_io_out, ring_out, stdin_fd,
                           input_after, input_at_end)
    if result.reason == "crash" and result.crash_line:
        print(f"pvhyp: {result.crash_line}", file=sys.stderr)
    elif result.reason == "error":
        print(f"pvhyp: {result.error}", file=sys.stderr)
    elif result.reason != "interrupted":
        print(f"pvhyp: d{result.domid} {result.reason} after {result.seconds:.1f}s", file=sys.stderr)
    return result.exit_status
