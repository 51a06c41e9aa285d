"""`pvhyp bench net`: TCP throughput and ping through pvhyp's netback against QEMU TCG + virtio-net.

pvhyp half: `pvhyp up` in a private run directory, two Debian guests (the
busybox initramfs of `pvhyp image debian`, which loads xen-netfront) on one
bridge; guest A has a vif with port forwards to a passt uplink and takes its
address by DHCP (busybox udhcpc), guest B a static address.  QEMU half: the
same kernel with `-accel tcg`, virtio-net and QEMU's user networking
(`hostfwd`), the virtio modules added to the same initramfs as a second
archive.  Measured, each side in the same run:

  host -> guest   the host writes N MiB into the forward; the guest's
                  `nc -l | wc -c` answers with EOF when it has all of it
  guest -> host   the guest's `dd | nc -l`; the host reads N MiB
  guest -> guest  (pvhyp: A to B on the bridge) busybox `time` around
                  `dd | nc` (the sender's view: its socket buffer is the error)
  ping            A -> B on the bridge (pvhyp); guest -> QEMU's user-net
                  gateway (QEMU)

`UpHost`, `ConsoleShell` and `QemuGuest` are the programmatic forms the
tests (tests/net/test_debian_net.py) drive too.  Nothing leaves this
machine: forwards bind 127.0.0.1 and no guest is given a route off it
(passt hands out no DNS, dom0's uplink guard drops the rest).
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import tempfile
import time

from dom0.images import debian
from pvguest.spawn import python_command, python_env
from pvhyp.cli.errors import UserError

DESCRIPTION = "TCP throughput and ping: pvhyp netback + passt vs qemu-system-x86_64 -accel tcg + virtio-net"
SHELL_PROMPT = "pvhyp-guest# "
BOOT_TIMEOUT = float(os.environ.get("PVHYP_DEBIAN_BOOT_TIMEOUT", "1200"))
DHCP_SCRIPT = ("printf '%s\\n' '#!/bin/sh' '[ \"$1\" = bound ] || exit 0' "
               "'ifconfig $interface $ip netmask $subnet ${mtu:+mtu $mtu} up' > /tmp/dhcp.sh; chmod +x /tmp/dhcp.sh")
DHCP = "ifconfig eth0 up; udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 10 -T 2; ifconfig eth0"
VIRTIO_MODULES = ("drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",     # in load order
                  "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
                  "drivers/virtio/virtio_pci.ko", "net/core/failover.ko", "drivers/net/net_failover.ko",
                  "drivers/net/virtio_net.ko")
GUEST_PORTS = {"in": 5001, "out": 5002}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_netfront(image: dict) -> bool:
    modules = image.get("modules", [])
    paths = [p for group in modules.values() for p in group] if isinstance(modules, dict) else modules
    return any("xen-netfront" in p for p in paths)


# --- driving a guest's shell ----------------------------------------------------------------

class Shell:
    """Run commands on a busybox shell whose output we can read; subclasses say how."""

    def send(self, line: str) -> None:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def wait_text(self, needle: str, timeout: float, start: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text()[start:]:
                return True
            time.sleep(0.05)
        return needle in self.text()[start:]

    def command(self, line: str, timeout: float = 120.0) -> str:
        """`line`'s output, between sentinels (the quotes keep the echo from matching them)."""
        tag = f"__pvhyp_{time.monotonic_ns()}"
        start = len(self.text())
        after = " " if line.rstrip().endswith("&") else "; "      # `cmd &;` is a syntax error
        self.send(f'echo {tag}"-"begin; {line}{after}echo {tag}"-"end $?')
        if not self.wait_text(f"{tag}-end ", timeout, start):
            raise TimeoutError(f"{line!r}: no answer in {timeout:.0f}s; console tail: {self.text()[-600:]}")
        text = self.text()[start:].replace("\r", "")
        return text.rsplit(f"\n{tag}-begin\n", 1)[-1].split(f"{tag}-end", 1)[0]


class ConsoleShell(Shell):
    """A guest of `pvhyp up`: lines typed on its console pty, output read from dom0's console log."""

    def __init__(self, host: "UpHost", name: str):
        self.host, self.name = host, name
        self.log_path = os.path.join(host.run_dir, "console", f"guest-{name}.log")

    def send(self, line: str) -> None:
        tty = self.host.call("console", dom=self.name)["tty"]
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(fd, line.encode() + b"\r")
        finally:
            os.close(fd)

    def text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""


class UpHost:
    """`pvhyp up` in a run directory of its own, as a user starts it."""

    def __init__(self, run_dir: str | None = None, memory_mb: int = 1024):
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="pvhyp-net-")
        self.memory_mb = memory_mb

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(python_command(["-c", "import sys; from pvhyp.cli import main; sys.exit(main())",
                                              args[0], "--run-dir", self.run_dir, *args[1:]]),
                              capture_output=True, text=True, timeout=120, env=python_env())
        if check and proc.returncode != 0:
            raise UserError(f"pvhyp {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def up(self) -> None:
        self.cli("up", "--memory", str(self.memory_mb))

    def down(self) -> None:
        self.cli("down", check=False)

    def call(self, cmd: str, **args) -> dict:
        from dom0.toolstack.api import call
        reply = call(os.path.join(self.run_dir, "pvhyp.sock"), cmd, **args)
        if not reply.get("ok"):
            raise UserError(f"{cmd}: {reply.get('error')}")
        return reply

    def create_debian(self, name: str, image: dict, vifs: list[str], memory: int = 256) -> ConsoleShell:
        config = (f'name = "{name}"\nkernel = "{image["kernel"]}"\nramdisk = "{image["ramdisk"]}"\n'
                  f'memory = {memory}\nvcpus = 1\nextra = "console=hvc0"\nvif = {json.dumps(vifs)}\n')
        path = os.path.join(self.run_dir, f"{name}.cfg")
        with open(path, "w") as f:
            f.write(config)
        self.cli("create", path)
        return ConsoleShell(self, name)


def wait_for_shell(shell: Shell, timeout: float = BOOT_TIMEOUT) -> None:
    if not shell.wait_text(SHELL_PROMPT, timeout):
        raise TimeoutError(f"no shell prompt in {timeout:.0f}s; console tail: {shell.text()[-800:]}")


def dhcp(shell: Shell) -> str:
    """Bring eth0 up by DHCP; the address it got."""
    shell.command(DHCP_SCRIPT, 60)
    out = shell.command(DHCP, 120)
    match = re.search(r"inet addr:(\d+\.\d+\.\d+\.\d+)", out)
    if not match:
        raise RuntimeError(f"no DHCP lease: {out[-400:]}")
    return match.group(1)


# --- QEMU ------------------------------------------------------------------------------------

def virtio_initramfs(image: dict, out_path: str) -> str:
    """The image's initramfs with a second archive of the virtio-net modules (same kernel)."""
    import gzip
    import pathlib

    from dom0.images.cpio import CpioWriter
    from dom0.images.debfile import extract
    debs = pathlib.Path(image["kernel"]).parent / "debs"
    kernel_debs = sorted(debs.glob("linux-image-*.deb")) if debs.is_dir() else []
    if not kernel_debs:
        raise UserError(f"no kernel package beside {image['kernel']} to take the virtio modules from")
    wanted = {f"/lib/modules/{image['release']}/kernel/{m}" for m in VIRTIO_MODULES}
    files = extract(kernel_debs[-1].read_bytes(), lambda p: p in wanted)
    writer = CpioWriter()
    writer.directory("lib/virtio")
    for module in VIRTIO_MODULES:
        path = f"/lib/modules/{image['release']}/kernel/{module}"
        if path not in files:
            raise UserError(f"{kernel_debs[-1].name} has no {module}")
        writer.file(f"lib/virtio/{os.path.basename(module)}", files[path])
    with open(image["ramdisk"], "rb") as f:
        base = f.read()
    with open(out_path, "wb") as f:
        f.write(base + gzip.compress(writer.finish()))
    return out_path


class QemuGuest(Shell):
    """The same kernel under qemu-system-x86_64 -accel tcg, virtio-net on user networking."""

    def __init__(self, binary: str, image: dict, ramdisk: str, forwards: dict[int, int], memory: int = 256):
        hostfwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in forwards.items())
        cmd = [binary, "-accel", "tcg", "-m", str(memory), "-kernel", image["kernel"], "-initrd", ramdisk,
               "-append", "console=ttyS0", "-nographic", "-no-reboot", "-monitor", "none",
               "-netdev", f"user,id=n0,net=10.0.2.0/24,restrict=off,{hostfwd}",
               "-device", "virtio-net-pci,netdev=n0"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = b""

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        while True:
            readable, _, _ = select.select([self.proc.stdout], [], [], 0)
            if not readable:
                return
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                return
            self.output += data

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def text(self) -> str:
        self._pump()
        return self.output.decode(errors="replace")

    def load_virtio(self) -> None:
        names = " ".join(os.path.basename(m) for m in VIRTIO_MODULES)
        self.command(f"for m in {names}; do insmod /lib/virtio/$m; done; sleep 1; ip link", 120)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# --- the measurements --------------------------------------------------------------------------

def wait_listening(shell: Shell, port: int, timeout: float = 120.0) -> None:
    """Until the guest has a TCP listener on `port` (a connection before that is reset)."""
    deadline = time.monotonic() + timeout
    while f":{port} " not in shell.command(f"netstat -ltn | grep ':{port} '; true", 60):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on the guest's port {port}")
        time.sleep(0.5)


def host_to_guest(shell: Shell, host_port: int, mib: int) -> float:
    """MiB/s the host pushes through the forward into the guest's `nc -l | wc -c`."""
    shell.command(f"(sleep 100000 | nc -l -p {GUEST_PORTS['in']} | wc -c > /tmp/h2g) &", 30)
    wait_listening(shell, GUEST_PORTS["in"])
    chunk = bytes(range(256)) * 256
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", host_port), timeout=600) as sock:
        for _ in range(mib * 16):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    seconds = time.monotonic() - started
    got = shell.command("sleep 1; cat /tmp/h2g", 60).strip().splitlines()
    if not got or got[-1].strip() != str(mib << 20):
        raise RuntimeError(f"host -> guest: the guest counted {got[-1] if got else 'nothing'} bytes, "
                           f"not {mib << 20}")
    return mib / seconds


def guest_to_host(shell: Shell, host_port: int, mib: int) -> float:
    shell.command(f"(dd if=/dev/zero bs=64k count={mib * 16} 2>/dev/null | nc -l -p {GUEST_PORTS['out']}) &", 30)
    wait_listening(shell, GUEST_PORTS["out"])
    want, got = mib << 20, 0
    with socket.create_connection(("127.0.0.1", host_port), timeout=600) as sock:
        # passt (Debian 12's) completes a forwarded connection's handshake toward the guest
        # only once it has data for it: a byte from the host gets the guest's stream going
        sock.sendall(b"\n")
        first = sock.recv(65536)
        started = time.monotonic()
        got = len(first)
        while got < want:
            data = sock.recv(1 << 20)
            if not data:
                break
            got += len(data)
        seconds = time.monotonic() - started
    if got < want:
        raise RuntimeError(f"guest -> host: {got} of {want} bytes")
    return (got - len(first)) / (1 << 20) / seconds


def guest_to_guest(sender: Shell, receiver: Shell, receiver_ip: str, mib: int) -> float:
    receiver.command("(sleep 100000 | nc -l -p 5003 | wc -c > /tmp/g2g) &", 30)
    wait_listening(receiver, 5003)
    out = sender.command(f"time sh -c 'dd if=/dev/zero bs=64k count={mib * 16} 2>/dev/null | "
                         f"nc {receiver_ip} 5003'", 3600)
    match = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    if not match:
        raise RuntimeError(f"guest -> guest: no time in {out[-300:]!r}")
    seconds = int(match.group(1)) * 60 + float(match.group(2))
    counted = receiver.command("sleep 2; cat /tmp/g2g", 60).strip().splitlines()
    if not counted or counted[-1].strip() != str(mib << 20):
        raise RuntimeError(f"guest -> guest: the receiver counted {counted[-1] if counted else 'nothing'}")
    return mib / seconds


def ping_ms(shell: Shell, address: str, count: int = 10) -> float:
    out = shell.command(f"ping -c {count} {address}", 120)
    match = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", out)
    if not match:
        raise RuntimeError(f"ping {address}: {out[-300:]!r}")
    return float(match.group(1))


# --- the two halves ----------------------------------------------------------------------------

def run_pvhyp(image: dict, mib: int) -> dict:
    host = UpHost()
    results: dict = {}
    ports = {"in": free_port(), "out": free_port()}
    forwards = ";".join(f"tcp:127.0.0.1:{ports[k]}:{GUEST_PORTS[k]}" for k in ("in", "out"))
    host.up()
    try:
        a = host.create_debian("net-a", image, [f"bridge=xenbr0, forward={forwards}"])
        b = host.create_debian("net-b", image, ["bridge=xenbr0"])
        for shell in (a, b):
            wait_for_shell(shell)
        results["address"] = dhcp(a)
        b.command("ifconfig eth0 10.0.2.16 netmask 255.255.255.0 mtu 65520 up", 60)
        results["host_to_guest"] = host_to_guest(a, ports["in"], mib)
        results["guest_to_host"] = guest_to_host(a, ports["out"], mib)
        results["guest_to_guest"] = guest_to_guest(a, b, "10.0.2.16", mib)
        results["ping"] = ping_ms(a, "10.0.2.16")
        results["vifs"] = host.call("network-list", dom="net-a")["vifs"]
    finally:
        host.down()
    return results


def run_qemu(binary: str, image: dict, mib: int, work_dir: str) -> dict:
    ramdisk = virtio_initramfs(image, os.path.join(work_dir, "initrd-virtio.img"))
    ports = {"in": free_port(), "out": free_port()}
    guest = QemuGuest(binary, image, ramdisk, {ports[k]: GUEST_PORTS[k] for k in ports})
    results: dict = {}
    try:
        wait_for_shell(guest, 600)
        guest.load_virtio()
        results["address"] = dhcp(guest)
        results["host_to_guest"] = host_to_guest(guest, ports["in"], mib)
        results["guest_to_host"] = guest_to_host(guest, ports["out"], mib)
        results["ping"] = ping_ms(guest, "10.0.2.2")
    finally:
        guest.close()
    return results


def add_arguments(parser) -> None:
    parser.add_argument("--dir", help="image directory (default: pvhyp image debian's cache)")
    parser.add_argument("--mib", type=int, default=8, help="MiB per throughput run (default 8)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU half")


def _line(name: str, pv, qemu, unit: str) -> None:
    def fmt(v):
        return f"{v:.2f} {unit}" if isinstance(v, (int, float)) else str(v)
    print(f"{name}: pvhyp {fmt(pv)}, qemu_tcg {fmt(qemu)}", flush=True)


def run(args) -> int:
    try:
        image = debian.find_or_build(args.dir)
    except debian.ImageError as e:
        raise UserError(str(e)) from None
    if not has_netfront(image):
        raise UserError(f"the image in {os.path.dirname(image['kernel'])} has no xen-netfront module "
                        "(rebuild it: pvhyp image debian)")
    if shutil.which("passt") is None:
        raise UserError("passt is not installed (Debian package 'passt')")
    print(f"kernel: {image.get('release', image['kernel'])}; {args.mib} MiB per run", flush=True)
    pv = run_pvhyp(image, args.mib)
    qemu: dict = {}
    if not args.no_qemu:
        from pvhyp.cli.bench_boot import qemu_binary
        binary = qemu_binary()
        if binary is None:
            print("qemu: skipped (qemu-system-x86_64 not installed)")
        else:
            with tempfile.TemporaryDirectory() as work_dir:
                qemu = run_qemu(binary, image, args.mib, work_dir)
    _line("net_host_to_guest", pv["host_to_guest"], qemu.get("host_to_guest", "-"), "MiB/s")
    _line("net_guest_to_host", pv["guest_to_host"], qemu.get("guest_to_host", "-"), "MiB/s")
    _line("net_guest_to_guest", pv["guest_to_guest"], "- (one QEMU guest)", "MiB/s")
    _line("net_ping_rtt", pv["ping"], qemu.get("ping", "-"), "ms")
    print("  (pvhyp ping: guest -> guest on the bridge; qemu ping: guest -> user-net gateway)")
    return 0
