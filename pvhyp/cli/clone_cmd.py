"""`pvhyp clone CFG NEWNAME [--full] [--out PATH]`: a new guest from a template (dom0/images/clone.py)."""
from __future__ import annotations

import os

from pvhyp.cli.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("clone", help="make a new guest from a template config: copy-on-write disks or --full copies")
    p.add_argument("config", help="the template's xl config")
    p.add_argument("name", help="the new guest's name (also its host name)")
    p.add_argument("--full", action="store_true",
                   help="copy the disks completely (qemu-img convert) instead of qcow2 overlays on the template's")
    p.add_argument("--out", default=None,
                   help="the new config's path (default ./NAME.cfg); its disks go beside it")
    p.set_defaults(func=run)


def run(args) -> int:
    from dom0.images import clone
    try:
        made = clone.clone(args.config, args.name, full=args.full, out=args.out, cwd=os.getcwd())
    except clone.CloneError as e:
        raise UserError(str(e)) from None
    print(f"config: {made['config']}")
    for disk in made["disks"]:
        print(f"disk:   {disk}")
    print(f"uuid:   {made['uuid']}")
    for mac in made["macs"]:
        print(f"mac:    {mac}")
    return 0
