# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore: bring the VMs a drain moved away back to their home host, then uncordon it.

Every journal entry of the cycle that is not `home` is looked up on the hosts first - whatever its
state says (a VM journalled `failed` may have moved since) - in the direction its last migration ran,
so an interrupted post-copy is never judged backwards. The way back is planned with the same
per-VM planning as a drain (vm_plan.plan_vm) and run by the same executor. The host is uncordoned
only when every VM of the cycle is verified to be on it and nowhere else.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Action, CycleState, Mode, VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import claims, report
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.cold import start_shut_off
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.execution import Job, execute
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.planner import anti_affinity, memory_demand
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.whereabouts import Judgement, Placement, judge, locate
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.drain_forecast import forecast_drain
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import VmDemand, plan_placement
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import select_policy
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import COLD, LIVE_ONLY_CHECKS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import (
    Blocker,
    PlanItem,
    lane_bandwidth,
    plan_cold,
    plan_vm,
)

RETURNING_STATES = (VmState.RETURNING, VmState.RETURN_PAUSED_POSTCOPY)


@dataclasses.dataclass
class _Away:
    """A VM of this host found elsewhere, to bring back from `host`."""

    name: str
    host: Host
    resume_postcopy: bool = False


class Restorer:
    """One restore run of `ctx.source` (the home host)."""

    def __init__(self, ctx: RunContext, conns: Connections, result: DrainResult, plan_only: bool):
        self.ctx = ctx
        self.conns = conns
        self.result = result
        self.plan_only = plan_only
        self.journal = ctx.jr
        self.home = dataclasses.replace(ctx.source, cordoned=False)
        self.cold: dict[str, tuple] = {}  # VMs a drain moved cold (they come back cold): what stops them live

    def entries(self) -> dict:
        """Journal entries of VMs of this host that are not verified home."""
        return {n: e for n, e in self.journal.vms().items()
                if e.get("origin") in (None, self.home.name) and e.get("state") != VmState.HOME}

    def run(self) -> None:
        entries = self.entries()
        cordoned = self.ctx.backend.read_cordon(self.ctx.state_dir)
        if not entries and self.journal.state in (None, CycleState.RESTORED) and not cordoned:
            self.result.state = str(CycleState.RESTORED)
            self.result.message = f"{self.home.name} is active and has nothing to bring back; nothing to do."
            self.result.summary = {"moved": 0, "failed": 0, "blocked": 0, "not_started": 0}
            return
        if not self.plan_only:
            self.journal.begin_run(str(Action.RESTORE), by=self.ctx.config.by, source_uri=self.home.uri)
        self.cold = {n: tuple(e.get("live_blockers") or ()) for n, e in entries.items() if e.get("kind") == COLD}
        away = [a for a in (self._locate(name, entry) for name, entry in sorted(entries.items())) if a is not None]
        plan = self._plan(away)
        if self.plan_only:
            self.result.state = "planned"
            self.result.changed = bool(plan) or cordoned
            self.result.message = (f"restore plan for {self.home.name}: {len(plan)} to bring back, "
                                   f"{len(self.result.blockers)} blocked" + ("; then uncordon" if cordoned else ""))
            return
        for item in plan:
            self.journal.update_vm(item.vm, note="restore planned", restore_plan={
                "source": item.source, "mode": item.mode, "mode_reason": item.mode_reason, "policy": item.policy,
                "predicted_duration_s": item.predicted_duration_s,
                "predicted_downtime_ms": item.predicted_downtime_ms})
        started = self.ctx.clock()
        self.ctx.event("run_started", vms=len(plan), blocked=len(self.result.blockers),
                       forecast_total_s=(self.result.forecast or {}).get("total_s"),
                       max_parallel=self.ctx.config.max_parallel, resumed=False)
        by_name = {a.name: a for a in away}
        jobs = [Job(item, by_name[item.vm].host, self.home, Action.RESTORE) for item in plan]
        outcomes = execute(self.ctx, jobs, self.result)
        if outcomes.attempted or self.result.reconciled:
            self.result.changed = True
        self._finish(outcomes, round(self.ctx.clock() - started, 3))

    # ---- where is each VM ---------------------------------------------------------------

    def _hosts(self, entry: dict) -> list[Host]:
        hosts = [self.home]
        named = self.ctx.host(entry.get("destination"))
        if named is not None and named.name != self.home.name:
            hosts.append(named)
        hosts.extend(d for d in self.ctx.destinations if d not in hosts and d.name != self.home.name)
        return hosts

    def _judge(self, name: str, entry: dict) -> tuple[Judgement, str]:
        """Judge in the direction the VM's last migration ran; returns (judgement, the judged source)."""
        where = locate(self.ctx.backend, self.conns, name, self._hosts(entry))
        state = VmState(entry["state"])
        away = entry.get("destination") or ""
        if state in RETURNING_STATES:
            postcopy = state == VmState.RETURN_PAUSED_POSTCOPY or (
                entry.get("restore_result") or {}).get("mode_used") == Mode.POSTCOPY
            return judge(where, away, self.home.name, postcopy_started=postcopy), away
        return judge(where, self.home.name, away, postcopy_started=state == VmState.PAUSED_POSTCOPY), self.home.name

    def _locate(self, name: str, entry: dict) -> Optional[_Away]:  # pylint: disable=too-many-return-statements
        verdict, judged_source = self._judge(name, entry)
        note = {"vm": name, "journal_state": entry.get("state"), "found": str(verdict.placement),
                "where": verdict.host, "reason": verdict.reason, "changed": False}
        self.result.reconciled.append(note)
        if verdict.placement in (Placement.ON_SOURCE, Placement.MOVED):
            at = judged_source if verdict.placement == Placement.ON_SOURCE else verdict.host
            if at == self.home.name:
                self._drop_leftovers(name, verdict.drop_leftover_on)
                if name in self.cold and not self._running_at_home(name):
                    return None  # it ran before its cold move: not home until it runs here again
                if not self.plan_only:
                    self.journal.update_vm(name, VmState.HOME, note="found on its home host")
                    note["changed"] = True
                return None
            host = self.ctx.host(at)
            if host is None:
                self._recoverable(name, f"it is on {at}, a host not given to this restore",
                                  f"add {at} to the destinations and run again.")
                return None
            if not self.plan_only and (entry["state"] != VmState.MOVED or entry.get("destination") != at):
                self.journal.update_vm(name, VmState.MOVED, note=f"found on {at}", destination=at,
                                       destination_uri=host.target_uri)
                note["changed"] = True
            return _Away(name, host)
        if verdict.placement == Placement.POSTCOPY_INTERRUPTED and judged_source != self.home.name:
            host = self.ctx.host(judged_source)
            if host is not None:
                return _Away(name, host, resume_postcopy=True)
        if verdict.placement == Placement.POSTCOPY_INTERRUPTED:
            self._recoverable(name, f"an interrupted post-copy to {verdict.host} ({verdict.reason})",
                              "run the drain again: it resumes the post-copy first; then restore.")
            return None
        if verdict.placement in (Placement.POSTCOPY_STREAMING, Placement.IN_FLIGHT):
            self._recoverable(name, f"a migration is still under way ({verdict.reason}); it is left to finish",
                              "run the restore again once it has completed.")
            return None
        if verdict.placement == Placement.TWO_RUNNING:
            paused = self._pause(name, verdict.pause)
            self._recoverable(name, f"{verdict.reason}; paused: {', '.join(paused) or 'none'}",
                              "decide which copy is current, destroy the other, resume the one kept, then run again.")
            return None
        self._recoverable(name, verdict.reason, "find it and bring it back by hand (domain_migration), then run "
                          "again.")
        return None

    def _running_at_home(self, name: str) -> bool:
        """A VM moved cold, found shut off at home (a cold move that could not start it anywhere): start it."""
        view = self.ctx.backend.observe(self.conns.get(self.home.uri), name, self.home.uri)
        if view.running or view.paused:
            return True
        started = start_shut_off(self.ctx, self.conns.get(self.home.uri), name, self.home.name, "after its cold move",
                                 "where it ran before its cold move", not self.plan_only, self._recoverable)
        return started is not False  # planned only: it counts as home, as it will be

    def _drop_leftovers(self, name: str, hosts: tuple) -> None:
        for host_name in hosts:
            holder = self.ctx.host(host_name)
            if holder is None or host_name == self.home.name:
                continue
            if self.plan_only:
                self.ctx.note(f"{name}: the shut-off definition left on {host_name} would be removed")
                continue
            try:
                self.ctx.backend.drop_leftover_definition(self.conns.get(holder.uri), self.conns.get(self.home.uri),
                                                          name)
            except HvfleetError as exc:
                self._recoverable(name, f"home on {self.home.name}; a shut-off definition is left on {host_name} "
                                  f"({exc.message})", exc.hint or f"undefine '{name}' on {host_name} by hand.")

    def _pause(self, name: str, hosts: tuple) -> list[str]:
        paused = []
        for host_name in hosts:
            host = self.ctx.host(host_name)
            if host is None or self.plan_only:
                continue
            try:
                self.ctx.backend.pause(self.conns.get(host.uri), name)
                paused.append(host_name)
            except HvfleetError as exc:
                self.ctx.note(f"{name}: could not pause the copy on {host_name}: {exc.message}")
        return paused

    def _recoverable(self, name: str, where: str, fix: str) -> None:
        self.result.recoverable.append({"vm": name, "where": where, "fix": fix})
        self.result.block(Blocker(name, "needs_attention", f"'{name}': {where}", fix))

    # ---- the way back -------------------------------------------------------------------

    def _plan(self, away: list[_Away]) -> list[PlanItem]:
        by_host: dict[str, list[_Away]] = {}
        for one in away:
            by_host.setdefault(one.host.name, []).append(one)
        infos = {}
        for items in by_host.values():
            host = items[0].host
            wanted = {a.name for a in items}
            for vm in self.ctx.backend.list_vms(self.conns.get(host.uri), host,
                                                measure=self.ctx.config.measure_dirty_rate):
                if vm.name in wanted:
                    infos[vm.name] = (vm, host)
        for missing in away:
            if missing.name not in infos:
                self.result.block(Blocker(missing.name, "not_found", f"'{missing.name}' is no longer listed on "
                                          f"{missing.host.name}.", "run the restore again."))
        home_conn = self.conns.get(self.home.uri)
        cap = self.ctx.backend.capacity(home_conn, self.home, self.ctx.config.anti_affinity_labels)
        home_cap = dataclasses.replace(cap, name=self.home.name, cordoned=False)
        demands, matches = [], {}
        for name, (vm, host) in sorted(infos.items()):
            match = matches[name] = select_policy(self.ctx.policies, vm.name, vm.labels, vm.memory_mib)
            cold = name in self.cold  # a cold move needs none of the live checks
            found = self.ctx.backend.prechecks(self.conns.get(host.uri), home_conn, vm, host, self.home,
                                               match.settings)
            bad = [c for c in found if c.failed and not (cold and c.id in LIVE_ONLY_CHECKS)]
            runs = vm.active or cold  # a cold-moved VM is started at home even when it is shut off now
            memory_mib, pages = memory_demand(vm, runs)
            demands.append(VmDemand(
                name=name, memory_mib=memory_mib, hugepages=pages, vcpus=vm.vcpus if runs else 0,
                dirty_rate_bps=vm.dirty_rate_bps or 0.0, anti_affinity=anti_affinity(self.ctx, vm.labels),
                eligible=frozenset() if bad else frozenset([self.home.name]),
                precheck_failures={self.home.name: "; ".join(c.message for c in bad)} if bad else {},
                order=int(match.settings.get("drain_order", 0) or 0)))
        placement = plan_placement(sorted(by_host), demands, [home_cap], self.ctx.config.placement)
        for unplaced in placement.unplaced:
            self.result.block(Blocker(unplaced.vm, "unplaced", f"'{unplaced.vm}' cannot come back: "
                                      + "; ".join(unplaced.messages()), "free capacity on the home host or fix the "
                                      "failing checks.", dict(unplaced.reasons)))
        lanes = self.ctx.config.lanes(sum(1 for a in placement.assignments
                                          if infos[a.vm][0].active and a.vm not in self.cold))
        resume = {a.name for a in away if a.resume_postcopy}
        plan, forecasts = [], {}
        for assignment in placement.assignments:
            vm, host = infos[assignment.vm]
            match = matches[vm.name]
            bandwidth = lane_bandwidth(host, self.home, lanes, default_link_mbit=self.ctx.config.default_link_mbit,
                                       max_inbound=self.ctx.config.max_inbound, budget_bps=self.ctx.config.budget_bps)
            if vm.name in self.cold:
                decision = plan_cold(vm, match.settings, match.policy.name, match.reason, host, self.home,
                                     placement_reason=assignment.reason, live_blockers=self.cold[vm.name])
            else:
                decision = plan_vm(vm, match.settings, match.policy.name, match.reason, host, self.home,
                                   placement_reason=assignment.reason, bandwidth_bps=bandwidth)
            if decision.item is None:
                if decision.blocker is not None:
                    self.result.block(decision.blocker)
                continue
            item = decision.item
            if vm.name in resume:
                item = item.replace(mode=str(Mode.POSTCOPY), resume=True,
                                    placement_reason="resuming the interrupted post-copy back home")
            plan.append(item)
            if decision.forecast is not None:
                forecasts[vm.name] = decision.forecast
        self.result.forecast = forecast_drain(forecasts, concurrency=lanes).as_dict() if forecasts else None
        self.result.plan = [p.to_dict() for p in plan]
        self.result.moves = [{"vm": p.vm, "from": p.source, "to": self.home.name} for p in plan]
        return plan

    # ---- the end ------------------------------------------------------------------------

    def _verified_home(self) -> list[str]:
        """VMs of the cycle that are not on the home host only, looked up once more."""
        not_home = []
        for name, entry in sorted(self.journal.vms().items()):
            if entry.get("origin") not in (None, self.home.name):
                continue
            if entry.get("state") != VmState.HOME:
                not_home.append(name)
                continue
            where = locate(self.ctx.backend, self.conns, name, self._hosts(entry))
            if where.active_on not in ([], [self.home.name]) or self.home.name not in where.defined_on:
                not_home.append(name)
                self._recoverable(name, f"the journal says home, but: {where.describe()}",
                                  "inspect the hosts named, then run the restore again.")
        return not_home

    def _finish(self, outcomes: object, duration_s: float) -> None:
        result = self.result
        failed = [r for r in result.vms if not r.get("ok")]
        not_started = getattr(outcomes, "not_started", [])
        result.summary = report.summary(result, len(not_started))
        result.actual = {"total_s": duration_s, "migrations": len([p for p in result.plan if p["kind"] == "live"]),
                         "forecast_total_s": (result.forecast or {}).get("total_s")}
        complete = not failed and not result.blockers and not self.ctx.cancelled and not self._verified_home()
        if complete:
            changed = claims.set_cordon(self.ctx, False, "restored")
            result.changed = result.changed or bool(changed)
            result.cordon = {"changed": bool(changed), "state": "active"}
            result.state = str(CycleState.RESTORED)
        else:
            result.failed = True
            result.state = str(CycleState.INTERRUPTED if self.ctx.cancelled else CycleState.FAILED)
        result.message = report.closing_message(
            result, self.home.name, cancelled=self.ctx.cancelled,
            stopped_after=getattr(outcomes, "failures", 0) if getattr(outcomes, "stopped", False) else None,
            max_failures=self.ctx.config.max_failures, window_closed=getattr(outcomes, "window_closed", False))
        end_state = CycleState.RESTORED if complete else (
            CycleState.INTERRUPTED if self.ctx.cancelled else CycleState.DRAINED)
        self.journal.end_run(end_state, {"message": result.message, **result.summary})
        self.ctx.event("run_finished", state=result.state, moved=result.summary["moved"], failed=len(failed),
                       blocked=len(result.blockers), not_started=len(not_started), duration_s=duration_s,
                       forecast_total_s=result.actual["forecast_total_s"], message=result.message)
        if complete:
            self.journal.archive()


def restore(ctx: RunContext, conns: Connections, result: DrainResult, plan_only: bool) -> None:
    Restorer(ctx, conns, result, plan_only).run()
