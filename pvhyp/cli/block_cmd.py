"""xl's disk hot plug: block-attach DOM SPEC, block-detach DOM VDEV, block-list DOM.

SPEC is xl's disk syntax (xl-disk-configuration(5)), e.g.
'format=qcow2, vdev=xvdb, access=rw, target=/path/disk.qcow2' or '/path,raw,xvdb,w'.
block-detach asks the guest's frontend to let go and waits for it, as xl
does; a frontend that does not answer within --timeout has the disk pulled.
"""
from __future__ import annotations

import os
import sys
import time

from pvhyp.cli.errors import UserError
from pvhyp.cli.up_cmd import add_run_dir
from pvhyp.cli.xl_cmd import _request


def attach(args) -> int:
    _request(args, "block-attach", dom=args.dom, spec=", ".join(args.spec), cwd=os.getcwd())
    return 0


def _vdevs(args) -> set[str]:
    return {d["vdev"] for d in _request(args, "block-list", dom=args.dom)["disks"]}


def detach(args) -> int:
    _request(args, "block-detach", dom=args.dom, vdev=args.vdev, force=args.force)
    deadline = time.monotonic() + args.timeout
    while args.vdev in _vdevs(args):
        if time.monotonic() > deadline:
            print(f"pvhyp: block-detach: the guest did not release {args.vdev} within "
                  f"{args.timeout:.0f}s; removing it", file=sys.stderr)
            try:
                _request(args, "block-detach", dom=args.dom, vdev=args.vdev, force=True)
            except UserError:
                pass        # it went meanwhile
            break
        time.sleep(0.1)
    return 0


def list_(args) -> int:
    disks = _request(args, "block-list", dom=args.dom)["disks"]
    print(f"{'Vdev':<8}{'Devid':>10}  {'State':<13}{'Mode':<5}{'Format':<8}{'Sectors':>12}  Target")
    for d in disks:
        print(f"{d.get('vdev', '?'):<8}{d['devid']:>10}  {d['state']:<13}{d.get('mode', '?'):<5}"
              f"{d.get('format', '?'):<8}{d.get('sectors', 0):>12}  {d.get('target', '')}"
              + (f"  ({d['error']})" if d.get("error") else ""))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("block-attach", help="hot plug a disk into a running domain (xl block-attach)")
    add_run_dir(p)
    p.add_argument("dom")
    p.add_argument("spec", nargs="+", help="xl disk spec, e.g. '/path/disk.img,raw,xvdb,w'")
    p.set_defaults(func=attach)
    p = sub.add_parser("block-detach", help="unplug a domain's disk (xl block-detach)")
    add_run_dir(p)
    p.add_argument("dom")
    p.add_argument("vdev", help="xvdb, ...")
    p.add_argument("--force", action="store_true", help="pull it without asking the guest")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the guest")
    p.set_defaults(func=detach)
    p = sub.add_parser("block-list", help="a domain's disks and their backend state (xl block-list)")
    add_run_dir(p)
    p.add_argument("dom")
    p.set_defaults(func=list_)
