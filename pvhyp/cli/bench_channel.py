"""Hypercall round trips over the socket channel (a separate process) and in-process, and map_foreign."""
from __future__ import annotations

import os
import subprocess
import time

from pvguest.spawn import python_command, python_env

DESCRIPTION = "hypercall latency over the socket channel vs in-process; map_foreign latency"

_CHILD = r"""
import sys, time
from pvguest.hypercall_channel import SocketChannel
ch = SocketChannel.from_env()
nr, count = int(sys.argv[1]), int(sys.argv[2])
ch.hypercall(nr, 0, 0)
t = time.perf_counter()
for _ in range(count):
    ch.hypercall(nr, 0, 0)
hc = (time.perf_counter() - t) / count
maps = 0.0
if ch.is_privileged:
    domid = int(sys.argv[3])
    t = time.perf_counter()
    for _ in range(count // 10):
        ch.map_foreign(domid, [0])
    maps = (time.perf_counter() - t) / (count // 10)
print(hc, maps)
"""


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=20000, help="hypercalls per measurement")


def run(args) -> int:
    from abi.xen import HYPERCALL_NUMBERS
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.channel_server import ChannelServer
    from pvhyp.host import build_hypervisor

    hv = build_hypervisor(64, cpu=False)
    nr = HYPERCALL_NUMBERS["xen_version"]       # XENVER_version: the cheapest real hypercall
    server = ChannelServer(hv)
    dom0 = create_process_domain(hv, 16, privileged=True, domid=0)
    guest = create_process_domain(hv, 16)

    local = InProcessChannel(hv, guest)
    t = time.perf_counter()
    for _ in range(args.count):
        local.hypercall(nr, 0, 0)
    in_process = (time.perf_counter() - t) / args.count

    sock = server.attach(dom0)
    env = dict(os.environ, PVHYP_CHANNEL_FD=str(sock.fileno()))
    out = subprocess.run(python_command(["-c", _CHILD, str(nr), str(args.count), str(guest.domid)]),
                         pass_fds=[sock.fileno()], env=python_env(env), capture_output=True, text=True, check=True)
    sock.close()
    socket_hc, map_foreign = (float(x) for x in out.stdout.split())
    server.close()
    print(f"hypercall_in_process: {in_process * 1e6:.1f} us")
    print(f"hypercall_socket_channel: {socket_hc * 1e6:.1f} us")
    print(f"hypercalls_per_second_socket_channel: {1 / socket_hc:.0f} /s")
    print(f"map_foreign_one_page: {map_foreign * 1e6:.1f} us")
    return 0
