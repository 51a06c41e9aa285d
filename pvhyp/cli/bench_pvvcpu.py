"""`pvhyp bench pvvcpu`: the PV vCPU hypercalls, timer lateness and the scheduler.

Hypercalls go through the real dispatcher from a process domain (arguments
at pseudo-physical addresses), so the numbers include argument copying.
Timer lateness is measured on the host clock with the timer thread; the
scheduler number is yield ping-pong between two vCPU threads sharing one
pCPU. Prints ``name: value unit`` lines.
"""
from __future__ import annotations

import statistics
import struct
import threading
import time

DESCRIPTION = "PV vCPU hypercalls per second, timer lateness, scheduler switches per second"


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=0.4, help="time per measurement (default 0.4)")


def _rate(fn, seconds: float) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        now = time.perf_counter()
        if now - start >= seconds:
            return calls / (now - start)


def run(args) -> int:
    from abi import vcpu as V
    from abi import version as VER
    from abi.xen import HYPERCALL_NUMBERS
    from pvhyp.host import build_hypervisor
    from pvhyp.hypercall_table import HypercallContext

    seconds = getattr(args, "seconds", 0.4)
    hv = build_hypervisor(64, cpu=False)
    d = hv.create_domain(max_vcpus=2, max_pages=16, paging=False)
    hv.populate(d, 16)
    vcpu = d.vcpus[0]
    vcpu.online = True
    ctx = HypercallContext(vcpu)

    def call(name, *a):
        return hv.hypercalls.dispatch(ctx, HYPERCALL_NUMBERS[name], list(a) + [0] * (6 - len(a)))

    traps = b"".join(struct.pack("<BBH4xQ", v, 0, 0xE033, 0x1000 + v) for v in range(20)) + bytes(16)
    hv.memory.write(d.p2m[1] << 12, traps)
    results = [
        ("xen_version_version", _rate(lambda: call("xen_version", VER.XENVER_version, 0), seconds), "calls/s"),
        ("xen_version_get_features", _rate(lambda: call("xen_version", VER.XENVER_get_features, 2 << 12), seconds),
         "calls/s"),
        ("set_trap_table_20_entries", _rate(lambda: call("set_trap_table", 1 << 12), seconds), "calls/s"),
        ("vcpu_op_get_runstate_info", _rate(lambda: call("vcpu_op", V.VCPUOP_get_runstate_info, 0, 3 << 12),
                                            seconds), "calls/s"),
        ("set_timer_op", _rate(lambda: call("set_timer_op", hv.time.now() + 10**9), seconds), "calls/s"),
        ("pvclock_update", _rate(lambda: hv.time.update_vcpu_system_time(vcpu), seconds), "updates/s"),
    ]

    # Timer lateness: one singleshot at a time, 1 ms ahead, on the timer thread.
    fired = threading.Event()
    late = []
    # Only this benchmark's hypervisor: the timer's event is replaced by the measurement's flag.
    hv.time.send_timer_event = lambda vcpu: fired.set()  # type: ignore[method-assign]
    for _ in range(100):
        fired.clear()
        deadline = hv.time.now() + 1_000_000
        call("set_timer_op", deadline)
        fired.wait(1)
        late.append(hv.time.now() - deadline)
    late.sort()
    results += [("timer_lateness_median", statistics.median(late) / 1000, "us"),
                ("timer_lateness_p99", late[98] / 1000, "us")]

    # Scheduler: two vCPUs on one pCPU yielding to each other.
    hv.sched.nr_pcpus = 1
    a, b = d.vcpus
    b.online = True
    switches = [0]
    stop = time.perf_counter() + seconds

    def ping(v):
        hv.sched.wait_to_run(v)
        while time.perf_counter() < stop:
            hv.sched.yield_(v)
            switches[0] += 1
        hv.sched.deschedule(v)

    threads = [threading.Thread(target=ping, args=(v,)) for v in (a, b)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.append(("sched_yield_switches", switches[0] / (time.perf_counter() - start), "switches/s"))
    hv.time.timers.close()
    for name, value, unit in results:
        print(f"{name}: {value:.1f} {unit}")
    return 0
