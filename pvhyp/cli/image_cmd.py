"""`pvhyp image debian [--dir DIR] [--rootfs [--size 2G] [--packages a,b]]`: build the Debian guest image."""
from __future__ import annotations

import pathlib

from pvhyp.cli.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("image", help="build a guest image from Debian packages")
    p.add_argument("recipe", choices=["debian"], help="which image")
    p.add_argument("--dir", type=pathlib.Path, default=None,
                   help="where the image goes (default ~/.cache/pvhyp/debian, with --rootfs "
                        "~/.cache/pvhyp/debian-rootfs)")
    p.add_argument("--rootfs", action="store_true",
                   help="a Debian 12 system on an ext4 disk image (mmdebstrap; systemd, login on hvc0)")
    p.add_argument("--size", default=None, help="with --rootfs: the disk's size (default 2G)")
    p.add_argument("--packages", default="", help="with --rootfs: more Debian packages, comma-separated")
    p.set_defaults(func=run)


def run(args) -> int:
    from dom0.images import debian
    if not args.rootfs and (args.size or args.packages):
        raise UserError("--size and --packages need --rootfs")
    try:
        if args.rootfs:
            return _rootfs(args)
        m = debian.build(args.dir)
    except debian.ImageError as e:
        raise UserError(str(e)) from None   # ImageError's message is the whole story
    print(f"kernel:  {m['kernel']}  ({m['release']})")
    print(f"ramdisk: {m['ramdisk']}")
    if m.get("system_map"):
        print(f"symbols: {m['system_map']}")
    print(f"cmdline: {m['cmdline']}")
    return 0


def _rootfs(args) -> int:
    from dom0.images import rootfs
    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    m = rootfs.build(args.dir, size=args.size or rootfs.DEFAULT_SIZE, packages=packages)
    print(f"disk:    {m['image']}  ({m['format']}, {m['size']}, Debian {rootfs.SUITE})")
    print(f"kernel:  {m['kernel']}  ({m['release']})")
    print(f"ramdisk: {m['ramdisk']}")
    print(f"cmdline: {m['cmdline']}")
    print(f"login:   root / {rootfs.ROOT_PASSWORD} on the console")
    return 0
