"""pvhyp's own hypercall-channel wire format (not a Xen header).

Process domains (dom0, Python guests) in other OS processes reach the
hypervisor over a Unix stream socket with these frames; both ends
(pvhyp/channel_server.py and pvguest/hypercall_channel.py) take every number
and layout from here, so they cannot drift apart. It plays the part of Linux's
/dev/xen/privcmd ioctls. Framing and the per-op payloads are described in
pvhyp/channel_server.py. All little-endian.
"""
import struct

HEADER = struct.Struct("<HHI")          # op, flags (0), payload length
MAX_PAYLOAD = 1 << 20

OP_HELLO = 0x01                 # server -> client once: HELLO + fds [memfd, event socket]
OP_HYPERCALL = 0x02             # HYPERCALL -> RESULT
OP_MAP_FOREIGN = 0x03           # MAP_FOREIGN + n * <Q pfn> -> RESULT + n * <Q mfn>   (privileged)
OP_MAP_MACHINE_FRAME = 0x04     # MAP_MACHINE_FRAME -> RESULT                          (granted frames)
OP_READCONSOLE = 0x05           # READCONSOLE -> READCONSOLE_RESULT + bytes            (privileged)
OP_CREATE_DOMAIN = 0x06         # CREATE_DOMAIN -> RESULT (domid or -errno)            (privileged)
OP_CONNECT_DOMAIN = 0x07        # DOMID_ARG -> RESULT + fd [a new channel socket]      (privileged)
OP_DESTROY_DOMAIN = 0x08        # DOMID_ARG -> RESULT                                  (privileged)
OP_DOMAIN_INFO = 0x09           # DOMID_ARG (or ALL_DOMAINS) -> RESULT + JSON          (privileged)
OP_INSPECT = 0x0A               # INSPECT -> RESULT + JSON                             (privileged)
OP_REPLY = 0x80                 # a reply's op is the request's op | OP_REPLY

HELLO = struct.Struct("<HHIQQQQ")       # domid, privileged, nr_pages, first_mfn, machine_bytes, shared_info_mfn, 0
HYPERCALL = struct.Struct("<7Q")        # nr, a1..a6
MAP_FOREIGN = struct.Struct("<HHI")     # domid, writable, count
MAP_MACHINE_FRAME = struct.Struct("<QI")  # mfn, writable
READCONSOLE = struct.Struct("<HHIQ")    # domid, 0, max bytes, offset
CREATE_DOMAIN = struct.Struct("<II")    # nr_pages, max_vcpus
DOMID_ARG = struct.Struct("<I")
INSPECT = struct.Struct("<IHH16sQ")     # domid, vcpu, verbose, view name (NUL-padded ASCII), virtual address
RESULT = struct.Struct("<q")
READCONSOLE_RESULT = struct.Struct("<qQ")   # length or -errno, next offset
ALL_DOMAINS = 0xFFFF_FFFF
MAX_READCONSOLE = 64 << 10
