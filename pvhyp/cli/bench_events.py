"""Event channel and grant table costs, through the hypercall path of two process domains."""
from __future__ import annotations

import time

DESCRIPTION = "EVTCHNOP_send rate, grant map+unmap pairs, GNTTABOP_copy throughput"


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=20000, help="sends per measurement (maps: /4)")
    parser.add_argument("--batch", type=int, default=16, help="4 KiB copies per GNTTABOP_copy")


def _build(struct, fields: dict) -> bytes:
    base = dict(struct.parse(bytes(struct.sizeof())))
    base.update(fields)
    return struct.build(base)


def run(args) -> int:
    from abi import event_channel as EA
    from abi import grant_table as GA
    from abi.xen import DOMID_SELF, HYPERCALL_NUMBERS
    from pvhyp.channel import InProcessChannel, create_process_domain
    from pvhyp.host import build_hypervisor

    hv = build_hypervisor(64, cpu=False)
    a, b = (InProcessChannel(hv, create_process_domain(hv, 64)) for _ in range(2))
    ev, gt = HYPERCALL_NUMBERS["event_channel_op"], HYPERCALL_NUMBERS["grant_table_op"]
    arg_a, arg_b, data_pfn = 0x1000, 0x1000, 8

    def put(ch, addr, data):
        ch.memory[addr:addr + len(data)] = data

    # An interdomain channel: a offers, b binds; a sends.
    put(a, arg_a, _build(EA.evtchn_alloc_unbound, {"dom": DOMID_SELF, "remote_dom": b.domid}))
    a.hypercall(ev, EA.EVTCHNOP_alloc_unbound, arg_a)
    port = EA.evtchn_alloc_unbound.parse(bytes(a.memory[arg_a:arg_a + 8]))["port"]
    put(b, arg_b, _build(EA.evtchn_bind_interdomain, {"remote_dom": a.domid, "remote_port": port}))
    b.hypercall(ev, EA.EVTCHNOP_bind_interdomain, arg_b)
    put(a, arg_a, _build(EA.evtchn_send, {"port": port}))
    n = args.count
    t = time.perf_counter()
    for _ in range(n):
        a.hypercall(ev, EA.EVTCHNOP_send, arg_a)
    dt = time.perf_counter() - t
    print(f"evtchn_send: {dt / n * 1e6:.2f} us")

    # a grants a page to b (v1 entry 10, written into a's table frame as a guest does).
    put(a, arg_a, _build(GA.gnttab_setup_table, {"dom": DOMID_SELF, "nr_frames": 1, "frame_list": arg_a + 64}))
    a.hypercall(gt, GA.GNTTABOP_setup_table, arg_a, 1)
    table = int.from_bytes(a.memory[arg_a + 64:arg_a + 72], "little")
    entry = a.map_machine_frame(table)[10 * 8:11 * 8]
    entry[2:4] = b.domid.to_bytes(2, "little")
    entry[4:8] = data_pfn.to_bytes(4, "little")
    entry[0:2] = GA.GTF_permit_access.to_bytes(2, "little")
    del entry
    mapop = _build(GA.gnttab_map_grant_ref, {"dom": a.domid, "ref": 10, "flags": GA.GNTMAP_host_map,
                                             "host_addr": 0x10000})
    size = GA.gnttab_map_grant_ref.sizeof()
    n = max(1, args.count // 4)
    t = time.perf_counter()
    for _ in range(n):
        put(b, arg_b, mapop)
        b.hypercall(gt, GA.GNTTABOP_map_grant_ref, arg_b, 1)
        handle = int.from_bytes(b.memory[arg_b + 20:arg_b + 24], "little")
        put(b, arg_b + size, _build(GA.gnttab_unmap_grant_ref, {"handle": handle, "host_addr": 0x10000}))
        b.hypercall(gt, GA.GNTTABOP_unmap_grant_ref, arg_b + size, 1)
    dt = time.perf_counter() - t
    print(f"grant_map_unmap: {dt / n * 1e6:.2f} us")

    copy = _build(GA.gnttab_copy, {"source": {"u": {"gmfn": data_pfn + 1}, "domid": DOMID_SELF, "offset": 0},
                                   "dest": {"u": {"ref": 10}, "domid": a.domid, "offset": 0},
                                   "len": 4096, "flags": GA.GNTCOPY_dest_gref})
    put(b, arg_b, copy * args.batch)
    n = max(1, args.count // 40)
    t = time.perf_counter()
    for _ in range(n):
        b.hypercall(gt, GA.GNTTABOP_copy, arg_b, args.batch)
    dt = time.perf_counter() - t
    print(f"grant_copy: {n * args.batch * 4096 / dt / 2**20:.1f} MiB/s")
    hv.close()
    return 0
