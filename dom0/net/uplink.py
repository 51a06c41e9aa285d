"""The way out without root: a bridge port to a `passt` process, and the guard in front of it.

passt (Debian's ``passt``) is a user-mode network stack: ARP, DHCP, NAT and
host port forwards, speaking Ethernet frames each prefixed by a 4-byte
big-endian length on a Unix socket (QEMU's ``-netdev stream``).  One passt
serves one guest address, so each vif with a ``forward=`` gets its own
passt, attached as a port of the vif's bridge and owned by that vif.

``UplinkGuard`` decides what may leave the bridge through that port (sans-IO
rules, applied to every frame about to reach passt):
  - only frames from the owning vif; never from another port of the bridge;
  - ARP (it is answered by passt itself and leaves nothing);
  - DHCP client -> server (UDP 68 -> 67; passt answers, hands out no DNS);
  - TCP/UDP from a forwarded guest port back to the peer of a connection the
    host opened through that forward: the guard saw its first inbound
    packet (a TCP SYN, or the first UDP datagram) arrive from passt;
  - everything else is dropped and counted (``dropped``): a guest reaches
    nothing off this machine, not even the host's other ports.
The connection table is bounded (oldest evicted).  ``outbound=allow`` on
the vif (pvhyp's own key, documented in README) lifts the guard: the guest
may then reach whatever passt can, i.e. the host's network.

``PasstUplink`` is the thin I/O: it starts passt with the bridge's vif,
connects to its socket, feeds received frames to the bridge and writes
delivered ones (a bounded send buffer: when passt does not keep up, frames
are dropped and counted), and says in one line when passt is missing or dies.
"""
from __future__ import annotations

import collections
import ipaddress
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass

log = logging.getLogger("dom0.net")

ETHERTYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_FRAME_BYTES = 14 + 28      # Ethernet header, then an IPv4-over-Ethernet ARP body
ETHERTYPE_IPV4 = 0x0800
IPPROTO_TCP = 6
IPPROTO_UDP = 17
TCP_SYN, TCP_ACK = 0x02, 0x10
DHCP_CLIENT_PORT, DHCP_SERVER_PORT = 68, 67
MAX_CONNECTIONS = 4096
MAX_FRAME = 65535 + 14
SEND_BUFFER_BYTES = 4 << 20
PASST_START_SECONDS = 10.0
DEFAULT_GUEST_IP = "10.0.2.15"
DEFAULT_PREFIX = 24
DEFAULT_GATEWAY = "10.0.2.2"
DEFAULT_MTU = 65520            # passt's own: netfront with feature-sg takes frames up to 64 KiB,
                               # and every frame costs the software CPU the same, whatever its size


@dataclass(frozen=True)
class Forward:
    """`forward=PROTO:HOST_ADDR:HOST_PORT:GUEST_PORT` (pvhyp's vif key)."""
    proto: str
    host_addr: str
    host_port: int
    guest_port: int

    @classmethod
    def parse(cls, text: str) -> "Forward":
        parts = text.split(":")
        if len(parts) != 4 or parts[0] not in ("tcp", "udp"):
            raise ValueError(f"forward {text!r} is not tcp|udp:HOST_ADDR:HOST_PORT:GUEST_PORT")
        proto, addr, host_port, guest_port = parts
        try:
            ipaddress.IPv4Address(addr)
            hp, gp = int(host_port), int(guest_port)
        except ValueError:
            raise ValueError(f"forward {text!r}: bad address or port") from None
        if not (0 < hp < 65536 and 0 < gp < 65536):
            raise ValueError(f"forward {text!r}: ports must be 1..65535")
        return cls(proto, addr, hp, gp)

    def passt_args(self) -> list[str]:
        return ["-t" if self.proto == "tcp" else "-u", f"{self.host_addr}/{self.host_port}:{self.guest_port}"]


def parse_forwards(text: str) -> list[Forward]:
    """Several forwards are separated by ';'."""
    return [Forward.parse(part.strip()) for part in text.split(";") if part.strip()]


def _ipv4_l4(frame: bytes):
    """(proto, src ip, dst ip, sport, dport, tcp flags) of an IPv4 TCP/UDP frame, else None."""
    if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETHERTYPE_IPV4:
        return None
    ihl = (frame[14] & 0xF) * 4
    proto = frame[23]
    if ihl < 20 or proto not in (IPPROTO_TCP, IPPROTO_UDP) or len(frame) < 14 + ihl + 8:
        return None
    if struct.unpack_from("!H", frame, 20)[0] & 0x1FFF:
        return None                     # a non-first fragment carries no ports
    src, dst = frame[26:30], frame[30:34]
    sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    flags = frame[14 + ihl + 13] if proto == IPPROTO_TCP and len(frame) >= 14 + ihl + 14 else 0
    return proto, src, dst, sport, dport, flags


def _arp_request_target(frame: bytes) -> bytes | None:
    """An ARP request's target address (b"" for any other ARP frame, a short one included)."""
    if len(frame) < ARP_FRAME_BYTES or struct.unpack_from("!H", frame, 20)[0] != ARP_REQUEST:
        return b""
    return frame[38:42]


class UplinkGuard:
    def __init__(self, owner: str, forwards: list[Forward], outbound: bool = False,
                 max_connections: int = MAX_CONNECTIONS, gateway: str = DEFAULT_GATEWAY):
        self.owner = owner
        self.gateway = socket.inet_aton(gateway)
        self.forwarded = {(IPPROTO_TCP if f.proto == "tcp" else IPPROTO_UDP, f.guest_port) for f in forwards}
        self.outbound = outbound
        self.max_connections = max_connections
        # (proto, guest ip, guest port, peer ip, peer port) -> last seen
        self.connections: collections.OrderedDict[tuple, float] = collections.OrderedDict()
        self.dropped = 0
        self.allowed = 0

    def observe_inbound(self, frame: bytes, now: float | None = None) -> None:
        """A frame from passt toward the guest: a connection the host opens through a forward starts here."""
        l4 = _ipv4_l4(frame)
        if l4 is None:
            return
        proto, src, dst, sport, dport, flags = l4
        if (proto, dport) not in self.forwarded:
            return
        key = (proto, dst, dport, src, sport)
        opening = proto == IPPROTO_UDP or (flags & TCP_SYN and not flags & TCP_ACK)
        if opening or key in self.connections:
            self.connections.pop(key, None)
            self.connections[key] = time.monotonic() if now is None else now
            while len(self.connections) > self.max_connections:
                self.connections.popitem(last=False)

    def allow(self, in_port: str, frame: bytes) -> bool:
        if in_port != self.owner:
            ok = False
        elif len(frame) >= 14 and struct.unpack_from("!H", frame, 12)[0] == ETHERTYPE_ARP:
            ok = self._arp_permitted(frame)
        else:
            ok = self.outbound or self._permitted(frame)
        if ok:
            self.allowed += 1
        else:
            self.dropped += 1
        return ok

    def _arp_permitted(self, frame: bytes) -> bool:
        """passt answers an ARP request for any address but the guest's own with its MAC.
        Asked for a guest on the bridge, it won the race against that guest's answer (dom0
        is one hop nearer than another guest's vCPU) and the traffic went to the uplink,
        where this guard dropped it: guest -> guest TCP stalled in SYN retries.  So only
        the gateway passt stands for is asked; replies (passt asking for the guest) go."""
        target = _arp_request_target(frame)
        return target == self.gateway if target else len(frame) >= ARP_FRAME_BYTES

    def _permitted(self, frame: bytes) -> bool:
        l4 = _ipv4_l4(frame)
        if l4 is None:
            return False
        proto, src, dst, sport, dport, _ = l4
        if proto == IPPROTO_UDP and sport == DHCP_CLIENT_PORT and dport == DHCP_SERVER_PORT:
            return True
        return (proto, src, sport, dst, dport) in self.connections


class FrameDecoder:
    """QEMU stream framing, sans-IO: feed bytes, take whole frames (a bad length is fatal)."""

    def __init__(self, max_frame: int = MAX_FRAME):
        self.buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= 4:
            (length,) = struct.unpack_from("!I", self.buffer)
            if length > self.max_frame:
                raise ValueError(f"a frame of {length} bytes from passt")
            if len(self.buffer) < 4 + length:
                break
            frames.append(bytes(self.buffer[4:4 + length]))
            del self.buffer[:4 + length]
        return frames


def encode_frame(frame: bytes) -> bytes:
    return struct.pack("!I", len(frame)) + frame


class Pcap:
    """A bounded libpcap file of Ethernet frames (debugging the uplink)."""

    MAX_BYTES = 16 << 20

    def __init__(self, path: str):
        self.file = open(path, "wb")
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.size = 24

    def write(self, frame: bytes) -> None:
        if self.size + 16 + len(frame) > self.MAX_BYTES:
            return
        now = time.time()
        self.file.write(struct.pack("<IIII", int(now), int(now % 1 * 1e6), len(frame), len(frame)) + frame)
        self.file.flush()
        self.size += 16 + len(frame)


class UplinkError(Exception):
    """One line: passt missing, refusing to start, or gone."""


class PasstUplink:
    """A bridge port to a passt process owned by one vif."""

    def __init__(self, name: str, bridge, guard: UplinkGuard, forwards: list[Forward], work_dir: str,
                 add_reader, remove_reader, guest_ip: str = DEFAULT_GUEST_IP,
                 gateway: str = DEFAULT_GATEWAY, prefix: int = DEFAULT_PREFIX, mtu: int = DEFAULT_MTU):
        self.name = name
        self.bridge = bridge
        self.guard = guard
        self.forwards = forwards
        self.add_reader = add_reader
        self.remove_reader = remove_reader
        self.socket_path = os.path.join(work_dir, f"{name}.sock")
        self.log_path = os.path.join(work_dir, f"{name}.log")
        self.guest_ip, self.gateway, self.prefix, self.mtu = guest_ip, gateway, prefix, mtu
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder()
        self.pending = bytearray()
        self.send_dropped = 0
        self.down_reason: str | None = None
        self.on_frames = lambda: None       # called after a batch of frames went into the bridge
        os.makedirs(work_dir, exist_ok=True)
        # $PVHYP_NET_PCAP=1: both directions of the uplink in WORK_DIR/NAME.pcap (for tcpdump -r)
        self.pcap = Pcap(os.path.join(work_dir, f"{name}.pcap")) if os.environ.get("PVHYP_NET_PCAP") else None

    def command(self, passt: str) -> list[str]:
        cmd = [passt, "--foreground", "--quiet", "--ipv4-only", "--one-off", "--socket", self.socket_path,
               "--no-dhcp-dns", "--dns", "none", "--address", self.guest_ip, "--netmask", str(self.prefix),
               "--gateway", self.gateway, "--mtu", str(self.mtu)]
        if os.geteuid() == 0:
            # passt run by root turns itself into nobody, who may not reach a socket in a
            # private run directory: it runs as the user pvhyp runs as (as it does for anyone else)
            cmd += ["--runas", f"{os.getuid()}:{os.getgid()}"]
        for forward in self.forwards:
            cmd += forward.passt_args()
        return cmd

    def start(self) -> None:
        passt = shutil.which("passt")
        if passt is None:
            raise UplinkError("passt is not installed (Debian package 'passt'); it is needed for forward=")
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command(passt), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, start_new_session=True)
        deadline = time.monotonic() + PASST_START_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise UplinkError(f"passt for {self.name} exited at start with status {self.proc.returncode}: "
                                  f"{self._last_log_line()}")
            if os.path.exists(self.socket_path):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(self.socket_path)
                    break
                except OSError:
                    sock.close()
            if time.monotonic() > deadline:
                self.stop()
                raise UplinkError(f"passt for {self.name} did not open {self.socket_path} "
                                  f"within {PASST_START_SECONDS:.0f} s")
            time.sleep(0.02)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        self.sock = sock
        self.add_reader(sock, self._on_readable)
        log.info("%s: passt (pid %d) up, forwards %s", self.name, self.proc.pid,
                 ", ".join(" ".join(f.passt_args()) for f in self.forwards) or "none")

    def _last_log_line(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip() and "syslog" not in line]
        except OSError:
            return "no log"
        return lines[-1] if lines else "no message"

    def _went_down(self, why: str) -> None:
        if self.down_reason is not None:
            return
        status = self.proc.poll() if self.proc is not None else None
        self.down_reason = (f"passt for {self.name} is gone ({why}"
                            f"{'' if status is None else f', exit status {status}'}): {self._last_log_line()}")
        log.error("%s", self.down_reason)
        self._close_socket()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.remove_reader(self.sock)
            self.sock.close()
            self.sock = None

    def _on_readable(self) -> None:
        if self.sock is None:
            return
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._went_down(str(e))
            return
        if not data:
            self._went_down("closed its socket")
            return
        try:
            frames = self.decoder.feed(data)
        except ValueError as e:
            self._went_down(str(e))
            return
        for frame in frames:
            if self.pcap is not None:
                self.pcap.write(frame)
            self.guard.observe_inbound(frame)
            self.bridge.input(self.name, frame)
        if frames:
            self.on_frames()

    def deliver(self, frame: bytes) -> None:
        if self.pcap is not None:
            self.pcap.write(frame)
        if self.sock is None:
            self.send_dropped += 1
            return
        if len(self.pending) + len(frame) + 4 > SEND_BUFFER_BYTES:
            self.send_dropped += 1
            return
        self.pending += encode_frame(frame)
        self.flush()

    def flush(self) -> None:
        while self.pending and self.sock is not None:
            try:
                sent = self.sock.send(self.pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._went_down(str(e))
                return
            del self.pending[:sent]

    def stop(self) -> None:
        self._close_socket()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
