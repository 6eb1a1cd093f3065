# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the planned moves: live migrations concurrently under the scheduler's limits, then definitions.

Each live migration runs in its own thread with its own connections and a MigrationControl through
which the run cancels it and changes its bandwidth share. Every start and end is journalled; after
any failure the VM is looked up on both hosts (whereabouts) before its journal state is decided, so
the journal says where the VM is, not what the error said.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError, MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Outcome, Storage, VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import replace
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.claims import Claims
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.cold import run_cold
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.jobs import Job, Outcomes
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import RENEW_EVERY_S, Verdict
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.planner import anti_affinity, schedule_move
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.report import summarize_result, vm_result
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.whereabouts import Placement, judge, locate
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import MigrationControl
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import STAYED, Step
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import MIB
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import VmDemand
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import STORAGE, spec_for
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Scheduler
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import Blocker, PlanItem


def execute(ctx: RunContext, jobs: list[Job], result: DrainResult) -> Outcomes:
    """Run the live jobs concurrently, then the definition and cold moves (one at a time); fills result.vms and
    result.not_started."""
    out = Outcomes()
    live = [j for j in jobs if j.item.live]
    definitions = [j for j in jobs if not j.item.live]
    finished = _run_live(ctx, live, result, out)
    out.not_started.extend(j.vm for j in live if j.vm not in finished)
    for job in definitions:
        if ctx.window_closed():
            out.window_closed = True
        if _stopping(ctx, out) or out.window_closed:
            out.not_started.append(job.vm)
            continue
        out.attempted += 1
        item = run_cold(ctx, job, result) if job.item.cold else move_definition(ctx, job)
        if item is None:
            continue  # the destination refused its claim: not moved, a blocker says why
        result.vms.append(item)
        if not item.get("ok"):
            out.failures += 1
    resumed = {j.vm: j for j in jobs if j.item.resume}
    for name in out.not_started:
        why = not_started_reason(ctx, out)
        ctx.note(f"{name}: {why}")
        if ctx.journal is not None and ctx.journal.vm(name) is not None:
            ctx.journal.update_vm(name, note=why, error=why)
        if name in resumed:  # its guest is not (only) where this run started from
            job = resumed[name]
            result.recoverable.append({"vm": name, "where": f"an interrupted post-copy from {job.src.name} to "
                                       f"{job.dst.name}: the guest runs on {job.dst.name}, the copy on "
                                       f"{job.src.name} stays paused; not resumed ({why})",
                                       "fix": "run the drain again: it resumes the post-copy before anything else."})
    result.not_started = list(out.not_started)
    return out


def not_started_reason(ctx: RunContext, out: Outcomes) -> str:
    if ctx.cancelled:
        return "interrupted before it started"
    if out.failures > ctx.config.max_failures:
        return f"not started: more than max_failures ({ctx.config.max_failures}) migrations failed"
    return "not started: the maintenance window closed"


def _stopping(ctx: RunContext, out: Outcomes) -> bool:
    return ctx.cancelled or out.failures > ctx.config.max_failures


def _run_live(ctx: RunContext, jobs: list[Job], result: DrainResult, out: Outcomes) -> set:
    # pylint: disable=too-many-branches
    by_vm = {j.vm: j for j in jobs}
    sched = Scheduler([schedule_move(j.item)._replace(source=j.src.name, destination=j.dst.name)
                       for j in jobs], ctx.config.limits()) if jobs else None
    running: dict[str, Worker] = {}
    finished: set = set()
    waiting: dict[str, float] = {}  # VMs whose destination has no free slot or link share yet: since when
    claims = Claims(ctx)
    done: queue.Queue = queue.Queue()
    stop_progress = threading.Event()
    ticker = threading.Thread(target=_progress_loop, args=(ctx, running, stop_progress, claims), daemon=True,
                              name="drain-progress")
    ticker.start()
    try:
        while sched is not None:
            if ctx.window_closed() and not out.window_closed:
                out.window_closed = True
                ctx.note("the maintenance window closed: no new migration starts (running ones finish)")
            if out.failures > ctx.config.max_failures and not out.stopped and not ctx.cancelled:
                out.stopped = True
                ctx.note(f"{out.failures} failure(s) > max_failures {ctx.config.max_failures}: no new migration "
                         "starts")
            if not _stopping(ctx, out) and not out.window_closed:
                _start_ready(ctx, sched, by_vm, (running, finished, waiting), claims, result, out, done)
            if not running:
                if not waiting or _stopping(ctx, out) or out.window_closed:
                    break
                ctx.sleep(1.0)  # only waiting for a destination's slot or link
                continue
            try:
                name, item = done.get(timeout=0.5)
            except queue.Empty:
                continue
            running.pop(name).join(5)
            claims.release(name)
            finished.add(name)
            result.vms.append(item)
            if not item.get("ok"):
                out.failures += 1
            _rebalance(sched, running)
    finally:
        stop_progress.set()
        for worker in list(running.values()):  # an exception escaped: let running migrations be journalled
            worker.join()
        claims.release_all()
    return finished


def _start_ready(ctx: RunContext, sched: Scheduler, by_vm: dict, sets: tuple, claims: Claims, result: DrainResult,
                 out: Outcomes, done: queue.Queue) -> None:
    """Start what the scheduler allows and the destinations' ledgers grant; a VM refused for good makes room
    for the next one in the queue at once."""
    running, finished, waiting = sets
    again = True
    while again:
        again = False
        for mig in sched.ready(set(running), finished):
            job = by_vm[mig.vm]
            if not job.item.resume:  # a resumed guest already runs on its destination
                share = sched.bandwidth_for(job.vm, {*running, job.vm})
                verdict = _claim(ctx, claims, job, share, waiting)
                if verdict is None:
                    continue  # try again in a moment
                if not verdict.granted and not job.returning:
                    job, verdict = _re_place(ctx, claims, job, verdict, share)
                    by_vm[job.vm] = job
                if not verdict.granted:
                    finished.add(job.vm)
                    _record_not_moved(ctx, job, verdict.why)
                    result.block(Blocker(job.vm, "destination_changed", verdict.why,
                                         "run again: the VM is re-placed with fresh facts."))
                    again = True
                    continue
            worker = Worker(ctx, job, done)
            running[job.vm] = worker
            _rebalance(sched, running)  # the others give up their share before this one starts
            out.attempted += 1
            worker.start()


def _re_place(ctx: RunContext, claims: Claims, job: Job, refused: Verdict, share_bps: Optional[int]
              ) -> tuple[Job, Verdict]:
    """The job on another destination that grants it (replace.py), or the job as it was with every reason."""
    demand = VmDemand(job.vm, job.item.memory_mib, job.item.vcpus, anti_affinity=anti_affinity(ctx, job.item.labels))
    dest, others = replace.elsewhere(ctx, claims, job.vm, job.src, job.dst, job.item.settings, demand,
                                     int(share_bps / MIB) if share_bps else None)
    if dest is None:
        return job, Verdict(False, "; ".join([refused.why, *others]))
    replace.journal_new_destination(ctx, job.vm, dest, refused.why)
    item = job.item.replace(destination=dest.name, destination_uri=dest.target_uri, migrate_uri=dest.migrate_uri,
                            placement_reason=f"re-placed: {refused.why}")
    return Job(item, job.src, dest, job.action), Verdict(True, f"re-placed on {dest.name}")


def _claim(ctx: RunContext, claims: Claims, job: Job, share_bps: Optional[int],
           waiting: dict[str, float]) -> Optional[Verdict]:
    """Claim the destination for `job` in the fleet-wide ledger; None while it waits for a slot or the link
    (up to claim_wait_s), else the verdict (refused for good: the reason names the claims in the way)."""
    demand = VmDemand(job.vm, job.item.memory_mib, job.item.vcpus, anti_affinity=anti_affinity(ctx, job.item.labels))
    share = int(share_bps / MIB) if share_bps else None
    verdict = claims.take(job.vm, job.src, job.dst, demand, job.returning, share)
    if verdict.wait:
        if job.vm not in waiting:
            ctx.note(f"{job.vm}: waiting (up to {ctx.config.claim_wait_s:g} s) for {job.dst.name}: {verdict.why}")
        since = waiting.setdefault(job.vm, ctx.clock())
        if ctx.clock() - since < ctx.config.claim_wait_s:
            return None
        verdict = Verdict(False, f"waited {ctx.config.claim_wait_s:g} s for {job.dst.name}: {verdict.why}")
    waiting.pop(job.vm, None)
    if not verdict.granted:
        ctx.note(f"{job.vm}: destination re-check failed: {verdict.why}")
    return verdict


def _record_not_moved(ctx: RunContext, job: Job, why: str) -> None:
    if job.returning:
        ctx.jr.update_vm(job.vm, note=why, restore_error=why)
    else:
        ctx.jr.update_vm(job.vm, VmState.BLOCKED, note=why, error=why)


def _rebalance(sched: Scheduler, running: dict) -> None:
    """Give every running migration its share of the budget whenever the running set changed; the
    control applies it once the job exists (and again on each change)."""
    for name, worker in list(running.items()):
        share = sched.bandwidth_for(name, set(running))
        if share:
            worker.set_bandwidth(share)


def _progress_loop(ctx: RunContext, running: dict, stop: threading.Event, claims: Claims) -> None:
    last: dict[str, Any] = {}
    renewed = ctx.clock()
    while not stop.wait(min(ctx.config.progress_interval_s, RENEW_EVERY_S)):
        if ctx.clock() - renewed >= RENEW_EVERY_S:
            renewed = ctx.clock()
            claims.renew()
        for name, worker in list(running.items()):
            sample = worker.control.sample()
            if sample is None:
                continue
            key = (sample.get("iteration"), sample.get("percent"))
            if last.get(name) == key:
                continue
            last[name] = key
            with worker.reporting:
                if not worker.finished:
                    ctx.event("vm_progress", vm=name, destination=worker.job.dst.name, **sample)


# ---- journalling one move ----------------------------------------------------------------------


def journal_start(ctx: RunContext, job: Job) -> None:
    state = VmState.RETURNING if job.returning else VmState.MIGRATING
    ctx.jr.update_vm(job.vm, state, note=f"to {job.dst.name}")


def settle_state(ctx: RunContext, job: Job, res: dict) -> tuple[VmState, dict]:
    """The journal state after a move: from the outcome when it moved; from where the VM is otherwise."""
    if res.get("ok"):
        return (VmState.HOME if job.returning else VmState.MOVED), res
    with Connections(ctx.backend) as conns:
        where = locate(ctx.backend, conns, job.vm, [job.src, job.dst])
    postcopy = res.get("outcome") == Outcome.POSTCOPY_PAUSED or res.get("mode_used") == "postcopy"
    verdict = judge(where, job.src.name, job.dst.name, postcopy_started=postcopy)
    res = dict(res, whereabouts=where.describe())
    if verdict.placement == Placement.MOVED and verdict.host == job.dst.name:
        res.update(ok=True, outcome=str(Outcome.MOVED), message=f"{res.get('message')}; yet '{job.vm}' is now on "
                   f"{job.dst.name} only ({verdict.reason})")
        return (VmState.HOME if job.returning else VmState.MOVED), res
    res["recovery"] = f"{res.get('recovery') or ''} Where it is: {where.describe()}.".strip()
    if verdict.placement in (Placement.POSTCOPY_INTERRUPTED, Placement.POSTCOPY_STREAMING):
        return (VmState.RETURN_PAUSED_POSTCOPY if job.returning else VmState.PAUSED_POSTCOPY), res
    if verdict.placement == Placement.ON_SOURCE:
        if job.returning:
            return VmState.MOVED, res
        return (VmState.STAYED if res.get("outcome") == Outcome.STAYED else VmState.FAILED), res
    return VmState.FAILED, res


def journal_finish(ctx: RunContext, job: Job, res: dict) -> dict:
    state, res = settle_state(ctx, job, res)
    if job.returning:
        entry = ctx.jr.update_vm(job.vm, state, note=res.get("message"), restore_result=res,
                                 restore_error=None if res.get("ok") else res.get("message"))
        item = vm_result(dict(entry, result=res))
        item.update(source=job.src.name, destination=job.dst.name)
    else:
        entry = ctx.jr.update_vm(job.vm, state, note=res.get("message"), result=res,
                                 error=None if res.get("ok") else res.get("message"),
                                 recovery=res.get("recovery"))
        item = vm_result(entry)
    ctx.event("vm_finished", vm=job.vm, destination=job.dst.name, ok=item["ok"], state=str(state),
              outcome=res.get("outcome"), mode=res.get("mode_used"), duration_s=res.get("duration_s"),
              downtime_ms=res.get("downtime_ms"), bytes_sent=res.get("bytes_sent"), message=res.get("message"),
              recovery=res.get("recovery"))
    return item


def move_definition(ctx: RunContext, job: Job) -> dict:
    """Move a shut-off VM's definition; the backend leaves it defined on exactly one host."""
    journal_start(ctx, job)
    ctx.event("vm_started", vm=job.vm, destination=job.dst.name, mode="definition", auto_converge=False,
              policy=job.item.policy, predicted_duration_s=None, predicted_downtime_ms=None, bandwidth_mib=None)
    start = ctx.clock()
    src_conn = dst_conn = None
    try:
        src_conn = ctx.backend.connect(job.src.uri)
        dst_conn = ctx.backend.connect(job.dst.uri)
        moved = ctx.backend.move_definition(src_conn, dst_conn, job.vm)
        notes = getattr(moved, "notes", None)
        extra = "; " + "; ".join(notes) if notes else ""
        res = {"outcome": str(Outcome.MOVED), "ok": True, "mode_used": "definition",
               "message": f"definition of '{job.vm}' moved from {job.src.name} to {job.dst.name}{extra}"}
    except HvfleetError as exc:
        res = {"outcome": str(Outcome.FAILED), "ok": False, "mode_used": "definition", "message": exc.message,
               "recovery": exc.hint}
    finally:
        ctx.backend.close(src_conn)
        ctx.backend.close(dst_conn)
    res["duration_s"] = round(ctx.clock() - start, 3)
    return journal_finish(ctx, job, res)


class Worker(threading.Thread):
    """One live migration in its own thread with its own connections; reports to the run's queue."""

    def __init__(self, ctx: RunContext, job: Job, done: queue.Queue):
        super().__init__(name=f"drain {job.vm}", daemon=True)
        self.ctx = ctx
        self.job = job
        self.done = done
        self.control = MigrationControl()
        self.bandwidth_bps: Optional[float] = None  # its share of the budget, when there is one
        self.reporting = threading.Lock()  # no progress sample is journalled after the VM's vm_finished
        self.finished = False

    def set_bandwidth(self, bps: float) -> None:
        if bps != self.bandwidth_bps:
            self.bandwidth_bps = bps
            self.control.set_bandwidth(max(1, int(bps // MIB)))

    def run(self) -> None:
        ctx, job = self.ctx, self.job
        start = ctx.clock()
        try:
            res = self._run()
        except Exception as exc:  # pylint: disable=broad-except
            res = {"outcome": str(Outcome.ERROR), "ok": False, "mode_used": "none",
                   "message": f"unexpected error: {exc}", "recovery": "inspect both hosts before acting.",
                   "steps": []}
        if res.get("duration_s") is None:
            res["duration_s"] = round(ctx.clock() - start, 3)
        if self.control.aborted and not res.get("ok"):
            res["message"] = f"{res.get('message')} (aborted: the run was interrupted)"
        with self.reporting:
            self.finished = True
        try:
            item = journal_finish(ctx, job, res)
        except Exception as exc:  # pylint: disable=broad-except
            item = {"vm": job.vm, "ok": bool(res.get("ok")), "message": f"{res.get('message')} (journal: {exc})",
                    "destination": job.dst.name, "kind": "live"}
        self.done.put((job.vm, item))

    def _run(self) -> dict:
        ctx, job = self.ctx, self.job
        if not ctx.register(job.vm, self.control):
            self._started_event()
            return {"outcome": str(Outcome.STAYED), "ok": False, "mode_used": "none", "steps": [],
                    "message": f"'{job.vm}' was not started: the run was interrupted."}
        src_conn = dst_conn = None
        try:
            journal_start(ctx, job)
            self._started_event()
            share = max(1, int(self.bandwidth_bps // MIB)) if self.bandwidth_bps else None
            src_conn = ctx.backend.connect(job.src.uri)
            dst_conn = ctx.backend.connect(job.dst.uri)
            settings = job.item.settings
            disks = ctx.backend.copy_disks(src_conn, dst_conn, job.vm, job.src, job.dst, settings) \
                if STORAGE.get(settings.get("storage", Storage.SHARED_ONLY)) else None
            dest_xml, persist_xml = ctx.backend.destination_xmls(src_conn, dst_conn, job.vm, settings)
            spec = spec_for(settings, _RecordedMode(job.item), migrate_uri=job.dst.migrate_uri, bandwidth_mib=share,
                            persistent=job.item.persistent, copy_disks=disks, dest_xml=dest_xml,
                            persist_xml=persist_xml if job.item.persistent else None)
            return summarize_result(self._migrate(src_conn, dst_conn, spec))
        except MigrationFailed as exc:
            return summarize_result(exc.result)
        except HvfleetError as exc:
            return {"outcome": str(Outcome.ERROR), "ok": False, "mode_used": "none", "message": exc.message,
                    "recovery": exc.hint, "steps": []}
        finally:
            ctx.unregister(job.vm)
            ctx.backend.close(src_conn)
            ctx.backend.close(dst_conn)

    def _started_event(self) -> None:
        item = self.job.item
        share = max(1, int(self.bandwidth_bps // MIB)) if self.bandwidth_bps else None
        self.ctx.event("vm_started", vm=item.vm, destination=self.job.dst.name, mode=item.mode,
                       auto_converge=item.auto_converge, policy=item.policy, policy_reason=item.policy_reason,
                       mode_reason=item.mode_reason, predicted_duration_s=item.predicted_duration_s,
                       predicted_downtime_ms=item.predicted_downtime_ms, bandwidth_mib=share)

    def _migrate(self, src_conn: Any, dst_conn: Any, spec: Any) -> Any:
        """The migration; once more if the first failed in libvirt and left the VM running where it was.

        Seen on the lab: after the storage daemon restarted, each VM's next migration failed once at
        switch-over (QEMU's NBD client had lost its connection) and the next attempt worked. The engine
        has established that nothing moved (outcome `stayed`), so a second attempt is as safe as the first.
        """
        ctx, job = self.ctx, self.job

        def attempt() -> Any:
            return ctx.backend.migrate(src_conn, dst_conn, job.vm, job.dst.target_uri, spec, job.src.uri,
                                       self.control)

        try:
            return attempt()
        except MigrationFailed as exc:
            first = exc.result
            if not worth_retrying(first) or self.control.aborted or ctx.cancelled:
                raise
        retry = Step(0.0, "retry", f"the first attempt failed in libvirt and left the VM running on the source "
                                   f"({first.error or first.message}); trying once more")
        try:
            second = attempt()
        except MigrationFailed as exc:
            exc.result.steps.insert(0, retry)
            raise
        second.steps.insert(0, retry)
        second.message = f"{second.message} (at the second attempt)"
        return second


def worth_retrying(result: Any) -> bool:
    """A failed migration that left the VM running untouched on its source after an error from libvirt,
    not after the engine's own abort or suspend (deadline, ladder, interruption): worth one more try."""
    actions = [step.action for step in result.steps]
    return (result.outcome == STAYED and not result.changed and "call_failed" in actions
            and not any(action in ("abort", "suspend") for action in actions))


class _RecordedMode:
    """The plan's recorded mode as a forecast-like object for policy_spec (the plan is authoritative)."""

    def __init__(self, item: PlanItem):
        self.mode = item.mode or "precopy"
        self.auto_converge = bool(item.auto_converge)
        self.reason = item.mode_reason or ""
