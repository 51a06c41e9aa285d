"""Xen's classic model, with root: a vif's frames on a TAP device enslaved to a Linux bridge.

A vif with ``script=vif-bridge`` (xl's script name, or its full path
``/etc/xen/scripts/vif-bridge``) and ``bridge=NAME`` does not join dom0's own
learning switch: as Xen's hotplug script does for netback's ``vifDOMID.DEVID``,
dom0 makes a TAP device of that name and enslaves it to the existing Linux
bridge NAME, so the guest is one more port of the host's bridge.

Rules (checked in ``TapLink.open``, each refusal one line for the toolstack):
  - dom0 must hold CAP_NET_ADMIN (root): a TAP device and a bridge port are
    the host's to give, never made up for an unprivileged user;
  - NAME must already exist and be a Linux bridge (``ip -d link``'s kind),
    never created or re-purposed by us;
  - the TAP gets Xen's backend MAC ``fe:ff:ff:ff:ff:ff`` (the bridge takes
    the lowest port MAC as its own, so never a guest's) and is brought up;
  - frames from the TAP are read in dom0's loop, at most ``READ_BUDGET`` per
    wakeup, and handed to the vif's port, whose RX queue is bounded (a guest
    that posts no buffers loses frames, counted in its netif counters);
    frames read before the frontend connected are dropped and counted;
  - frames from the guest are written to the TAP; one the kernel refuses
    (a full queue, a down device) is dropped and counted, never retried;
  - the device is not persistent: closing the file descriptor (vif detach,
    domain destroy, dom0 exit) removes it from the bridge and the host.

``ip`` (iproute2) does the bridge check and the enslaving: one command each,
the same calls an administrator types, and no new dependency (pyroute2 would
be one) for something done once per vif; the TAP itself needs one ioctl.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import struct
import subprocess

log = logging.getLogger("dom0.net")

TAP_SCRIPTS = ("vif-bridge", "/etc/xen/scripts/vif-bridge")
# <linux/if_tun.h> and <linux/capability.h> (Linux's ABI, not Xen's: checked against the
# installed header by tests/net/test_tap.py)
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
CAP_NET_ADMIN = 12
IFNAMSIZ = 16
BACKEND_MAC = "fe:ff:ff:ff:ff:ff"       # Xen netback's own address for every vif
READ_BUDGET = 64                        # frames taken from the TAP per wakeup of the loop
MAX_FRAME = 65535 + 14
IP_SECONDS = 10.0


class TapError(Exception):
    """One line: why this vif cannot be put on the named Linux bridge."""


def has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _ip(*args: str) -> subprocess.CompletedProcess:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    if not os.path.exists(ip):
        raise TapError("'ip' (Debian package iproute2) is not installed; it is needed for script=vif-bridge")
    try:
        return subprocess.run([ip, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=IP_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TapError(f"ip {' '.join(args)}: {e}") from None


def check_linux_bridge(bridge: str) -> None:
    """TapError unless `bridge` is an existing Linux bridge in dom0's network namespace."""
    if not bridge or len(bridge) >= IFNAMSIZ or "/" in bridge or bridge.startswith("-"):
        raise TapError(f"bridge={bridge!r} is not a network interface name")
    out = _ip("-j", "-d", "link", "show", "dev", bridge)
    if out.returncode != 0:
        raise TapError(f"bridge={bridge}: no such Linux bridge (script=vif-bridge puts the vif on an "
                       f"existing bridge; create it with 'ip link add {bridge} type bridge')")
    try:
        kind = json.loads(out.stdout)[0].get("linkinfo", {}).get("info_kind", "")
    except (ValueError, IndexError, AttributeError):
        kind = "unknown"
    if kind != "bridge":
        raise TapError(f"bridge={bridge} is not a Linux bridge (its kind is {kind or 'a plain device'})")


class TapLink:
    """The vif's side of the host: it stands where dom0's bridge would (``input``, ``attach``, ``detach``)."""

    def __init__(self, ifname: str, bridge: str, fd: int, add_reader, remove_reader):
        self.ifname = ifname
        self.name = bridge              # what network-list shows as the vif's bridge
        self.fd = fd
        self.remove_reader = remove_reader
        self.port = None                # the VifPort, once the frontend connected
        self.on_frames = lambda: None   # called after a batch of frames went to the port
        self.counters = {"to_host_frames": 0, "to_host_bytes": 0, "to_host_dropped": 0,
                         "from_host_frames": 0, "from_host_bytes": 0, "from_host_dropped": 0}
        add_reader(fd, self._on_readable)

    @classmethod
    def open(cls, ifname: str, bridge: str, add_reader, remove_reader) -> "TapLink":
        if not has_net_admin():
            raise TapError(f"script=vif-bridge (bridge={bridge}) needs root (CAP_NET_ADMIN) to make "
                           f"TAP device {ifname}; without root use dom0's own bridges (no script=)")
        check_linux_bridge(bridge)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TapError(f"cannot open /dev/net/tun for {ifname}: {e.strerror}") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack(f"{IFNAMSIZ}sH", ifname.encode(), IFF_TAP | IFF_NO_PI))
            out = _ip("link", "set", "dev", ifname, "address", BACKEND_MAC, "master", bridge, "up")
            if out.returncode != 0:
                raise TapError(f"cannot enslave {ifname} to bridge {bridge}: "
                               f"{(out.stderr.strip().splitlines() or ['ip failed'])[-1]}")
        except OSError as e:
            os.close(fd)
            raise TapError(f"cannot make TAP device {ifname}: {e.strerror}") from None
        except TapError:
            os.close(fd)
            raise
        log.info("%s: TAP device on Linux bridge %s", ifname, bridge)
        return cls(ifname, bridge, fd, add_reader, remove_reader)

    # --- what VifPort calls on its bridge ---

    def attach(self, port, guard=None) -> None:
        self.port = port

    def detach(self, name: str) -> None:
        if self.port is not None and self.port.name == name:
            self.port = None

    def input(self, in_port: str, frame: bytes) -> None:
        """A frame from the guest: onto the host's bridge, or dropped and counted."""
        if self.fd < 0:
            self.counters["to_host_dropped"] += 1
            return
        try:
            os.write(self.fd, frame)
        except OSError:
            self.counters["to_host_dropped"] += 1
            return
        self.counters["to_host_frames"] += 1
        self.counters["to_host_bytes"] += len(frame)

    # --- the loop ---

    def _on_readable(self) -> None:
        delivered = False
        for _ in range(READ_BUDGET):
            try:
                frame = os.read(self.fd, MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno == errno.EBADFD:
                    break
                log.error("%s: reading the TAP device: %s", self.ifname, e.strerror)
                break
            if not frame:
                break
            if self.port is None:
                self.counters["from_host_dropped"] += 1
                continue
            self.counters["from_host_frames"] += 1
            self.counters["from_host_bytes"] += len(frame)
            self.port.deliver(frame)
            delivered = True
        if delivered:
            self.on_frames()

    def close(self) -> None:
        """The device goes with its last file descriptor (it was never made persistent)."""
        if self.fd >= 0:
            self.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
            log.info("%s: TAP device removed (%s)", self.ifname, self.counters)
