"""xenstored for dom0: a sans-IO engine (core.XenStore) with a ring
transport for guests (ring.RingServer) and a Unix socket transport for
dom0 tools (unix_socket.SocketServer)."""

from .control import Quotas
from .core import Connection, XenStore
from .errors import XsError

__all__ = ["Connection", "Quotas", "XenStore", "XsError"]
