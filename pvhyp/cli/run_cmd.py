"""`pvhyp run`: one-shot hypervisor + dom0 + one guest in the foreground.

The same code path as `pvhyp up` + `pvhyp create`: pvhyp.host.OneShot
builds the host (pvhyp.host.Host) in this process and starts dom0
(xenstored, console backend, toolstack) as a process of its own; the guest
is created through dom0's toolstack API, so dom0's builder and rings serve
it exactly as under `pvhyp up`. This process watches the guest's Domain directly: its
shutdown ends the run, with an exit status that says how.

`run_guest()` is the programmatic form (used by `pvhyp xtf` and the
conformance tests): it returns a RunResult with both consoles captured.
"""
from __future__ import annotations

import contextlib
import os
import sys
import termios
import time
from dataclasses import dataclass, field

from dom0.console.bounded import LineAssembler
from pvhyp.cli.accel import add_accel_argument, apply_accel
from pvhyp.cli.errors import UserError
from pvhyp.cli.trace_options import add_trace_arguments, open_trace
from pvhyp.cli.xl_cmd import DETACH, read_config_file

# Exit status by shutdown reason (documented in --help).
EXIT_STATUS = {"poweroff": 0, "crash": 1, "reboot": 3, "watchdog": 4, "suspend": 5, "soft_reset": 6,
               "timeout": 7, "error": 70, "interrupted": 130}
EXIT_HELP = ("exit status: 0 poweroff, 1 crash, 2 bad config/kernel, 3 reboot, 4 watchdog, "
             "5 suspend, 6 soft_reset, 7 --timeout reached, 70 hypervisor/dom0 failure, "
             "130 interrupted (Ctrl-C, or Ctrl-] on a terminal, destroys the guest)")


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
        text = read_config_file(args.config)
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
    """Parse as dom0 will, check the files are kernels' and ramdisks' size and kind, and the guest
    fits this host: bad input is a UserError (exit 2), before any memory is allocated for it."""
    from dom0.builder.errors import BuildError
    from dom0.builder.image import MAX_KERNEL_FILE, MAX_RAMDISK_SIZE, check_image_file
    from dom0.toolstack.config import ConfigError, parse_config
    from pvhyp.host import host_memory_mb, oneshot_memory_mb
    try:
        cfg = parse_config(text, source)
    except ConfigError as e:
        raise UserError(str(e)) from None
    if oneshot_memory_mb(cfg.memory) > host_memory_mb():
        raise UserError(f"{cfg.where('memory')}: {cfg.memory} MiB does not fit in this host's "
                        f"{host_memory_mb()} MiB of memory")
    try:
        if not cfg.python_guest:
            check_image_file(cfg.kernel, cfg.where("kernel"), MAX_KERNEL_FILE)
        if cfg.ramdisk:
            check_image_file(cfg.ramdisk, cfg.where("ramdisk"), min(MAX_RAMDISK_SIZE, cfg.memory << 20))
    except BuildError as e:
        raise UserError(str(e)) from None
    return cfg


def run_guest(config_text: str, source: str = "<config>", timeout: float | None = None,
              trace_path: str | None = None, console_io_sink=None, ring_sink=None,
              stdin_fd: int | None = None, input_after: bytes | None = None,
              input_at_end: bytes = b"", on_started=None, trace_limit: int | None = None) -> RunResult:
    """Boot one guest in a fresh hypervisor, wait for its shutdown (or the timeout), tear down.

    Lines read from `stdin_fd` go to the guest's console, once it printed
    `input_after` (if given); `input_at_end` follows when that input ends.
    """
    from pvhyp.host import GuestRefused, OneShot
    cfg = check_config(config_text, source)
    started = time.monotonic()
    run = OneShot(config_text, source, cfg.memory, console_io_sink, ring_sink)
    try:
        session = open_trace(run.host, trace_path, trace_limit)
    except UserError:
        run.close()
        raise
    run.input_after, run.input_at_end = input_after, input_at_end
    run.keystrokes = stdin_fd is not None and os.isatty(stdin_fd)
    if run.keystrokes:
        run.detach = DETACH             # Ctrl-] on the terminal: as Ctrl-C was
    try:
        try:
            domid = run.start()
            if on_started is not None:
                on_started()
        except GuestRefused as e:
            raise UserError(str(e)) from None
        except Exception as e:
            return RunResult(None, "error", time.monotonic() - started,
                             error=run.explain_failure(f"start-up failed: {e}"))
        try:
            reason = run.wait(timeout, stdin_fd)
        except KeyboardInterrupt:
            reason = "interrupted"
        error = run.explain_failure("dom0 exited") if reason == "error" else None
        return RunResult(domid, reason, time.monotonic() - started, bytes(run.console_io), run.ring_text(),
                         run.crash_line, error, run.hv.trace.history(domid))
    finally:
        run.close()
        if session is not None:         # dom0 has ended: its records are all in the spool
            for note in session.close():
                print(f"pvhyp: trace: {note}", file=sys.stderr)


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
    add_trace_arguments(p)
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 7)")
    add_accel_argument(p)
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
    engine_line = apply_accel(args, announce=False)
    return run_in_foreground(text, source, args.timeout, args.trace, announce=f"pvhyp: {engine_line}",
                             trace_limit=args.trace_limit)


def _whole_line(stream, text: str) -> None:
    """One write: print() writes the text and its newline apart, and the guest's console lines,
    written from another thread, could land between the two."""
    stream.write(text + "\n")
    stream.flush()


def run_in_foreground(text: str, source: str, timeout: float | None = None, trace: str | None = None,
                      input_after: bytes | None = None, input_at_end: bytes = b"", announce: str | None = None,
                      trace_limit: int | None = None) -> int:
    """`pvhyp run`'s console and exit status: ring on stdout, console_io on stderr, stdin to the guest."""
    out, err = sys.stdout.buffer, sys.stderr

    def ring_out(data: bytes) -> None:
        out.write(data)
        out.flush()

    lines_of: dict[int, LineAssembler] = {}     # domid -> its unfinished line (bounded)

    def console_io_out(domid: int, data: bytes) -> None:
        # Xen's serial console: whole lines, each tagged with the domain
        for line in lines_of.setdefault(domid, LineAssembler()).feed(data):
            err.write(f"(d{domid}) {line.decode(errors='replace')}\n")
        err.flush()

    # A terminal or a pipe: lines typed (or piped) go to the guest's console.
    stdin_fd = None if sys.stdin is None or sys.stdin.closed else sys.stdin.fileno()
    with terminal_keystrokes(stdin_fd):
        result = run_guest(text, source, timeout, trace, console_io_out, ring_out, stdin_fd,
                           input_after, input_at_end,
                           on_started=(lambda: _whole_line(err, announce)) if announce else None,
                           trace_limit=trace_limit)
    if result.reason == "crash" and result.crash_line:
        print(f"pvhyp: {result.crash_line}", file=sys.stderr)
    elif result.reason == "error":
        print(f"pvhyp: {result.error}", file=sys.stderr)
    elif result.reason != "interrupted":
        print(f"pvhyp: d{result.domid} {result.reason} after {result.seconds:.1f}s", file=sys.stderr)
    return result.exit_status
