"""xl's network hot plug: network-attach DOM SPEC, network-detach DOM DEVID|MAC, network-list DOM."""
from __future__ import annotations

from pvhyp.cli.up_cmd import add_run_dir
from pvhyp.cli.xl_cmd import _request


def attach(args) -> int:
    _request(args, "network-attach", dom=args.dom, spec=",".join(args.spec))
    return 0


def detach(args) -> int:
    _request(args, "network-detach", dom=args.dom, which=args.which)
    return 0


def list_(args) -> int:
    print(f"{'Idx':<4}{'BE':>3} {'Mac Addr.':<18}{'State':<14}{'Bridge':<10}{'TX pkts':>9}{'RX pkts':>9}"
          f"{'Drops':>7}")
    for dom in args.doms:
        for vif in _request(args, "network-list", dom=dom)["vifs"]:
            c = vif.get("counters", {})
            drops = c.get("rx_dropped", 0) + c.get("tx_dropped", 0) + c.get("tx_errors", 0)
            print(f"{vif['devid']:<4}{0:>3} {vif['mac']:<18}{vif['state']:<14}{vif['bridge']:<10}"
                  f"{c.get('tx_packets', 0):>9}{c.get('rx_packets', 0):>9}{drops:>7}")
            if vif.get("error"):
                print(f"    error: {vif['error']}")
            uplink = vif.get("uplink")
            if uplink:
                print(f"    passt uplink: {uplink['allowed']} frames out, {uplink['dropped']} dropped by the guard"
                      + (f"; {uplink['down']}" if uplink.get("down") else ""))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("network-attach", help="give a running domain a vif (xl network-attach)")
    add_run_dir(p)
    p.add_argument("dom")
    p.add_argument("spec", nargs="+", metavar="KEY=VALUE",
                   help="xl vif keys, e.g. mac=00:16:3e:01:02:03 bridge=xenbr0 forward=tcp:127.0.0.1:8080:80")
    p.set_defaults(func=attach)
    p = sub.add_parser("network-detach", help="remove a vif from a domain (xl network-detach)")
    add_run_dir(p)
    p.add_argument("dom")
    p.add_argument("which", metavar="DEVID|MAC")
    p.set_defaults(func=detach)
    p = sub.add_parser("network-list", help="a domain's vifs (xl network-list)")
    add_run_dir(p)
    p.add_argument("doms", nargs="+", metavar="DOM")
    p.set_defaults(func=list_)
