"""sched_op: block/poll wake-ups (threads, bounded waits), shutdown and its code, remote shutdown."""
from __future__ import annotations

import struct
import threading

from abi import errno as E
from abi import sched as S
from abi.event_channel import EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain, EVTCHNOP_send
from abi.xen import VIRQ_TIMER
from tests.pvvcpu.pvvcpu_kit import bind_virq

MS = 1_000_000


def upcall_bytes(guest):
    maddr = guest.vcpu.vcpu_info_maddr
    return guest.hv.memory.buf[maddr], guest.hv.memory.buf[maddr + 1]


def in_thread(fn):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", fn()), daemon=True)
    thread.start()
    return thread, result


def alloc_unbound(guest) -> int:
    va = guest.write(5, struct.pack("<HHI", 0x7FF0, 0x7FF0, 0))
    assert guest.call("event_channel_op", EVTCHNOP_alloc_unbound, va) == 0
    return struct.unpack("<I", guest.read(5, 4, 4))[0]


def loopback(guest) -> tuple[int, int]:
    """Two connected ports of the guest's own domain: (polled, sender)."""
    polled = alloc_unbound(guest)
    va = guest.write(5, struct.pack("<H2xII", 0x7FF0, polled, 0), 32)
    assert guest.call("event_channel_op", EVTCHNOP_bind_interdomain, va) == 0
    return polled, struct.unpack("<I", guest.read(5, 4, 32 + 8))[0]


def send(guest, port):
    assert guest.call("event_channel_op", EVTCHNOP_send, guest.write(5, struct.pack("<I", port), 64)) == 0


def test_block_with_an_event_pending_returns_at_once_and_unmasks(guest):
    buf = guest.hv.memory.buf
    maddr = guest.vcpu.vcpu_info_maddr
    buf[maddr], buf[maddr + 1] = 1, 1
    assert guest.call("sched_op", S.SCHEDOP_block, 0) == 0
    assert upcall_bytes(guest) == (1, 0)
    assert not guest.vcpu.blocked


def test_block_sleeps_until_the_timer_fires(guest, clock):
    bind_virq(guest, VIRQ_TIMER)
    guest.call("set_timer_op", clock.now_ns() + 5 * MS)
    thread, result = in_thread(lambda: guest.call("sched_op", S.SCHEDOP_block, 0))
    thread.join(0.1)
    assert thread.is_alive() and guest.vcpu.blocked
    clock.advance(5 * MS)
    thread.join(2)
    assert result == {"rc": 0}


class QueueingEngine:
    """Stands in for an engine, whose vcpu.post() may queue work the scheduler cannot see."""

    def post(self, fn):
        fn()

    def kick(self):
        pass


def test_a_wake_before_block_is_not_lost_while_posts_may_be_queued(guest):
    guest.vcpu.arch = QueueingEngine()
    guest.vcpu.kick()
    assert guest.call("sched_op", S.SCHEDOP_block, 0) == 0


def test_block_ends_when_the_domain_dies(guest):
    thread, result = in_thread(lambda: guest.call("sched_op", S.SCHEDOP_block, 0))
    thread.join(0.05)
    guest.hv.destroy_domain(guest.domain.domid)
    thread.join(2)
    assert result == {"rc": 0}


def test_poll_argument_errors(guest):
    def poll(ports_va, nr, timeout=0):
        return guest.call("sched_op", S.SCHEDOP_poll, guest.write(0, struct.pack("<QI4xQ", ports_va, nr, timeout)))

    assert poll(guest.va(1), 129) == -E.EINVAL
    assert poll(0xFFFF_8000_0000_0000, 1) == -E.EFAULT
    guest.write(1, struct.pack("<I", 5000))
    assert poll(guest.va(1), 1) == -E.EINVAL            # not a port of ours
    assert poll(guest.va(7, 4094), 1) == -E.EFAULT
    assert guest.call("sched_op", S.SCHEDOP_poll, 0x10) == -E.EFAULT


def test_poll_returns_for_a_pending_port_and_wakes_on_send_or_timeout(guest, clock):
    port, sender = loopback(guest)
    ports = guest.write(1, struct.pack("<I", port))
    arg = guest.write(0, struct.pack("<QI4xQ", ports, 1, clock.now_ns() + 50 * MS))
    thread, result = in_thread(lambda: guest.call("sched_op", S.SCHEDOP_poll, arg))
    thread.join(0.1)
    assert thread.is_alive() and guest.vcpu.poll_evtchn == port
    clock.advance(50 * MS)
    thread.join(2)
    assert result == {"rc": 0} and guest.vcpu.poll_evtchn is None

    thread, result = in_thread(lambda: guest.call("sched_op", S.SCHEDOP_poll,
                                                  guest.write(0, struct.pack("<QI4xQ", ports, 1, 0))))
    thread.join(0.1)
    assert thread.is_alive()
    send(guest, sender)
    thread.join(2)
    assert result == {"rc": 0}
    # Now the port is pending: a poll returns at once.
    assert guest.call("sched_op", S.SCHEDOP_poll, guest.write(0, struct.pack("<QI4xQ", ports, 1, 0))) == 0


def test_shutdown_and_shutdown_code(guest, other_guest):
    assert guest.call("sched_op", S.SCHEDOP_shutdown_code, guest.write(0, struct.pack("<I", S.SHUTDOWN_crash))) == 0
    assert guest.call("sched_op", S.SCHEDOP_shutdown, guest.write(0, struct.pack("<I", S.SHUTDOWN_reboot))) == 0
    assert guest.domain.is_shut_down and guest.domain.shutdown_reason == S.SHUTDOWN_crash
    assert other_guest.call("sched_op", S.SCHEDOP_shutdown, other_guest.write(0, struct.pack("<I", 0x100 | 1))) == 0
    assert other_guest.domain.shutdown_reason == 1          # (u8)reason
    assert guest.call("sched_op", S.SCHEDOP_shutdown, 0x10) == -E.EFAULT


def test_remote_shutdown_needs_privilege(guest, other_guest):
    target = other_guest.domain.domid
    arg = guest.write(0, struct.pack("<H2xI", target, S.SHUTDOWN_poweroff))
    assert guest.call("sched_op", S.SCHEDOP_remote_shutdown, arg) == -E.EPERM
    assert guest.call("sched_op", S.SCHEDOP_remote_shutdown, guest.write(1, struct.pack("<H2xI", 999, 0))) == -E.ESRCH
    guest.domain.is_privileged = True
    assert guest.call("sched_op", S.SCHEDOP_remote_shutdown, arg) == 0
    assert other_guest.domain.is_shut_down and not guest.domain.is_shut_down


def test_yield_unknown_and_compat(guest):
    assert guest.call("sched_op", S.SCHEDOP_yield, 0) == 0
    assert guest.call("sched_op", 99, 0) == -E.ENOSYS
    assert guest.call("sched_op", S.SCHEDOP_pin_override, guest.write(0, struct.pack("<i", 0))) == -E.EPERM
    assert guest.call("sched_op_compat", S.SCHEDOP_yield, 0) == 0
    assert guest.call("sched_op_compat", 7, 0) == -E.ENOSYS
    assert guest.call("sched_op_compat", S.SCHEDOP_shutdown, S.SHUTDOWN_poweroff) == 0
    assert guest.domain.is_shut_down
