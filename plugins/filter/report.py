# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the drain report and the plan shown in check mode.

All of them take the result of hvfleet.drain.host_drain (a drain, a restore, or a plan in check mode):

* `timeline_svg`: the migrations as an inline SVG chart, one row per VM, the predicted duration as a
  light bar and the actual run as a solid bar (green moved, red failed, grey a definition move).
* `report_rows`: one flat row per VM (plan merged with what happened, blockers included) for tables.
* `plan_lines`: the plan as readable text lines, for a debug task in check mode.

Pure Python over plain data (dicts and lists); no Ansible objects.
"""

from __future__ import annotations

import datetime
import html
import math

from ansible_collections.hvfleet.drain.plugins.module_utils.common.units import MIB, fmt_duration

COLORS = {"ok": "#2e8b57", "failed": "#c0392b", "definition": "#8c8c8c", "predicted": "#9ecae1",
          "planned": "#9ecae1", "axis": "#555555", "grid": "#e3e3e3", "text": "#222222"}


# ---- helpers ------------------------------------------------------------------------------------


def _esc(value):
    return html.escape("" if value is None else str(value), quote=True)


def _num(value):
    try:
        if value is None or isinstance(value, bool):
            return None
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _parse_time(value):
    if not value:
        return None
    try:
        stamp = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)  # noqa: UP017
    return stamp


def _nice_step(span, ticks=8):
    """A round tick step (1, 2, 5 x 10^n seconds) giving about `ticks` ticks over `span`."""
    raw = max(span / max(ticks, 1), 1e-9)
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def _plan_by_vm(result):
    return {p.get("vm"): p for p in (result.get("plan") or []) if isinstance(p, dict)}


# ---- rows ---------------------------------------------------------------------------------------


def report_rows(result):
    """One row per VM: what was planned and what happened (plan-only: what is planned), then the blockers."""
    result = result or {}
    plan = _plan_by_vm(result)
    rows = []
    seen = set()
    vms = [v for v in (result.get("vms") or []) if isinstance(v, dict)]
    for vm in vms:
        name = vm.get("vm")
        seen.add(name)
        planned = plan.get(name, {})
        predicted = _num(vm.get("predicted_duration_s"))
        if predicted is None:
            predicted = _num(planned.get("predicted_duration_s"))
        actual = _num(vm.get("duration_s"))
        rows.append({
            "vm": name, "kind": vm.get("kind") or planned.get("kind"), "source": vm.get("source"),
            "destination": vm.get("destination") or planned.get("destination"),
            "policy": vm.get("policy") or planned.get("policy"), "policy_reason": planned.get("policy_reason"),
            "mode": vm.get("mode") or planned.get("mode"), "mode_used": vm.get("mode_used"),
            "mode_reason": planned.get("mode_reason"), "state": vm.get("state"), "ok": bool(vm.get("ok")),
            "outcome": vm.get("outcome"), "predicted_duration_s": predicted, "duration_s": actual,
            "delta_s": round(actual - predicted, 3) if actual is not None and predicted is not None else None,
            "predicted_downtime_ms": _num(vm.get("predicted_downtime_ms") if vm.get("predicted_downtime_ms")
                                          is not None else planned.get("predicted_downtime_ms")),
            "downtime_ms": _num(vm.get("downtime_ms")),
            "mib_sent": round(_num(vm.get("bytes_sent")) / MIB, 1) if _num(vm.get("bytes_sent")) is not None
            else None,
            "message": vm.get("message"), "recovery": vm.get("recovery"), "started": vm.get("started"),
            "finished": vm.get("finished"),
        })
    for name, planned in plan.items():
        if name in seen:
            continue
        seen.add(name)
        rows.append({
            "vm": name, "kind": planned.get("kind"), "source": planned.get("source"),
            "destination": planned.get("destination"), "policy": planned.get("policy"),
            "policy_reason": planned.get("policy_reason"), "mode": planned.get("mode"), "mode_used": None,
            "mode_reason": planned.get("mode_reason"), "state": "planned" if not vms else "not started",
            "ok": None, "outcome": None, "predicted_duration_s": _num(planned.get("predicted_duration_s")),
            "duration_s": None, "delta_s": None, "predicted_downtime_ms": _num(planned.get("predicted_downtime_ms")),
            "downtime_ms": None, "mib_sent": None, "message": planned.get("placement_reason"), "recovery": None,
            "started": None, "finished": None,
        })
    for blocker in result.get("blockers") or []:
        if not isinstance(blocker, dict) or blocker.get("vm") in seen:
            continue
        seen.add(blocker.get("vm"))
        rows.append({
            "vm": blocker.get("vm"), "kind": blocker.get("kind"), "source": None, "destination": None,
            "policy": None, "policy_reason": None, "mode": None, "mode_used": None, "mode_reason": None,
            "state": "blocked", "ok": False, "outcome": "blocked", "predicted_duration_s": None,
            "duration_s": None, "delta_s": None, "predicted_downtime_ms": None, "downtime_ms": None,
            "mib_sent": None, "message": blocker.get("message"), "recovery": blocker.get("fix"), "started": None,
            "finished": None,
        })
    return rows


# ---- timeline -----------------------------------------------------------------------------------


def _bars(result, concurrency):
    """[(name, predicted (start, end) | None, actual (start, end) | None, tone, label)] in seconds from t0."""
    rows = [r for r in report_rows(result) if r["state"] != "blocked"]
    starts = {r["vm"]: _parse_time(r["started"]) for r in rows}
    known = [s for s in starts.values() if s is not None]
    t0 = min(known) if known else None
    bars = []
    lanes = [0.0] * max(1, int(concurrency or 1))  # a simple schedule for VMs that did not run
    ordered = sorted(rows, key=lambda r: (starts[r["vm"]] is None, starts[r["vm"]] or 0, ))
    for row in ordered:
        start = starts[row["vm"]]
        predicted_len = row["predicted_duration_s"]
        actual = None
        if start is not None:
            begin = (start - t0).total_seconds()
            end_stamp = _parse_time(row["finished"])
            if end_stamp is not None:
                end = (end_stamp - t0).total_seconds()
            elif row["duration_s"] is not None:
                end = begin + row["duration_s"]
            else:
                end = begin
            actual = (begin, max(begin, end))
            predicted = (begin, begin + predicted_len) if predicted_len is not None else None
        else:
            lane = min(range(len(lanes)), key=lambda i: lanes[i])
            begin = lanes[lane]
            length = predicted_len if predicted_len is not None else 0.0
            lanes[lane] = begin + length
            predicted = (begin, begin + length) if predicted_len is not None else None
        if row["kind"] == "definition":
            tone = "definition"
        elif actual is None:
            tone = "planned"
        else:
            tone = "ok" if row["ok"] else "failed"
        label = ""
        if row["downtime_ms"] is not None:
            label = f"{row['downtime_ms']:.0f} ms down"
        elif actual is not None and not row["ok"]:
            label = row["outcome"] or "failed"
        bars.append((row["vm"], predicted, actual, tone, label, row))
    return bars


def timeline_svg(result, width=960, row_height=26, label_width=170):
    """The migrations of `result` as a self-contained SVG string (see the module docstring)."""
    # pylint: disable=too-many-locals,too-many-statements
    result = result or {}
    concurrency = (result.get("forecast") or {}).get("concurrency") or 1
    bars = _bars(result, concurrency)
    width = max(int(width), 400)
    label_width = int(label_width)
    right_pad = 110
    top, axis_h, legend_h = 10, 24, 22
    chart_w = width - label_width - right_pad
    height = top + legend_h + max(1, len(bars)) * row_height + axis_h + 10
    ends = [0.0]
    for _name, predicted, actual, _tone, _label, _row in bars:
        for span in (predicted, actual):
            if span is not None:
                ends.append(span[1])
    span_s = max(*ends, 1.0)
    step = _nice_step(span_s)
    span_s = math.ceil(span_s / step) * step

    def x(seconds):
        return label_width + chart_w * (seconds / span_s)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hvfleet-timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img" '
           f'aria-label="Timeline of the migrations, predicted and actual">']
    title = "Migrations: predicted (light) and actual" if any(b[2] for b in bars) else "Forecast of the migrations"
    out.append(f"<title>{_esc(title)}</title>")
    # legend
    legend_y = top + 4
    legend = [("predicted", "predicted"), ("ok", "moved"), ("failed", "failed"), ("definition", "definition")]
    lx = label_width
    for tone, text in legend:
        out.append(f'<rect x="{lx}" y="{legend_y}" width="14" height="10" fill="{COLORS[tone]}"/>')
        out.append(f'<text x="{lx + 18}" y="{legend_y + 9}" fill="{COLORS["text"]}">{_esc(text)}</text>')
        lx += 110
    chart_top = top + legend_h
    chart_bottom = chart_top + max(1, len(bars)) * row_height
    # grid and axis
    ticks = int(round(span_s / step))
    for i in range(ticks + 1):
        seconds = i * step
        gx = x(seconds)
        out.append(f'<line x1="{gx:.1f}" y1="{chart_top}" x2="{gx:.1f}" y2="{chart_bottom}" '
                   f'stroke="{COLORS["grid"]}"/>')
        out.append(f'<text x="{gx:.1f}" y="{chart_bottom + 16}" text-anchor="middle" '
                   f'fill="{COLORS["axis"]}">{_esc(_tick_label(seconds, step))}</text>')
    out.append(f'<line x1="{label_width}" y1="{chart_bottom}" x2="{label_width + chart_w}" y2="{chart_bottom}" '
               f'stroke="{COLORS["axis"]}"/>')
    if not bars:
        out.append(f'<text x="{label_width}" y="{chart_top + row_height - 8}" fill="{COLORS["text"]}">'
                   f'nothing to migrate</text>')
    for index, (name, predicted, actual, tone, label, row) in enumerate(bars):
        y = chart_top + index * row_height
        out.append(f'<g class="vm" data-vm="{_esc(name)}">')
        out.append(f'<text x="{label_width - 8}" y="{y + row_height * 0.65:.1f}" text-anchor="end" '
                   f'fill="{COLORS["text"]}">{_esc(name)}</text>')
        if predicted is not None:
            px, pw = x(predicted[0]), max(x(predicted[1]) - x(predicted[0]), 1.0)
            out.append(f'<rect class="predicted" x="{px:.1f}" y="{y + 3}" width="{pw:.1f}" '
                       f'height="{row_height - 6}" fill="{COLORS["predicted"]}" fill-opacity="0.6">'
                       f'<title>{_esc(name)}: predicted {_esc(fmt_duration(predicted[1] - predicted[0]))}'
                       f'</title></rect>')
        if actual is not None:
            ax, aw = x(actual[0]), max(x(actual[1]) - x(actual[0]), 1.0)
            tip = (f"{name}: {row['state'] or ''} in {fmt_duration(actual[1] - actual[0])} to "
                   f"{row['destination'] or '?'} ({row['mode_used'] or row['mode'] or '?'})")
            out.append(f'<rect class="actual {tone}" x="{ax:.1f}" y="{y + row_height * 0.3:.1f}" width="{aw:.1f}" '
                       f'height="{row_height * 0.4:.1f}" fill="{COLORS[tone]}"><title>{_esc(tip)}</title></rect>')
        end = max([s[1] for s in (predicted, actual) if s is not None], default=0.0)
        if label:
            out.append(f'<text class="label" x="{x(end) + 6:.1f}" y="{y + row_height * 0.65:.1f}" '
                       f'fill="{COLORS["axis"]}">{_esc(label)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def _tick_label(seconds, step):
    if step >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    if step >= 1:
        return f"{seconds:.0f} s"
    return f"{seconds:.1f} s"


# ---- plan as text -------------------------------------------------------------------------------


def plan_lines(result):
    """The plan of a check-mode run (or the plan part of any result) as readable lines."""
    result = result or {}
    action = result.get("action") or "drain"
    host = result.get("host") or "?"
    plan = [p for p in (result.get("plan") or []) if isinstance(p, dict)]
    blockers = [b for b in (result.get("blockers") or []) if isinstance(b, dict)]
    forecast = result.get("forecast") or {}
    verb = "draining" if action == "drain" else "restoring"
    head = f"Plan for {verb} {host}: {len(plan)} VM(s) to move, {len(blockers)} blocked"
    if forecast:
        head += (f"; forecast {fmt_duration(forecast.get('total_s'))} with up to {forecast.get('concurrency', 1)} at "
                 f"once ({fmt_duration(forecast.get('serial_s'))} one after the other)")
        if forecast.get("worst_downtime_ms") is not None:
            head += f", worst downtime {forecast['worst_downtime_ms']:.0f} ms"
    lines = [head]
    if result.get("state") == "drained" and not plan:
        lines.append(result.get("message") or f"{host} is already drained.")
    for item in plan:
        target = item.get("destination") if action == "drain" else host
        origin = "" if action == "drain" else f" (now on {item.get('source') or '?'})"
        lines.append(f"- {item.get('vm')}{origin} -> {target}: {item.get('mode') or '?'}"
                     + (" + auto-converge" if item.get("auto_converge") else ""))
        if item.get("mode_reason"):
            lines.append(f"    why this mode: {item['mode_reason']}")
        policy = item.get("policy") or "?"
        if item.get("policy_reason"):
            policy += f" ({item['policy_reason']})"
        lines.append(f"    policy: {policy}")
        if item.get("placement_reason"):
            lines.append(f"    why {target}: {item['placement_reason']}")
        if item.get("kind") != "definition":
            predicted = f"    predicted: {fmt_duration(item.get('predicted_duration_s'))}"
            if item.get("predicted_downtime_ms") is not None:
                predicted += f", downtime {item['predicted_downtime_ms']:.0f} ms"
            if item.get("predicted_bytes") is not None:
                predicted += f", {item['predicted_bytes'] / MIB:.0f} MiB to send"
            lines.append(predicted)
    if blockers:
        lines.append("Blocked (these VMs stay where they are):")
        for blocker in blockers:
            lines.append(f"- {blocker.get('vm') or '(host)'}: {blocker.get('message')}")
            if blocker.get("fix"):
                lines.append(f"    fix: {blocker['fix']}")
            for dest, reason in sorted((blocker.get("reasons") or {}).items()):
                lines.append(f"    {dest}: {reason}")
    if result.get("plan_differences"):
        lines.append("Differences from the reviewed plan:")
        lines.extend(f"- {d}" for d in result["plan_differences"])
    if result.get("lock_holder"):
        holder = result["lock_holder"]
        lines.append(f"Note: a {holder.get('purpose', 'drain')} is running now (pid {holder.get('pid')}, "
                     f"since {holder.get('started')}, by {holder.get('by')}).")
    if result.get("plan_file"):
        lines.append(f"Plan written to {result['plan_file']} on {host}.")
    return lines


class FilterModule:
    """hvfleet.drain report filters."""

    def filters(self):
        return {"timeline_svg": timeline_svg, "report_rows": report_rows, "plan_lines": plan_lines}
