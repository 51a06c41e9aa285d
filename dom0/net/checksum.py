"""The TCP/UDP checksum netfront leaves blank (NETTXF_csum_blank), filled as Linux's stack would.

netfront hands over CHECKSUM_PARTIAL skbs: the L4 checksum field holds at
most the pseudo-header sum.  Whatever it holds, the whole checksum is
computed afresh here (field zeroed, pseudo-header + L4 header + payload),
so a frame that leaves dom0 (to another guest or to passt) is complete and
the receiver may be told NETRXF_data_validated.  Only Ethernet II frames
with IPv4 or IPv6 (no extension headers) carrying TCP or UDP are
understood; anything else with csum_blank is an error for the caller to
count and drop, as netback's checksum_setup failing drops the skb.
"""
from __future__ import annotations

import struct

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17
_TCP_CHECK_OFFSET = 16
_UDP_CHECK_OFFSET = 6


class ChecksumError(Exception):
    """The frame is not one whose checksum can be filled."""


def ones_complement_sum(data: bytes | bytearray | memoryview) -> int:
    """The folded 16-bit one's complement sum of ``data`` read as little-endian words.

    RFC 1071: the sum is byte-order independent up to a final byte swap, and
    summing a view of native shorts is linear and fast in Python (an odd
    length is padded with a zero byte)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = sum(memoryview(data).cast("B").cast("H"))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _swap16(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


def checksum(data: bytes | bytearray | memoryview, pseudo: bytes = b"") -> int:
    """The Internet checksum (RFC 1071) of pseudo + data, as the big-endian value to store."""
    total = ones_complement_sum(pseudo) + ones_complement_sum(data)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return _swap16(~total & 0xFFFF)


def fill_l4_checksum(frame: bytes) -> bytes:
    """The frame with its TCP or UDP checksum computed; ChecksumError if it has neither."""
    if len(frame) < 14:
        raise ChecksumError("shorter than an Ethernet header")
    l3 = 12
    (ethertype,) = struct.unpack_from("!H", frame, l3)
    l3 += 2
    if ethertype == ETHERTYPE_VLAN:
        if len(frame) < 18:
            raise ChecksumError("truncated VLAN tag")
        (ethertype,) = struct.unpack_from("!H", frame, l3 + 2)
        l3 += 4
    if ethertype == ETHERTYPE_IPV4:
        if len(frame) < l3 + 20:
            raise ChecksumError("truncated IPv4 header")
        ihl = (frame[l3] & 0xF) * 4
        total_length = struct.unpack_from("!H", frame, l3 + 2)[0]
        proto = frame[l3 + 9]
        if ihl < 20 or total_length < ihl or l3 + total_length > len(frame):
            raise ChecksumError("inconsistent IPv4 lengths")
        if struct.unpack_from("!H", frame, l3 + 6)[0] & 0x3FFF:
            raise ChecksumError("an IPv4 fragment")
        l4, l4_len = l3 + ihl, total_length - ihl
        pseudo = frame[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, proto, l4_len)
    elif ethertype == ETHERTYPE_IPV6:
        if len(frame) < l3 + 40:
            raise ChecksumError("truncated IPv6 header")
        payload_length = struct.unpack_from("!H", frame, l3 + 4)[0]
        proto = frame[l3 + 6]
        l4, l4_len = l3 + 40, payload_length
        if l4 + l4_len > len(frame):
            raise ChecksumError("inconsistent IPv6 length")
        pseudo = frame[l3 + 8:l3 + 40] + struct.pack("!I3xB", l4_len, proto)
    else:
        raise ChecksumError(f"ethertype {ethertype:#06x} carries no TCP/UDP")
    if proto == IPPROTO_TCP:
        field = _TCP_CHECK_OFFSET
        if l4_len < 20:
            raise ChecksumError("truncated TCP header")
    elif proto == IPPROTO_UDP:
        field = _UDP_CHECK_OFFSET
        if l4_len < 8:
            raise ChecksumError("truncated UDP header")
    else:
        raise ChecksumError(f"IP protocol {proto} is neither TCP nor UDP")
    segment = bytearray(frame[l4:l4 + l4_len])
    segment[field:field + 2] = b"\0\0"
    value = checksum(segment, pseudo)
    if value == 0 and proto == IPPROTO_UDP:
        value = 0xFFFF                  # UDP: 0 means "no checksum"
    out = bytearray(frame)
    struct.pack_into("!H", out, l4 + field, value)
    return bytes(out)
