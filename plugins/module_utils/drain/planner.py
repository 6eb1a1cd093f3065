# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plan a drain: check every VM against its candidate destinations, place them, forecast the schedule.

Reads the facts (the backend), then decides with pure functions: placement.plan_placement,
vm_plan.plan_vm per VM and drain_forecast.simulate_drain for the whole schedule, in which each VM's mode is
decided again on the bandwidth it gets when it starts there. Changes nothing.

The live prerequisite checks are the cost of a plan at fleet scale, so (LiveChecks):
- a destination the VM cannot take whatever its checks say - the source, cordoned, outside its pins or in
  its avoid list, an anti-affinity sibling already there, too little memory or too few vCPUs left for it
  alone (cannot_take) - is not checked for it. Placement only ever adds to a destination, so it refuses that
  host anyway, and its reason for the VM names why (the capacity, the cordon, the pin...), as before; only
  the checks' own failures are not listed for a host already out on those grounds.
- checks on demand: placement runs with the hosts not checked yet counted as passing; the (VM, host) pairs
  it chose and has not checked are checked, and placement runs again until every VM it places has passed
  its checks on its host. A VM that failed on its host is then checked against every candidate, and so is a
  VM left unplaced, so its blocker lists every host's failures. Placement takes, for each VM in turn, the
  best fitting host it may use; that host passed its checks, so it is the best among the hosts that pass:
  the plan is the one checking every pair would give, with the checks of a few pairs per VM.
- the checks of one plan share a check_cache.CheckCache (each live call once per destination and distinct
  question, with the same outcome), when the backend's `prechecks` takes a `cache`;
- destinations are read and checked by a few threads, each destination by one thread on its own
  connection (libvirt connections are thread-safe; the source's is used under the cache's lock).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import claims, forecast_range
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.unmigratable_vms import leave, sort_unmigratable
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import hugepages
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import CheckCache
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.drain_forecast import (
    forecast_drain_shared,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import REFUSE, Forecast
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import CheckResult, VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    PlacementPlan,
    VmDemand,
    plan_placement,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import select_policy
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration as Move
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Scheduler
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import (
    LIVE_ONLY_CHECKS,
    STORAGE_CHECKS,
    OnUnmigratable,
    on_unmigratable,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import (
    Blocker,
    PlanItem,
    VmDecision,
    lane_bandwidth,
    plan_cold,
    plan_vm,
)

RESUME_FIRST = -1_000_000  # scheduler order of a resumed post-copy: its guest is frozen until it runs


def schedule_move(item: PlanItem) -> Move:
    """The scheduler's view of a planned VM; a resumed post-copy goes before everything else."""
    return Move(item.vm, item.source, item.destination, item.rank_s, RESUME_FIRST if item.resume else item.order)


@dataclasses.dataclass(frozen=True)
class LiveChecks:
    """How a plan runs the live prerequisite checks (module docstring). LiveChecks(1, False, False, False) is
    the plain path: every VM against every destination, one call after another."""

    workers: int = 8  # destinations read and checked at once
    cache: bool = True  # each live call once per destination and distinct question
    prefilter: bool = True  # no checks against a destination the VM cannot take anyway
    on_demand: bool = True  # check the pairs placement chooses (and all of a VM that fails); else all first


@dataclasses.dataclass
class _Candidate:
    vm: VmInfo
    settings: dict
    policy: str
    policy_reason: str
    cold: Optional[tuple] = None  # what stops its live migration, when it is to be moved cold


def plan_drain(ctx: RunContext, conns: Connections, result: DrainResult, *, reviewed: Optional[dict] = None,
               pinned: Optional[dict] = None, skip: frozenset = frozenset(),
               checks: LiveChecks = LiveChecks()) -> list[PlanItem]:
    """Fill result.plan / blockers / forecast / moves for the VMs on the source; returns the typed plan.

    `pinned` (VM -> PlanItem) are journal items this run takes over as they are; `skip` are VMs the
    resume step has dealt with (blocked, or found elsewhere)."""
    pinned = dict(pinned or {})
    src_conn = conns.get(ctx.source.uri)
    vms = ctx.backend.list_vms(src_conn, ctx.source, measure=ctx.config.measure_dirty_rate)
    dest_conns, capacities = _destinations(ctx, conns, result, checks.workers)
    candidates: dict[str, _Candidate] = {}
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
    sort_unmigratable(ctx, src_conn, candidates, result)
    checked = _Checks(ctx, src_conn, dest_conns, capacities, list(candidates.values()), reviewed, checks)
    placement = checked.place()
    for unplaced in placement.unplaced:
        cand = candidates[unplaced.vm]
        choice = on_unmigratable(cand.settings)
        storage_only = checked.failed_ids(unplaced.vm) <= STORAGE_CHECKS and checked.failed_ids(unplaced.vm)
        if cand.vm.active and choice == OnUnmigratable.LEAVE and storage_only:
            leave(ctx, cand, (), result)
            continue
        cold = (" A cold move copies local disks only under storage: copy_all or copy_incremental, into a storage "
                "pool at the same directory on the destination.") if (
            cand.cold is not None or choice == OnUnmigratable.SHUTDOWN) and storage_only else ""
        result.block(Blocker(unplaced.vm, "unplaced", f"no destination for '{unplaced.vm}': "
                             + "; ".join(unplaced.messages()) + cold, "free capacity, fix the failing checks, or "
                             "change the VM's policy (pin/avoid, storage, on_unmigratable).", dict(unplaced.reasons)))
    live = [a for a in placement.assignments if candidates[a.vm].vm.active and candidates[a.vm].cold is None]
    lanes = ctx.config.lanes(len(live) + sum(1 for p in pinned.values() if p.live),
                             len({a.destination for a in live}) or None)
    decided: dict[str, VmDecision] = {}
    for assignment in placement.assignments:
        cand = candidates[assignment.vm]
        dest = ctx.known_host(assignment.destination)
        if cand.cold is not None:
            decided[cand.vm.name] = plan_cold(cand.vm, cand.settings, cand.policy, cand.policy_reason, ctx.source,
                                              dest, placement_reason=assignment.reason, live_blockers=cand.cold)
            continue
        bandwidth = lane_bandwidth(ctx.source, dest, lanes, default_link_mbit=ctx.config.default_link_mbit,
                                   max_inbound=ctx.config.max_inbound, budget_bps=ctx.config.budget_bps)
        decided[cand.vm.name] = plan_vm(cand.vm, cand.settings, cand.policy, cand.policy_reason, ctx.source, dest,
                                        placement_reason=assignment.reason, bandwidth_bps=bandwidth)

    def replan(name: str, bandwidth: float, side: int = forecast_range.MEASURED) -> VmDecision:
        cand = candidates[name]
        dest = ctx.known_host(decided[name].destination)
        return plan_vm(forecast_range.at_side(cand.vm, side), cand.settings, cand.policy, cand.policy_reason,
                       ctx.source, dest, placement_reason=reasons[name], bandwidth_bps=bandwidth)

    reasons = {a.vm: a.reason for a in placement.assignments}
    measured = forecast_range.errors_pct({n: c.vm for n, c in candidates.items()})
    plan, schedule, by_side = _simulate(ctx, decided, list(pinned.values()), replan, result, measured)
    if reviewed is not None:
        _compare_with_review(ctx, reviewed, plan, candidates, result)
    order = {m.vm: i for i, m in enumerate(Scheduler([schedule_move(p) for p in plan],
                                                     ctx.config.limits()).queue)} if plan else {}
    plan.sort(key=lambda p: order.get(p.vm, 0))
    result.plan = [p.to_dict() for p in plan]
    result.forecast = _forecast(schedule, lanes, by_side)
    result.forecast["blocked"] = sorted({b["vm"] for b in result.blockers if b.get("vm")})
    result.forecast["outages"] = [{"vm": p.vm, "mode": p.mode, "up_to_s": p.predicted_duration_s, "plus": "boot"}
                                  for p in plan if p.cold]
    result.forecast["left"] = [one["vm"] for one in result.left]
    result.forecast["dirty_rate_error_pct"] = measured
    result.moves = [{"vm": p.vm, "from": p.source, "to": p.destination} for p in plan]
    return plan


def _destinations(ctx: RunContext, conns: Connections, result: DrainResult,
                  workers: int = 1) -> tuple[dict, list[HostCapacity]]:
    """Each destination's connection and capacity (as the ledgers have it), read by up to `workers` threads."""
    def read(dest: Any) -> tuple[Any, HostCapacity]:
        conn = conns.get(dest.uri)
        cap = ctx.backend.capacity(conn, dest, ctx.config.anti_affinity_labels)
        cap = dataclasses.replace(cap, name=dest.name, cordoned=cap.cordoned or dest.cordoned_now)
        return conn, claims.as_planned(ctx, conn, dest, cap)

    dest_conns = {}
    capacities = []
    for dest, (outcome, error) in zip(ctx.destinations, _each(read, list(ctx.destinations), workers), strict=True):
        if error is None:
            dest_conns[dest.name], cap = outcome
            capacities.append(cap)
        elif isinstance(error, HvfleetError):
            capacities.append(HostCapacity(dest.name, 0, 0, 0, 0, cordoned=dest.cordoned))
            result.block(Blocker(None, "destination_unreachable", f"{dest.name}: {error.message}", error.hint))
        else:
            raise error
    return dest_conns, capacities


def _each(fn: Callable[[Any], Any], items: list, workers: int) -> list[tuple[Any, Optional[Exception]]]:
    """[(fn(item), None) or (None, the exception it raised)] in the order of `items`, by up to `workers`
    threads (one after another when 1)."""
    def one(item: Any) -> tuple[Any, Optional[Exception]]:
        try:
            return fn(item), None
        except Exception as exc:  # pylint: disable=broad-except
            return None, exc

    if workers <= 1 or len(items) <= 1:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="hvfleet-plan") as pool:
        return list(pool.map(one, items))


class _Checks:
    """The prerequisite checks of the plan's (VM, destination) pairs, run as placement needs them."""

    def __init__(self, ctx: RunContext, src_conn: Any, dest_conns: dict, capacities: list[HostCapacity],
                 candidates: list[_Candidate], reviewed: Optional[dict], checks: LiveChecks) -> None:
        self.ctx, self.src_conn, self.dest_conns, self.capacities = ctx, src_conn, dest_conns, capacities
        self.candidates, self.checks = candidates, checks
        stack = _source_stack(ctx, src_conn)
        self.demands = [_demand(ctx, c.vm, c.settings, reviewed, stack, runs=c.vm.active or c.cold is not None)
                        for c in candidates]
        caps = {c.name: c for c in capacities}
        self.open = [d.name for d in ctx.destinations if d.name in dest_conns and not d.cordoned_now]
        self.todo = {(i, name) for i, demand in enumerate(self.demands) for name in self.open
                     if not (checks.prefilter and cannot_take(demand, caps[name], ctx.source.name,
                                                              ctx.config.placement))}
        self.found: dict[tuple[int, str], list[CheckResult]] = {}  # (VM index, destination) -> failed checks
        self.cache = CheckCache() if checks.cache else None
        self.prechecks = _prechecks_of(ctx.backend, self.cache)

    def place(self) -> PlacementPlan:
        """The placement in which every VM placed passed its checks on its host (module docstring)."""
        if not self.checks.on_demand:
            self._run(self.todo)
        index = {d.name: i for i, d in enumerate(self.demands)}
        while True:
            placement = plan_placement(self.ctx.source.name, self._demands(), self.capacities,
                                       self.ctx.config.placement)
            chosen = {(index[a.vm], a.destination) for a in placement.assignments} - self.found.keys()
            if chosen:
                self._run(chosen)
                failed = {i for i, name in chosen if self.found[(i, name)]}
                self._run({pair for pair in self.todo if pair[0] in failed})
                continue
            unplaced = {index[u.vm] for u in placement.unplaced}
            rest = {pair for pair in self.todo if pair[0] in unplaced}
            if not rest:
                return placement
            self._run(rest)

    def _run(self, pairs: set[tuple[int, str]]) -> None:
        """Check `pairs`, grouped by destination, the destinations by up to `workers` threads."""
        work: dict[str, list[int]] = {}
        position = {name: n for n, name in enumerate(self.open)}
        for i, name in sorted(pairs, key=lambda p: (position[p[1]], p[0])):
            work.setdefault(name, []).append(i)
        ctx = self.ctx

        def check(name: str) -> dict[int, list[CheckResult]]:
            dest, conn = ctx.known_host(name), self.dest_conns[name]
            out = {}
            for i in work[name]:
                cand = self.candidates[i]
                found = self.prechecks(self.src_conn, conn, cand.vm, ctx.source, dest, cand.settings)
                if cand.cold is not None and cand.vm.active:  # refused before the VM is shut down, not after
                    found = found + ctx.backend.definition_refusals(self.src_conn, cand.vm, ctx.source, dest,
                                                                    cand.settings, self.cache)
                out[i] = [c for c in found if c.failed and not (cand.cold is not None and c.id in LIVE_ONLY_CHECKS)]
            return out

        for name, (bad_of, error) in zip(work, _each(check, list(work), self.checks.workers), strict=True):
            if error is not None:
                raise error
            self.found.update({(i, name): bad for i, bad in bad_of.items()})
        self.todo -= pairs

    def failed_ids(self, vm: str) -> set:
        """The ids of the checks `vm` failed on any destination checked."""
        index = next(i for i, c in enumerate(self.candidates) if c.vm.name == vm)
        return {c.id for (i, _dest), bad in self.found.items() if i == index for c in bad}

    def _demands(self) -> list[VmDemand]:
        """The demands as checked so far: a host not checked for a VM counts as passing."""
        out = []
        for index, demand in enumerate(self.demands):
            failures = {}
            eligible = set()
            for dest in self.ctx.destinations:
                if dest.name not in self.dest_conns:
                    failures[dest.name] = "destination unreachable"
                    continue
                if dest.cordoned_now:
                    continue  # placement reports it as cordoned
                bad = self.found.get((index, dest.name))
                if bad:
                    failures[dest.name] = "; ".join(c.message + (f" (fix: {c.fix})" if c.fix else "") for c in bad)
                else:
                    eligible.add(dest.name)
            out.append(dataclasses.replace(demand, eligible=frozenset(eligible), precheck_failures=failures))
        return out


def _prechecks_of(backend: Any, cache: Optional[CheckCache]) -> Callable[..., list[CheckResult]]:
    """backend.prechecks with the plan's `cache`."""

    def with_cache(*args: Any) -> list[CheckResult]:
        return backend.prechecks(*args, cache=cache)
    return with_cache


def cannot_take(vm: VmDemand, host: HostCapacity, source: str, config: PlacementConfig) -> bool:
    """True when placement would refuse `host` for `vm` whatever the VM's checks say: the source, cordoned,
    outside its pins or in its avoid list, an anti-affinity sibling there, or too little memory or too few
    vCPUs left for this VM alone (placement's own rules; a plan only adds to a host, never frees it)."""
    if host.name == source or host.cordoned:
        return True
    if vm.pin and not any(fnmatchcase(host.name, p) for p in vm.pin):
        return True
    if vm.avoid and any(fnmatchcase(host.name, p) for p in vm.avoid):
        return True
    if any(value in host.anti_affinity.get(key, ()) for key, value in vm.anti_affinity.items()):
        return True
    if vm.memory_mib > host.memory_total_mib - host.memory_used_mib - config.headroom_mib(host):
        return True
    if vm.hugepages and host.hugepages_free is not None and hugepages.shortfall(vm.hugepages, host.hugepages_free):
        return True
    return host.vcpus_used + vm.vcpus > config.vcpu_capacity(host)


def _source_stack(ctx: RunContext, src_conn: Any) -> tuple[int, int]:
    """The source's (QEMU, libvirt) versions, so placement prefers destinations of the same or a newer
    generation; (0, 0) when they cannot be read (placement then ranks by capacity alone)."""
    try:
        return ctx.backend.capacity(src_conn, ctx.source).stack
    except HvfleetError:
        return (0, 0)


def memory_demand(vm: VmInfo, runs: bool) -> tuple[int, dict[int, int]]:
    """(MiB of ordinary memory, {page size KiB: huge pages}) `vm` takes on a host where it runs: memory it keeps
    in huge pages comes from the host's page pool, not from its ordinary memory."""
    if not runs:
        return 0, {}
    pages = dict(getattr(vm.facts, "hugepages", None) or {})  # facts None when unread
    return hugepages.pool_split(pages, vm.memory_mib)[0], pages


def _demand(ctx: RunContext, vm: VmInfo, settings: dict, reviewed: Optional[dict],
            source_stack: tuple[int, int] = (0, 0), runs: Optional[bool] = None) -> VmDemand:
    """The VM's placement demand, before its checks (eligible: every host). `runs`: it runs on the destination
    (default: it runs now; a cold move starts it there even when it is shut off now)."""
    runs = vm.active if runs is None else runs
    pins = tuple(settings.get("destinations", {}).get("pin") or ())
    if reviewed is not None and vm.name in reviewed:
        pins = (reviewed[vm.name]["destination"],)
    memory_mib, pages = memory_demand(vm, runs)
    return VmDemand(name=vm.name, memory_mib=memory_mib, hugepages=pages, vcpus=vm.vcpus if runs else 0,
                    dirty_rate_bps=vm.dirty_rate_bps or 0.0, anti_affinity=anti_affinity(ctx, vm.labels), pin=pins,
                    avoid=tuple(settings.get("destinations", {}).get("avoid") or ()),
                    order=int(settings.get("drain_order", 0) or 0), source_stack=source_stack)


def anti_affinity(ctx: RunContext, labels: dict) -> dict:
    return {k: labels[k] for k in ctx.config.anti_affinity_labels if k in (labels or {})}


def _simulate(ctx: RunContext, decided: dict, pinned: list, replan: Any, result: DrainResult,
              measured: dict) -> tuple[list, list, Optional[dict]]:
    """The drain forecast over the live moves (the scheduler's order and limits, the source link shared by
    what runs); each VM's mode is decided again on the bandwidth it gets when it starts. A VM the forecast
    refused at its lane share may still go with more of the link; VMs still refused become blockers."""
    final: dict[str, VmDecision] = dict(decided)
    predict = _at(decided, replan, forecast_range.MEASURED, final)
    simulated = [n for n, d in decided.items() if (d.item is not None and d.item.live) or d.refused_by_forecast]
    moves = [schedule_move(p) for p in pinned if p.live] + [
        schedule_move(decided[n].item) if decided[n].item is not None
        else Move(n, ctx.source.name, decided[n].destination, None, decided[n].order) for n in simulated]
    schedule = forecast_range.run_schedule(ctx, moves, predict)
    by_side = forecast_range.totals(ctx, moves, lambda side: _at(decided, replan, side), schedule,
                                    varies=bool(measured)) if moves else None
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
    return plan, schedule, by_side


def _at(decided: dict, replan: Any, side: int, record: Optional[dict] = None) -> Any:
    """predict(vm, bandwidth) for simulate_drain: each VM's mode decided again on the bandwidth it gets when it
    starts, its dirty rate at `side` of its reading; the new decisions go into `record` when given."""
    def predict(name: str, bandwidth: float) -> Optional[Forecast]:
        if name not in decided:
            return None  # resumed from the journal: its recorded mode stands, no forecast
        again = replan(name, bandwidth, side)
        first = decided[name].item
        if again.item is not None:  # the scheduler keeps ranking by the lane share (unknown: refused there)
            again = dataclasses.replace(again, item=again.item.replace(rank_s=first.rank_s if first else None))
        if record is not None:
            record[name] = again
        if again.item is None:
            return again.forecast or Forecast(REFUSE, False, "blocked", None, None, None, 0, False)
        return again.forecast
    return predict


def _forecast(schedule: list, lanes: int, by_side: Optional[dict]) -> dict:
    if any(s.forecast is not None for s in schedule):
        total = forecast_range.expected(by_side) if by_side else None
        forecast = forecast_drain_shared(schedule, concurrency=lanes, total_s=total).as_dict()
        forecast["schedule"] = [s.as_dict() for s in schedule]
        forecast["as_read_s"] = by_side[forecast_range.MEASURED] if by_side else forecast["total_s"]
        forecast["range_s"] = forecast_range.spread(by_side) if by_side else None
        forecast["summary"] += forecast_range.note(by_side)
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
