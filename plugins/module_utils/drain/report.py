# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run reports: per-VM result rows, the summary, the closing message, progress payloads.

Pure functions over the journal entries and the result; the message says only what the result holds.

A VM's forecast in the result is the drain schedule's (planning/drain_forecast.simulate_drain): from
its predicted start to its predicted end, with the link shared as the schedule shares it - the span
its move is predicted to take in this drain, which is what its actual duration is compared with.
The forecast the VM's mode was chosen on (its lane share, alone) is kept as `lane_forecast_s`. The
goal for both the drain and each VM: within 20 % of the actual, or within 2 s, whichever is larger.
A cold move has no forecast to check: its `predicted_duration_s` is an upper bound of its outage.

A drain can end `not_empty`: VMs whose policy says on_unmigratable: leave still run on the host
(`result.left`). The summary counts them and the closing message names them with their fix, because
such a host must not be taken for drained and rebooted.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import CycleState, Kind
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult

_RESULT_KEYS = ("outcome", "ok", "mode_used", "suspended", "duration_s", "deadline_s", "downtime_ms", "bytes_sent",
                "disk_bytes", "ram_bytes", "iterations", "max_dirty_rate_bps", "message", "error", "recovery", "steps")


def summarize_result(result: Any) -> dict:
    """The part of a MigrationResult kept in the journal and returned per VM (no time series, no spec)."""
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    out = {k: data.get(k) for k in _RESULT_KEYS}
    out["steps"] = [dict(s) if isinstance(s, dict) else dataclasses.asdict(s) for s in (out["steps"] or [])]
    out["source_state"] = (data.get("source_state") or {}).get("label")
    out["destination_state"] = (data.get("destination_state") or {}).get("label")
    return out


GOAL_RATIO = 0.2  # a forecast is within its goal when |predicted - actual| <= max(20 % of actual, 2 s)
GOAL_ABS_S = 2.0


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def within_goal(predicted: float, actual: float) -> bool:
    """The forecast's goal: off by no more than 20 % of the actual or 2 s, whichever is larger."""
    return abs(predicted - actual) <= max(GOAL_RATIO * abs(actual), GOAL_ABS_S)


def forecast_error(predicted: Any, actual: Any) -> dict:
    """How far a forecast was off: seconds, percent of the actual, and whether within the goal (or Nones)."""
    p, a = _number(predicted), _number(actual)
    if p is None or a is None:
        return {"forecast_error_s": None, "forecast_error_pct": None, "forecast_within_goal": None}
    return {"forecast_error_s": round(p - a, 3),
            "forecast_error_pct": round(100.0 * (p - a) / a, 1) if a > 0 else None,
            "forecast_within_goal": within_goal(p, a)}


def predicted_span(entry: dict) -> Optional[float]:
    """The schedule's predicted duration of this VM's move (end - start), else its own forecast."""
    start, end = _number(entry.get("predicted_start_s")), _number(entry.get("predicted_end_s"))
    if start is not None and end is not None and end >= start:
        return round(end - start, 3)
    return _number(entry.get("predicted_duration_s"))


def _checked_error(entry: dict, predicted: Optional[float], res: dict) -> dict:
    """The forecast error of a move that went through and had a forecast: a failed move's duration says
    nothing about the forecast, and a cold move's figure is only an upper bound of its outage."""
    if not res.get("ok") or entry.get("kind") == Kind.COLD:
        return forecast_error(None, None)
    return forecast_error(predicted, res.get("duration_s"))


def vm_result(entry: dict) -> dict:
    """One VM's row of the result, from its journal entry."""
    res = entry.get("result") or {}
    predicted = predicted_span(entry)
    found = entry.get("forecast")
    planned: dict = found if isinstance(found, dict) else {}
    stall = planned.get("predicted_stall_ms")
    return {"vm": entry["name"], "kind": entry.get("kind"), "source": entry.get("source") or entry.get("origin"),
            "destination": entry.get("destination"), "policy": entry.get("policy"),
            "mode": entry.get("mode"), "mode_used": res.get("mode_used"), "state": entry.get("state"),
            "ok": bool(res.get("ok")), "outcome": res.get("outcome"), "duration_s": res.get("duration_s"),
            "downtime_ms": res.get("downtime_ms"), "bytes_sent": res.get("bytes_sent"),
            "predicted_duration_s": predicted, "predicted_start_s": entry.get("predicted_start_s"),
            "lane_forecast_s": entry.get("predicted_duration_s"),
            "predicted_downtime_ms": entry.get("predicted_downtime_ms"), "predicted_stall_ms": stall,
            "predicted_disk_bytes": planned.get("disk_bytes") or 0, "disk_bytes": res.get("disk_bytes"),
            **_checked_error(entry, predicted, res),
            "message": res.get("message"),
            "recovery": res.get("recovery"), "steps": res.get("steps") or [], "attempts": entry.get("attempts"),
            "started": entry.get("started"), "finished": entry.get("finished")}


def summary(result: DrainResult, not_started: int) -> dict:
    """The run's counts; `left` counts the VMs the policy left running on the host, so a host that is not
    empty never reads as one whose VMs all moved."""
    failed = [r for r in result.vms if not r.get("ok")]
    moved = [r for r in result.vms if r.get("ok")]
    return {"moved": len(moved), "failed": len(failed), "blocked": len(result.blockers), "not_started": not_started,
            "left": len(result.left), "definitions_moved": sum(1 for r in moved if r.get("kind") == Kind.DEFINITION)}


def actual(result: DrainResult, duration_s: float) -> dict:
    """The run's actual figures beside its forecast, with the forecast's error (per VM: vm_result)."""
    moved = [r for r in result.vms if r.get("ok")]
    downtimes = [r.get("downtime_ms") or 0 for r in moved if r.get("kind") == Kind.LIVE]
    forecast_total = (result.forecast or {}).get("total_s")
    checked = [r for r in result.vms if r.get("forecast_within_goal") is not None]
    return {"total_s": duration_s, "migrations": len([r for r in result.vms if r.get("kind") == Kind.LIVE]),
            "bytes_sent": sum(r.get("bytes_sent") or 0 for r in result.vms),
            "worst_downtime_ms": max(downtimes) if downtimes else None,
            "forecast_total_s": forecast_total,
            **(forecast_error(forecast_total, duration_s) if forecast_total else forecast_error(None, None)),
            "vms_within_goal": sum(1 for r in checked if r["forecast_within_goal"]), "vms_checked": len(checked)}


def _head(result: DrainResult, source: str) -> str:
    """The counts first, `left` among them when the policy left VMs on the host."""
    s = result.summary
    head = (f"{result.action} of {source}: {s['moved']} moved, {s['failed']} failed, {s['blocked']} blocked, "
            f"{s['not_started']} not started")
    return head + (f", {len(result.left)} left on {source}" if result.left else "")


def left_lines(result: DrainResult, source: str) -> list[str]:
    """Why the host is not empty, VM by VM with its fix: a reader must not take it for drained and reboot it."""
    if not result.left:
        return []
    names = ", ".join(str(one.get("vm")) for one in result.left)
    lines = [f"{source} is NOT empty: {len(result.left)} VM(s) left running on it by policy (on_unmigratable: "
             f"leave): {names}; a rolling upgrade will refuse to upgrade and reboot {source}; do not reboot "
             f"{source} while they run"]
    lines.extend(f"{one.get('vm')}: {one.get('why') or 'left by its policy'}; "
                 f"fix: {str(one.get('fix') or '-').rstrip('.')}" for one in result.left)
    return lines


def _trouble(result: DrainResult) -> list[str]:
    """Each VM that failed, each blocker and each VM not in exactly one place, with what to do about it."""
    parts = []
    for r in result.vms:
        if not r.get("ok"):
            where = f" Recovery: {r['recovery']}" if r.get("recovery") else ""
            parts.append(f"{r['vm']}: {r.get('message')}{where}")
    for b in result.blockers:
        parts.append(f"{b['vm']}: {b['message']}" if b.get("vm") else b["message"])
    for r in result.recoverable:
        parts.append(f"{r['vm']} needs attention: {r['where']}; {r['fix']}")
    return parts


def closing_message(result: DrainResult, source: str, *, cancelled: bool, stopped_after: Optional[int],
                    max_failures: int, window_closed: bool) -> str:
    """The run in one message: only what the result holds, the state's consequence last."""
    s = result.summary
    head = _head(result, source)
    if result.state == CycleState.DRAINED:
        return f"{head}; {source} is empty and stays cordoned."
    if result.state == CycleState.RESTORED:
        return f"restore of {source}: {s['moved']} VM(s) back home; {source} is uncordoned."
    if result.state == CycleState.NOT_EMPTY:
        return "; ".join([head, *left_lines(result, source), f"{source} stays cordoned"])
    parts = [head]
    if cancelled:
        parts.append("interrupted: no new migration was started; run again to resume from the journal")
    if stopped_after is not None:
        parts.append(f"stopped starting migrations after {stopped_after} failure(s) (max_failures {max_failures})")
    if window_closed:
        parts.append("the maintenance window closed: running migrations finished, no new one was started "
                     f"(not started: {', '.join(result.not_started) or 'none'})")
    parts.extend(_trouble(result))
    parts.extend(left_lines(result, source))
    if result.action == "drain":
        parts.append(f"{source} stays cordoned; every VM not listed as moved or as needing attention is still on it")
    else:
        parts.append(f"{source} stays cordoned until every VM is back (run again)")
    return "; ".join(parts)


def plan_message(result: DrainResult, source: str) -> str:
    lines = [f"plan for {source}: {len(result.plan)} to move, {len(result.blockers)} blocked"]
    if result.forecast:
        lines.append(result.forecast.get("summary", ""))
    if result.lock_holder:
        lines.append(f"note: a drain or restore is running now (pid {result.lock_holder.get('pid')})")
    return "; ".join(x for x in lines if x)
