"""xen/include/public/io/xs_wire.h: the xenstore wire protocol.

Every xenstore message, on the shared ring page as on the Unix socket, is an
``xsd_sockmsg`` header followed by ``len`` payload bytes.  Payloads are made of
NUL-terminated strings; replies echo ``req_id`` and ``tx_id`` of the request.
A failed request is answered with an ``XS_ERROR`` message whose payload is the
errno *name* ("ENOENT\\0"), looked up in ``xsd_errors``.

Numbers verified against Debian 12's /usr/include/xen/io/xs_wire.h (Xen 4.17).
"""

from construct import Bytes, Int32ul, Struct

# --- enum xsd_sockmsg_type -------------------------------------------------
# Request payload -> reply payload, as xenstored implements them
# (strings are NUL-terminated unless said otherwise).

XS_CONTROL = 0  # "<cmd>\0<arg>\0..." -> command output text; privileged only
XS_DEBUG = XS_CONTROL  # historical alias
XS_DIRECTORY = 1  # "<path>\0" -> child names, each NUL-terminated
XS_READ = 2  # "<path>\0" -> node value, raw bytes, no trailing NUL
XS_GET_PERMS = 3  # "<path>\0" -> perm strings ("<flag><domid>\0")*
XS_WATCH = 4  # "<path>\0<token>\0" -> "OK\0"; then a first event fires
XS_UNWATCH = 5  # "<path>\0<token>\0" -> "OK\0"
XS_TRANSACTION_START = 6  # "\0" -> "<tx id in decimal>\0"
XS_TRANSACTION_END = 7  # "T\0" commit or "F\0" abort -> "OK\0" (EAGAIN on conflict)
XS_INTRODUCE = 8  # "<domid>\0<gfn>\0<evtchn port>\0" -> "OK\0"; dom0 only
XS_RELEASE = 9  # "<domid>\0" -> "OK\0"; dom0 only
XS_GET_DOMAIN_PATH = 10  # "<domid>\0" -> "/local/domain/<domid>\0"
XS_WRITE = 11  # "<path>\0<value bytes, no NUL>" -> "OK\0"
XS_MKDIR = 12  # "<path>\0" -> "OK\0" (no error if it exists)
XS_RM = 13  # "<path>\0" -> "OK\0" (removes the whole subtree)
XS_SET_PERMS = 14  # "<path>\0<perm>\0<perm>\0..." -> "OK\0"
XS_WATCH_EVENT = 15  # server -> client only: "<path>\0<token>\0", req_id 0
XS_ERROR = 16  # reply only: "<errno name>\0"
XS_IS_DOMAIN_INTRODUCED = 17  # "<domid>\0" -> "T\0" or "F\0"
XS_RESUME = 18  # "<domid>\0" -> "OK\0"; clears the domain's shutdown flag
XS_SET_TARGET = 19  # "<domid>\0<target domid>\0" -> "OK\0"; domid acts as target
# 20 was XS_RESTRICT; removed from the protocol, never reuse it.
XS_RESET_WATCHES = 21  # "\0" -> "OK\0"; drops the caller's watches and transactions
XS_DIRECTORY_PART = 22  # "<path>\0<offset>\0" -> "<generation>\0" + children + "\0"
XS_TYPE_COUNT = 23  # number of valid types (not a message)
XS_INVALID = 0xFFFF  # guaranteed never to be a valid type

# Values for the optional third string of an XS_WRITE (legacy, ignored by 4.17).
XS_WRITE_NONE = "NONE"
XS_WRITE_CREATE = "CREATE"
XS_WRITE_CREATE_EXCL = "CREATE|EXCL"

# enum xs_watch_type: field order in an XS_WATCH_EVENT payload.
XS_WATCH_PATH = 0
XS_WATCH_TOKEN = 1

# --- struct xsd_errors xsd_errors[] ----------------------------------------
# (errnum, errstring) in header order; the numbers are Linux errno values,
# which is what the header's XSD_ERROR(x) expands to on a Linux build.
# New entries are only ever appended.
xsd_errors = (
    (22, "EINVAL"),
    (13, "EACCES"),
    (17, "EEXIST"),
    (21, "EISDIR"),
    (2, "ENOENT"),
    (12, "ENOMEM"),
    (28, "ENOSPC"),
    (5, "EIO"),
    (39, "ENOTEMPTY"),
    (38, "ENOSYS"),
    (30, "EROFS"),
    (16, "EBUSY"),
    (11, "EAGAIN"),
    (106, "EISCONN"),
    (7, "E2BIG"),
    (1, "EPERM"),
)
XSD_ERROR_NUMBER = {name: number for number, name in xsd_errors}
XSD_ERROR_NAME = {number: name for number, name in xsd_errors}

# --- struct xsd_sockmsg ----------------------------------------------------
xsd_sockmsg = Struct(
    "type" / Int32ul,  # XS_*
    "req_id" / Int32ul,  # echoed in the reply
    "tx_id" / Int32ul,  # 0 when outside a transaction
    "len" / Int32ul,  # payload bytes following the header
)
XSD_SOCKMSG_SIZE = 16

# --- shared ring page --------------------------------------------------------
XENSTORE_RING_SIZE = 1024


def MASK_XENSTORE_IDX(idx: int) -> int:
    """Offset in a ring of a free-running 32-bit index."""
    return idx & (XENSTORE_RING_SIZE - 1)


xenstore_domain_interface = Struct(
    "req" / Bytes(XENSTORE_RING_SIZE),  # guest -> xenstored
    "rsp" / Bytes(XENSTORE_RING_SIZE),  # xenstored -> guest (replies, watch events)
    "req_cons" / Int32ul,
    "req_prod" / Int32ul,
    "rsp_cons" / Int32ul,
    "rsp_prod" / Int32ul,
    "server_features" / Int32ul,  # XENSTORE_SERVER_FEATURE_* bitmap
    "connection" / Int32ul,  # XENSTORE_CONNECTED / XENSTORE_RECONNECT
    "error" / Int32ul,  # XENSTORE_ERROR_*
)

# Limits.  Exceeding PAYLOAD_MAX is a protocol violation; the path limits
# only earn an error reply.
XENSTORE_PAYLOAD_MAX = 4096
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2

XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3

# Byte offsets of the ring-page fields, for code that works on a raw
# memoryview of a guest page rather than parsing the whole struct.
XENSTORE_REQ_OFFSET = 0
XENSTORE_RSP_OFFSET = XENSTORE_RING_SIZE
XENSTORE_REQ_CONS_OFFSET = 2 * XENSTORE_RING_SIZE
XENSTORE_REQ_PROD_OFFSET = XENSTORE_REQ_CONS_OFFSET + 4
XENSTORE_RSP_CONS_OFFSET = XENSTORE_REQ_CONS_OFFSET + 8
XENSTORE_RSP_PROD_OFFSET = XENSTORE_REQ_CONS_OFFSET + 12
XENSTORE_SERVER_FEATURES_OFFSET = XENSTORE_REQ_CONS_OFFSET + 16
XENSTORE_CONNECTION_OFFSET = XENSTORE_REQ_CONS_OFFSET + 20
XENSTORE_ERROR_OFFSET = XENSTORE_REQ_CONS_OFFSET + 24
XENSTORE_DOMAIN_INTERFACE_SIZE = XENSTORE_REQ_CONS_OFFSET + 28

assert xsd_sockmsg.sizeof() == XSD_SOCKMSG_SIZE
assert xenstore_domain_interface.sizeof() == XENSTORE_DOMAIN_INTERFACE_SIZE
