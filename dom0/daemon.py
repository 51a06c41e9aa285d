"""The dom0 process: xenstored, the console backend and the toolstack API in one event loop.

Everything runs on one thread around xenstored's selector loop
(dom0.xenstored.unix_socket.SocketServer): the xenstore socket, the
toolstack socket, the console ptys, and the channel's event socket. Guest
rings are served when dom0 is kicked and, because a lost or absent event
must never hang a guest, on a periodic pass as well (POLL_SECONDS).
"""
from __future__ import annotations

import logging
import os
import signal
import time

from abi.xen import VIRQ_DOM_EXC
from dom0.block.blkback import BlockKind
from dom0.console.backend import ConsoleBackend, HypervisorLog
from dom0.net.grant_copy import ChannelGrantCopier
from dom0.net.netback import Network
from dom0.rundir import open_nofollow
from dom0.timeline import recorder
from dom0.toolstack.api import ApiServer
from dom0.toolstack.domains import Toolstack, ToolstackError
from dom0.toolstack.network import Vifs
from dom0.toy import ToyKind
from dom0.xapi.service import start_xapi
from dom0.xenbus import GrantMapper, XenbusBackends
from dom0.xenstored import LocalClient, XenStore
from dom0.xenstored.ring import RingServer
from dom0.xenstored.unix_socket import SocketServer
from pvguest.evtchn import EventChannelError, EventChannels
from pvguest.hypercall_channel import ChannelClosed

log = logging.getLogger("dom0")
# Rings are served when dom0 is kicked and toolstack, pty and uplink sockets wake the
# loop themselves: the periodic pass is a backstop against a lost event, and each pass
# costs every idle guest's host a wake-up, so it is not frequent.
POLL_SECONDS = 0.5
# The domains' state (shutdowns, console_io output): VIRQ_DOM_EXC brings a shutdown to
# the next loop turn at once, this is the fallback (and the console_io log's pace).
STATE_SECONDS = 1.0
BACKLOG_POLL_SECONDS = 0.05     # while frames wait for a full uplink socket (no writer watch)
SCRATCH_ADDR = 0        # dom0's pfn 0: argument buffers of its own hypercalls
GRANT_SCRATCH_ADDR = 4096   # dom0's pfn 1: the backends' grant map/unmap batches
NET_STAGING_PFN, NET_STAGING_PAGES = 64, 132    # netback's grant-copy ops and staging pages


class Dom0:
    def __init__(self, channel, run_dir: str):
        self.channel = channel
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.engine = XenStore()
        if recorder.enabled:            # the timeline's xenstored track (dom0.timeline)
            self.engine.request_observer = recorder
        self.rings = RingServer(self.engine)
        self.xs_server = SocketServer(self.engine, os.path.join(run_dir, "xenstored", "socket"),
                                      other_transports=[self.rings])
        self.xs = LocalClient(self.engine)
        self.evtchn = EventChannels(channel, SCRATCH_ADDR)
        self.consoles = ConsoleBackend(os.path.join(run_dir, "console"), self.add_reader,
                                       self.remove_reader)
        self.hypervisor_log = HypervisorLog(os.path.join(run_dir, "console"))
        # split-driver backends: a xenstore connection of their own (their watch events)
        self.network = Network(ChannelGrantCopier(channel, NET_STAGING_PFN, NET_STAGING_PAGES), run_dir,
                               self.add_reader, self.remove_reader)
        self.backends = XenbusBackends(LocalClient(self.engine), self.evtchn,
                                       GrantMapper(channel, GRANT_SCRATCH_ADDR),
                                       [BlockKind(os.path.join(run_dir, "block")), self.network.kind,
                                        ToyKind()])
        self.backends.on_release.append(self.network.released)
        self.toolstack = Toolstack(channel, self.xs, self.rings, self.consoles, self.evtchn, run_dir,
                                   backends=self.backends, vifs=Vifs(self.xs, self.backends, self.network))
        self.api = ApiServer(os.path.join(run_dir, "pvhyp.sock"), self.toolstack.commands(),
                             self.xs_server, user_errors=(ToolstackError,))
        # the XenAPI (and web console) over HTTP, if `pvhyp up` asked for it (dom0/xapi)
        self.xapi = start_xapi(run_dir, self.toolstack, self.xs_server, self.add_reader, self.remove_reader)
        # dom0's own channel stays watched whatever a guest's ring made its handler raise
        self.xs_server.add_reader(channel, self._on_event, on_failure=lambda: None)
        self.stopping = False
        self._next_state_check = 0.0
        # Xen raises VIRQ_DOM_EXC in dom0 when a domain shuts down or dies: react at once
        # rather than at the next periodic check (which stays, for hypervisors that do not).
        try:
            self.dom_exc_port: int | None = self.evtchn.bind_virq(VIRQ_DOM_EXC)
        except EventChannelError as e:
            log.info("no VIRQ_DOM_EXC (%s): domain state is polled only", e)
            self.dom_exc_port = None

    def add_reader(self, fileobj, callback) -> None:
        self.xs_server.add_reader(fileobj, callback)

    def remove_reader(self, fileobj) -> None:
        self.xs_server.unwatch(fileobj)

    def _on_event(self) -> None:
        try:
            self.channel.drain_events()
        except ChannelClosed:
            log.error("the hypervisor closed dom0's channel")
            self.stopping = True
            return
        ports = self.evtchn.take_pending()
        if self.dom_exc_port in ports:
            self._next_state_check = 0.0        # look at the domains on this loop turn
        self.backends.on_ports(ports)
        self._serve_rings()

    def _serve_rings(self) -> None:
        self.rings.flush()
        self.consoles.service_all()
        self.backends.poll()
        self.network.periodic()

    def _check_domains(self) -> None:
        try:
            self.toolstack.periodic()
            domids = [d["domid"] for d in self.channel.domain_info()["domains"]]
            self.hypervisor_log.poll(self.channel, domids)
        except ChannelClosed:
            log.error("the hypervisor closed dom0's channel")
            self.stopping = True

    def run(self) -> None:
        # Every step runs isolated (the loop's callbacks inside poll(), the passes here):
        # a failure is logged and the loop goes on, so no guest and no client ends dom0.
        isolate = self.xs_server.isolate
        while not self.stopping:
            self.xs_server.poll(BACKLOG_POLL_SECONDS if self.network.backlogged() else POLL_SECONDS)
            isolate("serving the rings", self._serve_rings)
            if self.xapi is not None:
                isolate("the XenAPI's tick", self.xapi.tick)
            now = time.monotonic()
            if now >= self._next_state_check:
                self._next_state_check = now + STATE_SECONDS
                isolate("the periodic domain check", self._check_domains)
        self.close()

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> None:
        try:
            self.toolstack.destroy_all()
        except Exception:
            log.exception("destroying guests on the way out")
        self.backends.close()
        self.network.close()
        self.api.close()
        if self.xapi is not None:
            self.xapi.close()
        self.xs_server.close()
        self.hypervisor_log.close()


def serve(channel, run_dir: str, ready_file: str | None = None) -> int:
    dom0 = Dom0(channel, run_dir)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: dom0.stop())
    if ready_file:
        # new (O_EXCL), never through a symlink planted where it goes (dom0.rundir)
        fd = open_nofollow(ready_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
    log.info("dom0 ready: toolstack %s, xenstored %s", dom0.api.path, dom0.xs_server.path)
    dom0.run()
    return 0
