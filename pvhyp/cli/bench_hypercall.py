"""`pvhyp bench hypercall`: the CPU engine's round trips, from pvhyp.cpu.bench's minimal PV kernels."""
from __future__ import annotations

import statistics

DESCRIPTION = "null hypercall round trip (guest -> Python -> guest); guest compute loop beside the same loop on the host"


def add_arguments(parser) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="measurements; the median is shown (default 5)")
    parser.add_argument("--iterations", type=int, default=20000, help="hypercalls per measurement")
    parser.add_argument("--accel", choices=("unicorn", "kvm"), default="unicorn",
                        help="engine measured (kvm: also the compute loop run natively on the host)")


def run(args) -> int:
    if args.accel == "kvm":
        return run_kvm(args)
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


def run_kvm(args) -> int:
    """The same kernels (pvhyp.cpu.bench's machine code) on the KVM engine (pvhyp.kvm.bench)."""
    from pvhyp.cli.errors import UserError
    from pvhyp.cpu import bench as programs
    from pvhyp.kvm import bench
    from pvhyp.kvm.vm import KvmUnavailable
    assert programs._EXIT_HYPERCALL == bench.EXIT_HYPERCALL
    repeat = max(1, args.repeat)
    iterations = max(1, args.iterations // 10)         # each trap costs ~100x unicorn's on kvm_pvm
    try:
        null = statistics.median(bench.roundtrip_us(bench.HYPERCALL_LOOP + programs._EXIT, iterations)
                                 for _ in range(repeat))
    except KvmUnavailable as e:
        raise UserError(f"--accel kvm: {e}") from None
    rdmsr = statistics.median(bench.roundtrip_us(programs._RDMSR_LOOP + programs._EXIT, iterations)
                              for _ in range(repeat))
    mips = statistics.median(bench.guest_mips(programs._COMPUTE_LOOP + programs._EXIT, 5) for _ in range(repeat))
    native = statistics.median(bench.native_mips(programs._COMPUTE_LOOP, 5) for _ in range(repeat))
    print(f"null_hypercall_roundtrip: {null:.2f} us")
    print(f"emulated_rdmsr_roundtrip: {rdmsr:.2f} us")
    print(f"guest_compute_loop: {mips:.1f} MIPS")
    print(f"native_compute_loop: {native:.1f} MIPS")
    print(f"guest_vs_native: {mips / native:.3f}")
    return 0
