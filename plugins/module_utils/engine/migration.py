# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one live migration: preflight, migrate while watching progress, then reconcile.

virDomainMigrateToURI3 blocks until the migration ends, so it runs in a worker thread while this
thread samples job stats every interval and applies the ladder (watch.py). Whatever the call
returns or raises, the outcome is decided from where the domain is on both hosts afterwards
(aftercall.py, reconcile.classify), never from the exception alone. A MigrationControl
(control.py) lets the caller abort it - before it started, it is then not started at all - and
change its bandwidth while it runs.

Every libvirt call is bounded and every wait has a deadline, so migrate() returns - moved, stayed,
or a named state with what to do - however libvirt behaves: at most about completion deadline +
2 x settle_timeout_s + postcopy_recovery_timeout_s (see docs/MIGRATION.md).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded, connection
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (
    DomainNotFound,
    InvalidSpec,
    MigrationFailed,
    UnsafeState,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import leftover, reconcile, volumes
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.core import QUERY_TIMEOUT_S
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobMonitor
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.result import (  # noqa: F401 - re-exported
    ALREADY_THERE,
    MOVED,
    POSTCOPY_PAUSED,
    POSTCOPY_RECOVERED,
    SPLIT_BRAIN_PAUSED,
    STAYED,
    SUCCESS_OUTCOMES,
    MigrationResult,
    Step,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import PARAM_BANDWIDTH, MigrationSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.watch import Watch

__all__ = ["ALREADY_THERE", "MOVED", "POSTCOPY_PAUSED", "POSTCOPY_RECOVERED", "SPLIT_BRAIN_PAUSED", "STAYED",
           "SUCCESS_OUTCOMES", "Migration", "MigrationResult", "Step", "migrate", "plan"]

SideView = reconcile.SideView


class Migration(Watch):
    """One migration of domain `name` from `src_conn` to `dest_uri` (observed through `dst_conn`).

    Keyword arguments: `clock`, `wait` (tests), `settle_timeout_s`, `call_conn` (a second connection
    to the source for the blocking call), `control` (a MigrationControl; one is made when omitted).
    """

    _views: Optional[tuple[SideView, SideView]] = None
    _volumes: tuple[volumes.Volume, ...] = ()  # the copied disks' volumes on the destination (volumes.py)

    # ---- preflight (shared by plan and run) ---------------------------------------------

    def preflight(self) -> str:
        """Classify the starting point; returns 'migrate', 'already_there' or 'resume_postcopy'."""
        src, dst = self.observe()
        self._views = (src, dst)
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
            raise DomainNotFound(self.name, self.source_uri, self._domain_names(),
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

    def _domain_names(self) -> list[str]:
        try:
            return bounded.call(lambda: [d.name() for d in self.src_conn.listAllDomains(0)],
                                timeout_s=QUERY_TIMEOUT_S, what="list domains")
        except Exception:  # pylint: disable=broad-except
            return []

    def _versions(self) -> tuple[dict[str, Optional[int]], Optional[int]]:
        versions: dict[str, Optional[int]] = {}
        for side, conn in (("source", self.src_conn), ("destination", self.dst_conn)):
            try:
                versions[side] = int(bounded.call(conn.getLibVersion, timeout_s=QUERY_TIMEOUT_S, what="version"))
            except Exception:  # pylint: disable=broad-except
                versions[side] = None
        known = [v for v in versions.values() if v]
        return versions, (min(known) if known else None)

    def _ram_bytes(self, dom: Any) -> Optional[int]:
        try:
            return int(bounded.call(dom.info, timeout_s=QUERY_TIMEOUT_S, what="info")[1]) * 1024  # maxMem in KiB
        except Exception:  # pylint: disable=broad-except
            return None

    def _leftover_note(self, src: SideView, dst: SideView) -> tuple[bool, str]:
        """Check mode: (would change, what to say) about a shut-off definition left on the source."""
        if not (self.spec.undefine_source and src.present and src.gone):
            return False, ""
        problem = leftover.leftover_problem(src, dst)
        if problem is None:
            return True, f"; would remove the leftover shut-off definition on {self.source_uri}"
        return False, f"; the shut-off definition on {self.source_uri} would be kept: {problem}"

    # ---- check mode ---------------------------------------------------------------------

    def plan(self) -> dict[str, Any]:
        """What run() would do, from both ends; changes nothing."""
        try:
            return self._plan()
        finally:
            self._release(None, False)

    def _plan(self) -> dict[str, Any]:
        what = self.preflight()
        versions, oldest = self._versions()
        plan = {
            "name": self.name, "source": self.source_uri, "destination": self.dest_uri, "action": what,
            "changed": what != "already_there", "libvirt_versions": versions,
            "source_state": self.result.source_state, "destination_state": self.result.destination_state,
        }
        if what == "migrate":
            self.spec.validate(oldest)
            dom = self._ask(lambda: self.src_conn.lookupByName(self.name), "lookup")
            ram = self._ram_bytes(dom)
            needed = self._copied_volumes(dom)
            made = [v.describe() for v in needed if not v.exists]
            plan.update({
                "ram_bytes": ram, "deadline_s": self.spec.deadline_s((ram or 0) + sum(v.capacity for v in needed)),
                "spec": self.spec.describe(),
                "flags": self.spec.flags(), "params": self.spec.params(),
                "volumes": [dict(target=v.target, path=v.path, pool=v.pool, format=v.fmt, capacity=v.capacity,
                                 exists=v.exists) for v in needed],
                "message": f"would live-migrate '{self.name}' from {self.source_uri} to {self.dest_uri} "
                           f"({self.spec.describe()})" + (f"; would create {'; '.join(made)}" if made else ""),
            })
        elif what == "resume_postcopy":
            plan["message"] = f"would resume the interrupted post-copy of '{self.name}' to {self.dest_uri}"
        else:
            changed, note = self._leftover_note(*(self._views or self.observe()))
            plan["changed"] = changed
            plan["message"] = f"'{self.name}' already runs on {self.dest_uri}; nothing to do{note}"
        return plan

    # ---- run ----------------------------------------------------------------------------

    def _call_connection(self) -> tuple[Any, bool]:
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

    def run(self) -> MigrationResult:
        """Migrate; returns the MigrationResult on success, raises MigrationFailed otherwise."""
        self.start = self.clock()
        what = self.preflight()
        if what == "already_there":
            return self._already_there()
        if what == "resume_postcopy":
            self.control.mark_postcopy()  # a post-copy is never aborted: its live state is on the destination
        _versions, oldest = self._versions()
        self.spec.validate(oldest)
        self._cancelled_check()
        call_conn, opened = self._call_connection()
        try:
            self._cancelled_check()
            self.call_dom = self._ask(lambda: call_conn.lookupByName(self.name), "lookup")
            if what == "migrate":
                self._create_volumes()
            result = self._run(what)
            for vol in self._volumes:
                self.step("source_disk", f"the source keeps its own file of disk {vol.target} ({vol.path}); it is "
                          f"not removed: delete it on {self.source_uri} once the VM is checked on the destination")
            return result
        except MigrationFailed as exc:
            raise self._volumes_after(exc) from exc.__cause__
        except BaseException:
            if self._volumes and not self._started():
                self._drop_volumes()
            raise
        finally:
            self._release(call_conn, opened)

    # ---- the copied disks' volumes --------------------------------------------------------

    def _copied_volumes(self, dom: Any) -> list[volumes.Volume]:
        """The destination volumes of the disks the spec copies (none when it copies none); changes nothing."""
        if not (self.spec.copy_storage and self.spec.copy_disks):
            return []
        return volumes.survey(dom, self.dst_conn, self.name, self.spec.copy_disks, self.dest_uri, QUERY_TIMEOUT_S)

    def _create_volumes(self) -> None:
        """Make the missing destination volumes of the copied disks before the start (volumes.py)."""
        dom = self._ask(lambda: self.src_conn.lookupByName(self.name), "lookup")
        needed = self._copied_volumes(dom)
        self._volumes = tuple(volumes.create(self.dst_conn, needed, self.name, self.dest_uri))
        for vol in self._volumes:
            if vol.created:
                self.step("create_volume", f"created {vol.describe()} on {self.dest_uri} for the copy")
            else:
                self.step("create_volume", f"{vol.path} already exists on {self.dest_uri} (pool '{vol.pool}'); "
                          f"disk {vol.target} is copied into it")

    def _started(self) -> bool:
        return any(step.action == "start" for step in self.result.steps)

    def _drop_volumes(self) -> list[str]:
        """Remove the volumes this run created (the VM is not on the destination); returns what is left."""
        made = [v for v in self._volumes if v.created]
        left = volumes.remove(self.dst_conn, made)
        for vol in made:
            problem = next((p for p in left if p.startswith(f"{vol.path}:")), None)
            self.step("remove_volume", f"removed {vol.path} on {self.dest_uri}: the VM stayed on the source"
                      if problem is None else f"could not remove {vol.path} on {self.dest_uri}", problem)
        return left

    def _volumes_after(self, exc: MigrationFailed) -> MigrationFailed:
        """A failed migration: volumes made for it go when the VM stayed on the source; otherwise (the VM may
        live on the destination) they are kept and the result says so."""
        made = [v for v in self._volumes if v.created]
        if not made:
            return exc
        res = exc.result
        if res.outcome == STAYED:
            left = self._drop_volumes()
            if not left:
                return exc
            res.message += (f" The volume(s) created on {self.dest_uri} for the copy could not be removed: "
                            f"{'; '.join(left)}.")
            res.recovery = (f"{res.recovery} " if res.recovery else "") + \
                f"Remove them on {self.dest_uri} (virsh vol-delete PATH) once you have checked nothing uses them."
            return MigrationFailed(res)
        paths = ", ".join(v.path for v in made)
        res.message += (f" The volume(s) {paths} created on {self.dest_uri} for the copy are kept: the VM's state "
                        "there is not settled.")
        res.recovery = (f"{res.recovery} " if res.recovery else "") + \
            (f"Once '{self.name}' runs on {self.source_uri} alone, remove {paths} on {self.dest_uri}; if it ends "
             "on the destination, they are its disks.")
        return MigrationFailed(res)

    def _already_there(self) -> MigrationResult:
        """Nothing to migrate; a shut-off definition the source kept is removed (leftover.py's rule)."""
        note = self._drop_stale_source(*(self._views or self.observe()))
        done = f"removed its leftover definition on {self.source_uri}" if self.result.changed else "nothing done"
        return self._finish(ALREADY_THERE, self.result.changed,
                            f"'{self.name}' already runs on {self.dest_uri}; {done}.{note}")

    def _cancelled_check(self) -> None:
        """The caller aborted before the migration started: it is not started at all."""
        if not self.control.aborted or self.control.postcopy:
            return
        self.step("cancelled", "the caller asked to abort before the migration started; not starting it")
        label = (self.result.source_state or {}).get("label", "as it was")
        self._fail(STAYED, False, f"'{self.name}' was not migrated: cancelled before the migration started; it is "
                   f"still on {self.source_uri} ({label}).", recovery=None)

    def _run(self, what: str) -> MigrationResult:
        dom = self._ask(lambda: self.src_conn.lookupByName(self.name), "lookup")
        self.result.ram_bytes = self._ram_bytes(dom)
        # the copied disks go over the same link first: their bytes count in the deadline like RAM
        self.result.deadline_s = self.spec.deadline_s((self.result.ram_bytes or 0)
                                                      + sum(vol.capacity for vol in self._volumes))
        if what == "resume_postcopy":
            self.step("postcopy_resume", "found an interrupted post-copy from an earlier run; resuming it")
            return self._recover(call_error=None)

        with contextlib.suppress(Exception):  # unread: nothing to carry (libvirt's default, off)
            self.source_autostart = bool(bounded.call(dom.autostart, timeout_s=QUERY_TIMEOUT_S, what="autostart"))
        monitor = self._monitor = JobMonitor(dom, clock=self.clock, start=self.start)
        self.result.mode_used = "precopy"
        self._downtime_preset = self._preset_downtime(dom)
        params = self._start_params()
        self._cancelled_check()
        box: dict = {}
        worker = threading.Thread(target=self._migrate_call, args=(self.call_dom, self.spec.flags(), params, box),
                                  name=f"migrate {self.name}", daemon=True)
        share = f"; bandwidth share {params[PARAM_BANDWIDTH]} MiB/s" if self.control.bandwidth_mib else ""
        self.step("start", f"migrateToURI3 to {self.dest_uri}: {self.spec.describe()}{share}")
        worker.start()
        try:
            self._watch(dom, worker, monitor, params.get(PARAM_BANDWIDTH))
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
        elif self.call_abandoned:
            self.result.error = "the migration call did not return"
        return self._reconcile(call_error, monitor)

    def _start_params(self) -> dict[str, Any]:
        """The spec's parameters; the control's bandwidth, when set, is the latest wanted one."""
        params = self.spec.params()
        if self.control.bandwidth_mib:
            params[PARAM_BANDWIDTH] = int(self.control.bandwidth_mib)
        return params

    def _preset_downtime(self, dom: Any) -> bool:
        """Set the initial max downtime before the job starts; True when libvirt took it.

        libvirt 9.0 accepts it without a migration job and the migration keeps it, so the first
        sample need not make this call while the migration runs (a short idle migration is then
        not slowed by it). Refused (older libvirt: "not being migrated"): the first sample does it.
        """
        try:
            bounded.call(lambda: dom.migrateSetMaxDowntime(int(self.spec.max_downtime_ms), 0),
                         timeout_s=QUERY_TIMEOUT_S, what="migrateSetMaxDowntime")
        except Exception as exc:  # pylint: disable=broad-except
            self.step("set_max_downtime", "could not set the initial max downtime before the start; "
                      "setting it once the job runs", str(exc))
            return False
        self.step("set_max_downtime", f"initial max downtime {self.spec.max_downtime_ms} ms (before the start)")
        return True


def migrate(src_conn: Any, dst_conn: Any, name: str, dest_uri: str, spec: MigrationSpec,
            source_uri: str = "qemu:///system", **kwargs: Any) -> MigrationResult:
    """Migrate `name`; returns MigrationResult, raises MigrationFailed when it did not end on the destination.
    Keyword arguments as for Migration (`control`, `call_conn`, ...)."""
    return Migration(src_conn, dst_conn, name, dest_uri, spec, source_uri=source_uri, **kwargs).run()


def plan(src_conn: Any, dst_conn: Any, name: str, dest_uri: str, spec: MigrationSpec,
         source_uri: str = "qemu:///system") -> dict[str, Any]:
    """Check-mode view: what migrate() would do, from both ends, changing nothing."""
    return Migration(src_conn, dst_conn, name, dest_uri, spec, source_uri=source_uri).plan()
