"""Acceptance across OS processes: a backend in a separate process (socket channel, memfd)
maps a page granted by an in-process frontend and answers its requests over an interdomain
event channel, woken through the channel's event socket."""
from __future__ import annotations

import os
import subprocess
import sys

from pvhyp.channel import create_process_domain
from pvhyp.channel_server import ChannelServer
from tests.evtchn.evtchn_kit import DATA_PAGE, ROOT_DIR

ROUNDS = 20
REF = 9

# The backend: only abi and the guest side of the channel, as a real guest process.
BACKEND = r"""
import sys
from abi import event_channel as EA, grant_table as GA, xen as X
from abi.xen import HYPERCALL_NUMBERS as NR
from pvguest.hypercall_channel import SocketChannel

def offset(st, name):
    off = 0
    for sub in st.subcons:
        if sub.name == name:
            return off
        off += sub.sizeof()

PENDING = offset(X.shared_info, "evtchn_pending")
front, ref, front_port, rounds = (int(x) for x in sys.argv[1:5])
ch = SocketChannel.from_env()
ARG = 0x1000

def call(name, cmd, struct, fields, count=None):
    base = dict(struct.parse(bytes(struct.sizeof())))
    base.update(fields)
    ch.memory[ARG:ARG + struct.sizeof()] = struct.build(base)
    args = (cmd, ARG) if count is None else (cmd, ARG, count)
    rc = ch.hypercall(NR[name], *args)
    return rc, struct.parse(bytes(ch.memory[ARG:ARG + struct.sizeof()]))

rc, out = call("grant_table_op", GA.GNTTABOP_map_grant_ref, GA.gnttab_map_grant_ref,
               {"dom": front, "ref": ref, "flags": GA.GNTMAP_host_map, "host_addr": 0x40000}, 1)
assert rc == 0 and out.status == GA.GNTST_okay, out
page = ch.map_machine_frame(out.dev_bus_addr >> 12)
handle = out.handle
rc, out = call("event_channel_op", EA.EVTCHNOP_bind_interdomain, EA.evtchn_bind_interdomain,
               {"remote_dom": front, "remote_port": front_port})
port = out.local_port

def pending():
    byte = ch.shared_info[PENDING + port // 8]
    return byte >> (port % 8) & 1

def clear():
    ch.shared_info[PENDING + port // 8] &= ~(1 << (port % 8)) & 0xFF

clear()
call("event_channel_op", EA.EVTCHNOP_send, EA.evtchn_send, {"port": port})
for _ in range(rounds):
    while not pending():
        assert ch.wait_for_event(10), "no event"
    clear()
    n = int.from_bytes(page[0:2], "little")
    reply = b"backend saw " + bytes(page[2:2 + n])
    page[2048:2050] = len(reply).to_bytes(2, "little")
    page[2050:2050 + len(reply)] = reply
    call("event_channel_op", EA.EVTCHNOP_send, EA.evtchn_send, {"port": port})
del page
rc, out = call("grant_table_op", GA.GNTTABOP_unmap_grant_ref, GA.gnttab_unmap_grant_ref,
               {"handle": handle, "host_addr": 0x40000}, 1)
assert rc == 0 and out.status == 0, out
print("backend done")
"""


def wait_pending(guest, port):
    while not guest.pending(port):
        assert guest.ch.wait_for_event(10), "frontend: no event"
    guest.clear_pending(port)


def test_backend_in_another_process(hv, a):
    server = ChannelServer(hv)
    try:
        back = create_process_domain(hv, 64)
        sock = server.attach(back)
        page = a.page(DATA_PAGE)
        a.grant(REF, back.domid, DATA_PAGE)
        port = a.alloc_unbound(back.domid)
        env = dict(os.environ, PVHYP_CHANNEL_FD=str(sock.fileno()),
                   PYTHONPATH=str(ROOT_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        child = subprocess.Popen([sys.executable, "-c", BACKEND, str(a.domid), str(REF), str(port), str(ROUNDS)],
                                 pass_fds=[sock.fileno()], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        sock.close()
        wait_pending(a, port)                                   # the backend connected
        for i in range(ROUNDS):
            msg = f"request {i}".encode()
            page[0:2] = len(msg).to_bytes(2, "little")
            page[2:2 + len(msg)] = msg
            assert a.send(port) == 0
            wait_pending(a, port)
            n = int.from_bytes(page[2048:2050], "little")
            assert bytes(page[2050:2050 + n]) == b"backend saw " + msg
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert "backend done" in out
        assert a.gstatus(REF) == 0
    finally:
        server.close()
