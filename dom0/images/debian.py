"""`pvhyp image debian`: a Debian-like PV guest image from Debian's own packages.

The stock kernel (linux-image-amd64's dependency, 6.1.0-*-amd64) and
busybox-static are fetched with `apt-get download`, unpacked here in Python
(ar + tar, no dpkg), and turned into a kernel file and a gzip'd newc
initramfs whose /init mounts proc, sys and devtmpfs, prints the marker line
with `uname -r` and /sys/hypervisor/type, and starts a shell on hvc0.
The result is cached in DIR; a rebuild with the same packages does nothing,
and `find_or_build` takes the image already there without asking apt.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

from dom0.images import cpio, debfile, kernel_symbols

KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"
MARKER = "PVHYP-GUEST-UP"
# Bumped when what build() makes from the same packages changes (2: System.map from kallsyms).
RECIPE_VERSION = 2
DEFAULT_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "pvhyp" / "debian"

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "{MARKER} kernel=$(uname -r) hypervisor=$(cat /sys/hypervisor/type 2>/dev/null || echo none)"
cd /root
while true; do
    setsid cttyhack sh -l
done
"""
PROFILE = 'export PS1="pvhyp-guest# "\n'


class ImageError(Exception):
    """A clear one-line reason the image could not be built."""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, text=True, **kw)
    except FileNotFoundError:
        raise ImageError(f"{cmd[0]} not found: building the Debian image needs apt (a Debian-like host)") from None
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip().splitlines()
        raise ImageError(f"`{' '.join(cmd)}` failed: {detail[-1] if detail else e.returncode}") from None


def resolve_kernel_package() -> str:
    """The versioned kernel package linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64).

    As root, an apt that knows no linux-image-amd64 yet is updated once first."""
    if shutil.which("apt-cache") is None:
        raise ImageError("apt-cache not found: building the Debian image needs apt (a Debian-like host)")
    package = _kernel_dependency()
    if package is None and os.geteuid() == 0:
        _run(["apt-get", "update", "-qq"], capture_output=True)
        package = _kernel_dependency()
        if package is None:
            raise ImageError(f"apt knows no {KERNEL_META} even after apt-get update")
    if package is None:
        raise ImageError(f"apt knows no {KERNEL_META}; run `apt-get update` first")
    return package


def _kernel_dependency() -> str | None:
    out = _run(["apt-cache", "depends", KERNEL_META], capture_output=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split(":", 1)[1].strip()
    return None


def download(package: str, dest: pathlib.Path) -> pathlib.Path:
    """apt-get download into `dest` (apt shows its progress bar on a terminal)."""
    existing = sorted(dest.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    print(f"pvhyp image: downloading {package} ...", file=sys.stderr)
    _run(["apt-get", "download", "-q" if not sys.stderr.isatty() else "-o=quiet=0", package],
         cwd=dest, stdout=sys.stderr if sys.stderr.isatty() else subprocess.PIPE, stderr=subprocess.PIPE)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if not found:
        raise ImageError(f"apt-get download {package} produced no .deb")
    return found[-1]


def build_initramfs(busybox: bytes) -> bytes:
    w = cpio.CpioWriter()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc", "usr", "usr/bin"):
        w.directory(d)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, 0o666)
    w.char_device("dev/hvc0", 229, 0)
    w.file("bin/busybox", busybox, 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("init", INIT_SCRIPT.encode(), 0o755)
    w.file("etc/profile", PROFILE.encode())
    return gzip.compress(w.finish(), compresslevel=6, mtime=0)


def build(out_dir: pathlib.Path | str | None = None) -> dict:
    """Build (or reuse) the image in `out_dir` (default DEFAULT_DIR); returns the manifest
    with absolute file paths."""
    out_dir = pathlib.Path(out_dir) if out_dir else DEFAULT_DIR
    debs = out_dir / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    kernel_pkg = resolve_kernel_package()
    kernel_deb = download(kernel_pkg, debs)
    busybox_deb = download(BUSYBOX, debs)
    sources = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (kernel_deb, busybox_deb)}
    manifest = cached(out_dir)
    if manifest is not None and manifest.get("sources") == sources and manifest.get("recipe") == RECIPE_VERSION:
        return _absolute(manifest, out_dir)
    try:
        kernel_files = debfile.extract(kernel_deb.read_bytes(),
                                       lambda p: p.startswith("/boot/vmlinuz-") or p.startswith("/boot/System.map-"))
        busybox_files = debfile.extract(busybox_deb.read_bytes(), lambda p: p == "/bin/busybox")
    except debfile.DebError as e:
        raise ImageError(f"cannot unpack package: {e}") from None
    vmlinuz = next((v for k, v in kernel_files.items() if "vmlinuz" in k), None)
    if vmlinuz is None or "/bin/busybox" not in busybox_files:
        raise ImageError("the packages lack /boot/vmlinuz-* or /bin/busybox")
    release = next(k for k in kernel_files if "vmlinuz" in k).split("vmlinuz-", 1)[1]
    (out_dir / "vmlinuz").write_bytes(vmlinuz)
    system_map = next((v for k, v in kernel_files.items() if "System.map" in k), None)
    if system_map and b"The real System.map is in" in system_map[:200]:
        system_map = None           # Debian ships a placeholder; the real one is in the -dbg package
    if system_map is None:
        try:
            system_map = kernel_symbols.system_map_from_kernel(vmlinuz)
        except kernel_symbols.SymbolsUnavailable as e:
            print(f"pvhyp image: no kernel symbols for diagnostics: {e}", file=sys.stderr)
    if system_map:
        (out_dir / "System.map").write_bytes(system_map)
    (out_dir / "initrd.img").write_bytes(build_initramfs(busybox_files["/bin/busybox"]))
    manifest = {"release": release, "kernel": "vmlinuz", "ramdisk": "initrd.img",
                "system_map": "System.map" if system_map else None,
                "cmdline": "console=hvc0", "marker": MARKER, "sources": sources, "recipe": RECIPE_VERSION}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return _absolute(manifest, out_dir)


def cached(out_dir: pathlib.Path) -> dict | None:
    """The manifest of the image already built in `out_dir` (paths relative), if its files are there."""
    manifest_path = pathlib.Path(out_dir) / "manifest.json"
    if not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    if not all((pathlib.Path(out_dir) / manifest[k]).exists() for k in ("kernel", "ramdisk")):
        return None
    return manifest


def find_or_build(out_dir: pathlib.Path | str | None = None) -> dict:
    """The manifest (absolute paths) of the image in `out_dir` (default DEFAULT_DIR):
    the one there if this recipe made it, else a fresh build, which reuses the cached
    packages; an older image serves when no new one can be built (no network, no apt)."""
    out_dir = pathlib.Path(out_dir) if out_dir else DEFAULT_DIR
    manifest = cached(out_dir)
    if manifest is not None and manifest.get("recipe") == RECIPE_VERSION:
        return _absolute(manifest, out_dir)
    try:
        return build(out_dir)
    except Exception as e:
        if manifest is not None:
            return _absolute(manifest, out_dir)
        raise ImageError(f"no Debian image in {out_dir} and building one failed: {e}") from None


def _absolute(manifest: dict, out_dir: pathlib.Path) -> dict:
    """`manifest` with its file names joined to `out_dir`."""
    m = dict(manifest)
    for key in ("kernel", "ramdisk", "system_map"):
        if m.get(key):
            m[key] = str(out_dir / m[key])
    return m
