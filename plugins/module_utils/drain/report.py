# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run reports: per-VM result rows, the summary, the closing message, progress payloads.

Pure functions over the journal entries and the result; the message says only what the result holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import CycleState, Kind
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult

_RESULT_KEYS = ("outcome", "ok", "mode_used", "suspended", "duration_s", "deadline_s", "downtime_ms", "bytes_sent",
                "ram_bytes", "iterations", "max_dirty_rate_bps", "message", "error", "recovery", "steps")


def summarize_result(result: Any) -> dict:
    """The part of a MigrationResult kept in the journal and returned per VM (no time series, no spec)."""
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    out = {k: data.get(k) for k in _RESULT_KEYS}
    out["steps"] = [dict(s) if isinstance(s, dict) else dataclasses.asdict(s) for s in (out["steps"] or [])]
    out["source_state"] = (data.get("source_state") or {}).get("label")
    out["destination_state"] = (data.get("destination_state") or {}).get("label")
    return out


def vm_result(entry: dict) -> dict:
    """One VM's row of the result, from its journal entry."""
    res = entry.get("result") or {}
    return {"vm": entry["name"], "kind": entry.get("kind"), "source": entry.get("source") or entry.get("origin"),
            "destination": entry.get("destination"), "policy": entry.get("policy"),
            "mode": entry.get("mode"), "mode_used": res.get("mode_used"), "state": entry.get("state"),
            "ok": bool(res.get("ok")), "outcome": res.get("outcome"), "duration_s": res.get("duration_s"),
            "downtime_ms": res.get("downtime_ms"), "bytes_sent": res.get("bytes_sent"),
            "predicted_duration_s": entry.get("predicted_duration_s"),
            "predicted_downtime_ms": entry.get("predicted_downtime_ms"), "message": res.get("message"),
            "recovery": res.get("recovery"), "steps": res.get("steps") or [], "attempts": entry.get("attempts"),
            "started": entry.get("started"), "finished": entry.get("finished")}


def summary(result: DrainResult, not_started: int) -> dict:
    failed = [r for r in result.vms if not r.get("ok")]
    moved = [r for r in result.vms if r.get("ok")]
    return {"moved": len(moved), "failed": len(failed), "blocked": len(result.blockers), "not_started": not_started,
            "definitions_moved": sum(1 for r in moved if r.get("kind") == Kind.DEFINITION)}


def actual(result: DrainResult, duration_s: float) -> dict:
    moved = [r for r in result.vms if r.get("ok")]
    downtimes = [r.get("downtime_ms") or 0 for r in moved if r.get("kind") == Kind.LIVE]
    return {"total_s": duration_s, "migrations": len([r for r in result.vms if r.get("kind") == Kind.LIVE]),
            "bytes_sent": sum(r.get("bytes_sent") or 0 for r in result.vms),
            "worst_downtime_ms": max(downtimes) if downtimes else None,
            "forecast_total_s": (result.forecast or {}).get("total_s")}


def closing_message(result: DrainResult, source: str, *, cancelled: bool, stopped_after: Optional[int],
                    max_failures: int, window_closed: bool) -> str:
    s = result.summary
    head = (f"{result.action} of {source}: {s['moved']} moved, {s['failed']} failed, {s['blocked']} blocked, "
            f"{s['not_started']} not started")
    if result.state == CycleState.DRAINED:
        return f"{head}; {source} is empty and stays cordoned."
    if result.state == CycleState.RESTORED:
        return f"restore of {source}: {s['moved']} VM(s) back home; {source} is uncordoned."
    parts = [head]
    if cancelled:
        parts.append("interrupted: no new migration was started; run again to resume from the journal")
    if stopped_after is not None:
        parts.append(f"stopped starting migrations after {stopped_after} failure(s) (max_failures {max_failures})")
    if window_closed:
        parts.append("the maintenance window closed: running migrations finished, no new one was started "
                     f"(not started: {', '.join(result.not_started) or 'none'})")
    for r in result.vms:
        if not r.get("ok"):
            where = f" Recovery: {r['recovery']}" if r.get("recovery") else ""
            parts.append(f"{r['vm']}: {r.get('message')}{where}")
    for b in result.blockers:
        parts.append(f"{b['vm']}: {b['message']}" if b.get("vm") else b["message"])
    for r in result.recoverable:
        parts.append(f"{r['vm']} needs attention: {r['where']}; {r['fix']}")
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
