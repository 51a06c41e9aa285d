"""The three-server template: one Debian 12 disk that becomes a file, a print or a web server.

`pvhyp demo servers` (pvhyp/cli/demo_cmd.py) builds it once into DEFAULT_DIR
(~/.cache/pvhyp/servers-template) with dom0.images.rootfs and this module's
PROFILE, then boots copy-on-write clones of it; the template itself is never booted
or written. Every service is installed but disabled: a clone runs only the role the
toolstack gives it in xenstore (vm-data/role, from the guest config's
`vm_data = [ "role=..." ]`, as XenServer's vm-data), applied at each boot by the
pvhyp-role unit; `pvhyp.role=` on the kernel command line is the fallback.

The choices, measured or reasoned for the software CPU, where every instruction costs:
- SMB: Samba's smbd, alone (no nmbd, no NetBIOS, no printing). The kernel's ksmbd
  (ksmbd-tools: 167 KiB of user space, no daemon to speak of) was the first choice, being
  lighter, but Debian 12's smbclient does not accept it as this kernel (6.1) runs it: the
  logon succeeds, then every signed reply fails the client's signature check and the tree
  connect is refused (measured here, all dialects from SMB 2.1 to 3.1.1). Real clients
  first: smbd.
- Print: cupsd alone (cups-daemon, with its MIME tables), no filters, no Ghostscript:
  one raw queue PRINTER whose backend (SPOOL_BACKEND) writes each job's bytes to
  SPOOL_DIR/job-N; IPP on port 631 for anyone (the forward binds the host's
  loopback only).
- HTTP: lighttpd with a ten-line configuration (Debian's default one runs Perl
  scripts at every start), one process, serving WEB_ROOT.
"""
from __future__ import annotations

import pathlib

from dom0.images import rootfs

DEFAULT_DIR = rootfs.DEFAULT_DIR.parent / "servers-template"
SHARE = "share"
SHARE_DIR = "/srv/share"
SMB_USER = "pvhyp"
SMB_PASSWORD = "pvhyp"            # documented in README and printed by `pvhyp demo servers`
PRINTER = "spool"
SPOOL_DIR = "/var/spool/pvhyp-print"
WEB_ROOT = "/var/www/html"


class Role:
    """One server role: the units the clone starts and the TCP port it answers on."""

    def __init__(self, name: str, units: tuple[str, ...], port: int, what: str):
        self.name, self.units, self.port, self.what = name, units, port, what


# The roles a clone may be given (vm-data/role); each starts only its own units.
ROLES = {role.name: role for role in (
    Role("smb", ("smbd.service",), 445, "file server (SMB)"),
    Role("print", ("cups.service",), 631, "print server (IPP)"),
    Role("web", ("lighttpd.service",), 80, "web server (HTTP)"),
)}
# Installed, enabled by their packages, disabled here: only a role starts them.
SERVICE_UNITS = ("smbd.service", "nmbd.service", "samba-ad-dc.service", "cups.service", "cups.socket", "cups.path", "lighttpd.service")

ROLE_SCRIPT = """#!/bin/sh
# Start the units of this VM's role (vm-data/role from the toolstack; pvhyp.role= fallback).
%(read_role)s[ -n "$role" ] || { echo "pvhyp-role: no role"; exit 0; }
case "$role" in
    *[!a-z]*) echo "pvhyp-role: ignoring role '$role'"; exit 0 ;;
esac
units=/etc/pvhyp/roles/$role
[ -f "$units" ] || { echo "pvhyp-role: unknown role '$role'"; exit 0; }
if [ "$role" = web ]; then
    printf '<!doctype html>\\n<title>%s</title>\\n<h1>%s: a web server on pvhyp</h1>\\n' \\
        "$(hostname)" "$(hostname)" > %(web_root)s/index.html
fi
echo "pvhyp-role: $role: starting $(cat $units)"
systemctl start --no-block $(cat $units)
"""
ROLE_UNIT = """[Unit]
Description=Start this VM's server role (vm-data/role from the toolstack)
After=pvhyp-identity.service network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pvhyp-role

[Install]
WantedBy=multi-user.target
"""
SMB_CONF = f"""[global]
\tserver string = pvhyp file server
\tserver role = standalone server
\tmap to guest = never
\tdisable netbios = yes
\tsmb ports = 445
\tload printers = no
\tprinting = bsd
\tprintcap name = /dev/null
\tdisable spoolss = yes
\tlog file = /var/log/samba/log.%m
\tmax log size = 1000

[{SHARE}]
\tpath = {SHARE_DIR}
\tread only = no
\tvalid users = {SMB_USER}
"""
CUPSD_CONF = """LogLevel warn
MaxLogSize 1m
Listen 0.0.0.0:631
Listen /run/cups/cups.sock
Browsing No
WebInterface No
ServerAlias *
DefaultAuthType Basic
<Location />
  Order allow,deny
  Allow all
</Location>
<Policy default>
  <Limit All>
    Order deny,allow
  </Limit>
</Policy>
"""
# Debian starts cupsd on demand (-l: it exits after a minute idle, and cups.socket, the
# Unix socket only, starts it again); port 631 has no socket unit, so mieayam runs it for good.
CUPS_SERVICE_OVERRIDE = """[Service]
Type=simple
ExecStart=
ExecStart=/usr/sbin/cupsd -f
"""
PRINTERS_CONF = f"""<DefaultPrinter {PRINTER}>
PrinterId 1
Info pvhyp spool: each job's bytes in {SPOOL_DIR}
Location mieayam
MakeModel Local Raw Printer
DeviceURI pvhyp-spool:{SPOOL_DIR}
State Idle
StateTime 0
Type 4
Accepting Yes
Shared Yes
JobSheets none none
QuotaPeriod 0
PageLimit 0
KLimit 0
OpPolicy default
ErrorPolicy abort-job
</DefaultPrinter>
"""
# A CUPS backend (cups-backend(7)): no arguments = discovery; else JOB USER TITLE COPIES
# OPTIONS [FILE]; the job's bytes from FILE or stdin. Mode 0755: cupsd runs it as lp.
SPOOL_BACKEND = f"""#!/bin/sh
if [ $# -eq 0 ]; then
    echo 'direct pvhyp-spool "Unknown" "pvhyp spool directory"'
    exit 0
fi
out={SPOOL_DIR}/job-$1
if [ -n "$6" ]; then cat "$6"; else cat; fi > "$out.part" || exit 1
mv "$out.part" "$out"
"""
# The network: systemd-networkd (in the systemd package) takes any Ethernet link by DHCP from
# the vif's passt. The common recipe's ifupdown stanza names eth0, but systemd 252 names a
# Xen vif enX0, and minbase has no DHCP client for ifupdown to run. Nothing waits for
# "online": every service listens on all addresses, whenever the address comes.
NETWORKD_CONF = """[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
"""
LIGHTTPD_CONF = f"""server.document-root = "{WEB_ROOT}"
server.port = 80
server.username = "www-data"
server.groupname = "www-data"
server.pid-file = "/run/lighttpd.pid"
server.errorlog = "/var/log/lighttpd/error.log"
index-file.names = ( "index.html" )
mimetype.assign = ( ".html" => "text/html", ".txt" => "text/plain", "" => "application/octet-stream" )
"""


def configure(tree: pathlib.Path) -> None:
    """The three services configured and disabled, and the role unit that starts one of them."""
    etc = tree / "etc"
    roles = etc / "pvhyp/roles"
    roles.mkdir(parents=True, exist_ok=True)
    for role in ROLES.values():
        (roles / role.name).write_text(" ".join(role.units) + "\n")
    script = tree / "usr/local/sbin/pvhyp-role"
    script.write_text(ROLE_SCRIPT.replace("%(web_root)s", WEB_ROOT)
                      .replace("%(read_role)s", rootfs.read_vm_data("role", "role")))
    script.chmod(0o755)
    (etc / "systemd/system/pvhyp-role.service").write_text(ROLE_UNIT)
    # SMB: a Unix user owning the share (smbd maps the SMB user to it) and its SMB password.
    (etc / "samba/smb.conf").write_text(SMB_CONF)
    _chroot(tree, ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SMB_USER])
    (tree / SHARE_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    _chroot(tree, ["chown", f"{SMB_USER}:{SMB_USER}", SHARE_DIR])
    _chroot(tree, ["smbpasswd", "-s", "-a", SMB_USER], input=f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n")
    # Print: cupsd's own configuration, the raw queue and its backend, the spool.
    (etc / "cups/cupsd.conf").write_text(CUPSD_CONF)
    (etc / "cups/printers.conf").write_text(PRINTERS_CONF)
    (etc / "systemd/system/cups.service.d").mkdir(parents=True, exist_ok=True)
    (etc / "systemd/system/cups.service.d/pvhyp-always-on.conf").write_text(CUPS_SERVICE_OVERRIDE)
    backend = tree / "usr/lib/cups/backend/pvhyp-spool"
    backend.write_text(SPOOL_BACKEND)
    backend.chmod(0o755)
    (tree / SPOOL_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    _chroot(tree, ["chown", "lp:lp", SPOOL_DIR])
    (etc / "systemd/network/50-pvhyp-dhcp.network").write_text(NETWORKD_CONF)
    (etc / "network/interfaces.d/eth0").unlink(missing_ok=True)
    _chroot(tree, ["systemctl", "disable", "networking.service"])
    _chroot(tree, ["systemctl", "enable", "systemd-networkd.service"])
    _chroot(tree, ["systemctl", "mask", "systemd-networkd-wait-online.service"])
    # HTTP
    (etc / "lighttpd/lighttpd.conf").write_text(LIGHTTPD_CONF)
    (tree / WEB_ROOT.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (tree / WEB_ROOT.lstrip("/") / "index.html").write_text("<!doctype html>\n<h1>pvhyp web server</h1>\n")
    _chroot(tree, ["systemctl", "disable", *SERVICE_UNITS])
    _chroot(tree, ["systemctl", "enable", "pvhyp-role.service"])


def _chroot(tree: pathlib.Path, cmd: list[str], **kw) -> None:
    rootfs.debian.run_tool(["chroot", str(tree), *cmd], shown=3, capture_output=True, **kw)


PROFILE = rootfs.Profile(name="servers", version=4,
                         packages=("samba", "cups-daemon", "cups-common", "cups-server-common", "lighttpd"),
                         configure=configure)


def build(out_dir: pathlib.Path | str | None = None) -> dict:
    """The template (built once, then reused): rootfs.build's manifest, paths absolute."""
    return rootfs.build(out_dir or DEFAULT_DIR, profile=PROFILE)


