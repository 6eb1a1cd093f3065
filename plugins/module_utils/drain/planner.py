# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan a drain: check every VM against every destination, place them, forecast the schedule.

Reads the facts (the backend), then decides with pure functions: placement.plan_placement,
vm_plan.plan_vm per VM and drain_forecast.simulate_drain for the whole schedule, in which each VM's mode is
decided again on the bandwidth it gets when it starts there. Changes nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import claims
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.drain_forecast import (
    forecast_drain_shared,
    simulate_drain,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import REFUSE, Forecast
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    VmDemand,
    plan_placement,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import select_policy
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration as Move
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Scheduler
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import (
    Blocker,
    PlanItem,
    VmDecision,
    lane_bandwidth,
    plan_vm,
)

RESUME_FIRST = -1_000_000  # scheduler order of a resumed post-copy: its guest is frozen until it runs


def schedule_move(item: PlanItem) -> Move:
    """The scheduler's view of a planned VM; a resumed post-copy goes before everything else."""
    return Move(item.vm, item.source, item.destination, item.rank_s, RESUME_FIRST if item.resume else item.order)


@dataclasses.dataclass
class _Candidate:
    vm: VmInfo
    settings: dict
    policy: str
    policy_reason: str


def plan_drain(ctx: RunContext, conns: Connections, result: DrainResult, *, reviewed: Optional[dict] = None,
               pinned: Optional[dict] = None, skip: frozenset = frozenset()) -> list[PlanItem]:
    """Fill result.plan / blockers / forecast / moves for the VMs on the source; returns the typed plan.

    `pinned` (VM -> PlanItem) are journal items this run takes over as they are; `skip` are VMs the
    resume step has dealt with (blocked, or found elsewhere)."""
    pinned = dict(pinned or {})
    src_conn = conns.get(ctx.source.uri)
    vms = ctx.backend.list_vms(src_conn, ctx.source, measure=ctx.config.measure_dirty_rate)
    dest_conns, capacities = _destinations(ctx, conns, result)
    candidates: dict[str, _Candidate] = {}
    demands = []
    for vm in sorted(vms, key=lambda v: v.name):
        if vm.name in pinned or vm.name in skip:
            continue
        match = select_policy(ctx.policies, vm.name, vm.labels, vm.memory_mib)
        if vm.postcopy:
            result.block(Blocker(vm.name, "postcopy_leftover", f"'{vm.name}' is the paused source copy of an "
                                 "interrupted post-copy to a destination the journal does not know.",
                                 "find the host where it runs and resume the post-copy there (domain_migration), "
                                 "or inspect by hand."))
            continue
        candidates[vm.name] = _Candidate(vm, match.settings, match.policy.name, match.reason)
        demands.append(_demand(ctx, src_conn, dest_conns, vm, match.settings, reviewed))
    placement = plan_placement(ctx.source.name, demands, capacities, ctx.config.placement)
    for unplaced in placement.unplaced:
        result.block(Blocker(unplaced.vm, "unplaced", f"no destination for '{unplaced.vm}': "
                             + "; ".join(unplaced.messages()), "free capacity, fix the failing checks, or change "
                             "the VM's policy (pin/avoid, storage).", dict(unplaced.reasons)))
    live = [a for a in placement.assignments if candidates[a.vm].vm.active]
    lanes = ctx.config.lanes(len(live) + sum(1 for p in pinned.values() if p.live),
                             len({a.destination for a in live}) or None)
    decided: dict[str, VmDecision] = {}
    for assignment in placement.assignments:
        cand = candidates[assignment.vm]
        dest = ctx.known_host(assignment.destination)
        bandwidth = lane_bandwidth(ctx.source, dest, lanes, default_link_mbit=ctx.config.default_link_mbit,
                                   max_inbound=ctx.config.max_inbound, budget_bps=ctx.config.budget_bps)
        decided[cand.vm.name] = plan_vm(cand.vm, cand.settings, cand.policy, cand.policy_reason, ctx.source, dest,
                                        placement_reason=assignment.reason, bandwidth_bps=bandwidth)

    def replan(name: str, bandwidth: float) -> VmDecision:
        cand = candidates[name]
        dest = ctx.known_host(decided[name].destination)
        return plan_vm(cand.vm, cand.settings, cand.policy, cand.policy_reason, ctx.source, dest,
                       placement_reason=reasons[name], bandwidth_bps=bandwidth)

    reasons = {a.vm: a.reason for a in placement.assignments}
    plan, schedule = _simulate(ctx, decided, list(pinned.values()), replan, result)
    if reviewed is not None:
        _compare_with_review(ctx, reviewed, plan, candidates, result)
    order = {m.vm: i for i, m in enumerate(Scheduler([schedule_move(p) for p in plan],
                                                     ctx.config.limits()).queue)} if plan else {}
    plan.sort(key=lambda p: order.get(p.vm, 0))
    result.plan = [p.to_dict() for p in plan]
    result.forecast = _forecast(schedule, lanes)
    result.forecast["blocked"] = sorted({b["vm"] for b in result.blockers if b.get("vm")})
    result.moves = [{"vm": p.vm, "from": p.source, "to": p.destination} for p in plan]
    return plan


def _destinations(ctx: RunContext, conns: Connections, result: DrainResult) -> tuple[dict, list[HostCapacity]]:
    dest_conns = {}
    capacities = []
    for dest in ctx.destinations:
        try:
            conn = conns.get(dest.uri)
            cap = ctx.backend.capacity(conn, dest, ctx.config.anti_affinity_labels)
            dest_conns[dest.name] = conn
            cap = dataclasses.replace(cap, name=dest.name, cordoned=cap.cordoned or dest.cordoned_now)
            capacities.append(claims.as_planned(ctx, conn, dest, cap))
        except HvfleetError as exc:
            capacities.append(HostCapacity(dest.name, 0, 0, 0, 0, cordoned=dest.cordoned))
            result.block(Blocker(None, "destination_unreachable", f"{dest.name}: {exc.message}", exc.hint))
    return dest_conns, capacities


def _demand(ctx: RunContext, src_conn: Any, dest_conns: dict, vm: VmInfo, settings: dict,
            reviewed: Optional[dict]) -> VmDemand:
    """The VM's placement demand, with the destinations its prerequisite checks pass on."""
    failures = {}
    eligible = set()
    for dest in ctx.destinations:
        conn = dest_conns.get(dest.name)
        if conn is None:
            failures[dest.name] = "destination unreachable"
            continue
        if dest.cordoned_now:
            continue  # placement reports it as cordoned
        bad = [c for c in ctx.backend.prechecks(src_conn, conn, vm, ctx.source, dest, settings) if c.failed]
        if bad:
            failures[dest.name] = "; ".join(c.message + (f" (fix: {c.fix})" if c.fix else "") for c in bad)
        else:
            eligible.add(dest.name)
    pins = tuple(settings.get("destinations", {}).get("pin") or ())
    if reviewed is not None and vm.name in reviewed:
        pins = (reviewed[vm.name]["destination"],)
    return VmDemand(name=vm.name, memory_mib=vm.memory_mib if vm.active else 0, vcpus=vm.vcpus if vm.active else 0,
                    dirty_rate_bps=vm.dirty_rate_bps or 0.0, anti_affinity=anti_affinity(ctx, vm.labels), pin=pins,
                    avoid=tuple(settings.get("destinations", {}).get("avoid") or ()), eligible=frozenset(eligible),
                    precheck_failures=failures, order=int(settings.get("drain_order", 0) or 0))


def anti_affinity(ctx: RunContext, labels: dict) -> dict:
    return {k: labels[k] for k in ctx.config.anti_affinity_labels if k in (labels or {})}


def _simulate(ctx: RunContext, decided: dict, pinned: list, replan: Any, result: DrainResult) -> tuple[list, list]:
    """The drain forecast over the live moves (the scheduler's order and limits, the source link shared by
    what runs); each VM's mode is decided again on the bandwidth it gets when it starts. A VM the forecast
    refused at its lane share may still go with more of the link; VMs still refused become blockers."""
    final: dict[str, VmDecision] = dict(decided)

    def predict(name: str, bandwidth: float) -> Optional[Forecast]:
        if name not in decided:
            return None  # resumed from the journal: its recorded mode stands, no forecast
        again = replan(name, bandwidth)
        first = decided[name].item
        if again.item is not None:  # the scheduler keeps ranking by the lane share (unknown: refused there)
            again = dataclasses.replace(again, item=again.item.replace(rank_s=first.rank_s if first else None))
        final[name] = again
        if again.item is None:
            return again.forecast or Forecast(REFUSE, False, "blocked", None, None, None, 0, False)
        return again.forecast

    simulated = [n for n, d in decided.items() if (d.item is not None and d.item.live) or d.refused_by_forecast]
    moves = [schedule_move(p) for p in pinned if p.live] + [
        schedule_move(decided[n].item) if decided[n].item is not None
        else Move(n, ctx.source.name, decided[n].destination, None, decided[n].order) for n in simulated]
    default = ctx.config.default_link_mbit
    schedule = simulate_drain(moves, ctx.config.limits(), ctx.source.link_bps(default), predict,
                              destination_bps={d.name: d.link_bps(default) for d in ctx.destinations},
                              budget_bps=ctx.config.budget_bps) if moves else []
    when = {s.vm: s for s in schedule}
    plan = list(pinned)
    for name in sorted(decided):
        decision = final[name]
        if decision.item is None:
            if decision.blocker is not None:
                result.block(decision.blocker)
            continue
        item = decision.item
        slot = when.get(name)
        if slot is not None and slot.end_s is not None and decision.forecast is not None:
            item = item.replace(predicted_start_s=round(slot.start_s, 3), predicted_end_s=round(slot.end_s, 3))
        plan.append(item)
    return plan, schedule


def _forecast(schedule: list, lanes: int) -> dict:
    if any(s.forecast is not None for s in schedule):
        forecast = forecast_drain_shared(schedule, concurrency=lanes).as_dict()
        forecast["schedule"] = [s.as_dict() for s in schedule]
        return forecast
    return {"total_s": 0.0, "serial_s": 0.0, "concurrency": lanes, "migrations": 0, "blocked": [],
            "predicted_bytes": 0, "worst_downtime_ms": 0.0, "summary": "no live migration to forecast"}


def _compare_with_review(ctx: RunContext, reviewed: dict, plan: list, candidates: dict,
                         result: DrainResult) -> None:
    planned_now = {p.vm for p in plan}
    for name in sorted(set(reviewed) - planned_now):
        if name in candidates:
            why = next((b["message"] for b in result.blockers if b["vm"] == name), "it cannot go there now")
            result.plan_differences.append(f"'{name}' cannot go to {reviewed[name]['destination']} as reviewed: "
                                           f"{why}")
        else:
            result.plan_differences.append(f"'{name}' is in the reviewed plan but no longer on {ctx.source.name}")
    for name in sorted(planned_now - set(reviewed)):
        result.plan_differences.append(f"'{name}' is on {ctx.source.name} but not in the reviewed plan")
    for index, item in enumerate(plan):
        old = reviewed.get(item.vm)
        if old and old.get("mode") and old.get("mode") != item.mode:
            plan[index] = item.replace(mode_reason=f"{item.mode_reason} (reviewed plan said {old['mode']}; the "
                                       "forecast changed)")
