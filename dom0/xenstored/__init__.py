"""xenstored for dom0: a sans-IO engine (requests.XenStore) with a ring
transport for guests (ring.RingServer), a Unix socket transport for dom0
tools (unix_socket.SocketServer) and an in-process client for the toolstack
(client.LocalClient)."""

from .client import LocalClient
from .core import Connection
from .errors import XsError
from .quotas import Quotas
from .requests import XenStore

__all__ = ["Connection", "LocalClient", "Quotas", "XenStore", "XsError"]
