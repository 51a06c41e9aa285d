"""`pvhyp bench disk`: Debian's own disk I/O inside the guest, pvhyp against QEMU TCG, side by side.

Both boot the same kernel, initramfs and Debian disk (`pvhyp image debian
--rootfs`), each on its own raw copy of the image (the template is never
written): pvhyp with its block backend and Linux's xen-blkfront, QEMU with
`-accel tcg` and virtio-blk (QEMU's default cache mode). Once root is logged
in on the console, the same commands run in both:

  sequential write: dd if=/dev/zero of=FILE bs=1M count=256 oflag=direct conv=fsync
  sequential read:  dd if=FILE of=/dev/null bs=1M iflag=direct
  random reads:     ioping -B -D -i 0 -s 4k -S 256m -c 4000 -w 30 FILE   (4 KiB, O_DIRECT)

MiB/s are computed from the wall-clock time the host sees each dd take (the
same clock for both guests); IOPS are ioping's. The ratios are pvhyp/QEMU,
so above 1 means pvhyp is faster. Numbers, never a pass/fail.

The guests are bench boot's `DiskGuest` and `QemuGuest` (`pvhyp bench boot --rootfs`).
"""
from __future__ import annotations

import re
import tempfile
import time

from pvhyp.cli.bench_boot import DiskGuest, QemuGuest, qemu_binary, rootfs_image, scratch_copy

DESCRIPTION = ("disk I/O inside Debian (256 MiB direct dd write/read, 4 KiB random-read IOPS): "
               "pvhyp vs qemu-system-x86_64 -accel tcg + virtio-blk")
DEFAULT_TIMEOUT = 1800.0
BENCH_FILE = "/root/pvhyp-bench.dat"


def add_arguments(parser) -> None:
    parser.add_argument("--dir", help="disk image directory (default: pvhyp image debian --rootfs's cache; "
                        "built if missing)")
    parser.add_argument("--memory", type=int, default=512, metavar="MB", help="guest memory (default 512)")
    parser.add_argument("--mib", type=int, default=256, help="sequential file size in MiB (default 256)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds for each boot and each command (default 1800)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU half")


def workload(guest, mib: int, timeout: float) -> dict:
    """The three measurements in one logged-in guest."""
    results: dict[str, float] = {}
    _, seconds = guest.command(f"dd if=/dev/zero of={BENCH_FILE} bs=1M count={mib} oflag=direct conv=fsync "
                               "2>/dev/null", timeout)
    results["seq_write_mib_s"] = mib / seconds
    guest.command("sync; echo 3 > /proc/sys/vm/drop_caches", timeout)
    _, seconds = guest.command(f"dd if={BENCH_FILE} of=/dev/null bs=1M iflag=direct 2>/dev/null", timeout)
    results["seq_read_mib_s"] = mib / seconds
    out, _ = guest.command(f"ioping -B -D -i 0 -s 4k -S {mib}m -c 4000 -w 30 {BENCH_FILE}", timeout)
    numbers = re.search(r"^(\d+) (\d+) (\d+) (\d+)", out, re.M)
    if numbers is None:
        raise RuntimeError(f"ioping printed no statistics: {out.strip()[-300:]!r}")
    results["rand_read_4k_iops"] = float(numbers.group(3))
    guest.command(f"rm -f {BENCH_FILE}", timeout)
    return results


def measure(guest, password: str, mib: int, timeout: float) -> dict:
    """Boot, log in, run the workload; the numbers, or {'error': why} with the guest's last line."""
    try:
        guest.start()
        guest.login(password, timeout)
        results = {"login_s": time.monotonic() - guest.started}
        results.update(workload(guest, mib, timeout))
        return results
    except (TimeoutError, RuntimeError) as e:
        return {"error": f"{e} (last console line: {guest.last_line()})"}
    finally:
        guest.close()


ROWS = (("seq_write_mib_s", "sequential write, direct", "MiB/s"),
        ("seq_read_mib_s", "sequential read, direct", "MiB/s"),
        ("rand_read_4k_iops", "random 4 KiB read, direct", "IOPS"))


def run(args) -> int:
    from dom0.images import rootfs
    image = rootfs_image(args.dir)
    print(f"disk: {image['image']} ({image['release']}); {args.mib} MiB files", flush=True)
    with tempfile.TemporaryDirectory(prefix="pvhyp-bench-disk-") as scratch:
        pv = measure(DiskGuest(image, scratch_copy(image, scratch, "pvhyp"), args.memory),
                     rootfs.ROOT_PASSWORD, args.mib, args.timeout)
        _print_side("pvhyp", pv)
        qemu: dict = {"error": "skipped (--no-qemu)"}
        if not args.no_qemu:
            binary = qemu_binary()
            qemu = ({"error": "skipped (qemu-system-x86_64 not installed)"} if binary is None else
                    measure(QemuGuest(binary, image, scratch_copy(image, scratch, "qemu"), args.memory),
                            rootfs.ROOT_PASSWORD, args.mib, args.timeout))
            _print_side("qemu_tcg", qemu)
    if "error" not in pv and "error" not in qemu:
        for key, _, _ in ROWS:
            print(f"pvhyp_over_qemu_{key}: {pv[key] / qemu[key]:.2f} x")
    return 0 if "error" not in pv else 1


def _print_side(side: str, results: dict) -> None:
    if "error" in results:
        print(f"{side}: {results['error']}", flush=True)
        return
    print(f"{side}_login: {results['login_s']:.1f} s", flush=True)
    for key, what, unit in ROWS:
        print(f"{side}_{key}: {results[key]:.1f} {unit}  ({what})", flush=True)


