"""xl.cfg: the domain configuration file `xl create` reads, parsed and validated as xl does.

Syntax (xl.cfg(5)): `KEY = VALUE` lines, `#` comments, `;` optional, where
VALUE is a "string" or 'string', a number, or a [list, of, values] that may
span lines. Every error names its line: "FILE:LINE: message". disk and vif
specs are parsed in xl's syntax (xl-disk-configuration(5), xl-network-
configuration(5)) and validated even where no backend serves them yet.
pvhyp extension: `kernel = "python:MODULE[:FUNCTION]"` boots a Python guest.

The file is hostile input like any other: it is read with a bound
(MAX_CONFIG_BYTES), must be UTF-8 (a bad byte is an error naming its line),
and sizes are bounded here (MAX_MEMORY_MB) before anything is allocated for
them; whether they fit the host or the hypervisor is for the caller to ask.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from dom0.net.uplink import parse_forwards

ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
DISK_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")
DISK_BACKENDS = ("phy", "qdisk", "tap", "standalone")
DISK_KEYS = ("target", "format", "vdev", "access", "devtype", "backendtype", "backend",
             "script", "direct-io-safe", "discard", "no-discard", "colo", "trusted", "untrusted")
VIF_KEYS = ("mac", "bridge", "ip", "type", "model", "vifname", "script", "backend", "rate",
            "mtu", "gatewaydev", "accel", "devid", "trusted", "untrusted", "forwarddev",
            "forward", "outbound")        # the last two are pvhyp's own (dom0.net.vif)
_VDEV = re.compile(r"^(xvd[a-z]+\d*|hd[a-z]\d*|sd[a-z]+\d*|d\d+(p\d+)?|\d+)$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A PV guest's pages are counted in 32 bits on the way to the hypervisor (and no host of
# ours has 8 TiB): a larger memory/maxmem is a config error, not an allocation attempt.
MAX_MEMORY_MB = 1 << 23
MAX_CONFIG_BYTES = 1 << 20          # xl.cfg files are a few lines; this is far beyond any
_DISK_PREFIXES = ("phy:", "file:", "tap:aio:", "tap:qcow2:", "tap2:aio:", "aio:", "qcow2:", "vhd:", "raw:")


_VM_DATA_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_VM_DATA_VALUE = 1024


class ConfigError(Exception):
    """One line: where and what."""


@dataclass
class DiskSpec:
    vdev: str
    target: str = ""
    format: str = "raw"
    access: str = "rw"
    devtype: str = "disk"
    backendtype: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def readonly(self) -> bool:
        return self.access in ("r", "ro")


@dataclass
class VifSpec:
    mac: str = ""
    bridge: str = ""
    ip: str = ""
    type: str = "vif"
    extra: dict = field(default_factory=dict)


@dataclass
class DomainConfig:
    name: str
    memory: int = 128                 # MiB
    maxmem: int = 0                   # MiB; 0: same as memory
    vcpus: int = 1
    maxvcpus: int = 0
    kernel: str = ""
    ramdisk: str = ""
    cmdline: str = ""
    type: str = "pv"
    uuid: str = ""
    disks: list[DiskSpec] = field(default_factory=list)
    vifs: list[VifSpec] = field(default_factory=list)
    toys: list[int] = field(default_factory=list)     # pvhyp's toy devices (dom0/toy, lab 6), by devid
    vm_data: dict[str, str] = field(default_factory=dict)    # xenstore vm-data/KEY (pvhyp's vm_data=)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    source: str = "<config>"
    warnings: list[str] = field(default_factory=list)  # settings accepted but not acted on
    lines: dict[str, int] = field(default_factory=dict)    # setting -> the line it is on

    def where(self, key: str) -> str:
        """"FILE:LINE: key" for a message about a setting ("FILE: key" when it was a default)."""
        line = self.lines.get(key)
        if self.source.startswith("<"):        # "<command line>" and such: made up, no line to point at
            line = None
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"

    @property
    def python_guest(self) -> str | None:
        """MODULE[:FUNCTION] of a Python guest, or None for an x86 kernel."""
        return self.kernel[len("python:"):] if self.kernel.startswith("python:") else None


# --- the lexer/parser of the file format ---

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+) | (?P<comment>\#[^\n]*) | (?P<nl>\n) |
    (?P<dstr>"(?:[^"\\\n]|\\.)*") | (?P<sstr>'(?:[^'\\\n]|\\.)*') |
    (?P<num>0x[0-9a-fA-F]+|-?\d+(?:\.\d+)?) | (?P<ident>[A-Za-z_][A-Za-z0-9_\-]*) |
    (?P<punct>[=\[\],;]) | (?P<bad>.)
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "r": "\r", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v"}


def _unquote(text: str, where) -> str:
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 1
            if body[i] not in _ESCAPES:
                raise where(f"unknown escape \\{body[i]} in string")
            out.append(_ESCAPES[body[i]])
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _tokens(text: str, where_at):
    line = 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            yield "nl", None, line
            line += 1
        elif kind in ("ws", "comment"):
            continue
        elif kind == "bad":
            raise where_at(line)(f"unexpected character {m.group()!r}")
        elif kind in ("dstr", "sstr"):
            yield "str", _unquote(m.group(), where_at(line)), line
        elif kind == "num":
            raw = m.group()
            yield "num", int(raw, 16) if raw.startswith("0x") else (float(raw) if "." in raw else int(raw)), line
        else:
            yield kind if kind == "ident" else m.group(), m.group(), line
    yield "eof", None, line


def parse_assignments(text: str, source: str = "<config>") -> dict[str, tuple[object, int]]:
    """KEY -> (value, line). Values: str, int/float, or list of str/number."""
    def where_at(line):
        return lambda message: ConfigError(f"{source}:{line}: {message}")

    tokens = list(_tokens(text, where_at))
    pos = 0
    result: dict[str, tuple[object, int]] = {}

    def peek():
        return tokens[pos]

    def take(kind=None, what="token"):
        nonlocal pos
        tok = tokens[pos]
        if kind is not None and tok[0] != kind:
            found = "end of line" if tok[0] == "nl" else "end of file" if tok[0] == "eof" else repr(tok[1])
            raise where_at(tok[2])(f"expected {what}, found {found}")
        pos += 1
        return tok

    def skip_newlines():
        while peek()[0] == "nl":
            take()

    def value():
        tok = peek()
        if tok[0] in ("str", "num"):
            return take()[1]
        if tok[0] == "[":
            take()
            items = []
            skip_newlines()
            while peek()[0] != "]":
                item = peek()
                if item[0] not in ("str", "num"):
                    take("str", "a string or number in the list")
                items.append(take()[1])
                skip_newlines()
                if peek()[0] == ",":
                    take()
                    skip_newlines()
                elif peek()[0] != "]":
                    take("]", "',' or ']'")
            take("]")
            return items
        take("str", "a value (string, number or list)")

    while True:
        skip_newlines()
        tok = peek()
        if tok[0] == "eof":
            return result
        key_tok = take("ident", "a setting name")
        take("=", "'='")
        val = value()
        if peek()[0] == ";":
            take()
        if peek()[0] not in ("nl", "eof"):
            take("nl", "end of line")
        result[key_tok[1]] = (val, key_tok[2])


# --- the settings ---

def parse_disk(spec: str) -> DiskSpec:
    """xl-disk-configuration(5): positional target/format/vdev/access plus key=value."""
    fields: dict[str, str] = {}
    positional: list[str] = []
    parts = [p.strip() for p in spec.split(",")]
    for i, part in enumerate(parts):
        if part.startswith("target="):
            # target= swallows the rest: a path may contain commas
            fields["target"] = ",".join([part[len("target="):]] + parts[i + 1:])
            break
        if "=" in part:
            key, _, val = part.partition("=")
            if key not in DISK_KEYS:
                raise ValueError(f"unknown disk parameter {key!r}")
            fields[key] = val
        elif part in ("cdrom", "devtype=cdrom"):
            fields["devtype"] = "cdrom"
        elif part in ("discard", "no-discard", "direct-io-safe", "trusted", "untrusted"):
            fields[part] = ""           # xl's bare flags
        elif part:
            positional.append(part)
    for part in positional:
        if part in ("r", "ro", "w", "rw") and "access" not in fields:
            fields["access"] = part
        elif part in DISK_FORMATS and "format" not in fields:
            fields["format"] = part
        elif _VDEV.match(part) and "vdev" not in fields:
            fields["vdev"] = part
        elif "target" not in fields:
            fields["target"] = part
        else:
            raise ValueError(f"cannot place disk parameter {part!r}")
    if "vdev" not in fields:
        raise ValueError("disk spec has no vdev (e.g. xvda)")
    if not _VDEV.match(fields["vdev"]):
        raise ValueError(f"invalid vdev {fields['vdev']!r}")
    access = fields.get("access", "rw")
    if access not in ("r", "ro", "w", "rw"):
        raise ValueError(f"invalid access {access!r} (r, ro, w or rw)")
    fmt = fields.get("format", "raw")
    if fmt not in DISK_FORMATS:
        raise ValueError(f"unknown disk format {fmt!r}")
    backendtype = fields.get("backendtype", "")
    if backendtype and backendtype not in DISK_BACKENDS:
        raise ValueError(f"unknown backendtype {backendtype!r}")
    devtype = fields.get("devtype", "disk")
    if devtype not in ("disk", "cdrom"):
        raise ValueError(f"invalid devtype {devtype!r}")
    target = fields.get("target", "")
    for prefix in _DISK_PREFIXES:
        if target.startswith(prefix):
            target = target[len(prefix):]
            if prefix == "phy:" and not backendtype:
                backendtype = "phy"
            break
    if not target and devtype != "cdrom" and fmt != "empty":
        raise ValueError("disk spec has no target")
    extra = {k: v for k, v in fields.items()
             if k not in ("target", "format", "vdev", "access", "devtype", "backendtype")}
    return DiskSpec(vdev=fields["vdev"], target=target, format=fmt, access=access, devtype=devtype,
                    backendtype=backendtype, extra=extra)


def parse_vif(spec: str) -> VifSpec:
    """xl-network-configuration(5): comma-separated key=value pairs."""
    fields: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, eq, val = part.partition("=")
        if not eq:
            raise ValueError(f"vif parameter {part!r} is not key=value")
        if key not in VIF_KEYS:
            raise ValueError(f"unknown vif parameter {key!r}")
        fields[key] = val
    mac = fields.get("mac", "")
    if mac and not _MAC.match(mac):
        raise ValueError(f"invalid mac address {mac!r}")
    if mac and int(mac[:2], 16) & 1:
        raise ValueError(f"mac address {mac!r} is multicast")
    vtype = fields.get("type", "vif")
    if vtype not in ("vif", "ioemu"):
        raise ValueError(f"invalid vif type {vtype!r}")
    if "forward" in fields:
        parse_forwards(fields["forward"])           # ValueError names the bad forward
    extra = {k: v for k, v in fields.items() if k not in ("mac", "bridge", "ip", "type")}
    return VifSpec(mac=mac, bridge=fields.get("bridge", ""), ip=fields.get("ip", ""),
                   type=vtype, extra=extra)


_IGNORED_KNOWN = {"builder", "bootloader", "bootloader_args", "localtime", "cpus", "cpu_weight",
                  "cap", "pool", "device_model_version", "serial", "vnc", "sdl", "usb",
                  "vfb", "pci", "boot", "acpi", "apic", "pae", "hap", "nestedhvm", "viridian",
                  "extra_config", "seclabel", "max_grant_frames", "max_maptrack_frames",
                  "e820_host", "claim_mode", "vkb", "channel", "p9", "vtpm", "rdm", "dtdev",
                  "irqs", "iomem", "ioports", "gfx_passthru", "videoram", "stdvga", "tsc_mode",
                  "max_event_channels", "driver_domain", "device_tree", "altp2m", "bios"}


def decode_config(data: bytes, source: str = "<config>") -> str:
    """A config file's bytes as text: UTF-8, at most MAX_CONFIG_BYTES, or a ConfigError naming the line."""
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES} bytes: not a domain configuration")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{source}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None


def read_config(path: str) -> str:
    """The config file at `path`, read with a bound (ConfigError for anything wrong with it)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return decode_config(data, path)


def parse_vm_data(spec: str) -> tuple[str, str]:
    """pvhyp's `vm_data = [ "KEY=VALUE" ]`: xenstore vm-data/KEY for the guest to read (as XenServer's
    vm-data); hostname is the domain's name, never set here."""
    key, sep, value = spec.partition("=")
    if not sep or not _VM_DATA_KEY.match(key):
        raise ValueError(f"{spec!r} is not KEY=VALUE (KEY: letters, digits, '-', '_')")
    if key == "hostname":
        raise ValueError("vm-data/hostname is the domain's name (set name = ...)")
    if len(value.encode()) > MAX_VM_DATA_VALUE or not value.isprintable():
        raise ValueError(f"{key}: the value must be printable and at most {MAX_VM_DATA_VALUE} bytes")
    return key, value


def parse_config(text: str, source: str = "<config>") -> DomainConfig:
    # Text from a socket may hold what no file can (lone surrogates from JSON escapes).
    decode_config(text.encode("utf-8", "surrogatepass"), source)
    settings = parse_assignments(text, source)

    def error(key: str, message: str) -> ConfigError:
        line = settings[key][1] if key in settings else 0
        return ConfigError(f"{source}:{line}: {key}: {message}" if line else f"{source}: {message}")

    def get(key, kind, default=None):
        if key not in settings:
            return default
        val = settings[key][0]
        if kind is int:
            if isinstance(val, str) and re.fullmatch(r"\d+", val):
                val = int(val)
            if not isinstance(val, int) or isinstance(val, bool):
                raise error(key, f"expected an integer, got {val!r}")
            return val
        if kind is str:
            if not isinstance(val, str):
                raise error(key, f"expected a string, got {val!r}")
            return val
        if kind is list:
            if isinstance(val, str):
                return [val]
            if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
                raise error(key, "expected a list of strings")
            return val
        raise AssertionError(kind)

    name = get("name", str)
    if name is None:
        raise ConfigError(f"{source}: no name (every domain needs `name = \"...\"`)")
    if not _NAME.match(name) or name == "Domain-0":
        raise error("name", f"invalid domain name {name!r}")
    cfg = DomainConfig(name=name, source=source, lines={key: line for key, (_, line) in settings.items()})
    cfg.type = get("type", str, "pv")
    if cfg.type != "pv":
        raise error("type", f"only type = \"pv\" is supported, not {cfg.type!r}")
    cfg.memory = get("memory", int, cfg.memory)
    if cfg.memory < 1:
        raise error("memory", "must be at least 1 (MiB)")
    if cfg.memory > MAX_MEMORY_MB:
        raise error("memory", f"must be at most {MAX_MEMORY_MB} (MiB), not {cfg.memory}")
    cfg.maxmem = get("maxmem", int, cfg.memory)
    if cfg.maxmem < cfg.memory:
        raise error("maxmem", f"maxmem {cfg.maxmem} is below memory {cfg.memory}")
    if cfg.maxmem > MAX_MEMORY_MB:
        raise error("maxmem", f"must be at most {MAX_MEMORY_MB} (MiB), not {cfg.maxmem}")
    cfg.vcpus = get("vcpus", int, 1)
    if not 1 <= cfg.vcpus <= 128:
        raise error("vcpus", "must be between 1 and 128")
    cfg.maxvcpus = get("maxvcpus", int, cfg.vcpus)
    if cfg.maxvcpus < cfg.vcpus:
        raise error("maxvcpus", f"maxvcpus {cfg.maxvcpus} is below vcpus {cfg.vcpus}")
    if cfg.maxvcpus > 128:
        raise error("maxvcpus", f"must be at most 128, not {cfg.maxvcpus}")
    cfg.kernel = get("kernel", str, "")
    if not cfg.kernel:
        raise ConfigError(f"{source}: no kernel (pvhyp boots PV kernels directly: set `kernel = \"...\"`)")
    cfg.ramdisk = get("ramdisk", str, "")
    # `~` names the user's image cache (pvhyp image debian) in shipped examples.
    if not cfg.kernel.startswith("python:"):
        cfg.kernel = os.path.expanduser(cfg.kernel)
    cfg.ramdisk = os.path.expanduser(cfg.ramdisk) if cfg.ramdisk else ""
    cmdline = get("cmdline", str)
    if cmdline is None:
        # xl builds it from root= and extra= when cmdline is absent
        root, extra = get("root", str, ""), get("extra", str, "")
        cmdline = " ".join(filter(None, [f"root={root}" if root else "", extra]))
    elif "root" in settings or "extra" in settings:
        pass    # xl warns and uses cmdline alone
    cfg.cmdline = cmdline
    if len(cfg.cmdline.encode()) >= 1024:
        raise error("cmdline" if "cmdline" in settings else "extra", "command line exceeds 1023 bytes")
    uuid = get("uuid", str, "")
    if uuid and not _UUID.match(uuid):
        raise error("uuid", f"invalid uuid {uuid!r}")
    cfg.uuid = uuid
    for key in ("on_poweroff", "on_reboot", "on_crash", "on_watchdog", "on_soft_reset"):
        action = get(key, str)
        if action is None:
            continue
        if action not in ACTIONS:
            raise error(key, f"invalid action {action!r} (one of {', '.join(ACTIONS)})")
        if hasattr(cfg, key):
            setattr(cfg, key, action)
    for i, spec in enumerate(get("disk", list, [])):
        try:
            cfg.disks.append(parse_disk(spec))
        except ValueError as e:
            raise error("disk", f"disk {i} {spec!r}: {e}") from None
    vdevs = [d.vdev for d in cfg.disks]
    if len(set(vdevs)) != len(vdevs):
        raise error("disk", "two disks share a vdev")
    for i, spec in enumerate(get("vif", list, [])):
        try:
            cfg.vifs.append(parse_vif(spec))
        except ValueError as e:
            raise error("vif", f"vif {i} {spec!r}: {e}") from None
    for spec in get("toy", list, []):
        if not (isinstance(spec, str) and spec.isdigit() and int(spec) < 8) or int(spec) in cfg.toys:
            raise error("toy", f"toy {spec!r}: a devid 0..7, each once")
        cfg.toys.append(int(spec))
    for spec in get("vm_data", list, []):
        try:
            key, value = parse_vm_data(spec)
        except ValueError as e:
            raise error("vm_data", str(e)) from None
        cfg.vm_data[key] = value
    known = {"name", "type", "memory", "maxmem", "vcpus", "maxvcpus", "kernel", "ramdisk",
             "cmdline", "root", "extra", "uuid", "disk", "vif", "toy", "on_poweroff", "on_reboot",
             "on_crash", "on_watchdog", "on_soft_reset", "vm_data"}
    for key in settings:
        if key not in known:
            # xl ignores settings it does not know; say so rather than fail
            kind = "not used by pvhyp" if key in _IGNORED_KNOWN else "unknown setting, ignored"
            cfg.warnings.append(f"{source}:{settings[key][1]}: {key}: {kind}")
    return cfg
