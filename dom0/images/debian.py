"""`pvhyp image debian`: a Debian-like PV guest image from Debian's own packages.

The stock kernel (linux-image-amd64's dependency, 6.1.0-*-amd64) and
busybox-static are fetched with `apt-get download`, unpacked here in Python
(ar + tar, no dpkg), and turned into a kernel file and a gzip'd newc
initramfs whose /init mounts proc, sys and devtmpfs, loads the kernel's own
xen-blkfront, ext4 and xen-netfront modules for the Xen devices it has (by
modalias, with what they need, in the order kmod.load_order gives, by busybox
insmod; devices added later by a uevent listener), then either switches to the disk
named by root= on the kernel command line or prints the marker line with
`uname -r` and /sys/hypervisor/type and starts a shell on hvc0.
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

from dom0.images import cpio, debfile, kernel_symbols, kmod

KERNEL_META = "linux-image-amd64"
BUSYBOX = "busybox-static"
MARKER = "PVHYP-GUEST-UP"
# Bumped when what build() makes from the same packages changes (2: System.map from
# kallsyms; 4: the kernel's own block, ext4 and network modules, loaded by modalias, and
# root= switches to a disk; 5: and virtio's, for QEMU; 3 was a development build).
RECIPE_VERSION = 6
DEFAULT_DIR = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "pvhyp" / "debian"

# Which of the kernel's own modules a device needs, by the modalias its bus gives it
# (/sys/bus/*/devices/*/modalias, MODALIAS= in its uevent; patterns as in modules.alias),
# as udev would load them; a disk brings the filesystem its root is on. kmod.load_order
# adds what each needs (ext4: jbd2, mbcache, crc16, crc32c). The virtio entries are for
# QEMU, the benchmarks' peer, which boots this same initramfs with a virtio disk.
DEVICE_MODULES = {
    "xen:vbd": ("xen-blkfront", "ext4"),
    "xen:vif": ("xen-netfront",),
    "pci:v00001AF4d*": ("virtio_pci",),
    "virtio:d00000002v*": ("virtio_blk", "ext4"),
}
MODULE_ALIASES = "etc/modules.alias"    # in the initramfs: "PATTERN name:path ..." in load order
# The buses whose devices init looks at; virtio's devices appear once virtio_pci is in.
COLDPLUG_BUSES = ("xen", "pci", "virtio")
ROOT_WAIT_SECONDS = 120                 # blkfront connects through xenstore; the software CPU is slow

# load-modalias MODALIAS...: the modules of each device, each once (the coldplug loop
# and the hotplug listener may ask at the same moment; a mkdir lock orders them).
# The matching is the shell's own `case`, no process per device.
LOAD_MODALIAS = f"""#!/bin/busybox sh
release=$(uname -r)
until mkdir /.modules.lock 2>/dev/null; do usleep 100000; done
for modalias in "$@"; do
    while read -r pattern entries; do
        case "$modalias" in
            $pattern)
                for entry in $entries; do
                    [ -d "/sys/module/${{entry%%:*}}" ] || insmod "/lib/modules/$release/${{entry#*:}}" \\
                        || echo "pvhyp init: insmod ${{entry#*:}} failed"
                done ;;
        esac
    done < /{MODULE_ALIASES}
done
rmdir /.modules.lock
"""
HOTPLUG = """#!/bin/busybox sh
[ "$ACTION" = add ] && [ -n "$MODALIAS" ] && exec /sbin/load-modalias "$MODALIAS"
exit 0
"""

# One /init for both boots. Devices present at boot get their modules (coldplug by
# modalias), so a guest without disks boots as fast as it did without modules. Without
# root= on the command line it then listens for devices added later (busybox uevent,
# hotplug by modalias: block-attach works) and starts the busybox shell on hvc0
# (examples/debian.cfg); with root=/dev/xvda (as Xen users write it) it waits for the
# disk, mounts it as `ro`/`rw` says and switch_roots to its init.
_COLDPLUG_GLOBS = " ".join(f"/sys/bus/{bus}/devices/*/modalias" for bus in COLDPLUG_BUSES)
INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /root /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for pass in 1 2; do
    aliases=
    for file in {_COLDPLUG_GLOBS}; do
        [ -e "$file" ] && read -r modalias < "$file" && aliases="$aliases $modalias"
    done
    [ -n "$aliases" ] && /sbin/load-modalias $aliases
done
root=; rootfstype=ext4; rootmode=ro; rootflags=; init=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${{arg#root=}}" ;;
        rootfstype=*) rootfstype="${{arg#rootfstype=}}" ;;
        rootflags=*) rootflags=",${{arg#rootflags=}}" ;;
        init=*) init="${{arg#init=}}" ;;
        ro) rootmode=ro ;;
        rw) rootmode=rw ;;
    esac
done
if [ -n "$root" ]; then
    waited=0
    while true; do
        case "$root" in
            UUID=*|LABEL=*) device=$(findfs "$root" 2>/dev/null) ;;
            *) device="$root" ;;
        esac
        [ -b "$device" ] || [ $waited -ge {ROOT_WAIT_SECONDS} ] && break
        sleep 1; waited=$((waited + 1))
    done
    if [ -b "$device" ] && mount -t "$rootfstype" -o "$rootmode$rootflags" "$device" /newroot; then
        echo "pvhyp init: root $root mounted $rootmode, starting $init"
        mount -o move /dev /newroot/dev 2>/dev/null || umount /dev
        umount /sys /proc
        exec switch_root /newroot "$init"
    fi
    echo "pvhyp init: cannot mount root $root ($rootfstype, $rootmode); starting a shell"
fi
mount -t tmpfs tmpfs /tmp
uevent /sbin/hotplug &
echo "{MARKER} kernel=$(uname -r) hypervisor=$(cat /sys/hypervisor/type 2>/dev/null || echo none)"
cd /root
while true; do
    setsid cttyhack sh -l
done
"""
PROFILE = 'export PS1="pvhyp-guest# "\n'


class ImageError(Exception):
    """A clear one-line reason the image could not be built."""


def run_tool(cmd: list[str], *, missing: str = "", shown: int | None = None,
             **kw) -> subprocess.CompletedProcess:
    """Run a host tool of an image build; its failure is an ImageError in one line.

    `missing` follows "TOOL not found" (what the host lacks); `shown` limits the failed
    command quoted to its first words (long argument lists say nothing more).
    """
    try:
        return subprocess.run(cmd, check=True, text=True, **kw)
    except FileNotFoundError:
        raise ImageError(f"{cmd[0]} not found{missing}") from None
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or e.stdout or "").strip().splitlines()
        quoted = " ".join(cmd) if shown is None else " ".join(cmd[:shown]) + " ..."
        raise ImageError(f"`{quoted}` failed: {detail[-1] if detail else e.returncode}") from None


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return run_tool(cmd, missing=": building the Debian image needs apt (a Debian-like host)", **kw)


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


def build_initramfs(busybox: bytes, release: str = "",
                    device_modules: dict[str, list[tuple[str, str, bytes]]] | None = None) -> bytes:
    """The gzip'd newc initramfs: busybox, /init, and for each modalias the modules it
    needs ((name, path in the modules tree, contents), in load order) under
    lib/modules/`release`/, listed by modalias in MODULE_ALIASES."""
    w = cpio.CpioWriter()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "root", "etc", "usr", "usr/bin", "newroot"):
        w.directory(d)
    w.char_device("dev/console", 5, 1)
    w.char_device("dev/null", 1, 3, 0o666)
    w.char_device("dev/hvc0", 229, 0)
    w.file("bin/busybox", busybox, 0o755)
    w.symlink("bin/sh", "busybox")
    w.file("init", INIT_SCRIPT.encode(), 0o755)
    w.file("sbin/load-modalias", LOAD_MODALIAS.encode(), 0o755)
    w.file("sbin/hotplug", HOTPLUG.encode(), 0o755)
    # Linux answers the toolstack's control/shutdown by running /sbin/poweroff or /sbin/reboot
    # (orderly_poweroff); busybox's own applets would signal PID 1, which is /init's shell
    for command in ("poweroff", "reboot"):
        w.file(f"sbin/{command}", f"#!/bin/busybox sh\nexec /bin/busybox {command} -f\n".encode(), 0o755)
    w.file("etc/profile", PROFILE.encode())
    made: set[str] = set()
    aliases = []
    for alias, modules in (device_modules or {}).items():
        aliases.append(" ".join([alias] + [f"{name}:{path}" for name, path, _ in modules]) + "\n")
        for _, path, blob in modules:
            parts = f"lib/modules/{release}/{path}".split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    w.directory(directory)
            if "/".join(parts) not in made:
                made.add("/".join(parts))
                w.file("/".join(parts), blob)
    w.file(MODULE_ALIASES, "".join(aliases).encode())
    return gzip.compress(w.finish(), compresslevel=6, mtime=0)


def kernel_parts(kernel_deb: pathlib.Path, device_modules=None) -> dict:
    """vmlinuz, System.map (if real), release, and for each modalias of `device_modules`
    (default DEVICE_MODULES) the modules it names with everything they need, in load
    order, read from the kernel package in two streaming passes (the first learns
    every module's dependencies, the second keeps only the chosen)."""
    blob = kernel_deb.read_bytes()
    boot: dict[str, bytes] = {}
    described: list[kmod.ModuleInfo] = []
    try:
        for path, data in debfile.each_file(blob, lambda p: p.startswith(("/boot/", "/lib/modules/"))):
            if path.startswith(("/boot/vmlinuz-", "/boot/System.map-")):
                boot[path] = data
            elif path.endswith(".ko") and "/kernel/" in path:
                described.append(kmod.describe(path.split("/", 4)[4], data))
        vmlinuz_path = next((k for k in boot if "vmlinuz" in k), None)
        if vmlinuz_path is None:
            raise ImageError("the kernel package lacks /boot/vmlinuz-*")
        release = vmlinuz_path.split("vmlinuz-", 1)[1]
        index = kmod.ModuleIndex(described)
        orders = {alias: index.load_order(list(names))
                  for alias, names in (device_modules or DEVICE_MODULES).items()}
        chosen = {f"/lib/modules/{release}/{m.path}": m.path for order in orders.values() for m in order}
        blobs = {chosen[p]: data for p, data in debfile.each_file(blob, lambda p: p in chosen)}
    except debfile.DebError as e:
        raise ImageError(f"cannot unpack {kernel_deb.name}: {e}") from None
    except kmod.ModuleError as e:
        raise ImageError(f"kernel modules of {kernel_deb.name}: {e}") from None
    system_map = next((v for k, v in boot.items() if "System.map" in k), None)
    if system_map and b"The real System.map is in" in system_map[:200]:
        system_map = None           # Debian ships a placeholder; the real one is in the -dbg package
    return {"release": release, "vmlinuz": boot[vmlinuz_path], "system_map": system_map,
            "device_modules": {alias: [(m.name, m.path, blobs[m.path]) for m in order]
                               for alias, order in orders.items()}}


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
    kernel = kernel_parts(kernel_deb)
    try:
        busybox_files = debfile.extract(busybox_deb.read_bytes(), lambda p: p == "/bin/busybox")
    except debfile.DebError as e:
        raise ImageError(f"cannot unpack {busybox_deb.name}: {e}") from None
    if "/bin/busybox" not in busybox_files:
        raise ImageError(f"{busybox_deb.name} lacks /bin/busybox")
    release, vmlinuz, system_map = kernel["release"], kernel["vmlinuz"], kernel["system_map"]
    write_atomically(out_dir / "vmlinuz", vmlinuz)
    if system_map is None:
        try:
            system_map = kernel_symbols.system_map_from_kernel(vmlinuz)
        except kernel_symbols.SymbolsUnavailable as e:
            print(f"pvhyp image: no kernel symbols for diagnostics: {e}", file=sys.stderr)
    if system_map:
        write_atomically(out_dir / "System.map", system_map)
    write_atomically(out_dir / "initrd.img",
                     build_initramfs(busybox_files["/bin/busybox"], release, kernel["device_modules"]))
    manifest = {"release": release, "kernel": "vmlinuz", "ramdisk": "initrd.img",
                "system_map": "System.map" if system_map else None,
                "cmdline": "console=hvc0", "marker": MARKER, "sources": sources, "recipe": RECIPE_VERSION,
                "modules": {alias: [path for _, path, _ in modules]
                            for alias, modules in kernel["device_modules"].items()}}
    write_atomically(out_dir / "manifest.json", json.dumps(manifest, indent=1).encode())
    return _absolute(manifest, out_dir)


def write_atomically(path: pathlib.Path, data: bytes) -> None:
    """Replace `path` in one rename: the cache is shared, and a guest booting from it
    while another build rewrites it must read the old file or the new, never half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


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
