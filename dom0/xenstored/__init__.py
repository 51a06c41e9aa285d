"""xenstored for dom0: a sans-IO engine (core.XenStore) with a ring
transport for guests (ring.RingServer), a Unix socket transport for dom0
tools (unix_socket.SocketServer) and an in-process client for the toolstack
(client.LocalClient)."""

from .client import LocalClient
from .control import Quotas
from .core import Connection, XenStore
from .errors import XsError

__all__ = ["Connection", "LocalClient", "Quotas", "XenStore", "XsError"]
