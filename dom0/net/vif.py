"""A vif as the toolstack sees it: its MAC, bridge and forwards, and the xenstore keys libxl writes.

xl-network-configuration(5) keys used here: ``mac`` (missing: one in Xen's
00:16:3e range, derived from the domain's name and the device number so it
is the same on every boot of that domain, with the locally-administered
and multicast bits clear as libxl's), ``bridge`` (default ``xenbr0``),
``ip`` (the address passt hands out by DHCP), ``script`` (absent: the
bridge is dom0's own switch; ``vif-bridge`` or its full path, with root: a
TAP device on the existing Linux bridge named by ``bridge``, dom0/net/tap.py).  pvhyp's own keys, documented in
README: ``forward=tcp:HOST_ADDR:HOST_PORT:GUEST_PORT`` (several separated
by ';'): the vif's bridge gets an uplink to a passt of its own that
forwards those host ports to the guest; ``outbound=allow``: the guest may
reach, through that passt, whatever the host can (off by default).
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field

from dom0.net.tap import TAP_SCRIPTS
from dom0.net.uplink import DEFAULT_GUEST_IP, Forward, parse_forwards

XEN_OUI = "00:16:3e"
DEFAULT_BRIDGE = "xenbr0"
SCRIPTS = ("", *TAP_SCRIPTS)


def generated_mac(domain_name: str, devid: int) -> str:
    """Xen's OUI and three bytes from the name (the first below 0x80, as libxl's random ones)."""
    digest = hashlib.sha256(f"{domain_name}/{devid}".encode()).digest()
    return f"{XEN_OUI}:{digest[0] & 0x7F:02x}:{digest[1]:02x}:{digest[2]:02x}"


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


@dataclass
class VifSettings:
    devid: int
    mac: str
    bridge: str = DEFAULT_BRIDGE
    ip: str = ""
    forwards: list[Forward] = field(default_factory=list)
    outbound: bool = False
    script: str = ""            # set: the vif goes on a TAP device enslaved to Linux bridge `bridge`

    @property
    def tap(self) -> bool:
        return self.script in TAP_SCRIPTS

    @property
    def port_name(self) -> str:
        return f"vif{self.devid}"

    def backend_keys(self) -> dict[str, str]:
        """What libxl writes in the backend directory (plus pvhyp's own keys)."""
        keys = {"handle": str(self.devid), "mac": self.mac, "bridge": self.bridge,
                "type": "vif"}
        if self.script:
            keys["script"] = self.script
        if self.ip:
            keys["ip"] = self.ip
        if self.forwards:
            keys["forward"] = ";".join(f"{f.proto}:{f.host_addr}:{f.host_port}:{f.guest_port}"
                                       for f in self.forwards)
        if self.outbound:
            keys["outbound"] = "allow"
        return keys

    def frontend_keys(self) -> dict[str, str]:
        return {"handle": str(self.devid), "mac": self.mac}

    @property
    def guest_ip(self) -> str:
        return self.ip or DEFAULT_GUEST_IP


def settings_from_spec(spec, domain_name: str, devid: int) -> VifSettings:
    """A dom0.toolstack.config.VifSpec made concrete; ValueError names what is wrong."""
    extra = dict(spec.extra)
    if "devid" in extra:
        text = extra["devid"]
        if not text.isdigit() or int(text) > 0xFFFF:
            raise ValueError(f"vif devid {text!r} is not a number")
        devid = int(text)
    script = extra.get("script", "")
    if script not in SCRIPTS:
        raise ValueError(f"vif script {script!r}: only vif-bridge (a TAP on a Linux bridge, with root) is offered")
    if spec.ip:
        try:
            ipaddress.IPv4Address(spec.ip)
        except ValueError:
            raise ValueError(f"vif ip={spec.ip!r} is not one IPv4 address") from None
    outbound = extra.get("outbound", "deny")
    if outbound not in ("allow", "deny"):
        raise ValueError(f"vif outbound={outbound!r}: allow or deny")
    forwards = parse_forwards(extra.get("forward", ""))
    if script and (forwards or outbound == "allow"):
        raise ValueError("vif forward=/outbound= are for dom0's own bridges, not with script=vif-bridge")
    return VifSettings(devid=devid, mac=(spec.mac or generated_mac(domain_name, devid)).lower(),
                       bridge=spec.bridge or DEFAULT_BRIDGE, ip=spec.ip,
                       forwards=forwards, outbound=outbound == "allow", script=script)


def settings_from_backend(params: dict[str, str], devid: int) -> VifSettings:
    """The settings back from the backend directory dom0 itself wrote (at plug time)."""
    return VifSettings(devid=devid, mac=params.get("mac", ""), bridge=params.get("bridge") or DEFAULT_BRIDGE,
                       ip=params.get("ip", ""), forwards=parse_forwards(params.get("forward", "")),
                       outbound=params.get("outbound") == "allow", script=params.get("script", ""))
