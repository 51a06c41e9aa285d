"""`pvhyp image debian --rootfs`: a Debian 12 system on an ext4 disk image, from Debian's packages.

Three stages, each cached in DIR (default ~/.cache/pvhyp/debian-rootfs):

1. base: `mmdebstrap` (apt, Debian's own packages: minbase + systemd, udev, kmod,
   e2fsprogs, xenstore-utils, ... + --packages) into a tarball named by a hash of
   what went into it; a rebuild with the same suite, mirrors and packages reuses it.
2. tree: the tarball unpacked (ownership, modes and xattrs kept), then made a Xen
   PV guest: the kernel's own modules (/lib/modules/RELEASE from the same
   linux-image package the guest boots, `depmod` run in the tree), /etc/fstab
   for /dev/xvda, a getty on the console (hvc0), the documented root password, an empty
   /etc/machine-id (each copy's first boot makes its own), and the identity unit
   (see IDENTITY_SCRIPT) that gives clones their hostname.
3. disk: `mke2fs -t ext4 -d TREE` into a sparse raw image: no loop device, no mount.

The kernel and initramfs (dom0.images.debian: its /init mounts root= and
switch_roots) are copied beside the disk, so one directory is one bootable
guest whose modules match its kernel. examples/debian-disk.cfg boots it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass

from dom0.images import debfile, debian
from dom0.images.debian import ImageError, write_atomically

SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# minbase has apt, dpkg, login, passwd, util-linux (agetty); these make it a system
# (ioping, libc only, is what `pvhyp bench disk` measures random reads with).
BASE_PACKAGES = ("systemd-sysv", "udev", "kmod", "dbus", "e2fsprogs", "xenstore-utils", "iproute2",
                 "ifupdown", "netbase", "procps", "less", "ioping")
DEFAULT_SIZE = "2G"
ROOT_PASSWORD = "pvhyp"         # documented in README; console-only (no ssh server is installed)
IMAGE = "debian-12.img"
MANIFEST = "rootfs.json"
ROOT_DEVICE = "/dev/xvda"
CMDLINE = f"console=hvc0 root={ROOT_DEVICE} ro"
TEMPLATE_HOSTNAME = "debian"
# Bumped when what the tree or disk stages make from the same base changes.
RECIPE_VERSION = 3
DEFAULT_DIR = debian.DEFAULT_DIR.parent / "debian-rootfs"
_PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_SIZE = re.compile(r"^[1-9][0-9]*[KMGT]?$")

FSTAB = f"""# <file system> <mount point> <type> <options> <dump> <pass>
{ROOT_DEVICE} / ext4 errors=remount-ro 0 1
"""

# The identity a clone gets: the toolstack writes the guest's name into xenstore
# (/local/domain/N/vm-data/hostname, read here relative to the guest's home with
# Debian's xenstore-read over /dev/xen/xenbus, as XenServer's guest agents read
# vm-data); `pvhyp.hostname=` on the kernel command line (extra=) is the fallback.
# A fresh /etc/machine-id: a never-booted template has an empty one, which
# systemd fills at first boot; a copy of a VM that has booted (its recorded VM
# UUID differs from /sys/hypervisor/uuid) gets a new random one here.
def read_vm_data(key: str, var: str) -> str:
    """Shell lines setting $var to xenstore vm-data/KEY, else to `pvhyp.KEY=` from the kernel
    command line (the guest units' one way to read what the toolstack gave the VM)."""
    return (f"{var}=$(xenstore-read vm-data/{key} 2>/dev/null) || {var}=\n"
            "for arg in $(cat /proc/cmdline); do\n"
            '    case "$arg" in\n'
            f'        pvhyp.{key}=*) [ -n "${var}" ] || {var}="${{arg#pvhyp.{key}=}}" ;;\n'
            "    esac\n"
            "done\n")


IDENTITY_SCRIPT = """#!/bin/sh
state=/var/lib/pvhyp-identity/vm-uuid
""" + read_vm_data("hostname", "name") + """case "$name" in
    *[!A-Za-z0-9.-]*|-*) echo "pvhyp-identity: ignoring hostname '$name'"; name= ;;
esac
if [ -n "$name" ]; then
    if [ "$(cat /etc/hostname 2>/dev/null)" != "$name" ]; then
        echo "$name" > /etc/hostname
        sed -i "s/^127\\.0\\.1\\.1[[:space:]].*/127.0.1.1\\t$name/" /etc/hosts
        echo "pvhyp-identity: hostname $name"
    fi
    hostname "$name"
fi
uuid=$(cat /sys/hypervisor/uuid 2>/dev/null) || uuid=
if [ -n "$uuid" ] && [ "$(cat $state 2>/dev/null)" != "$uuid" ]; then
    if [ -s $state ]; then
        systemd-id128 new > /etc/machine-id
        echo "pvhyp-identity: a copy of VM $(cat $state): new machine-id $(cat /etc/machine-id)"
    fi
    mkdir -p "${state%/*}"
    echo "$uuid" > $state
fi
exit 0
"""
IDENTITY_UNIT = """[Unit]
Description=Apply the VM identity from the toolstack (hostname, machine-id of a copy)
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target systemd-hostnamed.service network-pre.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/pvhyp-identity

[Install]
WantedBy=sysinit.target
"""
# Timers that would run apt or scrubs on a guest's slow first minutes.
DISABLED_UNITS = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "e2scrub_reap.service",
                  "fstrim.timer")


@dataclass(frozen=True)
class Profile:
    """What a specialised template adds to the common Debian system (dom0.images.servers has one)."""
    name: str
    version: int                                    # bumped when `configure` makes something else
    packages: tuple[str, ...]
    configure: Callable[[pathlib.Path], None]       # run in the tree after the common configure()


def validate_packages(packages: list[str]) -> list[str]:
    """Debian package names only: they reach mmdebstrap's command line."""
    for name in packages:
        if not _PACKAGE_NAME.match(name):
            raise ImageError(f"--packages: {name!r} is not a Debian package name")
    return sorted(set(packages))


def validate_size(size: str) -> str:
    if not _SIZE.match(size):
        raise ImageError(f"--size: {size!r} is not a size like 2G or 1536M")
    return size


def size_bytes(size: str) -> int:
    unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(size[-1], 1)
    return int(size.rstrip("KMGT")) * unit


def build(out_dir: pathlib.Path | str | None = None, size: str = DEFAULT_SIZE,
          packages: list[str] | None = None, root_password: str = ROOT_PASSWORD,
          profile: Profile | None = None) -> dict:
    """Build (or reuse) the disk image and its kernel in `out_dir`; the manifest, paths absolute.

    A `profile` (e.g. dom0.images.servers) adds its packages and configures the tree
    after the common stage; its name and version are part of what a cached disk must match.
    """
    out_dir = pathlib.Path(out_dir) if out_dir else DEFAULT_DIR
    size = validate_size(size)
    extra = validate_packages(list(packages or []) + list(profile.packages if profile else ()))
    if size_bytes(size) < 512 << 20:
        raise ImageError(f"--size: {size} is too small for a Debian system (at least 512M)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("mmdebstrap", "mke2fs", "tar"):
        if shutil.which(tool) is None:
            raise ImageError(f"{tool} not found: building the Debian disk needs it (apt-get install {tool})")
    kernel_image = debian.build(out_dir / "kernel")
    kernel_deb = next(iter(sorted((out_dir / "kernel" / "debs").glob("linux-image-*.deb"))), None)
    if kernel_deb is None:
        raise ImageError("the kernel package is missing from the cache")
    base = base_tarball(out_dir, sorted(set(BASE_PACKAGES) | set(extra)))
    want = {"recipe": RECIPE_VERSION, "base": base.name, "size": size, "release": kernel_image["release"],
            "kernel_sources": kernel_image["sources"], "kernel_recipe": kernel_image["recipe"],
            "password": hashlib.sha256(root_password.encode()).hexdigest()}
    if profile is not None:
        want["profile"] = f"{profile.name}/{profile.version}"
    manifest = cached(out_dir)
    if manifest is not None and all(manifest.get(k) == v for k, v in want.items()):
        return _absolute(manifest, out_dir)

    work = out_dir / f".build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "root"
    tree.mkdir(parents=True)
    try:
        print("pvhyp image: unpacking the base system ...", file=sys.stderr)
        _run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", str(base), "-C", str(tree)])
        install_modules(tree, kernel_deb, kernel_image["release"])
        configure(tree, kernel_image["release"], root_password)
        if profile is not None:
            profile.configure(tree)
        print(f"pvhyp image: making the {size} ext4 disk ...", file=sys.stderr)
        partial = work / IMAGE
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "debian-root", "-U", str(uuidlib.uuid4()),
              "-d", str(tree), str(partial), size], capture_output=True)
        os.replace(partial, out_dir / IMAGE)
        for name in ("kernel", "ramdisk"):
            shutil.copyfile(kernel_image[name], work / name)
            os.replace(work / name, out_dir / pathlib.Path(kernel_image[name]).name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = dict(want, image=IMAGE, format="raw", kernel=pathlib.Path(kernel_image["kernel"]).name,
                    ramdisk=pathlib.Path(kernel_image["ramdisk"]).name, cmdline=CMDLINE,
                    packages=sorted(set(BASE_PACKAGES) | set(extra)), suite=SUITE)
    write_atomically(out_dir / MANIFEST, json.dumps(manifest, indent=1).encode())
    return _absolute(manifest, out_dir)


def base_tarball(out_dir: pathlib.Path, packages: list[str]) -> pathlib.Path:
    """Debian's packages installed by mmdebstrap, as a tarball named by what went in."""
    key = hashlib.sha256(json.dumps([SUITE, MIRRORS, packages]).encode()).hexdigest()[:16]
    tarball = out_dir / f"base-{key}.tar"
    if tarball.exists():
        return tarball
    partial = out_dir / f".base-{key}.{os.getpid()}.tar"
    print(f"pvhyp image: mmdebstrap {SUITE} with {', '.join(packages)} ...", file=sys.stderr)
    try:
        _run(["mmdebstrap", "--variant=minbase", "--format=tar", f"--include={','.join(packages)}",
              "--aptopt=Acquire::Retries \"3\"", SUITE, str(partial), *MIRRORS],
             stdout=sys.stderr if sys.stderr.isatty() else subprocess.PIPE, stderr=subprocess.PIPE)
        os.replace(partial, tarball)
    finally:
        partial.unlink(missing_ok=True)
    for old in out_dir.glob("base-*.tar"):
        if old != tarball:
            old.unlink()                    # one base is kept: the one this recipe uses
    return tarball


def install_modules(tree: pathlib.Path, kernel_deb: pathlib.Path, release: str) -> None:
    """/lib/modules/RELEASE of the kernel the guest boots, from its own package."""
    prefix = f"/lib/modules/{release}/"
    try:
        for path, data in debfile.each_file(kernel_deb.read_bytes(), lambda p: p.startswith(prefix)):
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    except debfile.DebError as e:
        raise ImageError(f"cannot unpack {kernel_deb.name}: {e}") from None


def configure(tree: pathlib.Path, release: str, root_password: str) -> None:
    """What makes the Debian tree a Xen PV guest's root: see the module docstring."""
    etc = tree / "etc"
    (etc / "fstab").write_text(FSTAB)
    (etc / "hostname").write_text(TEMPLATE_HOSTNAME + "\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{TEMPLATE_HOSTNAME}\n\n"
                               "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (etc / "machine-id").write_text("")         # empty: the first boot of each copy makes one
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    script = tree / "usr/local/sbin/pvhyp-identity"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(IDENTITY_SCRIPT)
    script.chmod(0o755)
    (etc / "systemd/system/pvhyp-identity.service").write_text(IDENTITY_UNIT)
    (etc / "network/interfaces.d").mkdir(parents=True, exist_ok=True)
    (etc / "network/interfaces.d/eth0").write_text("allow-hotplug eth0\niface eth0 inet dhcp\n")
    _chroot(tree, ["depmod", "-a", release])
    # The login prompt is console-getty.service, agetty on /dev/console: the kernel's
    # console=, hvc0 under pvhyp (ttyS0 under QEMU). Not serial-getty@hvc0, which is
    # bound to dev-hvc0.device: on the software CPU udev's coldplug announces the tty
    # after systemd's 90 s device timeout, and the getty never starts. The getty
    # generator, which would add that unit (and a second getty on the same tty), is off.
    generators = etc / "systemd/system-generators"
    generators.mkdir(parents=True, exist_ok=True)
    (generators / "systemd-getty-generator").symlink_to("/dev/null")
    _chroot(tree, ["systemctl", "enable", "console-getty.service", "pvhyp-identity.service"])
    _chroot(tree, ["systemctl", "disable", "getty@tty1.service", *DISABLED_UNITS])
    # A console login on the software CPU is slow, so: SHA-512 crypt rather than
    # yescrypt (memory-hard by design, seconds of emulated work per login), login's
    # timeout 60 s -> 600 s, and no per-user systemd manager for root (user@0.service,
    # which pam_systemd would start and wait for before the shell).
    _chroot(tree, ["chpasswd", "--crypt-method", "SHA512"], input=f"root:{root_password}\n")
    login_defs = etc / "login.defs"
    login_defs.write_text(re.sub(r"(?m)^LOGIN_TIMEOUT\s+\d+", "LOGIN_TIMEOUT\t\t600", login_defs.read_text()))
    _chroot(tree, ["systemctl", "mask", "user@0.service"])


def _chroot(tree: pathlib.Path, cmd: list[str], **kw) -> None:
    _run(["chroot", str(tree), *cmd], capture_output=True, **kw)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return debian.run_tool(cmd, shown=3, **kw)


def cached(out_dir: pathlib.Path) -> dict | None:
    """The manifest of the disk already built in `out_dir` (names relative), if its files are there."""
    path = pathlib.Path(out_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not all((pathlib.Path(out_dir) / str(manifest.get(k))).exists() for k in ("image", "kernel", "ramdisk")):
        return None
    return manifest


def find_or_build(out_dir: pathlib.Path | str | None = None) -> dict:
    """The disk in `out_dir` (default DEFAULT_DIR) as it is, else a fresh build."""
    out_dir = pathlib.Path(out_dir) if out_dir else DEFAULT_DIR
    manifest = cached(out_dir)
    if manifest is not None:
        return _absolute(manifest, out_dir)
    return build(out_dir)


def _absolute(manifest: dict, out_dir: pathlib.Path) -> dict:
    m = dict(manifest)
    for key in ("image", "kernel", "ramdisk"):
        m[key] = str(pathlib.Path(out_dir) / m[key])
    return m
