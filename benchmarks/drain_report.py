"""Pure parts of the drain benchmark (benchmarks/drain_bench.py): figures, medians, table, SVG.

No lab, no libvirt: tests/unit/benchmarks/test_drain_bench_math.py checks these.

A run of one contender is a dict:
    {"contender": str, "makespan_s": float, "link_bps": float, "forecast_s": float | None,
     "forecast_basis_s": float | None (the span the forecast predicts; default the makespan),
     "baseline_gap_ms": int | None, "vms": [vm, ...]}
and each vm:
    {"name", "kind", "ram_bytes", "ok" (on a destination, running), "downtime_ms" (libvirt, or None),
     "guest_pause_ms" (longest heartbeat gap, or None), "bytes_sent" (or None), "rebooted", "hung",
     "suspended" (paused by the contender to force completion), "mode", "duration_s", "destination"}
"""

from __future__ import annotations

import html
import statistics

MIB = 2**20
PAUSED_LONG_MS = 1000  # a guest pause at least this long counts as "paused long"

# (key, header, format) of the table, in order
COLUMNS = (
    ("makespan_s", "makespan s", "{:.1f}"),
    ("bound_ratio", "x bound", "{:.2f}"),
    ("downtime_max_ms", "downtime max ms", "{:.0f}"),
    ("downtime_median_ms", "downtime med ms", "{:.0f}"),
    ("pause_max_ms", "guest pause max ms", "{:.0f}"),
    ("pause_median_ms", "guest pause med ms", "{:.0f}"),
    ("sent_ratio", "sent / RAM", "{:.2f}"),
    ("failed", "failed", "{:.0f}"),
    ("paused_long", "paused >= 1 s", "{:.0f}"),
    ("suspended", "force-paused", "{:.0f}"),
    ("rebooted", "guest rebooted", "{:.0f}"),
    ("hung", "guest hung", "{:.0f}"),
    ("forecast_s", "forecast s", "{:.1f}"),
    ("forecast_error", "forecast err", "{:+.0%}"),
)


def physical_bound_s(ram_bytes, link_bps):
    """Seconds the link needs to send every guest's RAM once: the floor for any drain over it."""
    if not link_bps or link_bps <= 0:
        raise ValueError("link_bps must be positive")
    return sum(ram_bytes) / float(link_bps)


def median(values):
    """Median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def figures(run):
    """One contender's run -> its row of figures (None where the contender gives no figure)."""
    vms = run["vms"]
    ram = [vm["ram_bytes"] for vm in vms]
    bound = physical_bound_s(ram, run["link_bps"])
    downtimes = [vm.get("downtime_ms") for vm in vms]
    # a guest that rebooted or hung shows its reboot (or silence) as a gap: no pause figure for it,
    # it is counted in its own column instead
    pauses = [None if vm.get("rebooted") or vm.get("hung") else vm.get("guest_pause_ms") for vm in vms]
    sent = [vm.get("bytes_sent") for vm in vms]
    known_sent = [(s, vm["ram_bytes"]) for s, vm in zip(sent, vms, strict=True) if s]
    forecast = run.get("forecast_s")
    basis = run.get("forecast_basis_s") or run["makespan_s"]  # what the forecast predicts: the migrations
    row = {
        "contender": run["contender"],
        "makespan_s": run["makespan_s"],
        "bound_s": bound,
        "bound_ratio": run["makespan_s"] / bound if bound else None,
        "downtime_max_ms": max((d for d in downtimes if d is not None), default=None),
        "downtime_median_ms": median(downtimes),
        "downtime_known": sum(1 for d in downtimes if d is not None),
        "pause_max_ms": max((p for p in pauses if p is not None), default=None),
        "pause_median_ms": median(pauses),
        "sent_ratio": (sum(s for s, _r in known_sent) / sum(r for _s, r in known_sent)) if known_sent else None,
        "failed": sum(1 for vm in vms if not vm.get("ok")),
        "paused_long": sum(1 for p in pauses if p is not None and p >= PAUSED_LONG_MS),
        "suspended": sum(1 for vm in vms if vm.get("suspended")),
        "rebooted": sum(1 for vm in vms if vm.get("rebooted")),
        "hung": sum(1 for vm in vms if vm.get("hung")),
        "forecast_s": forecast,
        "forecast_error": (forecast / basis - 1) if forecast and basis else None,
        "vms": len(vms),
    }
    return row


def aggregate(runs):
    """Rows of figures per run -> one row per contender: the median of every figure over the runs.

    Contenders keep the order in which they first appear. `runs` counts the runs per contender.
    """
    rows = [figures(r) for r in runs]
    order = []
    for row in rows:
        if row["contender"] not in order:
            order.append(row["contender"])
    out = []
    for name in order:
        mine = [r for r in rows if r["contender"] == name]
        agg = {"contender": name, "runs": len(mine)}
        for key in mine[0]:
            if key == "contender":
                continue
            agg[key] = median([r[key] for r in mine])
        out.append(agg)
    return out


def _cell(value, fmt):
    return "-" if value is None else fmt.format(value)


def render_table(rows, markdown=False):
    """The per-contender rows as a plain-text (or Markdown) table."""
    headers = ["contender", "runs"] + [h for _k, h, _f in COLUMNS]
    body = [[row["contender"], str(row.get("runs", 1))] + [_cell(row.get(k), f) for k, _h, f in COLUMNS]
            for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(headers[i]), *(len(cells[i]) for cells in body)) for i in range(len(headers))]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return "\n".join([line(headers)] + [line(cells) for cells in body])


def _bars(rows, key, scale_max, x0, y0, width, bar_h, colour, unit, label_fmt):
    parts = []
    for i, row in enumerate(rows):
        value = row.get(key)
        y = y0 + i * (bar_h + 8)
        length = 0 if not value or not scale_max else width * min(1.0, value / scale_max)
        parts.append(f'<text x="{x0 - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">'
                     f'{html.escape(row["contender"])}</text>')
        parts.append(f'<rect x="{x0}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="{colour}"/>')
        text = "n/a" if value is None else label_fmt.format(value) + unit
        parts.append(f'<text x="{x0 + length + 6:.1f}" y="{y + bar_h * 0.7:.1f}">{text}</text>')
    return parts


PANELS = (
    ("makespan_s", "Drain makespan (s)", " s", "{:.1f}", "#4878a8"),
    ("downtime_max_ms", "Worst libvirt downtime (ms; none reported after a post-copy)", " ms", "{:.0f}", "#d08030"),
    ("pause_max_ms", "Worst guest pause, heartbeat gap (ms; guests that rebooted or hung excluded)", " ms", "{:.0f}",
     "#60a060"),
)


def render_svg(rows, title="Drain benchmark (medians)", bound_s=None):
    """A small hand-written SVG: makespan (physical bound marked), worst downtime, worst guest pause."""
    width, left, plot_w, bar_h = 760, 170, 470, 20
    block = max(1, len(rows)) * (bar_h + 8)
    height = 50 + len(PANELS) * (block + 50)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="16">{html.escape(title)}</text>']
    y = 60
    for key, label, unit, fmt, colour in PANELS:
        values = [r.get(key) or 0 for r in rows] + ([bound_s or 0] if key == "makespan_s" else [])
        scale = max(values) * 1.1 or 1.0
        parts.append(f'<text x="{left}" y="{y - 10}" font-weight="bold">{html.escape(label)}</text>')
        parts += _bars(rows, key, scale, left, y, plot_w, bar_h, colour, unit, fmt)
        if key == "makespan_s" and bound_s:
            x = left + plot_w * min(1.0, bound_s / scale)
            parts.append(f'<line x1="{x:.1f}" y1="{y - 4}" x2="{x:.1f}" y2="{y + block}" stroke="#c03030" '
                         f'stroke-dasharray="4 3"/>')
            parts.append(f'<text x="{x:.1f}" y="{y + block + 10}" fill="#c03030" text-anchor="middle" '
                         f'font-size="11">physical bound {bound_s:.1f} s</text>')
        y += block + 50
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
