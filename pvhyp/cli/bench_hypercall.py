"""`pvhyp bench hypercall`: the CPU engine's round trips, from pvhyp.cpu.bench's minimal PV kernels."""
from __future__ import annotations

import statistics

DESCRIPTION = "null hypercall round trip (guest -> Python -> guest); guest compute loop beside the same loop on the host"


def add_arguments(parser) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="measurements; the median is shown (default 5)")
    parser.add_argument("--iterations", type=int, default=20000, help="hypercalls per measurement")


def run(args) -> int:
    from pvhyp.cpu import bench
    repeat = max(1, args.repeat)
    nulls = [bench.null_hypercall_roundtrip(args.iterations) for _ in range(repeat)]
    null = statistics.median(wall for wall, _ in nulls)
    null_cpu = statistics.median(cpu for _, cpu in nulls)
    rdmsr = statistics.median(bench.emulated_rdmsr_roundtrip_us(max(1, args.iterations // 4))
                              for _ in range(repeat))
    rates = [bench.compute_rates() for _ in range(repeat)]
    mips = statistics.median(wall for wall, _ in rates)
    mips_cpu = statistics.median(cpu for _, cpu in rates)
    native = statistics.median(bench.native_compute_mips() for _ in range(repeat))
    print(f"null_hypercall_roundtrip: {null:.2f} us ({null_cpu:.2f} us of CPU time)")
    print(f"emulated_rdmsr_roundtrip: {rdmsr:.2f} us")
    print(f"guest_compute_loop: {mips:.1f} MIPS (uncounted; {mips_cpu:.1f} per CPU second)")
    print(f"host_compute_loop: {native:.1f} MIPS (the same instructions natively)")
    return 0
