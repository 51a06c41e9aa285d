"""`pvhyp bench boot`: Debian 12's kernel to its shell, pvhyp against QEMU TCG, side by side.

Both boot the same bzImage + busybox initramfs (`pvhyp image debian`); the
clock runs from the start of the guest (pvhyp: domain creation through
dom0's toolstack; QEMU: process start) to the initramfs's marker line
(`PVHYP-GUEST-UP ...`). pvhyp's half also reports the hypercalls, traps and
emulated instructions (privileged ops and page-table writes) of the boot.
If pvhyp does not reach the marker, it says how far the guest got (its last
console line, the time) and prints the crash diagnosis (pvhyp.diagnose).

`PvhypBoot` is the programmatic form (tests/debian drive the shell with it).

With --rootfs the guest is the disk-based Debian (`pvhyp image debian --rootfs`),
each side on its own raw copy of the disk, and the clock stops at systemd's login
prompt; `DiskGuest` and `QemuGuest` (one console interface: login, commands) are
also `pvhyp bench disk`'s guests.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from dom0.images import debian
from pvhyp.cli.errors import UserError

DESCRIPTION = "boot Debian 12's kernel to its shell marker: pvhyp vs qemu-system-x86_64 -accel tcg (s)"
MARKER = b"PVHYP-GUEST-UP"
PVHYP_CMDLINE = "console=hvc0"
QEMU_CMDLINE = "console=ttyS0"
DEFAULT_TIMEOUT = 900.0


def add_arguments(parser) -> None:
    parser.add_argument("--dir", help="image directory (default: pvhyp image debian's cache; built if missing)")
    parser.add_argument("--memory", type=int, default=256, metavar="MB", help="guest memory (default 256)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per boot (default 900)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU half")
    parser.add_argument("--cmdline", default="", help="extra kernel command line for pvhyp (e.g. loglevel=8)")
    parser.add_argument("--rootfs", action="store_true",
                        help="the disk-based Debian (pvhyp image debian --rootfs) to its login prompt instead")


def guest_config(image: dict, memory: int = 256, name: str = "debian", extra: str = "",
                 disks: list[str] | None = None) -> str:
    cmdline = " ".join(filter(None, (PVHYP_CMDLINE, extra)))
    disk_line = "disk = [ " + ", ".join(f"'{d}'" for d in disks) + " ]\n" if disks else ""
    return (f'name = "{name}"\nkernel = "{image["kernel"]}"\nramdisk = "{image["ramdisk"]}"\n'
            f'memory = {memory}\nvcpus = 1\nextra = "{cmdline}"\n' + disk_line)


class PvhypBoot:
    """One Debian guest under a fresh pvhyp (hypervisor here, dom0 as a process), console in hand."""

    def __init__(self, image: dict, memory: int = 256, extra: str = "", disks: list[str] | None = None):
        from pvhyp.host import OneShot
        self.run = OneShot(guest_config(image, memory, extra=extra, disks=disks), "<bench boot>", memory)
        self.kernel_path = image["kernel"]
        self.hv = self.run.hv
        self.started = 0.0
        self.domid: int | None = None

    def start(self) -> None:
        from pvhyp.host import GuestRefused
        self.started = time.monotonic()
        try:
            self.domid = self.run.start()
        except GuestRefused as e:
            raise UserError(str(e)) from None

    @property
    def domain(self):
        return self.hv.domains.get(self.domid)

    def output(self) -> bytes:
        """The hvc0 ring so far (dom0's console log of it), then console_io (early printk)."""
        return self.run.ring_text() + bytes(self.run.console_io)

    def wait_for(self, needle: bytes, timeout: float, after: int = 0) -> bool:
        """Pump the console until `needle` appears past ring offset `after`, the guest stops, or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.run.pump(0.1)
            if needle in self.run.ring_text()[after:]:
                return True
            if self.run.done.is_set():
                return needle in self.run.ring_text()[after:]
        return False

    def send(self, line: str) -> None:
        fd = self.run._ring_fd
        if fd is None:
            raise RuntimeError("the guest's console pty is not open")
        os.write(fd, line.encode() + b"\r")

    def command(self, line: str, timeout: float = 120.0) -> str:
        """Run a shell command on hvc0; its output (between our sentinels), or raise on timeout."""
        tag = f"__pvhyp_{time.monotonic_ns()}"
        start = len(self.run.ring_text())
        # The quotes keep the tty's echo of this line from matching the markers.
        self.send(f'echo {tag}"-"begin; {line}; echo {tag}"-"end $?')
        if not self.wait_for(f"{tag}-end ".encode(), timeout, start):
            raise TimeoutError(f"{line!r}: no answer in {timeout:.0f}s; console tail: "
                               f"{self.run.ring_text()[-600:].decode(errors='replace')}")
        text = self.run.ring_text()[start:].decode(errors="replace").replace("\r", "")
        body = text.rsplit(f"\n{tag}-begin\n", 1)[-1]
        return body.split(f"{tag}-end", 1)[0]

    def wait_shutdown(self, timeout: float) -> str:
        return self.run.wait(timeout)

    def last_line(self) -> str:
        from pvhyp.diagnose import guest_lines
        lines = guest_lines(self.run.ring_text()) or guest_lines(bytes(self.run.console_io))
        return lines[-1] if lines else "<nothing printed>"

    def diagnosis(self) -> str:
        from pvhyp.diagnose import SymbolMap, report
        domain = self.domain
        if domain is None:
            return "the domain is gone"
        return report(self.hv, domain, bytes(self.run.console_io) + self.run.ring_text(),
                      SymbolMap.beside(self.kernel_path))

    def counters(self) -> dict[str, int]:
        from pvhyp.diagnose import counters
        domain = self.domain
        return counters(domain) if domain is not None else {}

    def close(self) -> None:
        self.run.close()


def boot_pvhyp(image: dict, memory: int, timeout: float, extra: str = "") -> dict:
    boot = PvhypBoot(image, memory, extra)
    try:
        boot.start()
        reached = boot.wait_for(MARKER, timeout)
        result = {"reached": reached, "seconds": time.monotonic() - boot.started,
                  "last_line": boot.last_line(), "counters": boot.counters()}
        if not reached:
            result["diagnosis"] = boot.diagnosis()
        return result
    finally:
        boot.close()


def qemu_binary() -> str | None:
    found = shutil.which("qemu-system-x86_64")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "qemu-system-x86"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
    return shutil.which("qemu-system-x86_64")


def boot_qemu(binary: str, image: dict, timeout: float) -> dict:
    cmd = [binary, "-accel", "tcg", "-m", "512", "-kernel", image["kernel"], "-initrd", image["ramdisk"],
           "-append", QEMU_CMDLINE, "-nographic", "-no-reboot", "-monitor", "none"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None      # stdout=PIPE
    seen = b""
    try:
        while time.monotonic() - started < timeout:
            readable, _, _ = select.select([proc.stdout], [], [], 0.5)
            if readable:
                data = os.read(proc.stdout.fileno(), 65536)
                if not data:
                    break
                seen += data
                if MARKER in seen:
                    return {"reached": True, "seconds": time.monotonic() - started}
        tail = seen.decode(errors="replace").strip().splitlines()
        return {"reached": False, "seconds": time.monotonic() - started, "last_line": tail[-1] if tail else ""}
    finally:
        proc.kill()
        proc.wait()


def run(args) -> int:
    if args.rootfs:
        return run_rootfs(args)
    try:
        image = debian.find_or_build(args.dir)
    except debian.ImageError as e:
        raise UserError(str(e)) from None
    print(f"kernel: {image.get('release', image['kernel'])}", flush=True)
    pv = boot_pvhyp(image, args.memory, args.timeout, args.cmdline)
    if pv["reached"]:
        print(f"pvhyp_boot_to_marker: {pv['seconds']:.2f} s", flush=True)
    else:
        print(f"pvhyp_boot_to_marker: not reached (stopped after {pv['seconds']:.2f} s)", flush=True)
        print(f"pvhyp_last_console_line: {pv['last_line']}")
        print(pv["diagnosis"], file=sys.stderr)
    counts = pv["counters"]
    print(f"pvhyp_hypercalls: {counts.get('hypercall', 0)} calls")
    print(f"pvhyp_traps: {counts.get('exception', 0)} traps")
    print(f"pvhyp_emulated: {counts.get('emulated', 0)} privileged instructions")
    print(f"pvhyp_pagetable_writes: {counts.get('ptwr', 0)} emulated page-table writes")
    if args.no_qemu:
        print("qemu_boot_to_marker: skipped (--no-qemu)")
        return 0 if pv["reached"] else 1
    binary = qemu_binary()
    if binary is None:
        print("qemu_boot_to_marker: skipped (qemu-system-x86_64 not installed and apt-get failed)")
        return 0 if pv["reached"] else 1
    qemu = boot_qemu(binary, image, min(args.timeout, 300.0))
    if qemu["reached"]:
        print(f"qemu_tcg_boot_to_marker: {qemu['seconds']:.2f} s")
        if pv["reached"]:
            print(f"pvhyp_over_qemu: {pv['seconds'] / qemu['seconds']:.2f} x")
    else:
        print(f"qemu_tcg_boot_to_marker: not reached in {qemu['seconds']:.0f} s (last line: {qemu['last_line']})")
    return 0 if pv["reached"] else 1


# --- the disk-based Debian (`--rootfs`; also `pvhyp bench disk`'s guests) ---

LOGIN_PROMPT = b"login: "


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


def boot_to_login(guest, timeout: float) -> dict:
    """Seconds from the guest's start to its login prompt, or why it did not get there."""
    try:
        guest.start()
        if guest.wait_for(LOGIN_PROMPT, timeout):
            return {"seconds": time.monotonic() - guest.started}
        return {"error": f"no login prompt in {timeout:.0f}s (last console line: {guest.last_line()})"}
    finally:
        guest.close()


def run_rootfs(args) -> int:
    """`pvhyp bench boot --rootfs`: the disk-based Debian to its login prompt, pvhyp and QEMU TCG,
    each on its own raw copy of the disk, with the same kernel and initramfs."""
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
