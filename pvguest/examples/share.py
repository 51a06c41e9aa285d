"""Two guests share a page: a grant for the memory, an interdomain event channel for the doorbell.

    kernel = "python:pvguest.examples.share:accept"     # first; opens data/inbox to everyone
    kernel = "python:pvguest.examples.share:offer"      # cmdline "peer=<accepter's domid> message=..."

The offerer grants the accepter a page holding its message, allocates an
unbound port for it and posts (domid, ref, port) in the accepter's inbox;
the accepter binds the port, maps the grant, writes its reply into the same
page and kicks; the offerer reads the reply. Each reports on its console.
"""
from __future__ import annotations

import time

MESSAGE_BYTES = 256


def _wait_port(kernel, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while port not in kernel.pending_ports:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no event on port {port}")
        kernel.wait(0.1)
    kernel.pending_ports.discard(port)


def accept(kernel, *args) -> None:
    xs = kernel.xenbus
    inbox = f"{xs.get_domain_path(kernel.domid)}/data/inbox"
    xs.mkdir(inbox)
    xs.set_perms(inbox, [f"b{kernel.domid}"])       # owner us; everyone else may read and write
    xs.watch(f"{inbox}/ready", "ready")
    while True:
        xs.read_watch()
        try:
            if xs.read(f"{inbox}/ready") == b"1":
                break
        except Exception:
            continue
    peer = int(xs.read(f"{inbox}/domid"))
    ref = int(xs.read(f"{inbox}/ref"))
    remote_port = int(xs.read(f"{inbox}/port"))
    port = kernel.evtchn.bind_interdomain(peer, remote_port)
    slot = kernel.pages.alloc() * 4096
    handle, shared = kernel.gnttab.map_grant_ref(peer, ref, slot)
    message = bytes(shared[:MESSAGE_BYTES]).split(b"\0", 1)[0].decode()
    kernel.console.write(f"accepter d{kernel.domid}: got {message!r} from d{peer} via grant {ref}\n")
    reply = f"re: {message}".encode()
    shared[MESSAGE_BYTES:MESSAGE_BYTES + len(reply) + 1] = reply + b"\0"
    kernel.gnttab.unmap_grant_ref(handle, slot)
    kernel.evtchn.send(port)
    xs.write(f"{xs.get_domain_path(kernel.domid)}/data/result", message)


def offer(kernel, *args) -> None:
    params = kernel.params
    peer = int(params["peer"])
    message = params.get("message", "hello-through-a-grant").encode()
    xs = kernel.xenbus
    pfn = kernel.pages.alloc()
    page = kernel.page(pfn)
    page[:len(message) + 1] = message + b"\0"
    ref = kernel.gnttab.grant_access(peer, pfn)
    port = kernel.evtchn.alloc_unbound(remote_dom=peer)
    inbox = f"{xs.get_domain_path(peer)}/data/inbox"
    xs.write(f"{inbox}/domid", str(kernel.domid))
    xs.write(f"{inbox}/ref", str(ref))
    xs.write(f"{inbox}/port", str(port))
    xs.write(f"{inbox}/ready", "1")
    _wait_port(kernel, port)
    reply = bytes(page[MESSAGE_BYTES:2 * MESSAGE_BYTES]).split(b"\0", 1)[0].decode()
    revoked = kernel.gnttab.end_access(ref)
    kernel.console.write(f"offerer d{kernel.domid}: reply {reply!r}, grant revoked: {revoked}\n")
    xs.write(f"{xs.get_domain_path(kernel.domid)}/data/result", reply)
