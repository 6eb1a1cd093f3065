# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""After the migrate call returned, raised or was given up on: find out where the VM is, act on it.

The outcome comes from both hosts (reconcile.classify), never from the exception alone. Every call
here is bounded and every wait has a deadline: the settling of a job (`settle_timeout_s`), the
post-copy recovery (`postcopy_recovery_timeout_s`); a daemon that does not answer counts as holding
a job, and the result then names the state the VM was left in and what to do.
"""

from __future__ import annotations

import shlex
import threading
from typing import Any, NoReturn, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import core, leftover, reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.core import MigrationCore
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobMonitor, sample_from_stats
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.result import (
    MOVED,
    POSTCOPY_PAUSED,
    POSTCOPY_RECOVERED,
    SPLIT_BRAIN_PAUSED,
    STAYED,
    MigrationResult,
    Step,
)

VIR_DOMAIN_JOB_STATS_COMPLETED = 1
VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED = 2  # reading them must not take them away from the operator

SideView = reconcile.SideView


class AfterCall(MigrationCore):
    """Reconcile, resume, recover: the part of a migration after its libvirt call."""

    source_autostart = False  # the source's definition was marked autostart (read before the start)

    def _carry_autostart(self) -> str:
        """libvirt does not carry the autostart mark with a migration, and undefining the source drops it:
        set it on the destination's persistent definition, so the VM still starts with its new host. Returns
        the text to add to the message when that failed (the migration itself stands)."""
        if not (self.source_autostart and self.spec.persist_dest):
            return ""
        try:
            bounded.call(lambda: self.dst_conn.lookupByName(self.name).setAutostart(1),
                         timeout_s=core.ACTION_TIMEOUT_S, what="set autostart")
        except Exception as exc:  # pylint: disable=broad-except
            self.step("autostart", "the source marked it autostart", str(exc))
            self.result.recovery = (f"'{self.name}' is no longer marked autostart: mark it on its new host "
                                    f"(virsh -c {shlex.quote(self.dest_uri)} autostart {shlex.quote(self.name)}).")
            return f" Its autostart mark could not be set on {self.dest_uri}: {exc}."
        self.step("autostart", f"marked autostart on {self.dest_uri}, as it was on {self.source_uri}")
        return ""

    def _postcopy_seen(self) -> None:
        self.postcopy_started = True
        self.result.mode_used = "postcopy"
        self.control.mark_postcopy()

    def _settle(self, timeout_s: float) -> tuple[SideView, SideView, reconcile.Verdict]:
        """Observe until no job is still finishing (bounded), returning the last views and verdict."""
        deadline = self.clock() + timeout_s
        delay = 0.2
        while True:
            src, dst = self.observe()
            verdict = reconcile.classify(src, dst, self.postcopy_started, self.was_running)
            if verdict.action != reconcile.WAIT or verdict.placement == reconcile.POSTCOPY_ACTIVE \
                    or self.clock() >= deadline:
                return src, dst, verdict
            self.wait(delay)
            delay = min(delay * 2, 5.0)

    def _reconcile(self, call_error: Optional[BaseException], monitor: Optional[JobMonitor]) -> MigrationResult:
        # a call given up on was already waited for: one look, no second wait
        src, dst, verdict = self._settle(0.0 if self.call_abandoned else self.settle_timeout_s)
        if src.postcopy or dst.postcopy:
            self._postcopy_seen()
        self._record_states(src, dst)
        self.step("reconcile", verdict.reason)
        action = verdict.action

        if action == reconcile.POSTCOPY_RESUME or verdict.placement == reconcile.POSTCOPY_ACTIVE:
            return self._recover(call_error)
        if action in (reconcile.RESUME_DESTINATION, reconcile.RESUME_SOURCE):
            conn = self.dst_conn if action == reconcile.RESUME_DESTINATION else self.src_conn
            self._resume(conn, action, verdict.reason)
            src, dst = self.observe()
            self._record_states(src, dst)
            verdict = reconcile.classify(src, dst, self.postcopy_started, self.was_running)
        elif action in (reconcile.PAUSE_SOURCE, reconcile.PAUSE_DESTINATION, reconcile.PAUSE_BOTH):
            self._pause_for(action, verdict.reason)
            src, dst = self.observe()
            self._record_states(src, dst)
            self._fail(SPLIT_BRAIN_PAUSED, True,
                       f"'{self.name}' was found running on both hosts; paused per the rule: {verdict.reason}",
                       recovery=f"Decide which copy of '{self.name}' is current, destroy the other "
                                f"(source {self.source_uri}: {src.label()}; destination {self.dest_uri}: "
                                f"{dst.label()}), then resume the current one.")

        self._collect_completed_stats(monitor)
        if verdict.placement in (reconcile.MOVED, reconcile.PAUSED_ON_DESTINATION):
            note = self._drop_stale_source(src, dst) + self._carry_autostart()
            mode = self.result.mode_used
            there = "" if dst.running else f"; it is {dst.label()} there"
            return self._finish(MOVED, True, f"'{self.name}' moved to {self.dest_uri} ({mode}){there}.{note}")
        if verdict.placement == reconcile.STAYED or (verdict.placement == reconcile.PAUSED_ON_SOURCE
                                                     and not verdict.loud):
            cause = self._cause(call_error)
            self._fail(STAYED, False, f"'{self.name}' did not move and is still on {self.source_uri} "
                       f"({src.label()}): {cause}", recovery=None)
        recovery = self._where_text(src, dst)
        if verdict.placement == reconcile.IN_FLIGHT:
            recovery += (" A migration job is still active: wait for it to end, or abort it while it is not in "
                         f"post-copy (virsh -c {shlex.quote(self.source_uri)} domjobabort {shlex.quote(self.name)}).")
        self._fail(verdict.placement, True, f"'{self.name}': {verdict.reason}", recovery=recovery)

    def _drop_stale_source(self, src: SideView, dst: SideView) -> str:
        """A migration that libvirt did not finish itself (the call failed, then the VM completed or the
        post-copy was resumed), or one that completed before this run, can leave the source's definition
        behind, shut off: starting it would run a second copy on the same disks. Remove it as
        undefine_source asks, by leftover.py's rule; when it must stay (or libvirt refuses), the
        result says so: returns the text to add to the message, and sets the recovery."""
        if not (self.spec.undefine_source and src.present and src.gone):
            return ""
        reason = f"the source kept its definition ({src.label()}) while the VM is on the destination"
        try:
            removed = leftover.drop_leftover(self.src_conn, self.dst_conn, self.name, src, dst,
                                             timeout_s=core.ACTION_TIMEOUT_S)
            if removed:
                self.step("undefine_source", reason)
                self.result.changed = True
            return ""
        except leftover.DefinitionKept as exc:
            self.step("undefine_source", reason, exc.message)
            self.result.recovery = f"A shut-off definition of '{self.name}' is left on {exc.uri}: {exc.hint}"
            return f" {exc.message}"

    def _cause(self, call_error: Optional[BaseException]) -> str:
        final = [s for s in self.result.steps if s.action in ("abort", "suspend") and not s.error]
        if final:
            return final[-1].reason
        if call_error is not None:
            return f"libvirt: {call_error}"
        return "the migration ended without moving it"

    def _resume(self, conn: Any, label: str, reason: str) -> None:
        try:
            self._act(conn, "resume")
            self.step(label, reason)
        except Exception as exc:  # pylint: disable=broad-except
            self.step(label, reason, str(exc))

    def _pause_for(self, action: str, reason: str) -> None:
        targets = {reconcile.PAUSE_SOURCE: [self.src_conn], reconcile.PAUSE_DESTINATION: [self.dst_conn],
                   reconcile.PAUSE_BOTH: [self.src_conn, self.dst_conn]}[action]
        for conn in targets:
            try:
                self._act(conn, "suspend")
                self.step(action, reason)
            except Exception as exc:  # pylint: disable=broad-except
                self.step(action, reason, str(exc))

    def _migrate_call(self, dom: Any, flags: int, params: dict, box: dict) -> None:
        try:
            dom.migrateToURI3(self.dest_uri, params, flags)
        except Exception as exc:  # pylint: disable=broad-except
            box["error"] = exc

    def _recover(self, call_error: Optional[BaseException]) -> MigrationResult:
        """Interrupted (or still streaming) post-copy: resume it within the recovery deadline."""
        self._postcopy_seen()
        flags = self.spec.resume_flags()
        give_up_at = self.clock() + self.spec.postcopy_recovery_timeout_s

        def resume() -> None:
            box: dict = {}
            worker = threading.Thread(target=self._migrate_call, args=(self.call_dom, flags, self.spec.params(), box),
                                      daemon=True, name=f"postcopy-resume {self.name}")
            worker.start()
            worker.join(max(1.0, give_up_at - self.clock()))  # a hung resume is left behind, not waited for
            if worker.is_alive():
                self.call_abandoned = True
                raise RuntimeError("post-copy resume still running at the recovery deadline")
            if "error" in box:
                raise box["error"]

        began = self.elapsed()
        report = reconcile.recover_postcopy(self.observe, resume, self.spec.postcopy_recovery_timeout_s,
                                            clock=self.clock, wait=self.wait)
        self._resume_steps(report.attempts, began)
        self._record_states(report.source, report.destination)
        if report.ok:
            note = self._drop_stale_source(report.source, report.destination) + self._carry_autostart()
            had_trouble = call_error is not None or bool(report.attempts)
            outcome = POSTCOPY_RECOVERED if had_trouble else MOVED
            self._collect_completed_stats(None)
            return self._finish(outcome, True, f"'{self.name}' moved to {self.dest_uri} (post-copy"
                                f"{', recovered after an interruption' if had_trouble else ''}).{note}")
        if report.final.action == reconcile.PAUSE_SOURCE:
            self._pause_for(reconcile.PAUSE_SOURCE, report.final.reason)
        if report.final.placement == reconcile.POSTCOPY_DEST_LOST:
            self._fail(reconcile.POSTCOPY_DEST_LOST, True, f"'{self.name}': {report.final.reason}",
                       recovery=(
                           f"Only the paused source copy of '{self.name}' is left ({self.source_uri}: "
                           f"{report.source.label()}); the destination {self.dest_uri} has none "
                           f"({report.destination.label()}). Post-copy had started, so that copy may lack "
                           "pages the guest wrote on the destination and was not resumed. Check the "
                           "destination's QEMU log for when it failed; if the guest never ran there, the "
                           "source copy is intact, otherwise destroy it and start the VM from its disk."))
        self._postcopy_paused(report)

    def _resume_steps(self, attempts: list[dict], began: float) -> None:
        """One step per resume attempt, at its time; the same answer again and again is one step."""
        runs: list[list[dict]] = []
        for attempt in attempts:
            if runs and runs[-1][0]["result"] == attempt["result"]:
                runs[-1].append(attempt)
            else:
                runs.append([attempt])
        for run in runs:
            more = f" ({len(run)} attempts, the last at {began + run[-1]['t']:.1f} s)" if len(run) > 1 else ""
            self.result.steps.append(Step(round(began + run[0]["t"], 3), "postcopy_resume", run[0]["result"] + more))

    def _postcopy_paused(self, report: reconcile.RecoveryReport) -> NoReturn:
        self._fail(POSTCOPY_PAUSED, True,
                   f"'{self.name}' is stuck in an interrupted post-copy and could not be resumed within "
                   f"{self.spec.postcopy_recovery_timeout_s:g} s: {report.final.reason}",
                   recovery=self._postcopy_recovery_text(report.source, report.destination))

    def _collect_completed_stats(self, monitor: Optional[JobMonitor]) -> None:
        """Downtime and bytes sent from libvirt's completed-job stats (destination first)."""
        def completed_stats(conn: Any) -> Any:
            dom = conn.lookupByName(self.name)
            return dom.jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED | VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)

        for conn in (self.dst_conn, self.src_conn):
            try:
                stats = bounded.call(completed_stats, conn, timeout_s=core.ACTION_TIMEOUT_S, what="completed job stats")
            except Exception:  # pylint: disable=broad-except
                continue
            if not stats or int(stats.get("type", 0)) != 3:  # VIR_DOMAIN_JOB_COMPLETED
                continue
            sample = sample_from_stats(stats, 0)
            if sample.downtime_ms is not None and self.result.downtime_ms is None:
                self.result.downtime_ms = sample.downtime_ms
            if sample.data_processed and self.result.bytes_sent is None:
                self.result.bytes_sent = sample.data_processed
            if self.result.iterations == 0 and sample.iteration:
                self.result.iterations = sample.iteration
            if self.result.downtime_ms is not None and self.result.bytes_sent is not None:
                break
        monitor = monitor or self._monitor
        last = monitor.last() if monitor is not None else None
        if self.result.bytes_sent is None and last is not None:
            # libvirt 9.0 keeps no completed-job stats after a post-copy (not on the destination, and
            # the source domain is gone): what was still to send at the last sample went over as well
            extra = last.data_remaining if self.postcopy_started and last.phase.startswith("postcopy") else 0
            self.result.bytes_sent = last.data_processed + extra
