"""xen/include/public/io/netif.h: the PV network device protocol.

Two rings.  On TX the frontend grants packet fragments (netif_tx_request,
one per slot, NETTXF_more_data chaining a packet's slots, extra_info slots
for GSO); the backend copies them out and answers netif_tx_response.  On RX
the frontend posts empty granted pages (netif_rx_request) and the backend
fills them, answering netif_rx_response with the length in ``status``.
A third, optional control ring configures hashing.
"""

from construct import Struct

from abi import grant_table
from abi.cdefs import CUnion, int16_t, uint8_t, uint16_t, uint32_t
from abi.io import ring

grant_ref_t = grant_table.grant_ref_t

XEN_NETIF_NR_SLOTS_MIN = 18  # a backend must accept packets of at least this many slots

# --- control ring --------------------------------------------------------------------
_XEN_NETIF_CTRL_HASH_TYPE_IPV4 = 0
XEN_NETIF_CTRL_HASH_TYPE_IPV4 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4
_XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP = 1
XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP
_XEN_NETIF_CTRL_HASH_TYPE_IPV6 = 2
XEN_NETIF_CTRL_HASH_TYPE_IPV6 = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6
_XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP = 3
XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP = 1 << _XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP
XEN_NETIF_CTRL_HASH_ALGORITHM_NONE = 0
XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ = 1

XEN_NETIF_CTRL_TYPE_INVALID = 0
XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS = 1
XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS = 2
XEN_NETIF_CTRL_TYPE_SET_HASH_KEY = 3
XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE = 4
XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE = 5
XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING = 6
XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM = 7
XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE = 8
XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING = 9
XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING = 10

xen_netif_ctrl_request = Struct(
    "id" / uint16_t * "echoed in the response",
    "type" / uint16_t * "XEN_NETIF_CTRL_TYPE_*",
    "data" / uint32_t[3] * "type-specific arguments",
)
xen_netif_ctrl_request.docs = "Control ring request."

XEN_NETIF_CTRL_STATUS_SUCCESS = 0
XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED = 1
XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER = 2
XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW = 3

xen_netif_ctrl_response = Struct(
    "id" / uint16_t,
    "type" / uint16_t,
    "status" / uint32_t * "XEN_NETIF_CTRL_STATUS_*",
    "data" / uint32_t * "type-specific result",
)
xen_netif_ctrl_response.docs = "Control ring response."

_XEN_NETIF_CTRLF_GREF_readonly = 0
XEN_NETIF_CTRLF_GREF_readonly = 1 << _XEN_NETIF_CTRLF_GREF_readonly

xen_netif_gref = Struct(
    "ref" / grant_ref_t,
    "flags" / uint16_t * "XEN_NETIF_CTRLF_GREF_*",
    "status" / uint16_t * "OUT: XEN_NETIF_CTRL_STATUS_*",
)
xen_netif_gref.docs = "One grant of an ADD/DEL_GREF_MAPPING control request."

xen_netif_ctrl_sring_entry, xen_netif_ctrl_sring = ring.DEFINE_RING_TYPES(
    xen_netif_ctrl_request, xen_netif_ctrl_response)

# --- transmit ------------------------------------------------------------------------------
_NETTXF_csum_blank = 0
NETTXF_csum_blank = 1 << _NETTXF_csum_blank  # checksum to be filled in
_NETTXF_data_validated = 1
NETTXF_data_validated = 1 << _NETTXF_data_validated
_NETTXF_more_data = 2
NETTXF_more_data = 1 << _NETTXF_more_data  # the packet continues in the next slot
_NETTXF_extra_info = 3
NETTXF_extra_info = 1 << _NETTXF_extra_info  # a netif_extra_info slot follows

XEN_NETIF_MAX_TX_SIZE = 0xFFFF

netif_tx_request = Struct(
    "gref" / grant_ref_t * "page holding the fragment",
    "offset" / uint16_t * "fragment's offset in it",
    "flags" / uint16_t * "NETTXF_*",
    "id" / uint16_t * "echoed in the response",
    "size" / uint16_t * "first slot: whole packet size; others: fragment size",
)
netif_tx_request.docs = "Frontend -> backend: one fragment of a packet to send."

XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5

_XEN_NETIF_EXTRA_FLAG_MORE = 0
XEN_NETIF_EXTRA_FLAG_MORE = 1 << _XEN_NETIF_EXTRA_FLAG_MORE  # another extra slot follows

XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

netif_extra_info = Struct(
    "type" / uint8_t * "XEN_NETIF_EXTRA_TYPE_*",
    "flags" / uint8_t * "XEN_NETIF_EXTRA_FLAG_*",
    "u" / CUnion(
        "gso" / Struct(
            "size" / uint16_t * "MSS",
            "type" / uint8_t * "XEN_NETIF_GSO_TYPE_*",
            "pad" / uint8_t,
            "features" / uint16_t,
        ),
        "mcast" / Struct("addr" / uint8_t[6] * "multicast MAC address"),
        "hash" / Struct(
            "type" / uint8_t,
            "algorithm" / uint8_t,
            "value" / uint8_t[4],
        ),
        "pad" / uint16_t[3],
    ),
)
netif_extra_info.docs = "An extra slot (in place of a request or response) for GSO, multicast, hash."

netif_tx_response = Struct(
    "id" / uint16_t * "the request's id",
    "status" / int16_t * "NETIF_RSP_*",
)
netif_tx_response.docs = "Backend -> frontend: one TX slot is done."

# --- receive ---------------------------------------------------------------------------------
netif_rx_request = Struct(
    "id" / uint16_t * "echoed in the response",
    "pad" / uint16_t,
    "gref" / grant_ref_t * "empty page to receive into",
)
netif_rx_request.docs = "Frontend -> backend: a buffer for incoming data."

_NETRXF_data_validated = 0
NETRXF_data_validated = 1 << _NETRXF_data_validated
_NETRXF_csum_blank = 1
NETRXF_csum_blank = 1 << _NETRXF_csum_blank
_NETRXF_more_data = 2
NETRXF_more_data = 1 << _NETRXF_more_data
_NETRXF_extra_info = 3
NETRXF_extra_info = 1 << _NETRXF_extra_info
_NETRXF_gso_prefix = 4
NETRXF_gso_prefix = 1 << _NETRXF_gso_prefix

netif_rx_response = Struct(
    "id" / uint16_t * "the request's id",
    "offset" / uint16_t * "where the data starts in the page",
    "flags" / uint16_t * "NETRXF_*",
    "status" / int16_t * "bytes received (>0) or NETIF_RSP_*",
)
netif_rx_response.docs = "Backend -> frontend: data arrived in one buffer."

netif_tx_sring_entry, netif_tx_sring = ring.DEFINE_RING_TYPES(netif_tx_request, netif_tx_response)
netif_rx_sring_entry, netif_rx_sring = ring.DEFINE_RING_TYPES(netif_rx_request, netif_rx_response)

NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1  # no response: the slot carried an extra_info
