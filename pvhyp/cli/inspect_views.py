"""Text for `pvhyp inspect DOM --VIEW`: one renderer per view over the toolstack's plain data.

The data is what `--json` prints (pvhyp/introspect.py and dom0/toolstack/inspect.py build
it); these only lay it out, so a student can read the walk or the port table at a glance.
"""
from __future__ import annotations


def _frame(frame: dict | None) -> str:
    if not frame:
        return ""
    if not frame.get("valid", True):
        return f"mfn {frame['mfn']:#x} outside machine memory"
    pfn = "-" if frame["pfn"] is None else f"{frame['pfn']:#x}"
    pinned = " pinned" if frame["pinned"] else ""
    return (f"mfn {frame['mfn']:#x} (pfn {pfn}) owner {frame['owner']} type {frame['type']}{pinned} "
            f"type_count {frame['type_count']} count {frame['count']}")


def pagetables(data: dict, verbose: bool) -> list[str]:
    mode = "kernel" if data["kernel_mode"] else "user"
    lines = [f"va {data['va']:#018x} on vCPU {data['vcpu']} ({mode} mode), CR3 = L4 at mfn {data['cr3_mfn']:#x}"]
    for row in data["levels"]:
        lines.append(f"  L{row['level']}[{row['index']:3}] @ mfn {row['table_mfn']:#x}: {row['entry']:#018x} "
                     f"{' '.join(row['flags']) or '-'}")
        if row["frame"]:
            lines.append(f"          -> {_frame(row['frame'])}")
    if data["maps"]:
        maps = data["maps"]
        lines.append(f"  maps machine address {maps['maddr']:#x} ({maps['page_size'] // 1024} KiB page)")
    if data["stops"]:
        lines.append(f"  stops: {data['stops']}")
    return lines


def frames(data: dict, verbose: bool) -> list[str]:
    lines = [f"d{data['domid']}: {data['tot_pages']} of {data['max_pages']} pages"]
    for name, count in data["counts"].items():
        lines.append(f"  {name:<18} {count:7}")
    lines.append(f"  granted out (pinned by a mapper): {data['granted_out']}; "
                 f"mapped in from other domains: {data['mapped_in']}")
    rings = data.get("dom0_rings") or {}
    if rings.get("xenstore") is not None:
        lines.append(f"  xenstore ring: frame {rings['xenstore']:#x} (as the builder told dom0: mfn for "
                     "an x86 guest, pfn for a process)")
    for name, listing in (data.get("lists") or {}).items():
        runs = ", ".join(f"{a:#x}" if a == b else f"{a:#x}-{b:#x}" for a, b in listing["ranges"])
        more = f" (+{listing['left_out']} more ranges)" if listing["left_out"] else ""
        lines.append(f"  {name}: {runs or '-'}{more}")
    return lines


def evtchn(data: dict, verbose: bool) -> list[str]:
    lines = [f"d{data['domid']}: {data['bound']} ports in use, {data['pending']} pending",
             f"  {'port':>5} {'state':<12} {'vcpu':>4}  {'P':1} {'M':1}  binding"]
    for p in data["ports"]:
        if "peer" in p:
            binding = f"d{p['peer']['domid']} port {p['peer']['port']}"
        elif "virq" in p:
            binding = p["virq"]
        elif "remote_domid" in p:
            binding = f"awaiting d{p['remote_domid']}"
        elif "pirq" in p:
            binding = f"pirq {p['pirq']}"
        else:
            binding = ""
        lines.append(f"  {p['port']:5} {p['state']:<12} {p['notify_vcpu']:4}  "
                     f"{int(bool(p.get('pending')))} {int(bool(p.get('masked')))}  "
                     f"{binding}{' (Xen)' if p.get('xen_consumer') else ''}")
    if data["left_out"]:
        lines.append(f"  ... {data['left_out']} more ports")
    for v in data["vcpus"]:
        lines.append(f"  vCPU {v['vcpu']}: upcall_pending {int(v['upcall_pending'])}, "
                     f"pending_sel {v['pending_sel']:#x}")
    return lines


def grants(data: dict, verbose: bool) -> list[str]:
    lines = [f"d{data['domid']}: grant table v{data['version']}, {data['nr_frames']} of "
             f"{data['max_frames']} frames, {data['in_use']} entries in use",
             f"  {'ref':>6} {'to':>5} {'frame':>10} {'pin':>8}  flags"]
    for e in data["entries"]:
        mapped = f" (mapped by d{e['mapped_by']})" if e["mapped_by"] is not None else ""
        lines.append(f"  {e['ref']:6} d{e['domid']:<4} {e['frame']:#10x} {e['pin']:#8x}  "
                     f"{' '.join(e['flags'])}{mapped}")
    if data["entries_left_out"]:
        lines.append(f"  ... {data['entries_left_out']} more entries")
    lines.append(f"maptrack (what d{data['domid']} maps of others): {len(data['maptrack'])} handles, "
                 f"{data['mapped']} mappings")
    for m in data["maptrack"]:
        lines.append(f"  handle {m['handle']:5}: d{m['domid']} ref {m['ref']} -> mfn {m['mfn']:#x} "
                     f"{' '.join(m['flags'])} at {m['host_addr']:#x}")
    return lines


def rings(data: dict, verbose: bool) -> list[str]:
    lines = [f"d{data['domid']}: {len(data['devices'])} rings served by dom0"]
    for dev in data["devices"]:
        ports = f", ports {dev['ports']}" if dev["ports"] else ""
        lines.append(f"  {dev['kind']} {dev['devid']} ({dev['device']}): {dev['state']}{ports}")
        for name, r in dev["rings"].items():
            if "req_prod" in r:
                lines.append(f"    {name}: {r['nr_ents']} slots; req_prod {r['req_prod']} req_cons {r['req_cons']} "
                             f"rsp_prod_pvt {r['rsp_prod_pvt']} rsp_prod {r['rsp_prod']} "
                             f"(req_event {r['req_event']} rsp_event {r['rsp_event']})")
                lines.append(f"      outstanding {r['outstanding']}: {r['unconsumed_requests']} not taken, "
                             f"{r['in_flight']} being served, {r['unpushed_responses']} answered not pushed")
            else:
                lines.append(f"    {name}: cons {r['cons']} prod {r['prod']}: {r['waiting']} of {r['size']} bytes waiting")
    return lines


def xenstore(data: dict, verbose: bool) -> list[str]:
    lines = []
    for node in data["nodes"]:
        lines.append(f"{node['path']} = \"{node['value']}\"  ({', '.join(node['perms'])})")
    if data["left_out"]:
        lines.append(f"... {data['left_out']} more nodes")
    lines.append(f"watches covering {data['path']}: {len(data['watches'])}")
    for w in data["watches"]:
        lines.append(f"  {w['path']} token {w['token']!r}: d{w['domid']} (connection {w['connection']}, {w['via']})")
    return lines


RENDERERS = {"pagetables": pagetables, "frames": frames, "evtchn": evtchn, "grants": grants,
             "rings": rings, "xenstore": xenstore}


def render(reply: dict, verbose: bool = False) -> str:
    """The toolstack's reply to `inspect` as text: a heading, then the view's lines."""
    heading = f"{reply['name']} (d{reply['domid']}): {reply['view']}"
    return "\n".join([heading] + RENDERERS[reply["view"]](reply["data"], verbose))
