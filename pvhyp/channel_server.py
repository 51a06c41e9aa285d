"""The socket hypercall channel, hypervisor side: process domains in other OS processes.

One Unix stream socket per process domain carries strict request/reply
frames; a second socket (sent to the client at connection time) carries one
byte per kick of the domain's vCPUs, so the client can select() on it. The
machine memfd travels with the greeting (SCM_RIGHTS): the client maps its own
contiguous frames and, after a check here, the frames it is allowed to map.

Wire format (little-endian), both directions: a header `<HHI` (op, flags=0,
payload length) then the payload. Both ends take every number and layout from
abi/pvhyp_channel.py (the client is pvguest/hypercall_channel.py).

  server -> client, once:  OP_HELLO  <HHIQQQQ domid, privileged, nr_pages, first_mfn,
                           machine_bytes, shared_info_mfn, reserved>  + fds [memfd, event socket]
  OP_HYPERCALL             <7Q nr, a1..a6>            -> <q result>
  OP_MAP_FOREIGN           <HHI domid, writable, n> + n*<Q pfn>   -> <q status> + n*<Q mfn>
  OP_MAP_MACHINE_FRAME     <QI mfn, writable>         -> <q status>
  OP_READCONSOLE           <HHIQ domid, 0, max, offset>  -> <qQ length|-errno, next offset> + bytes
  OP_CREATE_DOMAIN         <II nr_pages, max_vcpus>   -> <q domid|-errno>
  OP_CONNECT_DOMAIN        <I domid>                  -> <q status> + fd [a new channel socket]
  OP_DESTROY_DOMAIN        <I domid>                  -> <q status>
  OP_DOMAIN_INFO           <I domid or 0xFFFFFFFF>    -> <q status> + JSON {domains: [...], host: {...}}
  OP_INSPECT               <IHH16sQ domid, vcpu, verbose, view, va>  -> <q status> + JSON (pvhyp/introspect.py)
The reply op is the request op | OP_REPLY. MAP_FOREIGN and the last six
are privcmd-like (dom0's): each asks the policy (hv.xsm) the hook of the Xen
operation it stands for, and a refusal is its -EPERM:
  OP_MAP_FOREIGN      map_gmfn_foreign (pvhyp/channel.py's foreign_frames)
  OP_READCONSOLE      XEN_SYSCTL_readconsole: sysctl, then readconsole
  OP_CREATE_DOMAIN    domctl XEN_DOMCTL_createdomain
  OP_CONNECT_DOMAIN   domctl XEN_DOMCTL_setvcpucontext (vCPU 0 gets what runs it: the process)
  OP_DESTROY_DOMAIN   domctl XEN_DOMCTL_destroydomain
  OP_DOMAIN_INFO      XEN_SYSCTL_getdomaininfolist: sysctl, then getdomaininfo per domain
  OP_INSPECT          inspect_domain (XSM_PRIV, as the domctls that read a domain's internals)
OP_MAP_MACHINE_FRAME is no privileged op: any process domain maps its own
frames and the ones it holds a grant mapping of (hv.may_host_map); the right
comes from the grant, a mechanism check like Xen's page references.

The peer is never trusted: an unknown op, a short or oversized payload, or a
length that does not match closes the connection; nothing it sends can raise
out of this module. A handler exception other than a guest fault is a
hypervisor bug: the calling domain is crashed and the connection closed.
"""
from __future__ import annotations

import array
import json
import logging
import socket
import struct
import threading
import traceback
from typing import Callable

from abi import errno as xen_errno
from abi.domctl import XEN_DOMCTL_createdomain, XEN_DOMCTL_destroydomain, XEN_DOMCTL_setvcpucontext
from abi.pvhyp_channel import (  # the wire format both ends share
    ALL_DOMAINS,
    CREATE_DOMAIN,
    DOMID_ARG,
    HEADER,
    HELLO,
    HYPERCALL,
    INSPECT,
    MAP_FOREIGN,
    MAP_MACHINE_FRAME,
    MAX_PAYLOAD,
    MAX_READCONSOLE,
    OP_CONNECT_DOMAIN,
    OP_CREATE_DOMAIN,
    OP_DESTROY_DOMAIN,
    OP_DOMAIN_INFO,
    OP_HELLO,
    OP_HYPERCALL,
    OP_INSPECT,
    OP_MAP_FOREIGN,
    OP_MAP_MACHINE_FRAME,
    OP_READCONSOLE,
    OP_REPLY,
    READCONSOLE,
    READCONSOLE_RESULT,
    RESULT,
)
from abi.sched import SHUTDOWN_crash
from abi.sysctl import XEN_SYSCTL_getdomaininfolist, XEN_SYSCTL_readconsole
from pvhyp.channel import ChannelError, create_process_domain, foreign_frames
from pvhyp.domain import Domain
from pvhyp.hypercall_table import HypercallContext
from pvhyp.hypervisor import DOMID_FIRST_RESERVED
from pvhyp.introspect import InspectError, counters, inspect
from pvhyp.mm.frametable import DOMID_XEN, OutOfMemory

log = logging.getLogger("pvhyp.channel")


class BadFrame(Exception):
    """The peer broke the framing: the connection is closed."""


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send_frame(sock: socket.socket, op: int, payload: bytes = b"", fds=()) -> None:
    data = HEADER.pack(op, 0, len(payload)) + payload
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        data = data[sent:]
    if data:
        sock.sendall(data)


def _cpu_time_ns(d: Domain) -> int | None:
    """Time the domain's vCPUs spent running (runstate), for x86 domains; None for processes."""
    if not d.paging:
        return None
    sched = d.hv.sched
    return sum(sched.runstate_info(v)["time"][0] for v in d.vcpus if v.sched is not None)


def _domain_info(d: Domain) -> dict:
    return {
        "cpu_time_ns": _cpu_time_ns(d),
        "domid": d.domid, "name": d.name, "privileged": d.is_privileged,
        "process": not d.paging, "tot_pages": d.tot_pages, "max_pages": d.max_pages,
        "vcpus": len(d.vcpus), "online_vcpus": sum(1 for v in d.vcpus if v.online),
        "blocked": all(v.blocked for v in d.vcpus), "paused": d.pause_count > 0,
        "dying": d.is_dying, "shutdown": d.is_shut_down, "shutdown_reason": d.shutdown_reason,
        "handle": d.handle.hex(),
        "counters": counters(d),
    }


class Connection:
    """One process domain's channel: a thread reading requests and answering them in order."""

    def __init__(self, server: "ChannelServer", domain: Domain, sock: socket.socket):
        self.server = server
        self.hv = server.hv
        self.domain = domain
        self.sock = sock
        self.ctx = HypercallContext(domain.vcpus[0])
        self.event_ours, event_theirs = socket.socketpair()
        self.event_ours.setblocking(False)
        self.closed = False
        for v in domain.vcpus:
            v.wake_callback = self._kick
        first = domain.p2m[0] if domain.p2m else 0
        hello = HELLO.pack(domain.domid, int(domain.is_privileged), len(domain.p2m), first,
                           self.hv.memory.size, domain.shared_info_mfn, 0)
        send_frame(sock, OP_HELLO, hello, fds=[self.hv.memory.fd, event_theirs.fileno()])
        event_theirs.close()
        self.thread = threading.Thread(target=self._serve, name=f"channel-d{domain.domid}",
                                       daemon=True)

    def _kick(self, _vcpu) -> None:
        try:
            self.event_ours.send(b"!")
        except (BlockingIOError, OSError):
            pass    # a full socket already holds a wake-up; a closed one has no listener

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for v in self.domain.vcpus:
            if v.wake_callback == self._kick:
                v.wake_callback = None
        for s in (self.sock, self.event_ours):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    # --- the request loop ---

    def _serve(self) -> None:
        reason = "closed by the process"
        try:
            while not self.closed:
                op, payload = self._read_request()
                reply_payload, fds = self._handle(op, payload)
                send_frame(self.sock, op | OP_REPLY, reply_payload, fds)
                for fd in fds:
                    socket.close(fd)
        except (EOFError, ConnectionError):
            pass
        except BadFrame as e:
            reason = f"malformed frame: {e}"
            log.warning("d%d channel: %s", self.domain.domid, e)
        except OSError as e:
            reason = f"socket error: {e}"
        except Exception:   # a hypervisor bug: the calling domain pays, never the hypervisor
            reason = "hypervisor bug while serving it"
            log.error("d%d channel: %s", self.domain.domid, traceback.format_exc())
            self.domain.shutdown(SHUTDOWN_crash)
        if not self.closed:
            self.close()
            self.server._disconnected(self, reason)

    def _read_request(self) -> tuple[int, bytes]:
        op, flags, length = HEADER.unpack(recv_exact(self.sock, HEADER.size))
        if flags or length > MAX_PAYLOAD:
            raise BadFrame(f"op {op:#x} flags {flags:#x} length {length}")
        return op, recv_exact(self.sock, length)

    def _handle(self, op: int, payload: bytes) -> tuple[bytes, list[int]]:
        handler = self._HANDLERS.get(op)
        if handler is None:
            raise BadFrame(f"unknown op {op:#x}")
        fixed = self._FIXED_SIZES.get(op)
        if fixed is not None and len(payload) != fixed:
            raise BadFrame(f"op {op:#x} payload of {len(payload)} bytes, expected {fixed}")
        return handler(self, payload)

    def _op_hypercall(self, payload: bytes):
        nr, *args = HYPERCALL.unpack(payload)
        if self.domain.is_dying:
            return RESULT.pack(-xen_errno.ESRCH), []
        result = self.hv.hypercalls.dispatch(self.ctx, nr, args)
        return RESULT.pack(result), []

    def _op_map_foreign(self, payload: bytes):
        if len(payload) < MAP_FOREIGN.size:
            raise BadFrame("short map_foreign")
        domid, writable, count = MAP_FOREIGN.unpack_from(payload)
        if len(payload) != MAP_FOREIGN.size + 8 * count:
            raise BadFrame("map_foreign count does not match its payload")
        pfns = struct.unpack_from(f"<{count}Q", payload, MAP_FOREIGN.size)
        try:
            mfns = foreign_frames(self.hv, self.domain, domid, pfns, bool(writable))
        except ChannelError as e:
            return RESULT.pack(-e.errno), []
        return RESULT.pack(0) + struct.pack(f"<{count}Q", *mfns), []

    def _op_map_machine_frame(self, payload: bytes):
        mfn, writable = MAP_MACHINE_FRAME.unpack(payload)
        if (not self.hv.memory.valid_mfn(mfn) or self.hv.frames.owner[mfn] == DOMID_XEN
                or not self.hv.may_host_map(self.domain, mfn, bool(writable))):
            return RESULT.pack(-xen_errno.EPERM), []
        return RESULT.pack(0), []

    def _op_readconsole(self, payload: bytes):
        domid, _, max_bytes, offset = READCONSOLE.unpack(payload)
        xsm = self.hv.xsm
        rc = xsm.sysctl(self.domain, XEN_SYSCTL_readconsole) or xsm.readconsole(self.domain, 0)
        if rc:
            return RESULT.pack(rc), []
        target = self.hv.get_domain(domid)
        console = target.console if target is not None else None
        if console is None:
            return READCONSOLE_RESULT.pack(-xen_errno.ESRCH, 0), []
        data, next_offset = console.read(offset, min(max_bytes, MAX_READCONSOLE))
        return READCONSOLE_RESULT.pack(len(data), next_offset) + data, []

    def _op_create_domain(self, payload: bytes):
        nr_pages, max_vcpus = CREATE_DOMAIN.unpack(payload)
        rc = self.hv.xsm.domctl(self.domain, None, XEN_DOMCTL_createdomain)
        if rc:
            return RESULT.pack(rc), []
        if nr_pages < 1 or not 1 <= max_vcpus <= 128:
            return RESULT.pack(-xen_errno.EINVAL), []
        if nr_pages > self.hv.frames.free_frames:      # as Xen's allocator: more than there is
            return RESULT.pack(-xen_errno.ENOMEM), []
        try:
            d = create_process_domain(self.hv, nr_pages, max_vcpus=max_vcpus,
                                      domid=self.server.next_free_domid())
        except (OutOfMemory, ValueError) as e:     # no (contiguous) memory or no free domain id
            log.warning("creating a process domain of %d pages failed: %s", nr_pages, e)
            return RESULT.pack(-xen_errno.ENOMEM), []
        return RESULT.pack(d.domid), []

    def _op_connect_domain(self, payload: bytes):
        (domid,) = DOMID_ARG.unpack(payload)
        target = self.hv.get_domain(domid)
        rc = self.hv.xsm.domctl(self.domain, target, XEN_DOMCTL_setvcpucontext)
        if rc:
            return RESULT.pack(rc), []
        if target is None or target.is_dying:
            return RESULT.pack(-xen_errno.ESRCH), []
        if target.paging or target.is_privileged:
            return RESULT.pack(-xen_errno.EINVAL), []
        if self.server.connection_of(domid) is not None:
            return RESULT.pack(-xen_errno.EEXIST), []
        theirs = self.server.attach(target)
        return RESULT.pack(0), [theirs.detach()]

    def _op_destroy_domain(self, payload: bytes):
        (domid,) = DOMID_ARG.unpack(payload)
        rc = self.hv.xsm.domctl(self.domain, self.hv.get_domain(domid), XEN_DOMCTL_destroydomain)
        if rc:
            return RESULT.pack(rc), []
        if domid == self.domain.domid:
            return RESULT.pack(-xen_errno.EINVAL), []
        rc = self.server.destroy_domain(domid)
        return RESULT.pack(rc), []

    def _op_domain_info(self, payload: bytes):
        (domid,) = DOMID_ARG.unpack(payload)
        # The list, as XEN_SYSCTL_getdomaininfolist: one domain is the list filtered (not
        # XEN_DOMCTL_getdomaininfo, whose XS_PRIV would also answer a xenstore domain: the
        # channel's domain info has only ever been the privileged domain's).
        rc = self.hv.xsm.sysctl(self.domain, XEN_SYSCTL_getdomaininfolist)
        if rc:
            return RESULT.pack(rc), []
        with self.hv.lock:
            domains = list(self.hv.domains.values())
        if domid != ALL_DOMAINS:
            domains = [d for d in domains if d.domid == domid]
        domains = [d for d in domains if not self.hv.xsm.getdomaininfo(self.domain, d)]
        if domid != ALL_DOMAINS and not domains:
            return RESULT.pack(-xen_errno.ESRCH), []
        info = {"domains": [_domain_info(d) for d in sorted(domains, key=lambda d: d.domid)],
                "host": {"total_pages": self.hv.frames.nr_frames,
                         "free_pages": self.hv.frames.free_frames,
                         "nr_domains": len(self.hv.domains)}}
        return RESULT.pack(0) + json.dumps(info).encode(), []

    def _op_inspect(self, payload: bytes):
        domid, vcpu, verbose, raw_view, va = INSPECT.unpack(payload)
        target = self.hv.get_domain(domid)
        rc = self.hv.xsm.inspect_domain(self.domain, target)
        if rc:
            return RESULT.pack(rc), []
        if target is None:
            return RESULT.pack(-xen_errno.ESRCH), []
        view = raw_view.rstrip(b"\0").decode("ascii", "replace")
        try:
            reply = json.dumps(inspect(target, view, va, vcpu, bool(verbose))).encode()
        except InspectError as e:
            return RESULT.pack(-e.errno), []
        if len(reply) > MAX_PAYLOAD - RESULT.size:     # the views bound their lists; a guard all the same
            return RESULT.pack(-xen_errno.ENOBUFS), []
        return RESULT.pack(0) + reply, []

    _HANDLERS = {
        OP_HYPERCALL: _op_hypercall,
        OP_MAP_FOREIGN: _op_map_foreign,
        OP_MAP_MACHINE_FRAME: _op_map_machine_frame,
        OP_READCONSOLE: _op_readconsole,
        OP_CREATE_DOMAIN: _op_create_domain,
        OP_CONNECT_DOMAIN: _op_connect_domain,
        OP_DESTROY_DOMAIN: _op_destroy_domain,
        OP_DOMAIN_INFO: _op_domain_info,
        OP_INSPECT: _op_inspect,
    }
    _FIXED_SIZES = {
        OP_HYPERCALL: HYPERCALL.size, OP_MAP_MACHINE_FRAME: MAP_MACHINE_FRAME.size,
        OP_READCONSOLE: READCONSOLE.size, OP_CREATE_DOMAIN: CREATE_DOMAIN.size,
        OP_CONNECT_DOMAIN: DOMID_ARG.size, OP_DESTROY_DOMAIN: DOMID_ARG.size,
        OP_DOMAIN_INFO: DOMID_ARG.size, OP_INSPECT: INSPECT.size,
    }


class ChannelServer:
    """Serves the channels of every process domain that lives in another OS process."""

    def __init__(self, hv, on_disconnect: Callable[[Domain, str], None] | None = None):
        self.hv = hv
        self.on_disconnect = on_disconnect
        self._connections: dict[int, Connection] = {}
        self._lock = threading.Lock()
        self._rover = 0
        hv.domain_destroy_hooks.append(self._domain_destroyed)

    def attach(self, domain: Domain) -> socket.socket:
        """Start serving `domain`; returns the client's end of its channel socket."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            if domain.domid in self._connections:
                ours.close()
                theirs.close()
                raise ValueError(f"d{domain.domid} already has a channel")
            conn = Connection(self, domain, ours)
            self._connections[domain.domid] = conn
        conn.thread.start()
        return theirs

    def next_free_domid(self) -> int:
        """Xen's createdomain rover: ids go up from the last one handed out, wrapping below
        DOMID_FIRST_RESERVED, so a restarted guest does not reuse the id it just left."""
        with self.hv.lock:
            domid = self._rover
            for _ in range(DOMID_FIRST_RESERVED):
                domid = domid + 1 if domid + 1 < DOMID_FIRST_RESERVED else 1
                if domid not in self.hv.domains:
                    self._rover = domid
                    return domid
        raise ValueError("no free domain id")

    def connection_of(self, domid: int) -> Connection | None:
        with self._lock:
            return self._connections.get(domid)

    def destroy_domain(self, domid: int) -> int:
        d = self.hv.get_domain(domid)
        if d is None:
            return -xen_errno.ESRCH
        if d.is_privileged:     # the host's own domain, never a guest: not the caller's rights
            return -xen_errno.EPERM
        try:
            self.hv.destroy_domain(domid)
        except KeyError:
            return -xen_errno.ESRCH
        return 0

    def _domain_destroyed(self, domain: Domain) -> None:
        with self._lock:
            conn = self._connections.pop(domain.domid, None)
        if conn is not None:
            conn.close()

    def _disconnected(self, conn: Connection, reason: str) -> None:
        with self._lock:
            if self._connections.get(conn.domain.domid) is conn:
                del self._connections[conn.domain.domid]
        d = conn.domain
        if not d.is_privileged and not d.is_shut_down and not d.is_dying:
            # The guest's "CPU" is gone: to the rest of the system it crashed.
            d.shutdown(SHUTDOWN_crash)
        if self.on_disconnect is not None:
            self.on_disconnect(d, reason)

    def close(self) -> None:
        with self._lock:
            conns = list(self._connections.values())
            self._connections.clear()
        for conn in conns:
            conn.close()
