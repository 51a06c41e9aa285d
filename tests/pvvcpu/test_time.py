"""pvclock records, the wallclock, and timers firing VIRQ_TIMER on a fake clock."""
from __future__ import annotations

import struct

import pytest

from abi import errno as E
from abi import sched as S
from abi import vcpu as V
from abi.xen import VIRQ_TIMER, XEN_PVCLOCK_TSC_STABLE_BIT
from pvhyp.time import (
    NSEC_PER_SEC,
    TSC_SHIFT,
    TSC_TO_SYSTEM_MUL,
    VCPU_INFO_TIME_OFFSET,
    compute_time_scale,
    scale_delta,
)
from tests.pvvcpu.pvvcpu_kit import bind_virq, clear_port, port_pending

MS = 1_000_000


def time_info(guest, vcpu=None):
    vcpu = vcpu or guest.vcpu
    raw = guest.hv.memory.read(vcpu.vcpu_info_maddr + VCPU_INFO_TIME_OFFSET, 32)
    return struct.unpack("<IIQQIbB2x", raw)


def guest_now(guest, tsc: int, vcpu=None) -> int:
    version, _, tsc_stamp, system_time, mul, shift, flags = time_info(guest, vcpu)
    return system_time + scale_delta(tsc - tsc_stamp, mul, shift)


@pytest.mark.parametrize("hz", [1_000_000_000, 2_000_000_000, 2_394_450_000, 3_000_000_000, 100_000_000, 25_000_000_000])
def test_time_scale_is_within_a_ppm(hz):
    mul, shift = compute_time_scale(hz)
    assert mul < 1 << 32
    one_second_of_ticks = hz
    assert abs(scale_delta(one_second_of_ticks, mul, shift) - NSEC_PER_SEC) <= 1000


def test_vcpu_time_info_converts_the_guest_tsc_back_exactly(guest, clock):
    hv = guest.hv
    hv.time.update_vcpu_system_time(guest.vcpu)
    version, _, _, _, mul, shift, flags = time_info(guest)
    assert version % 2 == 0 and (mul, shift) == (TSC_TO_SYSTEM_MUL, TSC_SHIFT)
    assert flags & XEN_PVCLOCK_TSC_STABLE_BIT
    for step in (1, 999, 10 * MS, 3 * NSEC_PER_SEC):
        clock.advance(step)
        assert guest_now(guest, hv.time.guest_tsc()) == clock.now_ns()


def test_version_is_odd_while_the_record_is_written(guest):
    hv = guest.hv
    at = guest.vcpu.vcpu_info_maddr + VCPU_INFO_TIME_OFFSET
    before = time_info(guest)[0]
    seen = []
    real_write = hv.memory.write

    def spying_write(maddr, data):
        if maddr == at:
            seen.append(struct.unpack("<I", data)[0])
        elif at < maddr < at + 32:
            seen.append(("body", time_info(guest)[0] % 2))
        real_write(maddr, data)

    class SpyingWords:
        """The version word is stored through the one-store accessors (abi.shared_memory)."""
        def __init__(self, words):
            self.words = words

        def __getattr__(self, name):
            return getattr(self.words, name)

        def store_u32(self, maddr, value):
            if maddr == at:
                seen.append(value & 0xFFFF_FFFF)
            self.words.store_u32(maddr, value)

    real_words = hv.memory.words
    hv.memory.write = spying_write
    hv.memory.words = SpyingWords(real_words)
    try:
        hv.time.update_vcpu_system_time(guest.vcpu)
    finally:
        del hv.memory.write
        hv.memory.words = real_words
    assert seen == [before + 1, ("body", 1), before + 2]


def test_registered_time_area_gets_the_same_record(guest, clock):
    va = guest.write(0, struct.pack("<Q", guest.va(4)))
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_time_memory_area, 0, va) == 0
    copy = struct.unpack("<IIQQIbB2x", guest.read(4, 32))
    assert copy[0] % 2 == 0 and copy[0] > 0
    assert copy[2:] == time_info(guest)[2:]
    hole = guest.write(0, struct.pack("<Q", 0xFFFF_8000_0000_0000))
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_time_memory_area, 0, hole) == -E.EFAULT
    assert guest.call("vcpu_op", V.VCPUOP_register_vcpu_time_memory_area, 0, 0x10) == -E.EFAULT


def test_wallclock_in_shared_info(guest, clock):
    raw = guest.hv.memory.read((guest.domain.shared_info_mfn << 12) + 3072, 16)
    version, sec, nsec, sec_hi = struct.unpack("<4I", raw)
    assert version % 2 == 0 and version > 0
    assert (sec_hi << 32 | sec) * NSEC_PER_SEC + nsec == clock.boot_wallclock_ns


def test_set_timer_op_fires_virq_timer_at_the_deadline(guest, clock):
    port = bind_virq(guest, VIRQ_TIMER)
    assert guest.call("set_timer_op", clock.now_ns() + 5 * MS) == 0
    clock.advance(4 * MS)
    assert not port_pending(guest, port)
    assert guest.hv.time.next_deadline() == clock.now_ns() + MS
    clock.advance(MS)
    assert port_pending(guest, port)


def test_set_timer_op_zero_cancels_and_past_fires_now(guest, clock):
    port = bind_virq(guest, VIRQ_TIMER)
    guest.call("set_timer_op", clock.now_ns() + MS)
    assert guest.call("set_timer_op", 0) == 0
    clock.advance(2 * MS)
    assert not port_pending(guest, port)
    assert guest.call("set_timer_op", clock.now_ns() - 1) == 0
    assert port_pending(guest, port)


def test_set_timer_op_huge_or_negative_timeout_becomes_100ms(guest, clock):
    port = bind_virq(guest, VIRQ_TIMER)
    for timeout in (clock.now_ns() + (1 << 51), (1 << 64) - 5):
        clear_port(guest, port)
        assert guest.call("set_timer_op", timeout) == 0
        assert guest.hv.time.next_deadline() == clock.now_ns() + 100 * MS
        clock.advance(100 * MS)
        assert port_pending(guest, port)


def test_periodic_timer(guest, clock):
    hv = guest.hv
    va = guest.write(0, struct.pack("<Q", 10 * MS))
    sent = hv.time.timer_events_sent
    assert guest.call("vcpu_op", V.VCPUOP_set_periodic_timer, 0, va) == 0
    assert hv.time.timer_events_sent == sent + 1          # first period is already over (Xen too)
    for _ in range(5):
        clock.advance(10 * MS)
    assert hv.time.timer_events_sent == sent + 6
    assert guest.call("vcpu_op", V.VCPUOP_stop_periodic_timer, 0, 0) == 0
    clock.advance(100 * MS)
    assert hv.time.timer_events_sent == sent + 6
    for bad in (MS - 1, 0, 1 << 62):
        assert guest.call("vcpu_op", V.VCPUOP_set_periodic_timer, 0, guest.write(0, struct.pack("<Q", bad))) == -E.EINVAL


def test_singleshot_timer_via_vcpu_op(guest, clock):
    port = bind_virq(guest, VIRQ_TIMER)
    va = guest.write(0, struct.pack("<QI4x", clock.now_ns() + 3 * MS, V.VCPU_SSHOTTMR_future))
    assert guest.call("vcpu_op", V.VCPUOP_set_singleshot_timer, 0, va) == 0
    assert guest.call("vcpu_op", V.VCPUOP_set_singleshot_timer, 1, va) == -E.EINVAL   # not the caller
    assert guest.call("vcpu_op", V.VCPUOP_stop_singleshot_timer, 1, 0) == -E.EINVAL
    clock.advance(3 * MS)
    assert port_pending(guest, port)
    clear_port(guest, port)
    past = guest.write(0, struct.pack("<QI4x", clock.now_ns() - 1, V.VCPU_SSHOTTMR_future))
    assert guest.call("vcpu_op", V.VCPUOP_set_singleshot_timer, 0, past) == 0      # Xen 4.17.5: injected at once
    assert port_pending(guest, port)
    clear_port(guest, port)
    guest.call("vcpu_op", V.VCPUOP_set_singleshot_timer, 0, guest.write(0, struct.pack("<QI4x", clock.now_ns() + MS, 0)))
    assert guest.call("vcpu_op", V.VCPUOP_stop_singleshot_timer, 0, 0) == 0
    clock.advance(10 * MS)
    assert not port_pending(guest, port)


def test_timers_of_a_destroyed_domain_never_fire(guest, clock):
    hv = guest.hv
    guest.call("set_timer_op", clock.now_ns() + MS)
    sent = hv.time.timer_events_sent
    hv.destroy_domain(guest.domain.domid)
    clock.advance(10 * MS)
    assert hv.time.timer_events_sent == sent


def test_watchdog(guest, clock):
    def watchdog(wid, timeout):
        return guest.call("sched_op", S.SCHEDOP_watchdog, guest.write(0, struct.pack("<II", wid, timeout)))

    assert watchdog(0, 5) == 1
    assert watchdog(0, 5) == 2
    assert watchdog(0, 5) == -E.ENOSPC
    assert watchdog(2, 0) == 0                   # destroyed
    assert watchdog(2, 3) == -E.EINVAL
    assert watchdog(3, 1) == -E.EINVAL
    clock.advance(4 * NSEC_PER_SEC)
    assert watchdog(1, 5) == 0                   # kicked
    clock.advance(4 * NSEC_PER_SEC)
    assert not guest.domain.is_shut_down
    clock.advance(NSEC_PER_SEC)
    assert guest.domain.is_shut_down and guest.domain.shutdown_reason == S.SHUTDOWN_watchdog


def test_host_tsc_pvclock_tracks_the_monotonic_clock(hv):
    """Real clock: the guest TSC is the host TSC unicorn's rdtsc returns; the record converts it."""
    import time

    from tests.pvvcpu.pvvcpu_kit import Guest
    guest = Guest(hv, hv.create_domain(max_pages=64))
    version, _, _, _, mul, shift, flags = time_info(guest)
    assert version % 2 == 0 and not flags & XEN_PVCLOCK_TSC_STABLE_BIT
    time.sleep(0.05)
    hv.time.update_vcpu_system_time(guest.vcpu)       # as the scheduler or the calibration would
    time.sleep(0.02)
    errors = []
    for _ in range(3):
        before = hv.time.now()
        computed = guest_now(guest, hv.time.guest_tsc())
        after = hv.time.now()
        errors.append(max(before - computed, computed - after, 0))
    assert min(errors) < 1_000_000          # within 1 ms, 20 ms after a stamp


def test_records_are_restamped_periodically_with_the_real_clock(hv, monkeypatch):
    import time

    import pvhyp.time
    from tests.pvvcpu.pvvcpu_kit import Guest
    monkeypatch.setattr(pvhyp.time, "CALIBRATION_PERIOD_NS", 20_000_000)
    guest = Guest(hv, hv.create_domain(max_pages=64))
    first = time_info(guest)[0]
    deadline = time.monotonic() + 2
    while time_info(guest)[0] < first + 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time_info(guest)[0] >= first + 4 and time_info(guest)[0] % 2 == 0
    hv.destroy_domain(guest.domain.domid)
