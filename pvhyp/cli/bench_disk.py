"""`pvhyp bench disk`: Debian's own disk I/O inside the guest, pvhyp against QEMU TCG, side by side.

Both boot the same kernel, initramfs and Debian disk (`pvhyp image debian
--rootfs`), each on its own raw copy of the image (the template is never
written): pvhyp with its block backend and Linux's xen-blkfront, QEMU with
`-accel tcg` and virtio-blk (QEMU's default cache mode). Once root is logged
in on the console, the same commands run in both:

  sequential write: dd if=/dev/zero of=FILE bs=1M count=256 oflag=direct conv=fsync
  sequential read:  dd if=FILE of=/dev/null bs=1M iflag=direct
  random reads:     ioping -B -D -i 0 -s 4k -S 256m -c 4000 -w 30 FILE   (4 KiB, O_DIRECT)

MiB/s are computed from the wall-clock time the host sees each dd take (the
same clock for both guests); IOPS are ioping's. The ratios are pvhyp/QEMU,
so above 1 means pvhyp is faster. Numbers, never a pass/fail.

`DiskGuest`/`QemuGuest` share one console interface (`send`, `wait_for`,
`output`), which `login` and `command` use; `pvhyp bench boot --rootfs` uses them.
"""
from __future__ import annotations

import os
import re
import select
import subprocess
import tempfile
import threading
import time

from pvhyp.cli.errors import UserError

DESCRIPTION = ("disk I/O inside Debian (256 MiB direct dd write/read, 4 KiB random-read IOPS): "
               "pvhyp vs qemu-system-x86_64 -accel tcg + virtio-blk")
LOGIN_PROMPT = b"login: "
DEFAULT_TIMEOUT = 1800.0
BENCH_FILE = "/root/pvhyp-bench.dat"


def add_arguments(parser) -> None:
    parser.add_argument("--dir", help="disk image directory (default: pvhyp image debian --rootfs's cache; "
                        "built if missing)")
    parser.add_argument("--memory", type=int, default=512, metavar="MB", help="guest memory (default 512)")
    parser.add_argument("--mib", type=int, default=256, help="sequential file size in MiB (default 256)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds for each boot and each command (default 1800)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU half")


def rootfs_image(directory: str | None) -> dict:
    from dom0.images import rootfs
    try:
        return rootfs.find_or_build(directory)
    except rootfs.ImageError as e:
        raise UserError(str(e)) from None


def scratch_copy(image: dict, directory: str, name: str) -> str:
    """A raw copy of the template's disk (sparse, reflinked where the file system can)."""
    path = os.path.join(directory, f"{name}.img")
    subprocess.run(["cp", "--sparse=always", "--reflink=auto", image["image"], path], check=True)
    return path


class ConsoleMixin:
    """Login and commands over a serial console: needs send(line), output() and wait_for()."""

    def send(self, line: str) -> None:
        raise NotImplementedError

    def output(self) -> bytes:
        raise NotImplementedError

    def wait_for(self, needle: bytes, timeout: float, after: int = 0) -> bool:
        raise NotImplementedError

    def login(self, password: str, timeout: float) -> None:
        if not self.wait_for(LOGIN_PROMPT, timeout):
            raise TimeoutError(f"no login prompt in {timeout:.0f}s")
        mark = len(self.output())
        self.send("root")
        if not self.wait_for(b"Password: ", 300, mark):
            raise TimeoutError("no password prompt")
        mark = len(self.output())
        self.send(password)
        if not self.wait_for(b"# ", 300, mark):
            raise TimeoutError("no root shell after logging in")

    def command(self, line: str, timeout: float) -> tuple[str, float]:
        """(output, wall seconds) of one shell command; TimeoutError if it does not finish."""
        tag = f"__pvhyp_{time.monotonic_ns()}"
        mark = len(self.output())
        started = time.monotonic()
        # The quotes keep the tty's echo of this line from matching the markers.
        self.send(f'echo {tag}"-"begin; {line}; echo {tag}"-"end $?')
        if not self.wait_for(f"{tag}-end ".encode(), timeout, mark):
            raise TimeoutError(f"{line!r}: no answer in {timeout:.0f}s")
        seconds = time.monotonic() - started
        text = self.output()[mark:].decode(errors="replace").replace("\r", "")
        body = text.split(f"{tag}-begin\n", 1)[-1]       # the echoed line has {tag}"-"begin
        return body.split(f"{tag}-end", 1)[0], seconds


class DiskGuest(ConsoleMixin):
    """The disk-booted Debian under a fresh pvhyp (bench boot's PvhypBoot, with the disk)."""

    def __init__(self, image: dict, disk: str, memory: int):
        from pvhyp.cli.bench_boot import PvhypBoot
        extra = image["cmdline"].replace("console=hvc0", "").strip()
        self.boot = PvhypBoot(image, memory, extra=extra,
                              disks=[f"format=raw, vdev=xvda, access=rw, target={disk}"])
        self.started = 0.0

    def start(self) -> None:
        self.boot.start()
        self.started = self.boot.started

    def send(self, line: str) -> None:
        self.boot.send(line)

    def output(self) -> bytes:
        return self.boot.run.ring_text()

    def wait_for(self, needle: bytes, timeout: float, after: int = 0) -> bool:
        return self.boot.wait_for(needle, timeout, after)

    def last_line(self) -> str:
        return self.boot.last_line()

    def close(self) -> None:
        self.boot.close()


class QemuGuest(ConsoleMixin):
    """The same kernel, initramfs and disk in qemu-system-x86_64 -accel tcg, virtio-blk, ttyS0."""

    def __init__(self, binary: str, image: dict, disk: str, memory: int):
        cmdline = image["cmdline"].replace("console=hvc0", "console=ttyS0").replace("/dev/xvda", "/dev/vda")
        self.cmd = [binary, "-accel", "tcg", "-m", str(memory), "-smp", "1",
                    "-kernel", image["kernel"], "-initrd", image["ramdisk"], "-append", cmdline,
                    "-drive", f"file={disk},format=raw,if=virtio",
                    "-nographic", "-no-reboot", "-monitor", "none", "-nic", "none"]
        self.proc: subprocess.Popen | None = None
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.started = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            readable, _, _ = select.select([fd], [], [], 0.5)
            if not readable:
                if self.proc.poll() is not None:
                    return
                continue
            data = os.read(fd, 65536)
            if not data:
                return
            with self.lock:
                self.seen += data

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\r")
        self.proc.stdin.flush()

    def output(self) -> bytes:
        with self.lock:
            return bytes(self.seen)

    def wait_for(self, needle: bytes, timeout: float, after: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output()[after:]:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return needle in self.output()[after:]
            time.sleep(0.1)
        return False

    def last_line(self) -> str:
        lines = self.output().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "<nothing printed>"

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def workload(guest: ConsoleMixin, mib: int, timeout: float) -> dict:
    """The three measurements in one logged-in guest."""
    results: dict[str, float] = {}
    _, seconds = guest.command(f"dd if=/dev/zero of={BENCH_FILE} bs=1M count={mib} oflag=direct conv=fsync "
                               "2>/dev/null", timeout)
    results["seq_write_mib_s"] = mib / seconds
    guest.command("sync; echo 3 > /proc/sys/vm/drop_caches", timeout)
    _, seconds = guest.command(f"dd if={BENCH_FILE} of=/dev/null bs=1M iflag=direct 2>/dev/null", timeout)
    results["seq_read_mib_s"] = mib / seconds
    out, _ = guest.command(f"ioping -B -D -i 0 -s 4k -S {mib}m -c 4000 -w 30 {BENCH_FILE}", timeout)
    numbers = re.search(r"^(\d+) (\d+) (\d+) (\d+)", out, re.M)
    if numbers is None:
        raise RuntimeError(f"ioping printed no statistics: {out.strip()[-300:]!r}")
    results["rand_read_4k_iops"] = float(numbers.group(3))
    guest.command(f"rm -f {BENCH_FILE}", timeout)
    return results


def measure(guest, password: str, mib: int, timeout: float) -> dict:
    """Boot, log in, run the workload; the numbers, or {'error': why} with the guest's last line."""
    try:
        guest.start()
        guest.login(password, timeout)
        results = {"login_s": time.monotonic() - guest.started}
        results.update(workload(guest, mib, timeout))
        return results
    except (TimeoutError, RuntimeError) as e:
        return {"error": f"{e} (last console line: {guest.last_line()})"}
    finally:
        guest.close()


ROWS = (("seq_write_mib_s", "sequential write, direct", "MiB/s"),
        ("seq_read_mib_s", "sequential read, direct", "MiB/s"),
        ("rand_read_4k_iops", "random 4 KiB read, direct", "IOPS"))


def run(args) -> int:
    from dom0.images import rootfs
    from pvhyp.cli.bench_boot import qemu_binary
    image = rootfs_image(args.dir)
    print(f"disk: {image['image']} ({image['release']}); {args.mib} MiB files", flush=True)
    with tempfile.TemporaryDirectory(prefix="pvhyp-bench-disk-") as scratch:
        pv = measure(DiskGuest(image, scratch_copy(image, scratch, "pvhyp"), args.memory),
                     rootfs.ROOT_PASSWORD, args.mib, args.timeout)
        _print_side("pvhyp", pv)
        qemu: dict = {"error": "skipped (--no-qemu)"}
        if not args.no_qemu:
            binary = qemu_binary()
            qemu = ({"error": "skipped (qemu-system-x86_64 not installed)"} if binary is None else
                    measure(QemuGuest(binary, image, scratch_copy(image, scratch, "qemu"), args.memory),
                            rootfs.ROOT_PASSWORD, args.mib, args.timeout))
            _print_side("qemu_tcg", qemu)
    if "error" not in pv and "error" not in qemu:
        for key, _, _ in ROWS:
            print(f"pvhyp_over_qemu_{key}: {pv[key] / qemu[key]:.2f} x")
    return 0 if "error" not in pv else 1


def _print_side(side: str, results: dict) -> None:
    if "error" in results:
        print(f"{side}: {results['error']}", flush=True)
        return
    print(f"{side}_login: {results['login_s']:.1f} s", flush=True)
    for key, what, unit in ROWS:
        print(f"{side}_{key}: {results[key]:.1f} {unit}  ({what})", flush=True)



def boot_to_login(guest, timeout: float) -> dict:
    """Seconds from the guest's start to its login prompt, or why it did not get there."""
    try:
        guest.start()
        if guest.wait_for(LOGIN_PROMPT, timeout):
            return {"seconds": time.monotonic() - guest.started}
        return {"error": f"no login prompt in {timeout:.0f}s (last console line: {guest.last_line()})"}
    finally:
        guest.close()


def run_boot(args) -> int:
    """`pvhyp bench boot --rootfs`: the disk-based Debian to its login prompt, pvhyp and QEMU TCG,
    each on its own raw copy of the disk, with the same kernel and initramfs."""
    from pvhyp.cli.bench_boot import qemu_binary
    image = rootfs_image(args.dir)
    memory = max(args.memory, 384)          # systemd wants more than the busybox shell's 256
    print(f"disk: {image['image']} ({image['release']}); to the login prompt, {memory} MiB", flush=True)
    with tempfile.TemporaryDirectory(prefix="pvhyp-bench-boot-") as scratch:
        pv = boot_to_login(DiskGuest(image, scratch_copy(image, scratch, "pvhyp"), memory), args.timeout)
        print(f"pvhyp_boot_to_login: {pv['seconds']:.2f} s" if "error" not in pv
              else f"pvhyp_boot_to_login: {pv['error']}", flush=True)
        if args.no_qemu:
            print("qemu_tcg_boot_to_login: skipped (--no-qemu)")
            return 0 if "error" not in pv else 1
        binary = qemu_binary()
        if binary is None:
            print("qemu_tcg_boot_to_login: skipped (qemu-system-x86_64 not installed)")
            return 0 if "error" not in pv else 1
        qemu = boot_to_login(QemuGuest(binary, image, scratch_copy(image, scratch, "qemu"), memory),
                             args.timeout)
    print(f"qemu_tcg_boot_to_login: {qemu['seconds']:.2f} s" if "error" not in qemu
          else f"qemu_tcg_boot_to_login: {qemu['error']}")
    if "error" not in pv and "error" not in qemu:
        print(f"pvhyp_over_qemu: {pv['seconds'] / qemu['seconds']:.2f} x")
    return 0 if "error" not in pv else 1
