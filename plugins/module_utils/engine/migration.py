# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one live migration: preflight, migrate while watching progress, then reconcile.

virDomainMigrateToURI3 blocks until the migration ends, so it runs in a worker
thread while this thread samples job stats every interval and applies the ladder
(convergence.decide). Whatever the call returns or raises, the outcome is decided
from where the domain is on both hosts afterwards (reconcile.classify), never from
the exception alone.
"""

from __future__ import annotations

import dataclasses
import shlex
import threading
import time

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded, connection
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (
    DomainNotFound,
    InvalidSpec,
    MigrationFailed,
    UnsafeState,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import convergence, reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobMonitor, sample_from_stats

VIR_DOMAIN_JOB_STATS_COMPLETED = 1
VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED = 2  # reading them must not take them away from the operator
SETTLE_TIMEOUT_S = 60.0  # how long libvirt may take to finish/cancel a job after the call returned
REOPEN_INTERVAL_S = 3.0  # a lost connection to a host is reopened at most this often
REOPEN_TIMEOUT_S = 10.0
ACTION_TIMEOUT_S = 15.0  # a resume/suspend/undefine after a failure; longer means the daemon is stuck

MOVED = "moved"
ALREADY_THERE = "already_there"
STAYED = "stayed"
POSTCOPY_RECOVERED = "postcopy_recovered"
POSTCOPY_PAUSED = "postcopy_paused"
SPLIT_BRAIN_PAUSED = "split_brain_paused"
SUCCESS_OUTCOMES = (MOVED, ALREADY_THERE, POSTCOPY_RECOVERED)


@dataclasses.dataclass
class Step:
    t: float
    action: str
    reason: str
    error: str | None = None


@dataclasses.dataclass
class MigrationResult:  # pylint: disable=too-many-instance-attributes
    """What happened to one VM; `to_dict()` is what the module returns."""

    name: str
    source: str
    destination: str
    outcome: str = ""
    changed: bool = False
    mode_used: str = "none"
    suspended: bool = False
    steps: list = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    deadline_s: float | None = None
    downtime_ms: int | None = None
    bytes_sent: int | None = None
    ram_bytes: int | None = None
    iterations: int = 0
    max_dirty_rate_bps: float = 0.0
    stats: list = dataclasses.field(default_factory=list)
    message: str = ""
    error: str | None = None
    recovery: str | None = None
    source_state: dict | None = None
    destination_state: dict | None = None
    spec: dict | None = None

    @property
    def ok(self):
        return self.outcome in SUCCESS_OUTCOMES

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["ok"] = self.ok
        return data


def _conn_uri(conn):
    """The URI a libvirt connection was opened with (a local call), or None (fakes, closed)."""
    try:
        return conn.getURI()
    except Exception:  # pylint: disable=broad-except
        return None


def _domain_names(conn):
    try:
        return [d.name() for d in conn.listAllDomains(0)]
    except Exception:  # pylint: disable=broad-except
        return []


class Migration:
    """One migration of domain `name` from `src_conn` to `dest_uri` (observed through `dst_conn`)."""

    def __init__(self, src_conn, dst_conn, name, dest_uri, spec, source_uri="qemu:///system",
                 clock=time.monotonic, wait=time.sleep, settle_timeout_s=SETTLE_TIMEOUT_S, call_conn=None):
        self.src_conn = src_conn
        self.call_conn = call_conn  # the blocking migrate call runs on its own connection, see _call_connection
        self.dst_conn = dst_conn
        self.name = name
        self.dest_uri = dest_uri
        self.source_uri = source_uri
        self.spec = spec
        self.clock = clock
        self.wait = wait
        self.settle_timeout_s = settle_timeout_s
        self.start = None
        self.result = MigrationResult(name=name, source=source_uri, destination=dest_uri, spec=spec.to_dict())
        self.postcopy_started = False
        self.was_running = True
        self.call_dom = None
        self._monitor = None
        self._downtime_preset = False
        # URIs our own connections were opened with, to reopen one that a daemon restart left dead
        self._conn_uris = {"src_conn": _conn_uri(src_conn), "dst_conn": _conn_uri(dst_conn)}
        self._reopen_after = {}
        self._reopened = []

    # ---- observation --------------------------------------------------------------------

    def observe(self):
        src = reconcile.observe(self.src_conn, self.name, self.source_uri)
        dst = reconcile.observe(self.dst_conn, self.name, self.dest_uri)
        if not dst.reachable and not dst.no_answer and self._reopen("dst_conn"):
            dst = reconcile.observe(self.dst_conn, self.name, self.dest_uri)
        if not src.reachable and not src.no_answer and self._reopen("src_conn"):
            src = reconcile.observe(self.src_conn, self.name, self.source_uri)
        return src, dst

    def _reopen(self, attr):
        """A libvirt daemon restarted during the migration leaves our connection to it dead (every call
        fails: "client socket is closed"), so that host would look unreachable for good and a finished
        move be reported as stuck. Open a new connection to the same URI (at most every few seconds)."""
        uri = self._conn_uris.get(attr)
        now = self.clock()
        if not uri or now < self._reopen_after.get(attr, float("-inf")):
            return False
        self._reopen_after[attr] = now + REOPEN_INTERVAL_S
        try:
            conn = connection.connect(uri, timeout_s=REOPEN_TIMEOUT_S)
        except Exception:  # pylint: disable=broad-except
            return False
        setattr(self, attr, conn)
        self._reopened.append(conn)
        self.step("reconnect", f"the connection to {uri} was lost (daemon restarted?); opened a new one")
        return True

    def _close_reopened(self):
        while self._reopened:
            connection.close_quietly(self._reopened.pop())

    def _record_states(self, src, dst):
        self.result.source_state = src.to_dict()
        self.result.destination_state = dst.to_dict()

    def step(self, action, reason, error=None):
        t = 0.0 if self.start is None else round(self.clock() - self.start, 3)
        self.result.steps.append(Step(t, action, reason, error))

    # ---- preflight (shared by plan and run) ---------------------------------------------

    def preflight(self):
        """Classify the starting point; returns 'migrate', 'already_there' or 'resume_postcopy'."""
        src, dst = self.observe()
        self._record_states(src, dst)
        if not src.reachable:
            raise UnsafeState(f"Cannot read domain '{self.name}' on {self.source_uri}: {src.error}",
                              "check the source libvirt daemon.")
        if src.postcopy or dst.postcopy:
            verdict = reconcile.classify(src, dst, postcopy_started=True)
            if verdict.placement == reconcile.POSTCOPY_INTERRUPTED:
                return "resume_postcopy"
            if verdict.placement == reconcile.MOVED:
                return "already_there"
            raise UnsafeState(f"A post-copy migration of '{self.name}' is in progress: {verdict.reason}.",
                              "wait for it to complete, then run again.")
        if src.running and dst.running:
            raise UnsafeState(
                f"Domain '{self.name}' is running on both {self.source_uri} and {self.dest_uri}; refusing to act.",
                "find out which copy is current, stop the other one by hand, then run again.")
        if (dst.running and not src.running) or (dst.paused and src.gone):
            if src.job_active or dst.job_active:
                raise UnsafeState(f"A migration of '{self.name}' is still finishing: source {src.label()}, "
                                  f"destination {dst.label()}.", "wait for it, then run again.")
            return "already_there"
        if src.paused and dst.paused:
            raise UnsafeState(f"Domain '{self.name}' is paused on both {self.source_uri} and {self.dest_uri}; "
                              "refusing to act.", "find out which copy is current, destroy the other, run again.")
        if not src.present:
            extra = ""
            if dst.present:
                extra = f" It is defined on {self.dest_uri} but {dst.label()} there."
            raise DomainNotFound(self.name, self.source_uri, _domain_names(self.src_conn),
                                 hint=("check the domain name and the uri parameter (the host the VM runs on)."
                                       + extra))
        if src.job_active:
            raise UnsafeState(f"Domain '{self.name}' already has a job running on {self.source_uri} "
                              "(another migration?).", "wait for it to finish, or abort it, then run again.")
        if not (src.running or src.paused):
            raise InvalidSpec(f"Domain '{self.name}' is {src.label()} on {self.source_uri}; live migration needs "
                              "a running (or paused) domain.", "start the domain first.")
        if not dst.reachable:
            raise UnsafeState(f"Cannot read domains on the destination {self.dest_uri}: {dst.error}",
                              "check the destination libvirt daemon.")
        self.was_running = src.running
        return "migrate"

    def _versions(self):
        versions = {}
        for side, conn in (("source", self.src_conn), ("destination", self.dst_conn)):
            try:
                versions[side] = int(conn.getLibVersion())
            except Exception:  # pylint: disable=broad-except
                versions[side] = None
        known = [v for v in versions.values() if v]
        return versions, (min(known) if known else None)

    def _ram_bytes(self, dom):
        try:
            return int(dom.info()[1]) * 1024  # maxMem in KiB
        except Exception:  # pylint: disable=broad-except
            return None

    # ---- check mode ---------------------------------------------------------------------

    def plan(self):
        """What run() would do, from both ends; changes nothing."""
        try:
            return self._plan()
        finally:
            self._close_reopened()

    def _plan(self):
        what = self.preflight()
        versions, oldest = self._versions()
        plan = {
            "name": self.name, "source": self.source_uri, "destination": self.dest_uri, "action": what,
            "changed": what != "already_there", "libvirt_versions": versions,
            "source_state": self.result.source_state, "destination_state": self.result.destination_state,
        }
        if what == "migrate":
            self.spec.validate(oldest)
            dom = self.src_conn.lookupByName(self.name)
            ram = self._ram_bytes(dom)
            plan.update({
                "ram_bytes": ram, "deadline_s": self.spec.deadline_s(ram or 0), "spec": self.spec.describe(),
                "flags": self.spec.flags(), "params": self.spec.params(),
                "message": f"would live-migrate '{self.name}' from {self.source_uri} to {self.dest_uri} "
                           f"({self.spec.describe()})",
            })
        elif what == "resume_postcopy":
            plan["message"] = f"would resume the interrupted post-copy of '{self.name}' to {self.dest_uri}"
        else:
            plan["message"] = f"'{self.name}' already runs on {self.dest_uri}; nothing to do"
        return plan

    # ---- run ----------------------------------------------------------------------------

    def _call_connection(self):
        """Connection for the blocking migrate call: `call_conn`, else a second one to the source.

        Seen on libvirt 9.0 (remote driver, python binding): while migrateToURI3 is in flight on a
        connection, other calls on that *same* connection (job stats, set max downtime) can block
        until the migration ends (or until the next keepalive wake-up, 5 s) - the monitor then sees
        nothing and the ladder cannot act. A second connection to the same daemon does not block.
        Returns (conn, opened_here); falls back to the source connection when no second one opens.
        """
        if self.call_conn is not None:
            return self.call_conn, False
        get_uri = getattr(self.src_conn, "getURI", None)
        if get_uri is None:  # not a libvirt connection (unit-test fakes)
            return self.src_conn, False
        try:
            return connection.connect(get_uri()), True
        except Exception as exc:  # pylint: disable=broad-except
            self.step("call_connection", "could not open a second connection to the source; the migrate call "
                      "shares the monitoring connection (job stats may lag)", str(exc))
            return self.src_conn, False

    def run(self):
        """Migrate; returns the MigrationResult on success, raises MigrationFailed otherwise."""
        self.start = self.clock()
        what = self.preflight()
        if what == "already_there":
            return self._finish(ALREADY_THERE, False, f"'{self.name}' already runs on {self.dest_uri}; nothing done.")
        _versions, oldest = self._versions()
        self.spec.validate(oldest)
        call_conn, opened = self._call_connection()
        try:
            self.call_dom = call_conn.lookupByName(self.name)
            return self._run(what)
        finally:
            if opened:
                connection.close_quietly(call_conn)
            self._close_reopened()

    def _run(self, what):
        dom = self.src_conn.lookupByName(self.name)
        self.result.ram_bytes = self._ram_bytes(dom)
        self.result.deadline_s = self.spec.deadline_s(self.result.ram_bytes or 0)
        if what == "resume_postcopy":
            self.postcopy_started = True
            self.result.mode_used = "postcopy"
            self.step("postcopy_resume", "found an interrupted post-copy from an earlier run; resuming it")
            return self._recover(dom, call_error=None)

        monitor = self._monitor = JobMonitor(dom, clock=self.clock, start=self.start)
        box = {}
        worker = threading.Thread(target=self._migrate_call, args=(self.call_dom, self.spec.flags(), box),
                                  name=f"migrate {self.name}", daemon=True)
        self.result.mode_used = "precopy"
        self._downtime_preset = self._preset_downtime(dom)
        self.step("start", f"migrateToURI3 to {self.dest_uri}: {self.spec.describe()}")
        worker.start()
        try:
            self._watch(dom, worker, monitor)
        except BaseException:
            self._interrupted(dom)
            raise
        finally:
            self.result.stats = monitor.to_list()
            summary = monitor.summary()
            self.result.iterations = summary["iterations"]
            self.result.max_dirty_rate_bps = summary["max_dirty_rate_bps"]
        call_error = box.get("error")
        if call_error is not None:
            self.result.error = str(call_error)
            self.step("call_failed", "the migration call raised; looking at both hosts", str(call_error))
        return self._reconcile(dom, call_error, monitor)

    def _preset_downtime(self, dom):
        """Set the initial max downtime before the job starts; True when libvirt took it.

        libvirt 9.0 accepts it without a migration job and the migration keeps it, so the first
        sample need not make this call while the migration runs (a short idle migration is then
        not slowed by it). Refused (older libvirt: "not being migrated"): the first sample does it.
        """
        try:
            dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0)
        except Exception as exc:  # pylint: disable=broad-except
            self.step("set_max_downtime", "could not set the initial max downtime before the start; "
                      "setting it once the job runs", str(exc))
            return False
        self.step("set_max_downtime", f"initial max downtime {self.spec.max_downtime_ms} ms (before the start)")
        return True

    def _migrate_call(self, dom, flags, box):
        try:
            dom.migrateToURI3(self.dest_uri, self.spec.params(), flags)
        except Exception as exc:  # pylint: disable=broad-except
            box["error"] = exc

    def _watch(self, dom, worker, monitor):
        ladder = convergence.LadderState(downtime_ms=self.spec.max_downtime_ms)
        downtime_set = self._downtime_preset
        throttle_noted = False
        while True:
            worker.join(self.spec.stats_interval_s)  # returns early when the migration ends
            if not worker.is_alive():
                return
            sample = monitor.sample()
            if sample is None or not sample.active or not sample.started:
                continue  # libvirt still preparing the destination: no figures yet
            if sample.phase.startswith("postcopy") and not self.postcopy_started:
                self.postcopy_started = True
                self.result.mode_used = "postcopy"
            if not downtime_set:
                downtime_set = True
                self._apply(dom, convergence.Decision(
                    convergence.RAISE_DOWNTIME, f"initial max downtime {self.spec.max_downtime_ms} ms",
                    downtime_ms=self.spec.max_downtime_ms), "set_max_downtime")
                ladder.last_step_iteration = sample.iteration
                continue
            if sample.throttle_pct > 0 and not throttle_noted:
                throttle_noted = True
                self.step("auto_converge_engaged", f"QEMU started throttling the guest ({sample.throttle_pct}%) "
                          f"at iteration {sample.iteration}")
            decision = convergence.decide(monitor.series, self.spec, ladder, self.result.deadline_s)
            if decision.action != convergence.CONTINUE:
                if self._apply(dom, decision):
                    ladder.record(decision, sample.iteration)
                elif decision.action != convergence.RAISE_DOWNTIME:
                    ladder.record(decision, sample.iteration)  # do not hammer a refused abort/post-copy

    def _apply(self, dom, decision, label=None):
        """Carry out one ladder decision on the source domain; returns True when libvirt accepted it."""
        action = label or decision.action
        try:
            if decision.action == convergence.RAISE_DOWNTIME:
                dom.migrateSetMaxDowntime(int(decision.downtime_ms), 0)
            elif decision.action == convergence.POSTCOPY:
                dom.migrateStartPostCopy(0)
                self.postcopy_started = True
                self.result.mode_used = "postcopy"
            elif decision.action == convergence.ABORT:
                dom.abortJob()
            elif decision.action == convergence.SUSPEND:
                dom.suspend()
                self.result.suspended = True
        except Exception as exc:  # pylint: disable=broad-except
            self.step(action, decision.reason, str(exc))
            return False
        self.step(action, decision.reason)
        return True

    def _interrupted(self, dom):
        """The caller is going away (Ctrl-C): cancel a pre-copy so the VM stays put; never a post-copy."""
        if self.postcopy_started:
            self.step("interrupted", "interrupted during post-copy; left running to completion")
            return
        try:
            dom.abortJob()
            self.step("abort", "interrupted; aborting the pre-copy migration (the VM stays on the source)")
        except Exception as exc:  # pylint: disable=broad-except
            self.step("abort", "interrupted; abort refused", str(exc))

    # ---- after the call -----------------------------------------------------------------

    def _settle(self):
        """Observe until no job is still finishing (bounded), returning the last views and verdict."""
        deadline = self.clock() + self.settle_timeout_s
        delay = 0.2
        while True:
            src, dst = self.observe()
            verdict = reconcile.classify(src, dst, self.postcopy_started, self.was_running)
            if verdict.action != reconcile.WAIT or verdict.placement == reconcile.POSTCOPY_ACTIVE \
                    or self.clock() >= deadline:
                return src, dst, verdict
            self.wait(delay)
            delay = min(delay * 2, 5.0)

    def _reconcile(self, dom, call_error, monitor):
        src, dst, verdict = self._settle()
        if src.postcopy or dst.postcopy:
            self.postcopy_started = True
            self.result.mode_used = "postcopy"
        self._record_states(src, dst)
        self.step("reconcile", verdict.reason)
        action = verdict.action

        if action in (reconcile.POSTCOPY_RESUME,) or verdict.placement == reconcile.POSTCOPY_ACTIVE:
            return self._recover(dom, call_error)
        if action == reconcile.RESUME_DESTINATION:
            self._resume(self.dst_conn, "resume_destination", verdict.reason)
            src, dst = self.observe()
            self._record_states(src, dst)
            verdict = reconcile.classify(src, dst, self.postcopy_started, self.was_running)
        elif action == reconcile.RESUME_SOURCE:
            self._resume(self.src_conn, "resume_source", verdict.reason)
            src, dst = self.observe()
            self._record_states(src, dst)
            verdict = reconcile.classify(src, dst, self.postcopy_started, self.was_running)
        elif action in (reconcile.PAUSE_SOURCE, reconcile.PAUSE_DESTINATION, reconcile.PAUSE_BOTH):
            self._pause_for(action, verdict.reason)
            src, dst = self.observe()
            self._record_states(src, dst)
            return self._fail(SPLIT_BRAIN_PAUSED, True,
                              f"'{self.name}' was found running on both hosts; paused per the rule: {verdict.reason}",
                              recovery=f"Decide which copy of '{self.name}' is current, destroy the other "
                                       f"(source {self.source_uri}: {src.label()}; destination {self.dest_uri}: "
                                       f"{dst.label()}), then resume the current one.")

        self._collect_completed_stats(monitor)
        if verdict.placement in (reconcile.MOVED, reconcile.PAUSED_ON_DESTINATION):
            self._drop_stale_source(src, dst)
            mode = self.result.mode_used
            note = "" if dst.running else f"; it is {dst.label()} there"
            return self._finish(MOVED, True, f"'{self.name}' moved to {self.dest_uri} ({mode}){note}.")
        if verdict.placement == reconcile.STAYED or (verdict.placement == reconcile.PAUSED_ON_SOURCE
                                                     and not verdict.loud):
            cause = self._cause(call_error)
            return self._fail(STAYED, False, f"'{self.name}' did not move and is still on {self.source_uri} "
                              f"({src.label()}): {cause}", recovery=None)
        return self._fail(verdict.placement, True, f"'{self.name}': {verdict.reason}",
                          recovery=self._where_text(src, dst))

    def _drop_stale_source(self, src, dst):
        """A migration that libvirt did not finish itself (the call failed, then the VM completed or the
        post-copy was resumed) leaves the source's definition behind, shut off: starting it would run
        a second copy on the same disks. Undefine it, as undefine_source asked - only once the
        destination runs the VM with a persistent definition of its own."""
        if not (self.spec.undefine_source and src.present and src.gone and dst.running and dst.persistent):
            return
        reason = f"the source kept its definition ({src.label()}) while the VM runs on the destination"
        try:
            self._act(self.src_conn, "undefine")
            self.step("undefine_source", reason)
        except Exception as exc:  # pylint: disable=broad-except
            self.step("undefine_source", reason, str(exc))

    def _cause(self, call_error):
        final = [s for s in self.result.steps if s.action in ("abort", "suspend") and not s.error]
        if final:
            return final[-1].reason
        if call_error is not None:
            return f"libvirt: {call_error}"
        return "the migration ended without moving it"

    def _act(self, conn, method):
        """Call one domain method (resume, suspend, undefine) on `conn`, bounded: after a failure the
        daemon may be stuck in a job, and the engine must still report within its deadline."""
        def act():
            return getattr(conn.lookupByName(self.name), method)()
        return bounded.call(act, timeout_s=ACTION_TIMEOUT_S, what=f"{method} '{self.name}'")

    def _resume(self, conn, label, reason):
        try:
            self._act(conn, "resume")
            self.step(label, reason)
        except Exception as exc:  # pylint: disable=broad-except
            self.step(label, reason, str(exc))

    def _pause_for(self, action, reason):
        targets = {reconcile.PAUSE_SOURCE: [self.src_conn], reconcile.PAUSE_DESTINATION: [self.dst_conn],
                   reconcile.PAUSE_BOTH: [self.src_conn, self.dst_conn]}[action]
        for conn in targets:
            try:
                self._act(conn, "suspend")
                self.step(action, reason)
            except Exception as exc:  # pylint: disable=broad-except
                self.step(action, reason, str(exc))

    def _recover(self, dom, call_error):
        """Interrupted (or still streaming) post-copy: resume it within the recovery deadline."""
        flags = self.spec.resume_flags()
        give_up_at = self.clock() + self.spec.postcopy_recovery_timeout_s

        def resume():
            box = {}
            worker = threading.Thread(target=self._migrate_call, args=(self.call_dom, flags, box), daemon=True,
                                      name=f"postcopy-resume {self.name}")
            worker.start()
            worker.join(max(1.0, give_up_at - self.clock()))
            if worker.is_alive():
                raise RuntimeError("post-copy resume still running at the recovery deadline")
            if "error" in box:
                raise box["error"]

        report = reconcile.recover_postcopy(self.observe, resume, self.spec.postcopy_recovery_timeout_s,
                                            clock=self.clock, wait=self.wait)
        for attempt in report.attempts:
            self.step("postcopy_resume", attempt["result"])
        self._record_states(report.source, report.destination)
        if report.ok:
            self._drop_stale_source(report.source, report.destination)
            had_trouble = call_error is not None or bool(report.attempts)
            outcome = POSTCOPY_RECOVERED if had_trouble else MOVED
            self._collect_completed_stats(None)
            return self._finish(outcome, True, f"'{self.name}' moved to {self.dest_uri} (post-copy"
                                f"{', recovered after an interruption' if had_trouble else ''}).")
        if report.final.action == reconcile.PAUSE_SOURCE:
            self._pause_for(reconcile.PAUSE_SOURCE, report.final.reason)
        if report.final.placement == reconcile.POSTCOPY_DEST_LOST:
            return self._fail(reconcile.POSTCOPY_DEST_LOST, True, f"'{self.name}': {report.final.reason}",
                              recovery=(
                                  f"Only the paused source copy of '{self.name}' is left ({self.source_uri}: "
                                  f"{report.source.label()}); the destination {self.dest_uri} has none "
                                  f"({report.destination.label()}). Post-copy had started, so that copy may lack "
                                  "pages the guest wrote on the destination and was not resumed. Check the "
                                  "destination's QEMU log for when it failed; if the guest never ran there, the "
                                  "source copy is intact, otherwise destroy it and start the VM from its disk."))
        return self._fail(POSTCOPY_PAUSED, True,
                          f"'{self.name}' is stuck in an interrupted post-copy and could not be resumed within "
                          f"{self.spec.postcopy_recovery_timeout_s:g} s: {report.final.reason}",
                          recovery=self._postcopy_recovery_text(report.source, report.destination))

    def _postcopy_recovery_text(self, src, dst):
        # the command is meant to be pasted into a shell: names and URIs are data, quoted as such
        migrate_uri = f" --migrateuri {shlex.quote(self.spec.migrate_uri)}" if self.spec.migrate_uri else ""
        return (
            f"The current state of '{self.name}' is on the destination {self.dest_uri} ({dst.label()}); the copy on "
            f"the source {self.source_uri} ({src.label()}) is stale and must NOT be resumed, started or destroyed. "
            f"Once the migration network works again, run this task again (it resumes the post-copy), or on the "
            f"source host: virsh -c {shlex.quote(self.source_uri)} migrate --live --p2p --postcopy --postcopy-resume"
            f"{migrate_uri} {shlex.quote(self.name)} {shlex.quote(self.dest_uri)}")

    def _where_text(self, src, dst):
        return (f"'{self.name}' is on source {self.source_uri}: {src.label()}; destination {self.dest_uri}: "
                f"{dst.label()}. Nothing more was changed; inspect both hosts before acting.")

    def _collect_completed_stats(self, monitor):
        """Downtime and bytes sent from libvirt's completed-job stats (destination first)."""
        def completed_stats(conn):
            dom = conn.lookupByName(self.name)
            return dom.jobStats(VIR_DOMAIN_JOB_STATS_COMPLETED | VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)

        for conn in (self.dst_conn, self.src_conn):
            try:
                stats = bounded.call(completed_stats, conn, timeout_s=ACTION_TIMEOUT_S, what="completed job stats")
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
        if self.result.bytes_sent is None and monitor is not None and monitor.last() is not None:
            last = monitor.last()
            # libvirt 9.0 keeps no completed-job stats after a post-copy (not on the destination, and
            # the source domain is gone): what was still to send at the last sample went over as well
            extra = last.data_remaining if self.postcopy_started and last.phase.startswith("postcopy") else 0
            self.result.bytes_sent = last.data_processed + extra

    def _finish(self, outcome, changed, message):
        self.result.outcome = outcome
        self.result.changed = changed
        self.result.message = message
        self.result.duration_s = round(self.clock() - self.start, 3) if self.start is not None else 0.0
        return self.result

    def _fail(self, outcome, changed, message, recovery):
        self._finish(outcome, changed, message)
        self.result.recovery = recovery
        raise MigrationFailed(self.result)


def migrate(src_conn, dst_conn, name, dest_uri, spec, source_uri="qemu:///system", **kwargs):
    """Migrate `name`; returns MigrationResult, raises MigrationFailed when it did not end on the destination."""
    return Migration(src_conn, dst_conn, name, dest_uri, spec, source_uri=source_uri, **kwargs).run()


def plan(src_conn, dst_conn, name, dest_uri, spec, source_uri="qemu:///system"):
    """Check-mode view: what migrate() would do, from both ends, changing nothing."""
    return Migration(src_conn, dst_conn, name, dest_uri, spec, source_uri=source_uri).plan()
