"""`pvhyp bench idle`: what N idle Debian guests cost the host, beside one idle QEMU TCG guest.

Issue 15's target: with three idle servers the host CPU pvhyp uses stays under
5% of one core. An idle guest's cost is the hypervisor's and dom0's own work
(timers, loops, polls) plus the guest's idle ticks, so it is measured on the
real thing: `pvhyp up` in a private run directory, N copy-on-write clones of
the disk-based Debian template (`pvhyp image debian --rootfs`, cloned as
`pvhyp clone` does) created and booted to their login prompts, a settling
pause, then a window (60 s) over which we sample from /proc:

  CPU       utime+stime of every process of the run (the hypervisor process,
            dom0, qemu-nbd, passt): % of one core over the window
  wake-ups  per thread, voluntary + involuntary context switches per second
            (/proc/PID/task/TID/status): a thread that sleeps and wakes on a
            timer shows here, whatever it does when awake

The peer, measured in the same run once pvhyp is down (never both at once:
they would share the cores): one qemu-system-x86_64 -accel tcg booting the
same kernel, initramfs and disk (virtio-blk) to its login prompt, then the
same settling pause and window. Numbers, never a pass/fail.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

from pvhyp.cli.bench_boot import LOGIN_PROMPT, QemuGuest, qemu_binary, rootfs_image, scratch_copy
from pvhyp.cli.bench_net import UpHost
from pvhyp.cli.errors import UserError

DESCRIPTION = ("idle cost: N idle Debian guests under `pvhyp up` (% of one core per process, wake-ups/s "
               "per thread) vs one idle qemu-system-x86_64 -accel tcg")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TOP_THREADS = 6                 # per process: the busiest threads by wake-ups


def add_arguments(parser) -> None:
    parser.add_argument("--guests", type=int, default=3, help="idle Debian guests (default 3)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window (default 60)")
    parser.add_argument("--settle", type=float, default=60.0,
                        help="seconds between the last login prompt and the window (default 60: systemd finishes starting units after getty)")
    parser.add_argument("--memory", type=int, default=384, metavar="MB", help="memory per guest (default 384)")
    parser.add_argument("--dir", help="disk image directory (default: pvhyp image debian --rootfs's cache)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the boots (default 1800)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU peer")


# --- sampling /proc ----------------------------------------------------------------------------

@dataclass
class ThreadSample:
    name: str
    switches: int               # voluntary + involuntary context switches so far


@dataclass
class ProcessSample:
    label: str
    ticks: int                  # utime + stime, in clock ticks
    threads: dict[int, ThreadSample]


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None             # the process or thread went between listing and reading


def _cpu_ticks(stat: str) -> int:
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])         # utime, stime (fields 14 and 15 of proc(5))


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of `pid` (all its threads) so far, in clock ticks; None once it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    return None if stat is None else _cpu_ticks(stat)


def _switches(status: str) -> int:
    total = 0
    for line in status.splitlines():
        if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
            total += int(line.split()[1])
    return total


def _label(pid: int) -> str:
    raw = _read(f"/proc/{pid}/cmdline") or ""
    argv = [a for a in raw.split("\0") if a]
    if "pvhyp.cli.hostd" in argv:
        return "hypervisor"
    if "dom0" in argv:
        return "dom0"
    return os.path.basename(argv[0]) if argv else str(pid)


def sample_process(pid: int, label: str | None = None) -> ProcessSample | None:
    ticks = cpu_ticks(pid)
    if ticks is None:
        return None
    threads: dict[int, ThreadSample] = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = []
    for tid in tids:
        status, comm = _read(f"/proc/{pid}/task/{tid}/status"), _read(f"/proc/{pid}/task/{tid}/comm")
        if status is not None:
            threads[tid] = ThreadSample((comm or "?").strip(), _switches(status))
    return ProcessSample(label or _label(pid), ticks, threads)


def descendants(root: int) -> list[int]:
    """`root` and every process below it (dom0, qemu-nbd, passt under the hypervisor process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read(f"/proc/{entry}/stat")
            if stat is not None:
                children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def measure_window(pids: list[int], seconds: float) -> list[dict]:
    """Each process's % of one core and its threads' wake-ups/s over `seconds`."""
    before = {pid: sample_process(pid) for pid in pids}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    rows = []
    for pid, first in before.items():
        last = sample_process(pid)
        if first is None or last is None:
            continue
        threads = []
        for tid, thread in last.threads.items():
            was = first.threads.get(tid)
            threads.append((tid, thread.name, (thread.switches - (was.switches if was else 0)) / elapsed))
        threads.sort(key=lambda t: -t[2])
        rows.append({"pid": pid, "label": first.label,
                     "cpu_pct": 100.0 * (last.ticks - first.ticks) / CLOCK_TICKS / elapsed,
                     "wakeups": sum(t[2] for t in threads), "threads": threads})
    return rows


def print_rows(side: str, rows: list[dict]) -> float:
    total = sum(r["cpu_pct"] for r in rows)
    for row in sorted(rows, key=lambda r: -r["cpu_pct"]):
        print(f"{side}_{row['label']}_cpu: {row['cpu_pct']:.2f} % of one core  (pid {row['pid']}, "
              f"{row['wakeups']:.0f} wake-ups/s over {len(row['threads'])} threads)", flush=True)
        for tid, name, rate in row["threads"][:TOP_THREADS]:
            if rate >= 0.5:
                print(f"    thread {tid} {name}: {rate:.1f} wake-ups/s")
    print(f"{side}_total_cpu: {total:.2f} % of one core", flush=True)
    return total


# --- the two sides -----------------------------------------------------------------------------

def template_config(image: dict, directory: str, memory: int) -> str:
    path = os.path.join(directory, "template.cfg")
    with open(path, "w") as f:
        f.write(f'name = "idle-template"\nkernel = "{image["kernel"]}"\nramdisk = "{image["ramdisk"]}"\n'
                f'memory = {memory}\nvcpus = 1\nextra = "{image["cmdline"]}"\n'
                f"disk = [ 'format={image.get('format', 'raw')}, vdev=xvda, access=rw, target={image['image']}' ]\n")
    return path


def wait_login(logs: dict[str, str], timeout: float) -> float:
    """Seconds until every console log shows a login prompt (TimeoutError naming the laggards)."""
    started = time.monotonic()
    waiting = dict(logs)
    while waiting:
        for name, path in list(waiting.items()):
            try:
                with open(path, "rb") as f:
                    if LOGIN_PROMPT in f.read():
                        del waiting[name]
            except FileNotFoundError:
                pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"no login prompt in {timeout:.0f}s from {', '.join(sorted(waiting))}")
        time.sleep(0.5)
    return time.monotonic() - started


def run_pvhyp(image: dict, args, scratch: str) -> list[dict]:
    from dom0.images import clone
    template = template_config(image, scratch, args.memory)
    host = UpHost(os.path.join(scratch, "run"), memory_mb=args.guests * args.memory + 96)
    os.makedirs(host.run_dir, mode=0o700)
    host.up()
    try:
        logs = {}
        for i in range(args.guests):
            name = f"idle{i + 1}"
            try:
                made = clone.clone(template, name, out=os.path.join(scratch, f"{name}.cfg"), cwd=scratch)
            except clone.CloneError as e:
                raise UserError(str(e)) from None
            host.cli("create", made["config"])
            logs[name] = os.path.join(host.run_dir, "console", f"guest-{name}.log")
        seconds = wait_login(logs, args.timeout)
        print(f"pvhyp_boot_{args.guests}_to_login: {seconds:.1f} s", flush=True)
        time.sleep(args.settle)
        with open(os.path.join(host.run_dir, "hostd.pid")) as f:
            hostd = int(f.read().split()[0])
        return measure_window(descendants(hostd), args.seconds)
    finally:
        host.down()


def run_qemu(binary: str, image: dict, args, scratch: str) -> list[dict]:
    guest = QemuGuest(binary, image, scratch_copy(image, scratch, "qemu"), args.memory)
    try:
        guest.start()
        if not guest.wait_for(LOGIN_PROMPT, args.timeout):
            raise TimeoutError(f"qemu: no login prompt in {args.timeout:.0f}s ({guest.last_line()})")
        print(f"qemu_tcg_boot_to_login: {time.monotonic() - guest.started:.1f} s", flush=True)
        time.sleep(args.settle)
        assert guest.proc is not None
        return measure_window([guest.proc.pid], args.seconds)
    finally:
        guest.close()


def run(args) -> int:
    if args.guests < 1 or args.seconds <= 0 or args.settle < 0 or args.memory < 128:
        raise UserError("--guests must be at least 1, --seconds above 0, --settle not negative, "
                        "--memory at least 128")
    image = rootfs_image(args.dir)
    print(f"disk: {image['image']} ({image['release']}); {args.guests} guests of {args.memory} MiB, "
          f"{args.seconds:.0f} s window after {args.settle:.0f} s settling", flush=True)
    with tempfile.TemporaryDirectory(prefix="pvhyp-bench-idle-") as scratch:
        pv_total = print_rows("pvhyp", run_pvhyp(image, args, scratch))
        print(f"pvhyp_per_guest_cpu: {pv_total / args.guests:.2f} % of one core", flush=True)
        if args.no_qemu:
            print("qemu_tcg: skipped (--no-qemu)")
            return 0
        binary = qemu_binary()
        if binary is None:
            print("qemu_tcg: skipped (qemu-system-x86_64 not installed)")
            return 0
        qemu_total = print_rows("qemu_tcg", run_qemu(binary, image, args, scratch))
    print(f"qemu_tcg_per_guest_cpu: {qemu_total:.2f} % of one core (one guest)")
    if qemu_total > 0:
        print(f"pvhyp_per_guest_over_qemu: {pv_total / args.guests / qemu_total:.2f} x")
    return 0
