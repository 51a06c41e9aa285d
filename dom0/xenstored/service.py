"""One-stop xenstored for dom0: the engine, the guest rings and the Unix
socket, served by a background thread.

    xs = XenStoreService(socket_path=f"{RUN_DIR}/xenstored/socket")
    xs.start()
    tools = xs.client()                       # dom0, in-process
    tools.mkdir("/local/domain/5")
    tools.set_perms("/local/domain/5", ["n5", "r0"])
    xs.introduce(5, ring_page, notify=lambda: evtchn_notify(port))
    ...                                       # guest kicks its event channel:
    xs.kick(5)
    xs.release(5)
    xs.stop()

Everything is thread-safe through ``engine.lock``; watch events caused by
any party reach sockets and rings without further calls.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from .client import LocalClient
from .control import Quotas
from .core import XenStore
from .ring import PageMapper, RingServer
from .unix_socket import SocketServer

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class XenStoreService:
    def __init__(self, socket_path: str, page_mapper: PageMapper | None = None,
                 quotas: Quotas | None = None, priv_domid: int | None = None) -> None:
        """``page_mapper(domid, gfn, port) -> (memoryview, notify)`` serves
        XS_INTRODUCE requests from socket clients (e.g. a C toolstack); the
        in-process toolstack calls ``introduce`` instead."""
        self.engine = XenStore(quotas, priv_domid=priv_domid)
        self.rings = RingServer(self.engine, page_mapper)
        self.socket = SocketServer(self.engine, socket_path, other_transports=[self.rings])
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.socket.serve_forever,
                                        name="xenstored", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.socket.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        else:
            self.socket.close()

    def client(self, domid: int = 0) -> LocalClient:
        return LocalClient(self.engine, domid)

    def introduce(self, domid: int, page: WriteableBuffer, notify: Callable[[], None],
                  gfn: int = 0, port: int = 0) -> int:
        return self.rings.introduce(domid, page, notify, gfn, port)

    def kick(self, domid: int) -> None:
        self.rings.kick(domid)

    def release(self, domid: int) -> None:
        self.rings.release(domid)

    def domain_shutdown(self, domid: int) -> None:
        """The hypervisor saw the domain shut down or crash."""
        with self.engine.lock:
            self.engine.mark_domain_shutdown(domid)
