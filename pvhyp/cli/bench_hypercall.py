"""`pvhyp bench hypercall`: the CPU engine's round trips, from pvhyp.cpu.bench's minimal PV kernels."""
from __future__ import annotations

import statistics

DESCRIPTION = "null hypercall round trip (guest -> Python -> guest) and guest instructions per second"


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
    null = statistics.median(bench.null_hypercall_roundtrip_us(args.iterations) for _ in range(repeat))
    rdmsr = statistics.median(bench.emulated_rdmsr_roundtrip_us(max(1, args.iterations // 4))
                              for _ in range(repeat))
    mips = statistics.median(bench.compute_mips() for _ in range(repeat))
    print(f"null_hypercall_roundtrip: {null:.2f} us")
    print(f"emulated_rdmsr_roundtrip: {rdmsr:.2f} us")
    print(f"guest_compute_loop: {mips:.1f} MIPS")
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
