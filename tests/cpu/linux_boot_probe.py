"""Boot a Linux PV kernel on the engine and print its console (a probe, not a test).

    .venv/bin/python -m tests.cpu.linux_boot_probe VMLINUZ [INITRD] [--seconds N]

Builds the domain with dom0's builder, runs vCPU 0 under the real hypervisor,
prints every console_io write, and at the end the vCPU's exit state and the
last hypercalls from the trace.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernel")
    parser.add_argument("initrd", nargs="?")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--cmdline", default="console=hvc0 earlyprintk=xen loglevel=8")
    args = parser.parse_args()

    from dom0.builder import build_pv_domain
    from dom0.xc import XenCtrl
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.host import build_hypervisor

    hv = build_hypervisor(args.memory_mb + 512, cpu=True)
    dom0 = create_process_domain(hv, nr_pages=256, privileged=True, domid=0)
    xc = XenCtrl(InProcessChannel(hv, dom0))
    domid = xc.domain_create(max_vcpus=1)
    initrd = pathlib.Path(args.initrd).read_bytes() if args.initrd else b""
    result = build_pv_domain(xc, domid, pathlib.Path(args.kernel).read_bytes(), args.memory_mb,
                             ramdisk=initrd, cmdline=args.cmdline)
    hv.mmu.fill_ro_mpt(result.l4_mfn)     # until the builder's setvcpucontext path does it
    domain = hv.domains[domid]
    hv.console_sinks.append(lambda _d, data: (sys.stdout.write(data.decode(errors="replace")), sys.stdout.flush()))
    xc.domain_unpause(domid)
    hv.cpu.start_domain(domain)
    start = time.monotonic()
    while not domain.is_shut_down and time.monotonic() - start < args.seconds:
        time.sleep(0.1)
    cpu = domain.vcpus[0].arch
    print(f"\n--- after {time.monotonic() - start:.1f} s: shut down {domain.is_shut_down} "
          f"(reason {domain.shutdown_reason}); crash {cpu.crash_reason}; error {cpu.engine.error!r}; {cpu.counts}")
    for record in hv.trace.history(domid)[-10:]:
        print(record)
    os._exit(0)          # vCPU threads are daemons; do not wait for them


if __name__ == "__main__":
    main()
