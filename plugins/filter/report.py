# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters for the drain report and the plan shown in check mode.

All of them take the result of hvfleet.drain.host_drain (a drain, a restore, or a plan in check mode):

* `timeline_svg`: the migrations as an inline SVG chart, one row per VM on one time axis (seconds from
  the first migration's start): the planned slot from the drain schedule (predicted start to predicted
  end) as a light bar, and below it the actual run (actual start to actual end) as a solid bar (green
  moved, red failed, grey a definition move), each labelled with its times. A VM with no planned slot
  (resumed from the journal, a cold move, a definition move, blocked, left on the host) gets no light
  bar but a line saying why.
* `report_rows`: one flat row per VM (plan merged with what happened, blockers and VMs left on the host
  included) for tables, with the per-VM forecast error and whether it was within the goal.
* `plan_lines`: the plan as readable text lines, for a debug task in check mode.

Pure Python over plain data (dicts and lists); no Ansible objects.
"""

from __future__ import annotations

import datetime
import html
import math

from ansible_collections.hvfleet.drain.plugins.module_utils.common.units import MIB, fmt_duration
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.report import forecast_error, within_goal

COLORS = {"ok": "#2e8b57", "failed": "#c0392b", "definition": "#8c8c8c", "predicted": "#9ecae1",
          "planned": "#9ecae1", "axis": "#555555", "grid": "#e3e3e3", "text": "#222222", "note": "#777777"}

ROW_KEYS = ("vm", "kind", "source", "destination", "policy", "policy_reason", "mode", "mode_used", "mode_reason",
            "state", "ok", "outcome", "predicted_duration_s", "duration_s", "delta_s", "predicted_downtime_ms",
            "downtime_ms", "mib_sent", "message", "recovery", "started", "finished", "predicted_start_s",
            "predicted_end_s", "actual_start_s", "actual_end_s", "forecast_error_s", "forecast_error_pct",
            "forecast_within_goal", "no_prediction")
NO_ERROR = {"forecast_error_s": None, "forecast_error_pct": None, "forecast_within_goal": None}
LABEL_CHARS = 90  # a reason longer than this is cut in the chart; the full text is in its tooltip


# ---- helpers ------------------------------------------------------------------------------------


def _esc(value):
    return html.escape("" if value is None else str(value), quote=True)


def _num(value):
    try:
        if value is None or isinstance(value, bool):
            return None
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _first_num(*values):
    """The first value that is a usable number: the VM's own record first, then its plan item."""
    for value in values:
        number = _num(value)
        if number is not None:
            return number
    return None


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


def _secs(value):
    """A point on the time axis as the labels print it: tenths below 100 s, whole seconds above."""
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def _plan_by_vm(result):
    return {p.get("vm"): p for p in (result.get("plan") or []) if isinstance(p, dict)}


def _resumed(result):
    """VMs this run took over from the journal: their start and any prediction belong to an earlier run."""
    return {r.get("vm") for r in (result.get("reconciled") or []) if isinstance(r, dict)}


# ---- rows ---------------------------------------------------------------------------------------


def _row(**fields):
    """A row with every key of ROW_KEYS, so templates never meet an undefined one."""
    row = dict.fromkeys(ROW_KEYS)
    row.update(fields)
    return row


def _slot(item, planned):
    """The VM's slot in the drain schedule, (predicted start, predicted end) in seconds from the first
    migration's start, or None: the VM's record first, its plan item for what the record lacks."""
    start = _first_num(item.get("predicted_start_s"), planned.get("predicted_start_s"))
    end = _first_num(item.get("predicted_end_s"), planned.get("predicted_end_s"))
    if start is not None and end is None:
        length = _num(item.get("predicted_duration_s"))  # a result's VM row: the schedule's span
        end = start + length if length is not None else None
    if start is None or end is None or end < start:
        return None
    return start, end


def _why_no_slot(kind, resumed=False):
    """Why a VM has no predicted bar: said in the chart so a missing bar is never read as a perfect forecast."""
    if resumed:
        return "no prediction: resumed from the journal, its move began in an earlier run"
    if kind == "cold":
        return "no prediction: a cold move (shut down, moved, started); its outage has only an upper bound"
    if kind == "definition":
        return "no prediction: a definition move (the VM is shut off; nothing is migrated)"
    return "no prediction: no slot in the drain schedule"


def _error(vm, kind, predicted, actual, resumed):
    """The forecast error of a VM that moved: the module's figures when it gave them, else the same rule
    (drain/report.forecast_error: within 20 % or 2 s, whichever is larger). None without a forecast."""
    if resumed or kind == "cold" or not vm.get("ok"):
        return dict(NO_ERROR)
    if "forecast_within_goal" in vm:
        return {key: vm.get(key) for key in NO_ERROR}
    return forecast_error(predicted, actual)


def _predicted_length(vm, planned, slot):
    """The slot's length when the VM has one (what its run is compared with), else its own forecast."""
    if slot:
        return round(slot[1] - slot[0], 3)
    return _first_num(vm.get("predicted_duration_s"), planned.get("predicted_duration_s"))


def _vm_row(vm, planned, resumed):
    """A VM that ran (or was found moved): what was planned beside what happened."""
    kind = vm.get("kind") or planned.get("kind")
    slot = None if resumed else _slot(vm, planned)
    predicted = _predicted_length(vm, planned, slot) if not resumed else None  # an earlier run's: not this one's
    actual = _num(vm.get("duration_s"))
    sent = _num(vm.get("bytes_sent"))
    return _row(
        vm=vm.get("vm"), kind=kind, source=vm.get("source"),
        destination=vm.get("destination") or planned.get("destination"),
        policy=vm.get("policy") or planned.get("policy"), policy_reason=planned.get("policy_reason"),
        mode=vm.get("mode") or planned.get("mode"), mode_used=vm.get("mode_used"),
        mode_reason=planned.get("mode_reason"), state=vm.get("state"), ok=bool(vm.get("ok")),
        outcome=vm.get("outcome"), predicted_duration_s=predicted, duration_s=actual,
        delta_s=round(actual - predicted, 3) if actual is not None and predicted is not None else None,
        predicted_downtime_ms=_first_num(vm.get("predicted_downtime_ms"), planned.get("predicted_downtime_ms")),
        downtime_ms=_num(vm.get("downtime_ms")), mib_sent=round(sent / MIB, 1) if sent is not None else None,
        message=vm.get("message"), recovery=vm.get("recovery"), started=vm.get("started"),
        finished=vm.get("finished"), predicted_start_s=slot[0] if slot else None,
        predicted_end_s=slot[1] if slot else None, no_prediction=None if slot else _why_no_slot(kind, resumed),
        **_error(vm, kind, predicted, actual, resumed))


def _plan_row(planned, ran):
    """A planned VM that did not run: in a plan (check mode) or not started in a run."""
    slot = _slot({}, planned)
    return _row(
        vm=planned.get("vm"), kind=planned.get("kind"), source=planned.get("source"),
        destination=planned.get("destination"), policy=planned.get("policy"),
        policy_reason=planned.get("policy_reason"), mode=planned.get("mode"), mode_reason=planned.get("mode_reason"),
        state="not started" if ran else "planned",
        predicted_duration_s=_predicted_length({}, planned, slot),
        predicted_downtime_ms=_num(planned.get("predicted_downtime_ms")), message=planned.get("placement_reason"),
        predicted_start_s=slot[0] if slot else None, predicted_end_s=slot[1] if slot else None,
        no_prediction=None if slot else _why_no_slot(planned.get("kind"), bool(planned.get("resume"))))


def _blocker_row(blocker):
    return _row(vm=blocker.get("vm"), kind=blocker.get("kind"), state="blocked", ok=False, outcome="blocked",
                message=blocker.get("message"), recovery=blocker.get("fix"),
                no_prediction=f"blocked, not moved: {blocker.get('message') or '?'}")


def _left_row(left, host):
    """A VM its policy left running on the host (on_unmigratable: leave): the host is not empty."""
    return _row(vm=left.get("vm"), source=host, policy=left.get("policy"), state="left", ok=None,
                outcome="left", message=left.get("why"), recovery=left.get("fix"),
                no_prediction="left on the host by its policy (on_unmigratable: leave), not moved")


def _left_items(result):
    """The VMs left on the host: `left` (with why and fix), else the forecast's names alone."""
    left = [one for one in (result.get("left") or []) if isinstance(one, dict)]
    if left:
        return left
    names = (result.get("forecast") or {}).get("left") if isinstance(result.get("forecast"), dict) else None
    return [{"vm": name} for name in (names or []) if isinstance(name, str)]


def _place_on_axis(rows, resumed):
    """Actual start and end in seconds from this run's first migration start (the schedule's zero).
    A VM resumed from the journal does not set the zero: its move began in an earlier run."""
    starts = {id(r): _parse_time(r["started"]) for r in rows}
    own = [starts[id(r)] for r in rows if starts[id(r)] is not None and r["vm"] not in resumed]
    every = [stamp for stamp in starts.values() if stamp is not None]
    t0 = min(own or every) if every else None
    for row in rows:
        start = starts[id(row)]
        if t0 is None or start is None:
            continue
        begin = (start - t0).total_seconds()
        finished = _parse_time(row["finished"])
        end = (finished - t0).total_seconds() if finished is not None else begin + (row["duration_s"] or 0.0)
        row["actual_start_s"], row["actual_end_s"] = round(begin, 3), round(max(begin, end), 3)


def report_rows(result):
    """One row per VM: what was planned and what happened (plan-only: what is planned), then the blocked
    VMs and those left on the host."""
    result = result or {}
    plan = _plan_by_vm(result)
    resumed = _resumed(result)
    vms = [v for v in (result.get("vms") or []) if isinstance(v, dict)]
    rows = [_vm_row(vm, plan.get(vm.get("vm")) or {}, vm.get("vm") in resumed) for vm in vms]
    _place_on_axis(rows, resumed)
    seen = {r["vm"] for r in rows}
    for name, planned in plan.items():
        if name not in seen:
            seen.add(name)
            rows.append(_plan_row(planned, bool(vms)))
    for blocker in result.get("blockers") or []:
        if isinstance(blocker, dict) and blocker.get("vm") not in seen:
            seen.add(blocker.get("vm"))
            rows.append(_blocker_row(blocker))
    for left in _left_items(result):
        if left.get("vm") not in seen:
            seen.add(left.get("vm"))
            rows.append(_left_row(left, result.get("host")))
    return rows


# ---- timeline -----------------------------------------------------------------------------------


def _bars(result):
    """[(row, planned slot | None, actual run | None)] in seconds on one axis, the earliest first."""
    bars = []
    for row in report_rows(result):
        if row["vm"] is None:
            continue  # a blocker of the host itself: no row of its own
        predicted = (row["predicted_start_s"], row["predicted_end_s"]) if row["predicted_start_s"] is not None \
            else None
        actual = (row["actual_start_s"], row["actual_end_s"]) if row["actual_start_s"] is not None else None
        bars.append((row, predicted, actual))
    return sorted(bars, key=_first_start)


def _first_start(row):
    """Where a row's first bar begins; rows with no bar (blocked, left) go last."""
    return min((span[0] for span in row[1:] if span is not None), default=math.inf)


class _Axis:
    """Seconds to pixels on the chart: zero is the first migration's start (the schedule's zero)."""

    def __init__(self, bars, left, width):
        ends = [1.0] + [span[1] for row in bars for span in row[1:] if span is not None]
        self.step = _nice_step(max(ends))
        self.span = math.ceil(max(ends) / self.step) * self.step
        self.left, self.width = left, width

    def x(self, seconds):
        return self.left + self.width * (min(max(seconds, 0.0), self.span) / self.span)


def _tick_label(seconds, step):
    if step >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    if step >= 1:
        return f"{seconds:.0f} s"
    return f"{seconds:.1f} s"


def _text(x, y, text, cls="label", anchor="start", fill=None, tip=None, size=10):
    title = f"<title>{_esc(tip)}</title>" if tip else ""
    return (f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill or COLORS["axis"]}">{_esc(text)}{title}</text>')


def _bar_label(axis, span, y, text, cls, limit):
    """The label right of its bar; left of it when it would run past the chart's right edge."""
    right = axis.x(span[1]) + 4
    if right + 6 * len(text) <= limit or axis.x(span[0]) - 4 - 6 * len(text) < axis.left:
        return _text(right, y, text, cls)
    return _text(axis.x(span[0]) - 4, y, text, cls, anchor="end")


def _predicted_label(span):
    return f"plan {_secs(span[0])}-{_secs(span[1])} s"


def _actual_label(row, span):
    """Where the run sat on the axis, then its downtime or, when it did not move, its outcome."""
    if span[0] < 0:
        text = f"ran until {_secs(span[1])} s (began in an earlier run)"
    else:
        text = f"ran {_secs(span[0])}-{_secs(span[1])} s"
    if row["downtime_ms"] is not None:
        text += f", {row['downtime_ms']:.0f} ms down"
    elif not row["ok"]:
        text += f", {row['outcome'] or 'failed'}"
    return text


def _actual_tip(row, span):
    """The tooltip of an actual bar: what happened and how far the forecast was off."""
    tip = (f"{row['vm']}: {row['state'] or ''} in {fmt_duration(span[1] - span[0])} to {row['destination'] or '?'} "
           f"({row['mode_used'] or row['mode'] or '?'})")
    if row["forecast_error_s"] is not None:
        goal = "within" if row["forecast_within_goal"] else "outside"
        pct = f" ({row['forecast_error_pct']:+.1f} %)" if row["forecast_error_pct"] is not None else ""
        tip += f"; forecast off by {row['forecast_error_s']:+.1f} s{pct}, {goal} the goal"
    return tip


def _vm_group(axis, row, predicted, actual, y, geometry):
    """One VM's row: the planned slot on top (or why there is none), the actual run below it."""
    row_height, limit = geometry
    half = (row_height - 6) / 2
    name = _esc(row["vm"])
    out = [f'<g class="vm" data-vm="{name}">',
           _text(axis.left - 8, y + row_height * 0.6, row["vm"], "name", "end", COLORS["text"], size=12)]
    if predicted is not None:
        px, pw = axis.x(predicted[0]), max(axis.x(predicted[1]) - axis.x(predicted[0]), 1.0)
        out.append(f'<rect class="predicted" x="{px:.1f}" y="{y + 3}" width="{pw:.1f}" height="{half:.1f}" '
                   f'fill="{COLORS["predicted"]}"><title>{name}: planned from {_secs(predicted[0])} s to '
                   f'{_secs(predicted[1])} s ({_esc(fmt_duration(predicted[1] - predicted[0]))})</title></rect>')
        out.append(_bar_label(axis, predicted, y + 3 + half - 1, _predicted_label(predicted), "label predicted",
                              limit))
    elif row["no_prediction"]:
        why = row["no_prediction"]
        short = why if len(why) <= LABEL_CHARS else why[:LABEL_CHARS - 1] + "\u2026"
        out.append(_text(axis.left + 4, y + 3 + half - 1, short, "label no-prediction", fill=COLORS["note"], tip=why))
    if actual is not None:
        tone = "definition" if row["kind"] == "definition" else ("ok" if row["ok"] else "failed")
        ax, aw = axis.x(actual[0]), max(axis.x(actual[1]) - axis.x(actual[0]), 1.0)
        out.append(f'<rect class="actual {tone}" x="{ax:.1f}" y="{y + 3 + half:.1f}" width="{aw:.1f}" '
                   f'height="{half:.1f}" fill="{COLORS[tone]}"><title>{_esc(_actual_tip(row, actual))}</title></rect>')
        out.append(_bar_label(axis, actual, y + 3 + 2 * half - 1, _actual_label(row, actual), "label actual", limit))
    elif row["state"] == "not started":
        out.append(_text(axis.left + 4, y + 3 + 2 * half - 1, "not started", "label actual", fill=COLORS["note"]))
    out.append("</g>")
    return out


def _legend(x, y, ran):
    out = []
    entries = [("predicted", "planned slot")] + ([("ok", "moved"), ("failed", "failed"),
                                                  ("definition", "definition")] if ran else [])
    for tone, text in entries:
        out.append(f'<rect x="{x}" y="{y}" width="14" height="10" fill="{COLORS[tone]}"/>')
        out.append(f'<text x="{x + 18}" y="{y + 9}" fill="{COLORS["text"]}">{_esc(text)}</text>')
        x += 110
    return out


def _grid(axis, top, bottom, ran):
    """Ticks and grid lines, and what zero means: a reader must know both bars share the axis."""
    out = []
    for i in range(int(round(axis.span / axis.step)) + 1):
        gx = axis.x(i * axis.step)
        out.append(f'<line x1="{gx:.1f}" y1="{top}" x2="{gx:.1f}" y2="{bottom}" stroke="{COLORS["grid"]}"/>')
        out.append(f'<text x="{gx:.1f}" y="{bottom + 16}" text-anchor="middle" '
                   f'fill="{COLORS["axis"]}">{_esc(_tick_label(i * axis.step, axis.step))}</text>')
    out.append(f'<line x1="{axis.left}" y1="{bottom}" x2="{axis.left + axis.width}" y2="{bottom}" '
               f'stroke="{COLORS["axis"]}"/>')
    zero = "the first migration's start" if ran else "the drain's start"
    out.append(_text(axis.left, bottom + 30, f"seconds from {zero}; planned slots from the drain schedule",
                     "caption"))
    return out


def timeline_svg(result, width=960, row_height=34, label_width=170):
    """The migrations of `result` as a self-contained SVG string (see the module docstring)."""
    bars = _bars(result or {})
    ran = any(row[2] is not None for row in bars)
    width, row_height, label_width = max(int(width), 400), max(int(row_height), 20), int(label_width)
    top, legend_h = 10, 22
    axis = _Axis(bars, label_width, width - label_width - 190)
    chart_top = top + legend_h
    chart_bottom = chart_top + max(1, len(bars)) * row_height
    height = chart_bottom + 44
    title = ("Migrations: planned slot (light, above) and actual run (solid, below)" if ran
             else "Forecast of the migrations: planned slots")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hvfleet-timeline" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12" role="img" '
           f'aria-label="{_esc(title)}">', f"<title>{_esc(title)}</title>"]
    out += _legend(label_width, top + 4, ran)
    out += _grid(axis, chart_top, chart_bottom, ran)
    if not bars:
        out.append(f'<text x="{label_width}" y="{chart_top + row_height - 8}" fill="{COLORS["text"]}">'
                   f'nothing to migrate</text>')
    for index, (row, predicted, actual) in enumerate(bars):
        out += _vm_group(axis, row, predicted, actual, chart_top + index * row_height, (row_height, width - 2))
    out.append("</svg>")
    return "\n".join(out)


# ---- plan as text -------------------------------------------------------------------------------


def _plan_head(result, plan, blockers, left):
    """The first line: how many VMs move, are blocked and stay on the host, and the forecast total."""
    action = result.get("action") or "drain"
    forecast = result.get("forecast") or {}
    verb = "draining" if action == "drain" else "restoring"
    head = f"Plan for {verb} {result.get('host') or '?'}: {len(plan)} VM(s) to move, {len(blockers)} blocked"
    if left:
        head += f", {len(left)} left on the host (it will NOT be empty)"
    if forecast:
        head += (f"; forecast {fmt_duration(forecast.get('total_s'))} with up to {forecast.get('concurrency', 1)} at "
                 f"once ({fmt_duration(forecast.get('serial_s'))} one after the other)")
        head += _precision_note(forecast)
        if forecast.get("worst_downtime_ms") is not None:
            head += f", worst downtime {forecast['worst_downtime_ms']:.0f} ms"
    return head


def _precision_note(forecast):
    """How far the dirty-rate readings' precision moves the total, when more than the forecast's goal (20 % or
    2 s): the total is then the one expected over it (drain/forecast_range.py), beside the total as read."""
    spread, as_read = forecast.get("range_s"), forecast.get("as_read_s")
    if not spread or as_read is None or within_goal(spread[1], spread[0]):
        return ""
    return (f" [expected over the dirty-rate readings' precision: {fmt_duration(as_read)} as read, "
            f"{fmt_duration(spread[0])} to {fmt_duration(spread[1])}]")


def _predicted_line(item):
    """The VM's predicted move: its slot in the drain schedule when it has one (what the report compares
    the actual run with), else its own forecast."""
    slot = _slot({}, item)
    length = slot[1] - slot[0] if slot else item.get("predicted_duration_s")
    predicted = f"    predicted: {fmt_duration(length)}"
    if slot:
        predicted += f" (from {_secs(slot[0])} s to {_secs(slot[1])} s of the drain)"
    if item.get("predicted_downtime_ms") is not None:
        predicted += f", downtime {item['predicted_downtime_ms']:.0f} ms"
    if item.get("predicted_bytes") is not None:
        predicted += f", {item['predicted_bytes'] / MIB:.0f} MiB to send"
    return predicted


def _item_lines(item, action, host):
    """One planned move: where to, how and why, and what it is predicted to take."""
    target = item.get("destination") if action == "drain" else host
    origin = "" if action == "drain" else f" (now on {item.get('source') or '?'})"
    lines = [f"- {item.get('vm')}{origin} -> {target}: {item.get('mode') or '?'}"
             + (" + auto-converge" if item.get("auto_converge") else "")]
    if item.get("mode_reason"):
        lines.append(f"    why this mode: {item['mode_reason']}")
    policy = item.get("policy") or "?"
    if item.get("policy_reason"):
        policy += f" ({item['policy_reason']})"
    lines.append(f"    policy: {policy}")
    if item.get("placement_reason"):
        lines.append(f"    why {target}: {item['placement_reason']}")
    if item.get("kind") != "definition":
        lines.append(_predicted_line(item))
    return lines


def _blocker_lines(blockers):
    lines = ["Blocked (these VMs stay where they are):"] if blockers else []
    for blocker in blockers:
        lines.append(f"- {blocker.get('vm') or '(host)'}: {blocker.get('message')}")
        if blocker.get("fix"):
            lines.append(f"    fix: {blocker['fix']}")
        for dest, reason in sorted((blocker.get("reasons") or {}).items()):
            lines.append(f"    {dest}: {reason}")
    return lines


def _left_lines(left, host):
    """The VMs the plan leaves running (on_unmigratable: leave): the host will not be empty, so it must not
    be rebooted; each with why it stays and the fix."""
    if not left:
        return []
    lines = [f"Left on the host ({host} will NOT be empty; a rolling upgrade refuses to reboot it):"]
    for one in left:
        lines.append(f"- {one.get('vm')}: {one.get('why') or 'left by its policy (on_unmigratable: leave)'}")
        if one.get("fix"):
            lines.append(f"    fix: {one['fix']}")
    return lines


def _note_lines(result, host):
    lines = []
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


def plan_lines(result):
    """The plan of a check-mode run (or the plan part of any result) as readable lines."""
    result = result or {}
    action = result.get("action") or "drain"
    host = result.get("host") or "?"
    plan = [p for p in (result.get("plan") or []) if isinstance(p, dict)]
    blockers = [b for b in (result.get("blockers") or []) if isinstance(b, dict)]
    left = _left_items(result)
    lines = [_plan_head(result, plan, blockers, left)]
    if result.get("state") == "drained" and not plan:
        lines.append(result.get("message") or f"{host} is already drained.")
    for item in plan:
        lines.extend(_item_lines(item, action, host))
    return lines + _blocker_lines(blockers) + _left_lines(left, host) + _note_lines(result, host)


class FilterModule:
    """hvfleet.drain report filters."""

    def filters(self):
        return {"timeline_svg": timeline_svg, "report_rows": report_rows, "plan_lines": plan_lines}
