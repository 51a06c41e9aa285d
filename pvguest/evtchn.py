"""Event channels from a process domain: the EVTCHNOP calls and the 2-level pending bitmap.

Ports are found in shared_info exactly as a PV kernel finds them
(evtchn_upcall_pending, then the selector word, then evtchn_pending); the
process is woken through its channel instead of an upcall.
"""
from __future__ import annotations

import ctypes

from abi import event_channel as ev
from abi.shared_memory import SharedWords
from abi.xen import DOMID_SELF, HYPERCALL_NUMBERS

EVENT_CHANNEL_OP = HYPERCALL_NUMBERS["event_channel_op"]
_EVTCHN_PENDING = 32 * 64           # after vcpu_info[XEN_LEGACY_MAX_VCPUS]
_EVTCHN_MASK = _EVTCHN_PENDING + 64 * 8
_PENDING_SEL = 8                    # vcpu_info.evtchn_pending_sel


def _atomic_fetch_and_u8():
    """GCC's out-of-line atomic byte AND (libatomic), or None where it is missing.

    The hypervisor sets pending bits with plain byte writes; clearing ours
    atomically means it can at worst resurrect a bit we cleared (a spurious
    event), never lose one it set.
    """
    try:
        fn = getattr(ctypes.CDLL("libatomic.so.1"), "__atomic_fetch_and_1")
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_uint8, ctypes.c_int]
    fn.restype = ctypes.c_uint8
    return fn


_ATOMIC_AND_U8 = _atomic_fetch_and_u8()
_SEQ_CST = 5


class EventChannelError(Exception):
    def __init__(self, op: str, rc: int):
        super().__init__(f"EVTCHNOP_{op} failed: {rc}")
        self.rc = rc


class EventChannels:
    def __init__(self, channel, scratch_addr: int):
        """`scratch_addr`: a pseudo-physical address of 64 bytes the calls may use as argument."""
        self.channel = channel
        self.scratch = scratch_addr
        self.shared_info = channel.shared_info
        # The hypervisor sets bits in these words while we read and clear them: whole-word
        # accesses are single aligned loads/stores (abi.shared_memory).
        self.shared_words = SharedWords(self.shared_info)
        self._si_address = ctypes.addressof(ctypes.c_char.from_buffer(self.shared_info))

    def _op(self, name: str, struct_, args: dict, out: str | None = None) -> int:
        data = struct_.build(args)
        mem = self.channel.memory
        mem[self.scratch:self.scratch + len(data)] = data
        rc = self.channel.hypercall(EVENT_CHANNEL_OP, getattr(ev, f"EVTCHNOP_{name}"), self.scratch)
        if rc < 0:
            raise EventChannelError(name, rc)
        if out is None:
            return rc
        return struct_.parse(bytes(mem[self.scratch:self.scratch + len(data)]))[out]

    def alloc_unbound(self, remote_dom: int, dom: int = DOMID_SELF) -> int:
        return self._op("alloc_unbound", ev.evtchn_alloc_unbound,
                        {"dom": dom, "remote_dom": remote_dom, "port": 0}, "port")

    def bind_interdomain(self, remote_dom: int, remote_port: int) -> int:
        return self._op("bind_interdomain", ev.evtchn_bind_interdomain,
                        {"remote_dom": remote_dom, "remote_port": remote_port, "local_port": 0},
                        "local_port")

    def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        return self._op("bind_virq", ev.evtchn_bind_virq, {"virq": virq, "vcpu": vcpu, "port": 0}, "port")

    def send(self, port: int) -> None:
        self._op("send", ev.evtchn_send, {"port": port})

    def close(self, port: int) -> None:
        self._op("close", ev.evtchn_close, {"port": port})

    def unmask(self, port: int) -> None:
        self._op("unmask", ev.evtchn_unmask, {"port": port})

    def take_pending(self) -> list[int]:
        """Pending, unmasked ports; their pending bits are cleared."""
        words = self.shared_words
        self.shared_info[0] = 0       # vcpu_info[0].evtchn_upcall_pending
        # Every word is scanned below, so a selector bit set after this load and lost by
        # the store costs nothing.
        if words.load_u64(_PENDING_SEL):
            words.store_u64(_PENDING_SEL, 0)
        ports = []
        for word in range(64):
            pending = words.load_u64(_EVTCHN_PENDING + word * 8)
            if not pending:
                continue
            ready = pending & ~words.load_u64(_EVTCHN_MASK + word * 8)
            for bit in range(64):
                if ready >> bit & 1:
                    port = word * 64 + bit
                    self._clear_pending(port)
                    ports.append(port)
        return ports

    def _clear_pending(self, port: int) -> None:
        byte, keep = _EVTCHN_PENDING + port // 8, ~(1 << (port % 8)) & 0xFF
        if _ATOMIC_AND_U8 is not None:
            _ATOMIC_AND_U8(self._si_address + byte, keep, _SEQ_CST)
        else:
            self.shared_info[byte] &= keep
