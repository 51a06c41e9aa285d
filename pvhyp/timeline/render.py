"""A timeline picture drawn by pvhyp itself: `pvhyp trace render TRACE OUT.svg`.

Rows are the trace's threads grouped by domain (vCPUs, dom0's backends),
slices are boxes coloured by kind and stacked by nesting depth, flows are
arrows, one counter row per domain shows hypercalls/s, and a time axis and a
legend finish it. The picture is a plain SVG (no script, no fonts fetched),
so a README shows it and any browser opens it.

Bounded whatever the trace: only the chosen window is drawn, and boxes
narrower than MERGE_PX that touch the previous box on their row are merged
into it, so a second of a Debian boot is a few thousand elements, not a
million.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from pvhyp.timeline.check import Timeline

COLOURS = {"run": "#b7e1a1", "hypercall": "#4c78a8", "trap": "#e45756", "event": "#f58518",
           "grant": "#eeca3b", "backend": "#9d6fb0", "other": "#999999"}
LEGEND = [("run", "guest running (one engine run)"), ("hypercall", "hypercall"), ("event", "event send / upcall"),
          ("trap", "trap bounced to the guest"), ("grant", "grant map/unmap"), ("backend", "dom0 backend work"),
          ("flow", "ring kick (flow)")]
FLOW_COLOUR = "#d62728"
LABEL_PX = 190
ROW_PX = 26
COUNTER_PX = 30
AXIS_PX = 34
TITLE_PX = 28
LEGEND_PX = 24
MERGE_PX = 0.6
MAX_DEPTH = 4


@dataclass
class Window:
    start_us: float
    end_us: float

    @property
    def span(self) -> float:
        return max(self.end_us - self.start_us, 1.0)


def choose_window(timeline: Timeline, start: float | None, duration: float | None, focus: str | None) -> Window:
    """Seconds from the trace's first event (start, duration), or around the first slice named like
    `focus`; by default the whole trace."""
    stamps = [s["ts"] for s in timeline.slices] + [s["ts"] + s["dur"] for s in timeline.slices]
    if not stamps:
        return Window(0.0, 1.0)
    first, last = min(stamps), max(stamps)
    if focus:
        hit = next((s for s in sorted(timeline.slices, key=lambda s: s["ts"]) if focus in s["name"]), None)
        if hit is None:
            raise ValueError(f"no slice named like {focus!r} in the trace")
        span = (duration * 1e6) if duration else max(hit["dur"] * 6, 2000.0)
        centre = hit["ts"] + hit["dur"] / 2
        return Window(max(first, centre - span / 3), max(first, centre - span / 3) + span)
    begin = first + (start or 0.0) * 1e6
    end = begin + duration * 1e6 if duration else last
    return Window(begin, min(end, last) if not duration else end)


def render_svg(timeline: Timeline, window: Window, width: int = 1200, title: str = "pvhyp timeline") -> str:
    rows = _rows(timeline)
    counter_rows = _counter_rows(timeline)
    plot_w = width - LABEL_PX - 20
    top = TITLE_PX + LEGEND_PX
    height = top + len(rows) * ROW_PX + len(counter_rows) * COUNTER_PX + AXIS_PX + 10
    scale = plot_w / window.span

    def x_of(us: float) -> float:
        return LABEL_PX + (us - window.start_us) * scale

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="18" font-size="14" font-weight="bold">{_esc(title)}</text>',
    ]
    _legend(out, LABEL_PX, TITLE_PX + 14)
    row_y: dict[tuple[int, int], float] = {}
    previous_pid = None
    for index, (key, label, pid) in enumerate(rows):
        y = top + index * ROW_PX
        row_y[key] = y
        if index % 2 == 0:
            out.append(f'<rect x="0" y="{y}" width="{width}" height="{ROW_PX}" fill="#f4f4f4"/>')
        if pid != previous_pid:
            out.append(f'<line x1="0" y1="{y}" x2="{width}" y2="{y}" stroke="#bbbbbb"/>')
            previous_pid = pid
        out.append(f'<text x="6" y="{y + ROW_PX * 0.65:.1f}">{_esc(label)}</text>')
    _slices(out, timeline, window, row_y, x_of)
    _flows(out, timeline, window, row_y, x_of)
    y0 = top + len(rows) * ROW_PX
    for index, (_pid, label, points) in enumerate(counter_rows):
        _counter(out, label, points, y0 + index * COUNTER_PX, window, x_of, width)
    _axis(out, window, y0 + len(counter_rows) * COUNTER_PX, x_of, plot_w)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _rows(timeline: Timeline) -> list[tuple[tuple[int, int], str, int]]:
    """(pid, tid), label, pid: processes in order, vCPUs first, then dom0's backend threads."""
    used = {(s["pid"], s["tid"]) for s in timeline.slices}
    rows = []
    for key in sorted(used):
        pid, tid = key
        process = timeline.processes.get(pid, f"pid {pid}")
        rows.append((key, f"{process} · {timeline.threads.get(key, tid)}", pid))
    return rows


def _counter_rows(timeline: Timeline) -> list[tuple[int, str, list[tuple[float, float]]]]:
    """hypercalls/s summed over hypercalls, one row per domain."""
    rows = []
    for pid in sorted(timeline.processes):
        series: dict[float, float] = {}
        for (cpid, name), points in timeline.counters.items():
            if cpid == pid and name.startswith("hypercalls/s "):
                for ts, value in points:
                    series[ts] = series.get(ts, 0.0) + value
        if series:
            rows.append((pid, f"{timeline.processes[pid]} · hypercalls/s", sorted(series.items())))
    return rows


def _slices(out: list[str], timeline: Timeline, window: Window, row_y: dict, x_of) -> None:
    by_row: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for s in timeline.slices:
        if s["ts"] + s["dur"] >= window.start_us and s["ts"] <= window.end_us:
            by_row.setdefault((s["pid"], s["tid"]), []).append(s)
    for key, slices in by_row.items():
        y = row_y[key]
        open_ends: list[float] = []
        open_boxes: list[list[Any]] = []        # the boxes of the open slices (their labels yield to children)
        merged: dict[int, list[Any]] = {}       # depth -> the last box drawn there
        boxes: list[list[Any]] = []
        for s in sorted(slices, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= s["ts"]:
                open_ends.pop()
                open_boxes.pop()
            depth = min(len(open_ends), MAX_DEPTH)
            if open_boxes:
                open_boxes[-1][6] = True
            open_ends.append(s["ts"] + s["dur"])
            x0 = max(x_of(s["ts"]), x_of(window.start_us))
            x1 = min(x_of(s["ts"] + s["dur"]), x_of(window.end_us))
            colour = _shade(COLOURS.get(s.get("cat", "other"), COLOURS["other"]), depth)
            last = merged.get(depth)
            if last is not None and x1 - x0 < MERGE_PX and x0 <= last[1] + MERGE_PX and last[2] == colour:
                last[1] = max(last[1], x1)
                last[3] += 1
                open_boxes.append(last)
                continue
            box = [x0, x1, colour, 1, s["name"], depth, False]
            merged[depth] = box
            boxes.append(box)
            open_boxes.append(box)
        for x0, x1, colour, count, name, depth, has_children in boxes:
            inset = 2 + depth * 4
            h = ROW_PX - 2 * inset
            tip = name if count == 1 else f"{name} and {count - 1} more"
            out.append(f'<rect x="{x0:.2f}" y="{y + inset}" width="{max(x1 - x0, 0.5):.2f}" height="{max(h, 2)}" '
                       f'fill="{colour}"><title>{_esc(tip)}</title></rect>')
            if x1 - x0 > 7 * len(name) and depth <= 1 and not has_children:
                out.append(f'<text x="{x0 + 3:.1f}" y="{y + ROW_PX * 0.65:.1f}" fill="{_ink(colour)}">'
                           f'{_esc(name)}</text>')
    for ev in timeline.instants:
        key = (ev["pid"], ev["tid"])
        if key in row_y and window.start_us <= ev["ts"] <= window.end_us:
            x = x_of(ev["ts"])
            colour = COLOURS.get(ev.get("cat", "other"), COLOURS["other"])
            y = row_y[key]
            out.append(f'<path d="M{x:.2f} {y + 3} l3 5 l-6 0 z" fill="{colour}"><title>{_esc(ev["name"])}</title></path>')


def _flows(out: list[str], timeline: Timeline, window: Window, row_y: dict, x_of) -> None:
    out.append(f'<defs><marker id="arrow" markerWidth="6" markerHeight="6" refX="5" refY="3" orient="auto">'
               f'<path d="M0 0 L6 3 L0 6 z" fill="{FLOW_COLOUR}"/></marker></defs>')
    for s, f in timeline.flows:
        if not (window.start_us <= s["ts"] <= window.end_us or window.start_us <= f["ts"] <= window.end_us):
            continue
        ks, kf = (s["pid"], s["tid"]), (f["pid"], f["tid"])
        if ks not in row_y or kf not in row_y:
            continue
        x1, y1 = x_of(s["ts"]), row_y[ks] + ROW_PX / 2
        x2, y2 = x_of(f["ts"]), row_y[kf] + ROW_PX / 2
        out.append(f'<path d="M{x1:.1f} {y1:.1f} C{x1 + 20:.1f} {y1:.1f} {x2 - 20:.1f} {y2:.1f} {x2:.1f} {y2:.1f}" '
                   f'stroke="{FLOW_COLOUR}" stroke-width="1.2" fill="none" marker-end="url(#arrow)">'
                   f'<title>{_esc(s["name"])}</title></path>')


def _counter(out: list[str], label: str, points, y: float, window: Window, x_of, width: int) -> None:
    before = [(ts, v) for ts, v in points if ts < window.start_us]
    shown = ([(window.start_us, before[-1][1])] if before else []) + [
        (ts, v) for ts, v in points if window.start_us <= ts <= window.end_us]
    out.append(f'<text x="6" y="{y + COUNTER_PX * 0.6:.1f}" fill="#555555">{_esc(label)}</text>')
    if not shown:
        return
    peak = max(v for _, v in shown) or 1.0
    path: list[str] = []
    for ts, value in shown:
        px = x_of(ts)
        py = y + COUNTER_PX - 4 - (COUNTER_PX - 8) * value / peak
        path.append(f"M{px:.1f} {py:.1f}" if not path else f"H{px:.1f} V{py:.1f}")     # steps
    path.append(f"H{x_of(window.end_us):.1f}")
    out.append(f'<path d="{" ".join(path)}" stroke="#4c78a8" fill="none"/>')
    out.append(f'<text x="{width - 14}" y="{y + 11}" text-anchor="end" fill="#555555">peak {peak:,.0f}/s</text>')


def _axis(out: list[str], window: Window, y: float, x_of, plot_w: float) -> None:
    out.append(f'<line x1="{LABEL_PX}" y1="{y + 4}" x2="{LABEL_PX + plot_w}" y2="{y + 4}" stroke="#333333"/>')
    step = _tick_step(window.span / 8)
    tick = window.start_us          # ticks counted from the window's start: round labels
    while tick < window.end_us - step / 4:      # the last label would run off the picture
        x = x_of(tick)
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 8}" stroke="#333333"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 22}" text-anchor="middle">'
                   f'+{_time_label(tick - window.start_us, step)}</text>')
        tick += step
    out.append(f'<text x="6" y="{y + 22}" fill="#555555">t = {window.start_us / 1e6:.6f} s</text>')


def _tick_step(rough: float) -> float:
    step = 1.0
    while step * 10 <= rough:
        step *= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= rough:
            return step * factor
    return step * 10


def _time_label(us: float, step: float) -> str:
    if step >= 1e6:
        return f"{us / 1e6:.0f} s"
    if step >= 1e3:
        return f"{us / 1e3:,.0f} ms"
    return f"{us / 1e3:,.3f} ms"


def _legend(out: list[str], x: float, y: float) -> None:
    for kind, text in LEGEND:
        colour = FLOW_COLOUR if kind == "flow" else COLOURS[kind]
        out.append(f'<rect x="{x:.0f}" y="{y - 9}" width="12" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 16:.0f}" y="{y}">{_esc(text)}</text>')
        x += 24 + 6.2 * len(text)


def _shade(colour: str, depth: int) -> str:
    """Darker with each nesting level, so a slice inside one of its own kind stands out."""
    factor = 0.82 ** depth
    r, g, b = (int(int(colour[i:i + 2], 16) * factor) for i in (1, 3, 5))
    return f"#{r:02x}{g:02x}{b:02x}"


def _ink(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#000000" if r * 0.3 + g * 0.59 + b * 0.11 > 140 else "#ffffff"


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)
