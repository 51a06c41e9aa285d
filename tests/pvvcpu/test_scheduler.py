"""The round-robin scheduler on fake vCPUs: pCPU limit, fairness, preemption, yield, offline."""
from __future__ import annotations

import threading
import time

from abi import vcpu as V

RUN_SECONDS = 0.4


class FakeCPU:
    """What the scheduler asks of an engine: kick() makes the vCPU leave guest code
    (and vcpu.post runs the work at once, as an engine does for its own thread)."""

    def __init__(self):
        self.kicked = threading.Event()

    def kick(self):
        self.kicked.set()

    def post(self, fn):
        fn()


def run_vcpus(hv, vcpus, seconds, work=None):
    sched = hv.sched
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    state = {"running": 0, "max_running": 0}

    def loop(vcpu):
        while time.monotonic() < stop and sched.wait_to_run(vcpu):
            with lock:
                state["running"] += 1
                state["max_running"] = max(state["max_running"], state["running"])
            vcpu.arch.kicked.clear()
            while time.monotonic() < stop and not sched.slice_expired(vcpu):
                if work is not None:
                    work(vcpu)
                vcpu.arch.kicked.wait(0.0005)
            with lock:
                state["running"] -= 1
            sched.deschedule(vcpu)

    threads = [threading.Thread(target=loop, args=(v,), daemon=True) for v in vcpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 5)
    assert not any(t.is_alive() for t in threads)
    return state


def make_vcpus(hv, count):
    d = hv.create_domain(max_vcpus=count, max_pages=16)
    for v in d.vcpus:
        v.arch = FakeCPU()
        hv.sched.vcpu_up(v)
    return d.vcpus


def test_at_most_nr_pcpus_run_and_time_is_shared_fairly(hv):
    hv.sched.nr_pcpus, hv.sched.slice_ns = 2, 2_000_000
    vcpus = make_vcpus(hv, 4)
    state = run_vcpus(hv, vcpus, RUN_SECONDS)
    assert state["max_running"] <= 2
    ran = [v.sched.ran_ns for v in vcpus]
    mean = sum(ran) / len(ran)
    assert mean > 0.25 * RUN_SECONDS * 1e9 * 2 / 4
    assert all(abs(r - mean) < 0.35 * mean for r in ran), ran


def test_runstate_times_add_up(hv):
    hv.sched.nr_pcpus, hv.sched.slice_ns = 1, 2_000_000
    vcpus = make_vcpus(hv, 2)
    run_vcpus(hv, vcpus, 0.1)
    for v in vcpus:
        info = hv.sched.runstate_info(v)
        assert info["state"] in (V.RUNSTATE_runnable, V.RUNSTATE_running)
        assert info["time"][V.RUNSTATE_running] > 0 and info["time"][V.RUNSTATE_runnable] > 0
        assert sum(info["time"]) <= hv.time.now()


def test_yield_hands_the_pcpu_to_the_waiter(hv):
    hv.sched.nr_pcpus = 1
    a, b = make_vcpus(hv, 2)
    assert hv.sched.wait_to_run(a)
    got_it = threading.Event()

    def waiter():
        hv.sched.wait_to_run(b)
        got_it.set()
        time.sleep(0.02)
        hv.sched.deschedule(b)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    assert not got_it.wait(0.05)                 # a holds the only pCPU
    assert hv.sched.yield_(a)                    # returns once a runs again
    assert got_it.is_set() and a.sched.has_cpu
    thread.join(2)


def test_waiter_preempts_an_expired_slice(hv):
    hv.sched.nr_pcpus, hv.sched.slice_ns = 1, 1_000_000
    a, b = make_vcpus(hv, 2)
    hv.sched.wait_to_run(a)
    thread = threading.Thread(target=lambda: hv.sched.wait_to_run(b), daemon=True)
    thread.start()
    assert a.arch.kicked.wait(1)                 # b asked a to leave guest code
    assert hv.sched.slice_expired(a)
    hv.sched.deschedule(a)
    thread.join(1)
    assert b.sched.has_cpu


def test_offline_vcpu_waits_until_up_and_gone_domain_stops(hv):
    (a,) = make_vcpus(hv, 1)
    hv.sched.vcpu_down(a)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("ran", hv.sched.wait_to_run(a)), daemon=True)
    thread.start()
    thread.join(0.1)
    assert thread.is_alive() and hv.sched.runstate_info(a)["state"] == V.RUNSTATE_offline
    hv.sched.vcpu_up(a)
    thread.join(2)
    assert result == {"ran": True}
    assert not hv.sched.slice_expired(a)
    a.domain.shutdown(0)
    assert hv.sched.slice_expired(a)
    hv.sched.deschedule(a)
    assert hv.sched.wait_to_run(a) is False
