"""`pvhyp image debian [--dir DIR]`: build the Debian-like guest image."""
from __future__ import annotations

import pathlib

from pvhyp.cli.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("image", help="build a guest image from Debian packages")
    p.add_argument("recipe", choices=["debian"], help="which image")
    p.add_argument("--dir", type=pathlib.Path, default=None,
                   help="where the image goes (default ~/.cache/pvhyp/debian)")
    p.set_defaults(func=run)


def run(args) -> int:
    from dom0.images import debian
    try:
        m = debian.build(args.dir)
    except debian.ImageError as e:
        raise UserError(str(e)) from None   # ImageError's message is the whole story
    print(f"kernel:  {m['kernel']}  ({m['release']})")
    print(f"ramdisk: {m['ramdisk']}")
    if m.get("system_map"):
        print(f"symbols: {m['system_map']}")
    print(f"cmdline: {m['cmdline']}")
    return 0
