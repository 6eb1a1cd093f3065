# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drain a hypervisor - cordon, look, check, plan, migrate concurrently, verify - and undo it later.

`Drainer` is the entry point; the work is done by one module per responsibility around a shared
RunContext (drain/context.py):

1. the host's drain lock (drain/lock.py): a second concurrent drain is refused, naming the holder;
2. the journal (drain/journal.py, states in drain/states.py) is loaded and checked - a malformed one
   is refused before anything changes;
3. the source is cordoned so nothing is placed on it meanwhile;
4. resume (drain/resume.py): every entry of an earlier run is looked up on the hosts and the journal
   is brought in line with reality (moved VMs recorded, leftover source definitions removed,
   interrupted post-copies pinned to their destination, second running copies paused);
5. planning (drain/planner.py, planning/vm_plan.py): checks, placement, the forecast of the schedule;
6. execution (drain/execution.py): migrations run concurrently under the scheduler's limits, each
   in its own thread; after more than `max_failures` failures, on cancel or when the window closes no
   new migration starts;
7. the host is verified empty and a DrainResult returned (drain/report.py words the message).

`plan_only=True` (check mode) looks and plans and changes nothing: no lock, no cordon, no journal.
`restore` (drain/restore.py) brings the VMs back and uncordons the host once every one is verified home.
`cancel` (from a signal handler) never blocks: no new migration starts, running pre-copies are asked
to abort (the VM stays on its source), post-copies complete; the journal says where every VM is.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Action, CycleState, VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import claims, report
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.backend import Backend
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.execution import Job, execute
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import (
    DEFAULT_STATE_DIR,
    DrainConfig,
    DrainError,
    DrainResult,
    check_reviewed_plan,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.planner import plan_drain
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.restore import restore as run_restore
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.resume import reconcile_journal
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import load_policies
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import Blocker, PlanItem


def _unmigratable_lines(result: DrainResult, source: str) -> str:
    """What the plan does with the VMs that cannot live-migrate: each cold move's outage, each VM left."""
    text = "".join(f"; {p['vm']} moves cold to {p['destination']}: {p['mode_reason']}" for p in result.plan
                   if p.get("kind") == "cold")
    if result.left:
        text += (f"; {source} will NOT be empty: left on it (on_unmigratable: leave): "
                 + ", ".join(one["vm"] for one in result.left))
    return text


class Drainer:
    """Drain `source` onto `destinations`, or bring its VMs back (`restore`)."""

    def __init__(self, backend: Backend, source: Host, destinations: list[Host], config: Optional[DrainConfig] = None,
                 state_dir: Any = DEFAULT_STATE_DIR, progress: Optional[Callable[[dict], Any]] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep):
        config = config or DrainConfig()
        for host in [source, *destinations]:
            host.validate()
        config.validate()
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise DrainError("A destination is listed twice.", "give each destination host once.")
        destinations = [d for d in destinations if d.name != source.name]
        policies = load_policies(config.policies) if config.policies and not hasattr(
            config.policies[0], "settings") else list(config.policies or [])
        self.ctx = RunContext(backend, source, destinations, config, policies, os.fspath(state_dir), progress,
                              clock, sleep)

    # the run context's parts, for callers and tests
    @property
    def config(self) -> DrainConfig:
        return self.ctx.config

    @property
    def journal(self) -> Optional[jr.Journal]:
        return self.ctx.journal

    @journal.setter
    def journal(self, value: Optional[jr.Journal]) -> None:
        self.ctx.journal = value

    @property
    def clock(self) -> Callable[[], float]:
        return self.ctx.clock

    @property
    def sleep(self) -> Callable[[float], Any]:
        return self.ctx.sleep

    @sleep.setter
    def sleep(self, value: Callable[[float], Any]) -> None:
        self.ctx.sleep = value

    def cancel(self) -> None:
        """Stop: no new migration starts; pre-copy migrations in flight are asked to abort. Never blocks."""
        self.ctx.cancel()

    @property
    def cancelled(self) -> bool:
        return self.ctx.cancelled

    # ---- drain ------------------------------------------------------------------------------

    def drain(self, plan_only: bool = False, reviewed_plan: Any = None) -> DrainResult:
        """Drain the source; `plan_only` returns the plan and changes nothing."""
        ctx = self.ctx
        reviewed = None
        if reviewed_plan is not None:  # a garbled or hand-edited plan is refused before anything changes
            reviewed = check_reviewed_plan(reviewed_plan, ctx.source.name, [d.name for d in ctx.destinations])
        result = DrainResult(action=str(Action.DRAIN), host=ctx.source.name)
        with self._session(result, plan_only) as conns:
            if not plan_only:
                return self._drain_locked(conns, result, reviewed)
            resumed = reconcile_journal(ctx, conns, result, act=False)
            plan_drain(ctx, conns, result, reviewed=reviewed, pinned=resumed.pinned, skip=frozenset(resumed.skip))
        result.state = "planned"
        result.changed = bool(result.plan) or not ctx.backend.read_cordon(ctx.state_dir)
        result.message = report.plan_message(result, ctx.source.name) + _unmigratable_lines(result, ctx.source.name)
        return result

    @contextlib.contextmanager
    def _session(self, result: DrainResult, plan_only: bool) -> Iterator[Connections]:
        """The journal and connections of one run, under the host's drain lock; check mode takes no lock
        and keeps the journal in memory (it only says who holds the lock)."""
        ctx = self.ctx
        lock = DrainLock(ctx.state_dir, ctx.source.name, result.action, ctx.config.by or "")
        if plan_only:
            result.lock_holder = lock.is_locked_elsewhere()
            ctx.journal = jr.Journal.load(ctx.state_dir, ctx.source.name, persist=False)
            with Connections(ctx.backend) as conns:
                yield conns
            return
        with lock:
            ctx.journal = jr.Journal.load(ctx.state_dir, ctx.source.name)
            result.journal_path = ctx.journal.path
            result.progress_path = ctx.journal.progress_path
            with Connections(ctx.backend) as conns:
                yield conns

    def _unfinished(self) -> bool:
        return any(e.get("state") not in (VmState.HOME, VmState.PLANNED) for e in self.ctx.jr.vms().values())

    def _drain_locked(self, conns: Connections, result: DrainResult, reviewed: Optional[dict]) -> DrainResult:
        ctx = self.ctx
        journal = ctx.jr
        was_cordoned = ctx.backend.read_cordon(ctx.state_dir)
        vms_now = ctx.backend.list_vms(conns.get(ctx.source.uri), ctx.source, measure=False)
        unfinished = self._unfinished()
        if not vms_now and was_cordoned and not unfinished and reviewed is None:
            result.state = str(CycleState.DRAINED)
            result.verified_empty = True
            result.message = f"{ctx.source.name} is already drained (cordoned, no domains); nothing to do."
            result.summary = {"moved": 0, "failed": 0, "blocked": 0, "not_started": 0}
            return result
        result.resumed = unfinished or journal.state in (CycleState.FAILED, CycleState.INTERRUPTED)
        cordon_changed = claims.set_cordon(ctx, True, ctx.config.reason or "drain")
        result.cordon = {"changed": bool(cordon_changed), "state": "cordoned"}
        result.changed = bool(cordon_changed)
        journal.begin_run(str(Action.DRAIN), reason=ctx.config.reason, by=ctx.config.by, source_uri=ctx.source.uri,
                          options=self._options())
        if cordon_changed:
            ctx.note(f"cordoned {ctx.source.name}")
        still_coming = claims.wait_for_incoming(ctx)
        if still_coming:
            ctx.note(f"still on their way to {ctx.source.name} (listed again at the end): {'; '.join(still_coming)}")
        resumed = reconcile_journal(ctx, conns, result, act=True)
        result.changed = result.changed or any(r.get("changed") for r in result.reconciled)
        plan = plan_drain(ctx, conns, result, reviewed=reviewed, pinned=resumed.pinned, skip=frozenset(resumed.skip))
        if result.plan_differences and reviewed is not None:
            journal.end_run(CycleState.FAILED, {"message": "reviewed plan no longer matches"})
            if cordon_changed:  # refused: leave the host as this run found it
                claims.set_cordon(ctx, False, "reviewed plan refused")
            raise DrainError("The reviewed plan no longer matches reality: " + "; ".join(result.plan_differences),
                             "review a new plan (check mode with plan_file), then apply that one.")
        self._record_plan(plan, result, handled=resumed.skip)
        started = ctx.clock()
        ctx.event("run_started", vms=len(plan), blocked=len(result.blockers),
                  forecast_total_s=(result.forecast or {}).get("total_s"), max_parallel=ctx.config.max_parallel,
                  resumed=result.resumed)
        jobs = [Job(item, ctx.source, ctx.known_host(item.destination), Action.DRAIN) for item in plan]
        outcomes = execute(ctx, jobs, result)
        if outcomes.attempted:
            result.changed = True
        self._verify_empty(conns, result)
        self._finish(result, outcomes, round(ctx.clock() - started, 3))
        return result

    def _record_plan(self, plan: list[PlanItem], result: DrainResult, handled: set) -> None:
        """The plan goes into the journal before anything starts; VMs blocked on the source are recorded as
        blocked (those the resume step found elsewhere keep the state it gave them)."""
        ctx = self.ctx
        journal = ctx.jr
        for item in plan:
            entry = {k: v for k, v in item.to_dict().items() if k != "labels"}
            old = journal.vm(item.vm)
            state = old["state"] if item.resume and old is not None else VmState.PLANNED
            entry.update(origin=ctx.source.name, origin_uri=ctx.source.target_uri, state=str(state), result=None,
                         error=None, recovery=None)
            journal.put_vm(item.vm, entry, note="resumed" if item.resume else "planned", save=False)
        for blocker in result.blockers:
            name = blocker.get("vm")
            if not name or name in handled:
                continue
            old = journal.vm(name)
            if old is None:
                journal.put_vm(name, {"kind": None, "state": str(VmState.BLOCKED), "error": blocker["message"],
                                      "origin": ctx.source.name, "origin_uri": ctx.source.target_uri},
                               note="blocked", save=False)
            elif old["state"] in (VmState.PLANNED, VmState.BLOCKED, VmState.STAYED, VmState.FAILED):
                journal.update_vm(name, VmState.BLOCKED, note=blocker["message"], error=blocker["message"])
        for left in result.left:  # on the host by its policy (on_unmigratable: leave): recorded as not moved
            name = left["vm"]
            old = journal.vm(name)
            entry = {"kind": None, "state": str(VmState.BLOCKED), "error": None, "left": dict(left),
                     "origin": ctx.source.name, "origin_uri": ctx.source.target_uri}
            if old is None or old["state"] in (VmState.PLANNED, VmState.BLOCKED, VmState.STAYED, VmState.FAILED,
                                               VmState.HOME):
                journal.put_vm(name, entry, note=left["why"], save=False)
        journal.set_plan(result.forecast, result.blockers)

    def _verify_empty(self, conns: Connections, result: DrainResult) -> None:
        ctx = self.ctx
        leftovers = ctx.backend.list_vms(conns.get(ctx.source.uri), ctx.source, measure=False)
        result.leftovers = sorted(v.name for v in leftovers)
        result.verified_empty = not leftovers
        left = {one["vm"] for one in result.left}
        for vm in leftovers:
            if vm.name in left or vm.name in result.not_started or result.blocked(vm.name) or any(
                    r["vm"] == vm.name and not r.get("ok") for r in result.vms):
                continue
            result.block(Blocker(vm.name, "leftover", f"'{vm.name}' ({vm.state}) is still on {ctx.source.name} and "
                                 "was not part of this run's plan.", "run the drain again to move it."))

    def _finish(self, result: DrainResult, outcomes: Any, duration_s: float) -> None:
        ctx = self.ctx
        failed = [r for r in result.vms if not r.get("ok")]
        result.summary = report.summary(result, len(outcomes.not_started))
        result.actual = report.actual(result, duration_s)
        left = sorted(one["vm"] for one in result.left)
        only_left = set(result.leftovers) == set(left)
        state: str
        if ctx.cancelled:
            state = CycleState.INTERRUPTED
        elif result.verified_empty and not failed and not result.recoverable:
            state = CycleState.DRAINED
        elif left and only_left and not failed and not result.recoverable and not result.blockers:
            state = jr.NOT_EMPTY  # all it could move moved; what stays, stays by its policy - not a failure
        else:
            state = CycleState.FAILED
        result.state = str(state)
        result.failed = state not in (CycleState.DRAINED, jr.NOT_EMPTY)
        result.message = report.closing_message(
            result, ctx.source.name, cancelled=ctx.cancelled,
            stopped_after=outcomes.failures if outcomes.stopped else None, max_failures=ctx.config.max_failures,
            window_closed=outcomes.window_closed)
        ctx.jr.end_run(state, {"message": result.message, **result.summary})
        ctx.event("run_finished", state=str(state), moved=result.summary["moved"], failed=len(failed),
                  blocked=len(result.blockers), not_started=len(outcomes.not_started), duration_s=duration_s,
                  forecast_total_s=(result.forecast or {}).get("total_s"), message=result.message,
                  **({"left": len(left)} if left else {}))

    def _options(self) -> dict:
        c = self.ctx.config
        return {"max_parallel": c.max_parallel, "max_outbound": c.max_outbound, "max_inbound": c.max_inbound,
                "bandwidth_mib": c.bandwidth_mib, "max_failures": c.max_failures,
                "destinations": [d.name for d in self.ctx.destinations]}

    # ---- restore ----------------------------------------------------------------------------

    def restore(self, plan_only: bool = False) -> DrainResult:
        """Bring the VMs the journal moved away back to the source, then uncordon it."""
        result = DrainResult(action=str(Action.RESTORE), host=self.ctx.source.name)
        with self._session(result, plan_only) as conns:
            run_restore(self.ctx, conns, result, plan_only=plan_only)
        return result
