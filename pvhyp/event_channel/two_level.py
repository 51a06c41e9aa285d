"""The 2-level event channel ABI in guest memory: Xen's event_2l.c.

shared_info.evtchn_pending / evtchn_mask hold one bit per port; each vCPU's
vcpu_info has evtchn_pending_sel (one bit per 64-port word) and
evtchn_upcall_pending. Offsets come from abi/xen.py's layouts. The guest
updates these words with locked instructions, so the functions here that
write them run through `vcpu.post` (the caller's job) on the vCPU's own
thread; bits are changed a byte at a time, as narrow as a store gets.
"""
from __future__ import annotations

from abi import xen as X
from abi.arch_x86_xen import XEN_LEGACY_MAX_VCPUS
from abi.event_channel import EVTCHN_2L_NR_CHANNELS
from pvhyp.memory import PAGE_SHIFT

BITS_PER_EVTCHN_WORD = 64       # Xen's BITS_PER_EVTCHN_WORD: a xen_ulong_t of pending bits


def _field_offset(struct, name: str) -> int:
    offset = 0
    for sub in struct.subcons:
        if sub.name == name:
            return offset
        offset += sub.sizeof()
    raise KeyError(name)


VCPU_INFO_SIZE = X.vcpu_info.sizeof()
OFF_UPCALL_PENDING = _field_offset(X.vcpu_info, "evtchn_upcall_pending")
OFF_PENDING_SEL = _field_offset(X.vcpu_info, "evtchn_pending_sel")
OFF_EVTCHN_PENDING = _field_offset(X.shared_info, "evtchn_pending")
OFF_EVTCHN_MASK = _field_offset(X.shared_info, "evtchn_mask")


def _shared_info_maddr(d) -> int:
    return d.shared_info_mfn << PAGE_SHIFT


def vcpu_info_maddr(v) -> int | None:
    """Where v's vcpu_info lives, or None (Xen's dummy_vcpu_info: nothing to write)."""
    if v.vcpu_info_maddr:
        return v.vcpu_info_maddr
    if v.vcpu_id < XEN_LEGACY_MAX_VCPUS and v.domain.shared_info_mfn:
        return _shared_info_maddr(v.domain) + v.vcpu_id * VCPU_INFO_SIZE
    return None


def _test_bit(buf, maddr: int, nr: int) -> bool:
    return bool(buf[maddr + (nr >> 3)] & (1 << (nr & 7)))


def _test_and_set_bit(buf, maddr: int, nr: int) -> bool:
    i = maddr + (nr >> 3)
    bit = 1 << (nr & 7)
    old = buf[i]
    buf[i] = old | bit
    return bool(old & bit)


def _test_and_clear_bit(buf, maddr: int, nr: int) -> bool:
    i = maddr + (nr >> 3)
    bit = 1 << (nr & 7)
    old = buf[i]
    buf[i] = old & ~bit & 0xFF
    return bool(old & bit)


def _mark_events_pending(v, buf) -> None:
    """vcpu_mark_events_pending, the guest-memory half (run on v's thread)."""
    info = vcpu_info_maddr(v)
    if info is not None:
        _test_and_set_bit(buf, info + OFF_UPCALL_PENDING, 0)


def set_pending_bits(v, port: int) -> None:
    d = v.domain
    buf = d.hv.memory.buf
    shared = _shared_info_maddr(d)
    if _test_and_set_bit(buf, shared + OFF_EVTCHN_PENDING, port):
        return
    if _test_bit(buf, shared + OFF_EVTCHN_MASK, port):
        return
    info = vcpu_info_maddr(v)
    if info is None:
        return
    if not _test_and_set_bit(buf, info + OFF_PENDING_SEL, port // BITS_PER_EVTCHN_WORD):
        _mark_events_pending(v, buf)


def unmask_bits(v, port: int) -> None:
    d = v.domain
    buf = d.hv.memory.buf
    shared = _shared_info_maddr(d)
    if not _test_and_clear_bit(buf, shared + OFF_EVTCHN_MASK, port):
        return
    if not _test_bit(buf, shared + OFF_EVTCHN_PENDING, port):
        return
    info = vcpu_info_maddr(v)
    if info is not None and not _test_and_set_bit(buf, info + OFF_PENDING_SEL,
                                                   port // BITS_PER_EVTCHN_WORD):
        _mark_events_pending(v, buf)


def evtchn_port_is_pending(d, port: int) -> bool:
    return 0 <= port < EVTCHN_2L_NR_CHANNELS and _test_bit(d.hv.memory.buf, _shared_info_maddr(d) + OFF_EVTCHN_PENDING, port)


def clear_pending_bit(d, port: int) -> None:
    _test_and_clear_bit(d.hv.memory.buf, _shared_info_maddr(d) + OFF_EVTCHN_PENDING, port)
