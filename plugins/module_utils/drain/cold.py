# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cold move: a VM that cannot live-migrate is shut down, its definition moved, and started on the other host.

Used for `on_unmigratable: shutdown` (planning/unmigratable.py) away from a drained host, and by the restore on
the way back. The steps, each journalled as a `vm_cold_step` event:

1. the ACPI power button, then the host is polled until the guest is shut off, up to the policy's
   `shutdown_timeout_s`. A guest still running then is never destroyed: it keeps running where it is and the
   result says so (raise the timeout or shut it down by hand);
2. under a copying storage policy (copy_all, copy_incremental) its local disks are copied to the destination
   (Backend.copy_disks_offline; never a shared disk), then the definition moves (Backend.move_definition:
   defined on exactly one host, whatever fails);
3. the domain is started on the destination, and seen running there.

After any failure past step 1 both hosts are looked at first (whereabouts). A VM found shut off and defined on
one host only is started again where it ran before (a new boot, but in service, and never a second copy);
anything else is reported with where it is and the fix. Disk copies of a VM that stays where it was are
removed from the destination again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Outcome, VmState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.claims import Claims
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections, RunContext
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.jobs import Job
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import RENEW_EVERY_S, Verdict
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.planner import anti_affinity
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.report import vm_result
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.whereabouts import Whereabouts, locate
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import VmDemand
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import STORAGE
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import COLD, shutdown_timeout
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import Blocker

POLL_S = 1.0  # how often a shutting-down guest is looked at


class _Move:
    """One cold move of `job`, on the two connections given."""

    def __init__(self, ctx: RunContext, job: Job, src_conn: Any, dst_conn: Any, claims: Optional[Claims] = None):
        self.ctx, self.job, self.src_conn, self.dst_conn, self.claims = ctx, job, src_conn, dst_conn, claims
        self.began = self.renewed = ctx.clock()
        self.down_at: Optional[float] = None  # when the power button was pressed: the outage starts
        self.copies: list = []  # local disks copied to the destination (removed again if it stays)

    def step(self, step: str, host: str, message: str) -> None:
        self.ctx.event("vm_cold_step", vm=self.job.vm, step_host=host, step=step,
                       elapsed_s=round(self.ctx.clock() - self.began, 3), message=message)

    def run(self) -> dict:
        job, ctx = self.job, self.ctx
        src, dst = job.src.name, job.dst.name
        timeout_s = shutdown_timeout(job.item.settings)
        view = ctx.backend.observe(self.src_conn, job.vm, job.src.uri)
        if view.running or view.paused:
            self.down_at = ctx.clock()
            ctx.backend.shutdown(self.src_conn, job.vm)
            self.step("shutdown_requested", src, f"ACPI power button pressed; waiting up to {timeout_s} s")
            if not self._wait_shut_off(timeout_s):
                message = (f"'{job.vm}' did not shut down within {timeout_s} s of the ACPI power button; it keeps "
                           f"running on {src} and nothing was moved")
                self.step("shutdown_timed_out", src, message)
                return _result(Outcome.STAYED, message, f"raise shutdown_timeout_s in the policy of '{job.vm}' "
                               f"('{job.item.policy}'), or shut it down by hand on {src} (then its definition "
                               "moves), and run again.")
            self.step("shut_off", src, f"shut off after {ctx.clock() - self.down_at:.1f} s")
        try:
            if STORAGE.get(job.item.settings.get("storage") or "shared_only"):
                self.copies = ctx.backend.copy_disks_offline(self.src_conn, self.dst_conn, job.vm, job.src, job.dst,
                                                             job.item.settings)
                if self.copies:
                    self.step("disks_copied", dst, f"{len(self.copies)} local disk(s) copied to {dst}")
            moved = ctx.backend.move_definition(self.src_conn, self.dst_conn, job.vm)
            notes = getattr(moved, "notes", None)
            extra = "; " + "; ".join(notes) if notes else ""
            self.step("defined", dst, f"definition moved from {src} to {dst}{extra}")
            ctx.backend.start(self.dst_conn, job.vm)
        except HvfleetError as exc:
            return self._settle(exc)
        seen = ctx.backend.observe(self.dst_conn, job.vm, job.dst.uri)
        if not seen.running:
            return self._settle(HvfleetError(f"'{job.vm}' was started on {dst} but is {seen.label()} there",
                                             f"look at its log on {dst}."))
        self.step("started", dst, f"running on {dst}")
        outage = ctx.clock() - (self.down_at if self.down_at is not None else self.began)
        res = _result(Outcome.MOVED, f"'{job.vm}' shut down on {src}, moved and started on {dst} (a new boot; "
                      f"outage {outage:.1f} s until started, plus its boot){self._drop_originals()}", None)
        res.update(ok=True, downtime_ms=round(outage * 1000, 1))
        return res

    def _wait_shut_off(self, timeout_s: float) -> bool:
        deadline = self.ctx.clock() + timeout_s
        while True:
            view = self.ctx.backend.observe(self.src_conn, self.job.vm, self.job.src.uri)
            if view.reachable and not (view.running or view.paused):
                return True
            left = deadline - self.ctx.clock()
            if left <= 0:
                return False
            if self.claims is not None and self.ctx.clock() - self.renewed >= RENEW_EVERY_S:
                self.renewed = self.ctx.clock()
                self.claims.renew()  # a long shutdown must not let the destination's claim expire
            self.ctx.sleep(min(POLL_S, left))

    def _settle(self, error: HvfleetError) -> dict:
        """A step failed: look at both hosts, start the VM again where it ran when that is safe, say where it is."""
        job, ctx = self.job, self.ctx
        src, dst = job.src.name, job.dst.name
        with Connections(ctx.backend) as conns:
            where = locate(ctx.backend, conns, job.vm, [job.src, job.dst])
        self.step("failed", dst, f"{error.message} ({where.describe()})")
        if where.active_on == [dst]:
            return dict(_result(Outcome.MOVED, f"'{job.vm}' runs on {dst} ({error.message}; {where.describe()})",
                                None), ok=True)
        recovery = f"{error.hint or ''} Where it is: {where.describe()}.".strip()
        if where.active_on == [src]:
            return _result(Outcome.STAYED, f"'{job.vm}' is running on {src}: {error.message}{self._drop_copies()}",
                           recovery)
        if where.active_on or where.unreachable or len(where.defined_on) != 1:
            kept = f" Disk copies left on {dst}: {len(self.copies)}." if self.copies else ""
            return _result(Outcome.FAILED, f"'{job.vm}' could not be moved cold: {error.message}{kept}", recovery)
        return self._start_again(where, error)

    def _drop_originals(self) -> str:
        """It runs on the destination from the copies: the source's disk files are stale duplicates now (like the
        NVRAM of a moved definition); removed, so that a move back finds no file in the way."""
        if not self.copies:
            return ""
        left = self.ctx.backend.remove_offline_copies(self.src_conn, self.copies)
        if left:
            return (f"; its old disk files on {self.job.src.name} could not all be removed ({'; '.join(left)}): "
                    "remove them before it moves back")
        return f"; {len(self.copies)} local disk(s) copied, the old files on {self.job.src.name} removed"

    def _drop_copies(self) -> str:
        """Remove the disk copies on the destination of a VM that stays where it was; words for its result."""
        if not self.copies:
            return ""
        left = self.ctx.backend.remove_offline_copies(self.dst_conn, self.copies)
        self.copies = []
        if left:
            return f" The disk copies on {self.job.dst.name} could not all be removed: {'; '.join(left)}."
        return f" The disk copies on {self.job.dst.name} were removed."

    def _start_again(self, where: Whereabouts, error: HvfleetError) -> dict:
        """Shut off and defined on one host only: put it back on the host it ran on, and start it there."""
        job, ctx = self.job, self.ctx
        src, dst = job.src.name, job.dst.name
        try:
            if where.defined_on == [dst]:
                ctx.backend.move_definition(self.dst_conn, self.src_conn, job.vm)
            ctx.backend.start(self.src_conn, job.vm)
        except HvfleetError as again:
            with Connections(ctx.backend) as conns:
                now = locate(ctx.backend, conns, job.vm, [job.src, job.dst])
            return _result(Outcome.FAILED, f"'{job.vm}' is shut off: {error.message}; starting it again on {src} "
                           f"failed too: {again.message}", f"{again.hint or error.hint} Where it is: {now.describe()}.")
        self.step("restarted_at_source", src, f"started again on {src} after: {error.message}")
        return _result(Outcome.STAYED, f"'{job.vm}' could not be moved to {dst} ({error.message}); it was started "
                       f"again on {src} (a new boot).{self._drop_copies()}", f"{error.hint or ''} Then run again."
                       .strip())


def _result(outcome: Outcome, message: str, recovery: Optional[str]) -> dict:
    return {"outcome": str(outcome), "ok": False, "mode_used": COLD, "message": message, "recovery": recovery,
            "downtime_ms": None, "bytes_sent": 0, "steps": []}


def claim(ctx: RunContext, claims: Claims, job: Job) -> Verdict:
    """Claim the VM's memory and vCPUs on the destination in the fleet-wide ledger (it will run there), waiting
    up to claim_wait_s while a slot is busy; the verdict."""
    demand = VmDemand(job.vm, job.item.memory_mib, job.item.vcpus, anti_affinity=anti_affinity(ctx, job.item.labels))
    since = ctx.clock()
    while True:
        verdict = claims.take(job.vm, job.src, job.dst, demand, job.returning, None)
        if not verdict.wait:
            return verdict
        if ctx.cancelled or ctx.clock() - since >= ctx.config.claim_wait_s:
            return Verdict(False, f"waited {ctx.clock() - since:.0f} s for {job.dst.name}: {verdict.why}")
        ctx.sleep(POLL_S)


def run_cold(ctx: RunContext, job: Job, result: DrainResult) -> Optional[dict]:
    """The cold move of `job` under a claim on its destination; None when the destination refused it (the VM was
    not touched; a blocker says why)."""
    claims = Claims(ctx)
    verdict = claim(ctx, claims, job)
    if not verdict.granted:
        why = f"{job.dst.name} refused it right before the cold move: {verdict.why}"
        ctx.note(f"{job.vm}: {why}")
        if job.returning:
            ctx.jr.update_vm(job.vm, note=why, restore_error=why)
        else:
            ctx.jr.update_vm(job.vm, VmState.BLOCKED, note=why, error=why)
        result.block(Blocker(job.vm, "destination_changed", why, "run again: the VM is placed with fresh facts."))
        return None
    try:
        return move_cold(ctx, job, claims)
    finally:
        claims.release_all()


def move_cold(ctx: RunContext, job: Job, claims: Optional[Claims] = None) -> dict:
    """Move `job`'s VM cold (module docstring); journals it and returns its row of the result."""
    item = job.item
    ctx.jr.update_vm(job.vm, VmState.RETURNING if job.returning else VmState.MIGRATING, note=f"cold to {job.dst.name}")
    ctx.event("vm_started", vm=job.vm, destination=job.dst.name, mode=COLD, auto_converge=False, policy=item.policy,
              policy_reason=item.policy_reason, mode_reason=item.mode_reason,
              predicted_duration_s=item.predicted_duration_s, predicted_downtime_ms=item.predicted_downtime_ms,
              bandwidth_mib=None)
    start = ctx.clock()
    src_conn = dst_conn = None
    try:
        src_conn = ctx.backend.connect(job.src.uri)
        dst_conn = ctx.backend.connect(job.dst.uri)
        res = _Move(ctx, job, src_conn, dst_conn, claims).run()
    except HvfleetError as exc:
        res = _result(Outcome.FAILED, exc.message, exc.hint)
        if src_conn is not None and dst_conn is not None:  # the power button or the first look failed
            with Connections(ctx.backend) as conns:
                res["recovery"] = f"{exc.hint or ''} Where it is: " \
                                  f"{locate(ctx.backend, conns, job.vm, [job.src, job.dst]).describe()}.".strip()
    finally:
        ctx.backend.close(src_conn)
        ctx.backend.close(dst_conn)
    res["duration_s"] = round(ctx.clock() - start, 3)
    return _finish(ctx, job, res)


def _state(job: Job, res: dict) -> VmState:
    """The journal state from where the move left the VM (each result above says where it is)."""
    if res["ok"]:
        return VmState.HOME if job.returning else VmState.MOVED
    if res["outcome"] == Outcome.STAYED:
        return VmState.MOVED if job.returning else VmState.STAYED
    return VmState.FAILED


def _finish(ctx: RunContext, job: Job, res: dict) -> dict:
    state = _state(job, res)
    error = None if res["ok"] else res["message"]
    if job.returning:
        entry = ctx.jr.update_vm(job.vm, state, note=res["message"], restore_result=res, restore_error=error)
        row = vm_result(dict(entry, result=res))
        row.update(source=job.src.name, destination=job.dst.name)
    else:
        entry = ctx.jr.update_vm(job.vm, state, note=res["message"], result=res, error=error,
                                 recovery=res.get("recovery"))
        row = vm_result(entry)
    ctx.event("vm_finished", vm=job.vm, destination=job.dst.name, ok=row["ok"], state=str(state),
              outcome=res["outcome"], mode=COLD, duration_s=res.get("duration_s"), downtime_ms=res.get("downtime_ms"),
              bytes_sent=0, message=res["message"], recovery=res.get("recovery"))
    return row


def start_shut_off(ctx: RunContext, conn: Any, name: str, host: str, after: str, started: str, act: bool,
                   recoverable: Callable[[str, str, str], None]) -> Optional[bool]:
    """Start `name`, shut off on `host` alone `after` a cold move (restore and resume find it so); `act` False: only
    say it would be. True once started, False when the start failed (`recoverable` is told), None when not acting."""
    if not act:
        ctx.note(f"{name}: shut off on {host} {after}; it would be started there")
        return None
    try:
        ctx.backend.start(conn, name)
    except HvfleetError as exc:
        recoverable(name, f"shut off on {host} (defined there only) {after}; starting it failed: {exc.message}",
                    exc.hint or f"start '{name}' on {host}.")
        return False
    ctx.note(f"{name}: started on {host}, {started}")
    return True
