# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Watch the running migrate call: sample the job, climb the ladder, carry out the caller's requests.

virDomainMigrateToURI3 blocks until the migration ends, so it runs in a worker thread while this
loop polls every `stats_interval_s`. Every poll: the caller's abort (control.py) is applied, then the
job is sampled, the wanted bandwidth applied once QEMU sends, and the ladder (convergence.decide)
consulted. All calls are bounded, and those made at every poll go through a Flight, one at a time.

What libvirt refuses is retried, never taken as done: an abort before the job exists ("no job is
active") is sent again at the next poll; a refused switch to post-copy is not recorded as post-copy
(the completion deadline keeps applying) and is tried again at the next ladder step.

The loop also stops waiting for a call that should have ended but does not return - seen on the
lab when the destination QEMU stopped answering during post-copy: the source daemon then waits for
the destination for good, and so would the call. Given up on (`call_abandoned`), the call is left
running and the outcome is decided from both hosts, within the usual deadlines.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import convergence, core, reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.aftercall import AfterCall
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.flight import Flight
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobMonitor, JobSample

SAMPLE_TIMEOUT_S = 5.0  # job stats; a busy connection answers within a keepalive wake-up (5 s)
POLL_CALL_TIMEOUT_S = 5.0  # an abort or a bandwidth change, retried at the next poll
POSTCOPY_FAILED_GRACE_S = 10.0  # the call returns right after a failed post-copy; else it waits for good
POSTCOPY_STALL_S = 30.0  # post-copy without progress this long: the recovery takes over


@dataclasses.dataclass
class _Loop:  # pylint: disable=too-many-instance-attributes
    """What one watch loop keeps between polls."""

    ladder: convergence.LadderState
    downtime_set: bool
    progress_t: float
    applied_mib: Optional[int]
    processed: int = 0
    job_started: bool = False
    throttle_noted: bool = False
    abort_taken_t: Optional[float] = None
    abort_noted: bool = False
    suspended_t: Optional[float] = None
    postcopy_failed_t: Optional[float] = None
    refusals: dict = dataclasses.field(default_factory=dict)
    flights: dict = dataclasses.field(default_factory=lambda: {
        what: Flight(what) for what in ("job stats", "abortJob", "migrateSetMaxSpeed", "ladder")})


class Watch(AfterCall):
    """The running phase of a migration."""

    _downtime_preset = False

    def _watch(self, dom: Any, worker: threading.Thread, monitor: JobMonitor, applied_mib: Optional[int]) -> None:
        """Poll until the call ends (or is given up on); every wait is bounded."""
        loop = _Loop(ladder=convergence.LadderState(downtime_ms=self.spec.max_downtime_ms),
                     downtime_set=self._downtime_preset, progress_t=self.clock(), applied_mib=applied_mib)
        while True:
            worker.join(self.spec.stats_interval_s)  # returns early when the migration ends
            if not worker.is_alive():
                return
            self._honour_abort(dom, loop)
            sample = self._sample(monitor, loop)
            self._apply_bandwidth(dom, loop)
            overdue = self._overdue(loop)
            if overdue:
                self.call_abandoned = True
                self.step("call_abandoned", overdue)
                return
            if not (self.control.aborted or loop.abort_taken_t is not None or loop.ladder.final_action
                    or self.postcopy_started):
                self._climb(dom, monitor, sample, loop)

    # ---- each poll --------------------------------------------------------------------------

    def _honour_abort(self, dom: Any, loop: _Loop) -> None:
        if not self.control.aborted or loop.abort_taken_t is not None:
            return
        if self.postcopy_started:
            if not loop.abort_noted:
                loop.abort_noted = True
                self.step("abort_not_applied", "the caller asked to abort, but the migration is in post-copy: the "
                          "source no longer holds the VM's current state, so it is left to complete")
            return
        self._abort(dom, loop, "cancelled by the caller; aborting the migration (the VM stays on the source)")

    def _sample(self, monitor: JobMonitor, loop: _Loop) -> Optional[JobSample]:
        try:
            sample = loop.flights["job stats"].call(monitor.sample, SAMPLE_TIMEOUT_S)
        except bounded.NoAnswer:
            monitor.errors += 1
            return None
        if sample is None or not sample.active or not sample.started:
            return sample  # libvirt still preparing the destination, or the job ended: no figures
        now = self.clock()
        loop.job_started = True
        self.control.publish(sample)
        processed = sample.data_processed + sample.memory_processed + sample.disk_processed  # disks are progress too
        if processed > loop.processed:
            loop.processed, loop.progress_t = processed, now
        if sample.phase.startswith("postcopy") and not self.postcopy_started:
            self._postcopy_seen()
        if sample.phase == "postcopy_failed" and loop.postcopy_failed_t is None:
            loop.postcopy_failed_t = now
        return sample

    def _apply_bandwidth(self, dom: Any, loop: _Loop) -> None:
        """The control's wanted bandwidth, once QEMU is sending: before that, libvirt would overwrite
        it with the migration's start parameters. Pre-copy only (post-copy has its own limit)."""
        wanted = self.control.bandwidth_mib
        if wanted is None or wanted == loop.applied_mib or not loop.job_started or self.postcopy_started:
            return
        reason = f"the bandwidth share changed to {wanted} MiB/s"
        try:
            loop.flights["migrateSetMaxSpeed"].call(lambda: dom.migrateSetMaxSpeed(wanted, 0), POLL_CALL_TIMEOUT_S)
        except Exception as exc:  # pylint: disable=broad-except
            self._refused(loop, "set_bandwidth", reason, exc, key=f"set_bandwidth {wanted}")
            return
        loop.applied_mib = wanted
        self.step("set_bandwidth", reason)

    def _overdue(self, loop: _Loop) -> Optional[str]:
        """Why to stop waiting for a call that should have returned by now, or None."""
        now = self.clock()
        stalled = now - loop.progress_t
        if loop.abort_taken_t is not None and now - loop.abort_taken_t > self.settle_timeout_s:
            return (f"the migration call had not returned {now - loop.abort_taken_t:.0f} s after libvirt accepted "
                    "the abort; no longer waiting for it")
        if loop.postcopy_failed_t is not None and now - loop.postcopy_failed_t > POSTCOPY_FAILED_GRACE_S:
            return (f"post-copy failed on the source {now - loop.postcopy_failed_t:.0f} s ago and the migration call "
                    "has not returned (libvirt waits for the destination); recovering without it")
        if self.postcopy_started and stalled > POSTCOPY_STALL_S:
            return (f"post-copy made no progress for {stalled:.0f} s and the migration call has not returned; "
                    "the post-copy recovery takes over")
        if loop.suspended_t is not None and stalled > self.settle_timeout_s:
            return f"the suspended VM's copy made no progress for {stalled:.0f} s; no longer waiting for the call"
        deadline = self.result.deadline_s or 0.0
        late = self.elapsed() > deadline + self.settle_timeout_s
        if late and not self.postcopy_started and loop.suspended_t is None:
            return (f"{self.elapsed() - deadline:.0f} s past the completion deadline the migration job has not "
                    "ended (its abort was refused or not answered); no longer waiting for the call")
        return None

    # ---- the ladder -------------------------------------------------------------------------

    def _climb(self, dom: Any, monitor: JobMonitor, sample: Optional[JobSample], loop: _Loop) -> None:
        elapsed = self.elapsed()
        deadline = self.result.deadline_s or 0.0
        if sample is not None and sample.active and sample.started:
            if not loop.downtime_set:
                loop.downtime_set = True
                self._ladder_call(dom, loop, convergence.Decision(
                    convergence.RAISE_DOWNTIME, f"initial max downtime {self.spec.max_downtime_ms} ms",
                    downtime_ms=self.spec.max_downtime_ms), sample.iteration, "set_max_downtime")
                loop.ladder.last_step_iteration = sample.iteration
                return
            if sample.throttle_pct > 0 and not loop.throttle_noted:
                loop.throttle_noted = True
                self.step("auto_converge_engaged", f"QEMU started throttling the guest ({sample.throttle_pct}%) "
                          f"at iteration {sample.iteration}")
            decision = convergence.decide(monitor.series, self.spec, loop.ladder, deadline)
            iteration = sample.iteration
        elif elapsed >= deadline:  # no figures (stats not answered, job not there yet): the deadline still holds
            decision = convergence.at_deadline(self.spec, loop.ladder, deadline, elapsed)
            iteration = loop.ladder.last_step_iteration
        else:
            return
        if decision.action != convergence.CONTINUE:
            self._ladder_call(dom, loop, decision, iteration)

    def _ladder_call(self, dom: Any, loop: _Loop, decision: convergence.Decision, iteration: int,
                     label: Optional[str] = None) -> None:
        """Carry out one ladder decision; only what libvirt accepted is recorded as done."""
        t = self.elapsed()
        action = decision.action
        if action == convergence.ABORT:
            if self._abort(dom, loop, decision.reason):
                loop.ladder.record(decision, iteration)
            return
        if action == convergence.POSTCOPY:
            if self._switch_to_postcopy(dom, loop, decision):
                loop.ladder.record(decision, iteration)
            else:
                loop.ladder.refused(decision, iteration, t)
            return
        try:
            if action == convergence.SUSPEND:
                loop.flights["ladder"].call(dom.suspend, core.ACTION_TIMEOUT_S)
                self.result.suspended = True
                loop.suspended_t = self.clock()
            else:
                loop.flights["ladder"].call(lambda: dom.migrateSetMaxDowntime(int(decision.downtime_ms or 0), 0),
                                            core.ACTION_TIMEOUT_S)
        except Exception as exc:  # pylint: disable=broad-except
            self._refused(loop, label or action, decision.reason, exc)  # retried at the next poll
            return
        self.step(label or action, decision.reason + self._after_refusals(loop, label or action))
        loop.ladder.record(decision, iteration)

    def _switch_to_postcopy(self, dom: Any, loop: _Loop, decision: convergence.Decision) -> bool:
        """True once the migration is in post-copy: libvirt accepted the switch, or the domain's state
        says so (an error can arrive after the switch took). Never after an abort was requested."""
        if not self.control.begin_postcopy_switch():
            return False  # the caller's abort came first: it is applied at this poll's next turn
        switched = False
        try:
            loop.flights["ladder"].call(lambda: dom.migrateStartPostCopy(0), core.ACTION_TIMEOUT_S)
            switched = True
            self.step("postcopy", decision.reason)
        except Exception as exc:  # pylint: disable=broad-except
            switched = self._state_shows_postcopy(dom)
            self.step("postcopy", decision.reason + ("; libvirt reported an error, but the domain is in post-copy"
                                                     if switched else "; refused, tried again at the next step"),
                      str(exc))
        finally:
            self.control.end_postcopy_switch(switched)
        if switched:
            self._postcopy_seen()
        return switched

    def _state_shows_postcopy(self, dom: Any) -> bool:
        try:
            state = bounded.call(dom.state, timeout_s=SAMPLE_TIMEOUT_S, what="state")
        except Exception:  # pylint: disable=broad-except
            return False
        return tuple(state[:2]) in ((reconcile.PAUSED, reconcile.PAUSED_POSTCOPY),
                                    (reconcile.PAUSED, reconcile.PAUSED_POSTCOPY_FAILED))

    def _abort(self, dom: Any, loop: _Loop, reason: str) -> bool:
        """abortJob, bounded and one at a time; refused (e.g. no job yet) it is sent again next poll."""
        try:
            loop.flights["abortJob"].call(dom.abortJob, POLL_CALL_TIMEOUT_S)
        except Exception as exc:  # pylint: disable=broad-except
            self._refused(loop, "abort", reason, exc)
            return False
        loop.abort_taken_t = self.clock()
        self.step("abort", reason + self._after_refusals(loop, "abort"))
        return True

    def _refused(self, loop: _Loop, action: str, reason: str, exc: Exception, key: Optional[str] = None) -> None:
        """Note a refusal once (each poll may retry it): the steps stay readable."""
        key = key or action
        loop.refusals[key] = loop.refusals.get(key, 0) + 1
        if loop.refusals[key] == 1:
            self.step(action, f"{reason}; refused, retried at each poll", str(exc))

    @staticmethod
    def _after_refusals(loop: _Loop, action: str) -> str:
        count = loop.refusals.pop(action, 0)
        return f" (accepted after {count} refused attempt{'s' if count > 1 else ''})" if count else ""

    def _interrupted(self, dom: Any) -> None:
        """The caller is going away (Ctrl-C): cancel a pre-copy so the VM stays put; never a post-copy."""
        if self.postcopy_started:
            self.step("interrupted", "interrupted during post-copy; left running to completion")
            return
        try:
            bounded.call(dom.abortJob, timeout_s=core.ACTION_TIMEOUT_S, what="abortJob")
            self.step("abort", "interrupted; aborting the pre-copy migration (the VM stays on the source)")
        except Exception as exc:  # pylint: disable=broad-except
            self.step("abort", "interrupted; abort refused", str(exc))
