# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drain a hypervisor: cordon, look, check, plan, migrate concurrently, verify - and undo it later.

Plain Python (no Ansible), driven by `Drainer`. Everything outside this process goes through a
`Backend` (libvirt, the cordon file, the prerequisite checks), so the orchestration is unit-tested
with fakes and the real backend stays thin.

A drain (`Drainer.drain`):

1. takes the host's drain lock (drain_lock: a second concurrent drain is refused, naming the holder);
2. reconciles the journal of an earlier, interrupted run with where each VM really is (a VM the
   journal says was migrating is looked up on both hosts: moved ones are recorded as moved and never
   migrated again; an orphaned pre-copy job is given `orphan_wait_s` to end, then aborted, which
   leaves the VM on the source; an interrupted post-copy is resumed to the same destination);
3. cordons the source (maintenance.set_state) so nothing is placed on it meanwhile;
4. lists the domains (running and paused ones migrate live; persistent shut-off ones have their
   definition moved), reads their facts and measures dirty rates, selects each VM's policy;
5. runs the prerequisite checks for every VM x destination; only destinations that pass are eligible;
6. places the VMs (placement.plan_placement: capacity with headroom and vCPU overcommit, anti-affinity,
   pins, spread) and forecasts each migration with the bandwidth it will get; `auto` mode takes the
   forecast's choice; a VM nothing fits is a blocker, with the reason for every host;
7. runs the migrations concurrently (scheduler.Scheduler: per-source and per-destination limits, a
   total cap, a bandwidth budget split among the running ones), each in its own thread with its own
   libvirt connections, re-checking the destination with fresh facts right before it starts;
   after more than `max_failures` failures no new migration starts (running ones finish);
8. verifies that the host is empty and returns a DrainResult.

`plan_only=True` (check mode) does steps 4-6 and changes nothing: no lock, no cordon, no journal.

`Drainer.restore` brings the VMs the journal recorded as moved back to this host with the same checks,
forecast, concurrency and reporting, then uncordons it and archives the journal.

Interruption (SIGINT/SIGTERM/SIGHUP in the module -> `Drainer.cancel`): no new migration starts, running
pre-copy migrations are aborted (the VM stays on the source, nothing lost), running post-copy migrations
complete; the journal then says exactly where every VM is and the next run resumes from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import queue
import threading
import time
import xml.etree.ElementTree as ET

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError, MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import STAYED, Step
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import migrate_uri_for
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import (
    MIB,
    REFUSE,
    Forecast,
    ForecastError,
    forecast_drain,
    forecast_drain_shared,
    forecast_for_settings,
    guest_memory,
    simulate_drain,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    VmDemand,
    plan_placement,
    recheck,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import load_policies, select_policy
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import effective_mode, spec_for
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Limits, Scheduler
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration as Move

LIVE = "live"
DEFINITION = "definition"
DEFAULT_LINK_MBIT = 1000.0
DEFAULT_STATE_DIR = "/var/lib/hvfleet"


class DrainError(HvfleetError):
    """The drain cannot start or cannot go on (bad input, a plan that no longer matches reality)."""


# ---- inputs ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Host:
    """A hypervisor: how this process reaches it (`uri`), how other libvirt daemons reach it
    (`peer_uri`, the peer-to-peer migration target), its migration network address and link speed."""

    name: str
    uri: str
    peer_uri: str | None = None
    migration_address: str | None = None
    link_mbit: float | None = None
    cordoned: bool = False
    facts: dict | None = dataclasses.field(default=None, compare=False, hash=False)  # read on the host itself

    @property
    def target_uri(self):
        return self.peer_uri or self.uri

    @property
    def migrate_uri(self):
        return migrate_uri_for(self.migration_address, f"migration_address of {self.name}")

    def link_bps(self, default_mbit=DEFAULT_LINK_MBIT):
        return float(self.link_mbit or default_mbit) * 1e6 / 8


@dataclasses.dataclass(frozen=True)
class VmInfo:  # pylint: disable=too-many-instance-attributes
    """One domain of a host as the drain sees it."""

    name: str
    memory_mib: int
    vcpus: int
    active: bool  # running or paused: migrates live
    persistent: bool
    state: str = "running"
    labels: dict = dataclasses.field(default_factory=dict)
    dirty_rate_bps: float | None = None
    postcopy: bool = False  # a leftover of an interrupted post-copy (paused "post-copy failed")
    facts: object = None  # the facts module's DomainFacts, for the prerequisite checks
    resident_mib: int | None = None  # the QEMU process's resident size: how much guest memory was touched

    @property
    def kind(self):
        return LIVE if self.active else DEFINITION


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One prerequisite check of one VM towards one destination."""

    id: str
    status: str  # pass, warn, fail, skip
    vm: str
    destination: str
    message: str
    fix: str | None = None

    @property
    def failed(self):
        return self.status == "fail"


@dataclasses.dataclass
class DrainConfig:  # pylint: disable=too-many-instance-attributes
    """How to drain: policies, placement margins, concurrency, failure tolerance, identity."""

    policies: list = dataclasses.field(default_factory=list)
    placement: PlacementConfig = dataclasses.field(default_factory=PlacementConfig)
    max_parallel: int | None = 2
    max_outbound: int | None = 2
    max_inbound: int | None = 1
    bandwidth_mib: int | None = None  # shared budget, MiB/s
    max_failures: int = 0
    anti_affinity_labels: tuple = ("anti_affinity",)
    default_link_mbit: float = DEFAULT_LINK_MBIT
    reason: str | None = None
    by: str | None = None
    orphan_wait_s: float = 30.0
    progress_interval_s: float = 5.0
    measure_dirty_rate: bool = True
    # no migration starts at or after this time (the Drainer's clock, e.g. the end of a maintenance window);
    # running ones finish, the rest is reported as not started. None: no limit.
    start_deadline: float | None = None

    def limits(self):
        budget = int(self.bandwidth_mib * MIB) if self.bandwidth_mib else None
        return Limits(max_outbound=self.max_outbound, max_inbound=self.max_inbound, max_total=self.max_parallel,
                      bandwidth_bps=budget)

    def lanes(self, count, destinations=None):
        """How many migrations will run at once at most (for the forecast)."""
        caps = [c for c in (self.max_parallel, self.max_outbound) if c]
        if destinations and self.max_inbound:
            caps.append(destinations * self.max_inbound)
        return max(1, min([count] + caps)) if count else 1


# ---- the outside world ----------------------------------------------------------------------


class Backend:
    """What a drain needs from the outside; see LibvirtBackend. Every method may raise HvfleetError."""

    def connect(self, uri):
        raise NotImplementedError

    def close(self, conn):
        raise NotImplementedError

    def list_vms(self, conn, host, measure=True):
        """[VmInfo] of the domains to move: active ones, and persistent inactive ones."""
        raise NotImplementedError

    def capacity(self, conn, host, anti_affinity_labels=()):
        """HostCapacity of `host` now."""
        raise NotImplementedError

    def prechecks(self, src_conn, dst_conn, vm, source, destination, settings):
        """[CheckResult] for moving `vm` from `source` to `destination` under the policy `settings`."""
        raise NotImplementedError

    def observe(self, conn, name, uri):
        return reconcile.observe(conn, name, uri)

    def migrate(self, src_conn, dst_conn, name, dest_uri, spec, source_uri, control):
        """Run one live migration; returns a MigrationResult or raises MigrationFailed. `control` is a
        MigrationControl: call control.attach(sample=..., abort=..., postcopy=...) once it runs."""
        raise NotImplementedError

    def move_definition(self, src_conn, dst_conn, name):
        """Define the inactive domain on the destination, then undefine it on the source."""
        raise NotImplementedError

    def abort_job(self, conn, name):
        raise NotImplementedError

    def set_speed(self, conn, name, mib):
        """Change a running migration's bandwidth (MiB/s); best effort."""

    def read_cordon(self, state_dir):
        """True when the host running this code is cordoned."""
        raise NotImplementedError

    def set_cordon(self, state_dir, cordoned, reason=None, by=None):
        """Cordon or uncordon the host running this code; returns changed."""
        raise NotImplementedError


class MigrationControl:
    """The orchestrator's handle on one running migration: progress samples and abort."""

    def __init__(self):
        self._sample = None
        self._abort = None
        self._postcopy = None
        self.aborted = False

    def attach(self, sample=None, abort=None, postcopy=None):
        self._sample, self._abort, self._postcopy = sample, abort, postcopy

    def sample(self):
        if self._sample is None:
            return None
        try:
            return self._sample()
        except Exception:  # pylint: disable=broad-except
            return None

    @property
    def postcopy(self):
        return bool(self._postcopy and self._postcopy())

    def abort(self):
        """Abort a pre-copy (the VM stays on the source); a post-copy is left to complete."""
        if self._abort is None or self.postcopy:
            return False
        self.aborted = True
        try:
            self._abort()
            return True
        except Exception:  # pylint: disable=broad-except
            return False


# ---- results --------------------------------------------------------------------------------


@dataclasses.dataclass
class DrainResult:  # pylint: disable=too-many-instance-attributes
    """What a drain or restore did (or, with plan_only, would do); `to_dict()` is the module's result."""

    action: str
    host: str
    changed: bool = False
    failed: bool = False
    state: str = ""
    message: str = ""
    plan: list = dataclasses.field(default_factory=list)
    vms: list = dataclasses.field(default_factory=list)
    blockers: list = dataclasses.field(default_factory=list)
    moves: list = dataclasses.field(default_factory=list)
    forecast: dict | None = None
    actual: dict | None = None
    summary: dict = dataclasses.field(default_factory=dict)
    verified_empty: bool | None = None
    leftovers: list = dataclasses.field(default_factory=list)
    resumed: bool = False
    reconciled: list = dataclasses.field(default_factory=list)
    cordon: dict | None = None
    journal_path: str | None = None
    progress_path: str | None = None
    lock_holder: dict | None = None
    plan_differences: list = dataclasses.field(default_factory=list)
    not_started: list = dataclasses.field(default_factory=list)

    def to_dict(self):
        return dataclasses.asdict(self)


def _blocker(vm, kind, message, fix=None, reasons=None):
    return {"vm": vm, "kind": kind, "message": message, "fix": fix, "reasons": reasons or {}}


_RESULT_KEYS = ("outcome", "ok", "mode_used", "suspended", "duration_s", "deadline_s", "downtime_ms", "bytes_sent",
                "ram_bytes", "iterations", "max_dirty_rate_bps", "message", "error", "recovery", "steps")


def summarize_result(result):
    """The part of a MigrationResult kept in the journal and returned per VM (no time series, no spec)."""
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    out = {k: data.get(k) for k in _RESULT_KEYS}
    out["steps"] = [dict(s) if isinstance(s, dict) else dataclasses.asdict(s) for s in (out["steps"] or [])]
    out["source_state"] = (data.get("source_state") or {}).get("label")
    out["destination_state"] = (data.get("destination_state") or {}).get("label")
    return out


def _state_for(result):
    outcome = result.get("outcome")
    if result.get("ok"):
        return jr.MOVED
    if outcome == "stayed":
        return jr.STAYED
    if outcome == "postcopy_paused":
        return jr.PAUSED_POSTCOPY
    return jr.FAILED


# ---- the orchestrator -----------------------------------------------------------------------


class Drainer:  # pylint: disable=too-many-instance-attributes
    """Drain `source` onto `destinations`, or bring its VMs back (`restore`)."""

    def __init__(self, backend, source, destinations, config=None, state_dir=DEFAULT_STATE_DIR, progress=None,
                 clock=time.monotonic, sleep=time.sleep):
        self.backend = backend
        self.source = source
        self.destinations = list(destinations)
        self.config = config or DrainConfig()
        self.state_dir = os.fspath(state_dir)
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self._cancel = threading.Event()
        self._controls = {}
        self._controls_lock = threading.Lock()
        self.journal = None
        for host in [source] + self.destinations:
            _check_host(host)
        _check_config(self.config)
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise DrainError("A destination is listed twice.", "give each destination host once.")
        if source.name in names:
            self.destinations = [d for d in self.destinations if d.name != source.name]
        self.policies = load_policies(self.config.policies) if self.config.policies and not hasattr(
            self.config.policies[0], "settings") else list(self.config.policies or [])

    # ---- public ---------------------------------------------------------------------------

    def cancel(self):
        """Stop: no new migration starts; pre-copy migrations in flight are aborted (VMs stay put)."""
        self._cancel.set()
        with self._controls_lock:
            controls = list(self._controls.values())
        for control in controls:
            control.abort()

    @property
    def cancelled(self):
        return self._cancel.is_set()

    def drain(self, plan_only=False, reviewed_plan=None):
        """Drain the source; `plan_only` returns the plan and changes nothing."""
        if reviewed_plan is not None:  # a garbled or hand-edited plan is refused before anything changes
            _check_reviewed_plan(reviewed_plan, self.source.name, [d.name for d in self.destinations])
        result = DrainResult(action="drain", host=self.source.name)
        lock = DrainLock(self.state_dir, self.source.name, "drain", self.config.by or "")
        if plan_only:
            result.lock_holder = lock.is_locked_elsewhere()
            self.journal = jr.Journal.load(self.state_dir, self.source.name, persist=False)
            with self._connections() as conns:
                self._plan(conns, result, reviewed_plan, reconcile_only_view=True)
            result.state = "planned"
            result.changed = bool(result.plan) or not self.backend.read_cordon(self.state_dir)
            result.failed = False
            result.message = self._plan_message(result)
            return result
        with lock:
            self.journal = jr.Journal.load(self.state_dir, self.source.name)
            result.journal_path = self.journal.path
            result.progress_path = self.journal.progress_path
            with self._connections() as conns:
                return self._drain_locked(conns, result, reviewed_plan)

    def restore(self, plan_only=False):
        """Bring the VMs the journal moved away back to the source, then uncordon it."""
        result = DrainResult(action="restore", host=self.source.name)
        lock = DrainLock(self.state_dir, self.source.name, "restore", self.config.by or "")
        if plan_only:
            result.lock_holder = lock.is_locked_elsewhere()
            self.journal = jr.Journal.load(self.state_dir, self.source.name, persist=False)
            with self._connections() as conns:
                self._restore(conns, result, plan_only=True)
            return result
        with lock:
            self.journal = jr.Journal.load(self.state_dir, self.source.name)
            result.journal_path = self.journal.path
            result.progress_path = self.journal.progress_path
            with self._connections() as conns:
                self._restore(conns, result, plan_only=False)
            return result

    # ---- connections ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connections(self):
        conns = _Connections(self.backend)
        try:
            yield conns
        finally:
            conns.close_all()

    # ---- drain ----------------------------------------------------------------------------

    def _drain_locked(self, conns, result, reviewed_plan):
        src_conn = conns.get(self.source.uri)
        was_cordoned = self.backend.read_cordon(self.state_dir)
        had_unfinished = self._unfinished_entries()
        vms_now = self.backend.list_vms(src_conn, self.source, measure=False)
        if not vms_now and was_cordoned and not had_unfinished and reviewed_plan is None:
            result.state = jr.DRAINED
            result.verified_empty = True
            result.message = f"{self.source.name} is already drained (cordoned, no domains); nothing to do."
            result.summary = {"moved": 0, "failed": 0, "blocked": 0, "not_started": 0}
            return result
        result.resumed = bool(had_unfinished) or self.journal.state in (jr.DRAIN_FAILED, jr.INTERRUPTED)
        cordon_changed = self.backend.set_cordon(self.state_dir, True, self.config.reason or "drain", self.config.by)
        result.cordon = {"changed": bool(cordon_changed), "state": "cordoned"}
        result.changed = bool(cordon_changed)
        self.journal.begin_run("drain", reason=self.config.reason, by=self.config.by, source_uri=self.source.uri,
                               options=self._options())
        if cordon_changed:
            self._event("note", message=f"cordoned {self.source.name}")
        pinned = self._reconcile_journal(conns, result)
        if any(r.get("changed") for r in result.reconciled):
            result.changed = True
        self._plan(conns, result, reviewed_plan, pinned=pinned)
        if result.plan_differences and reviewed_plan is not None:
            self.journal.end_run(jr.DRAIN_FAILED, {"message": "reviewed plan no longer matches"})
            if cordon_changed:  # refused: leave the host as this run found it
                self.backend.set_cordon(self.state_dir, False, "reviewed plan refused", self.config.by)
            raise DrainError("The reviewed plan no longer matches reality: " + "; ".join(result.plan_differences),
                             "review a new plan (check mode with plan_file), then apply that one.")
        self._record_plan(result)
        started = self.clock()
        moves = [p for p in result.plan if p["kind"] == LIVE]
        definitions = [p for p in result.plan if p["kind"] == DEFINITION]
        self._event("run_started", vms=len(result.plan), blocked=len(result.blockers),
                    forecast_total_s=(result.forecast or {}).get("total_s"), max_parallel=self.config.max_parallel,
                    resumed=result.resumed)
        outcomes = self._execute(moves, definitions, self.source, result)
        if outcomes["attempted"]:
            result.changed = True
        leftovers = self.backend.list_vms(src_conn, self.source, measure=False)
        result.leftovers = sorted(v.name for v in leftovers)
        result.verified_empty = not leftovers
        for vm in leftovers:
            if vm.name not in result.not_started and not any(b["vm"] == vm.name for b in result.blockers) and not any(
                    r["vm"] == vm.name and not r.get("ok") for r in result.vms):
                result.blockers.append(_blocker(vm.name, "leftover", f"'{vm.name}' ({vm.state}) is still on "
                                                f"{self.source.name} and was not part of this run's plan.",
                                                "run the drain again to move it."))
        self._finish_drain(result, outcomes, started)
        return result

    def _finish_drain(self, result, outcomes, started):
        failed = [r for r in result.vms if not r.get("ok")]
        moved = [r for r in result.vms if r.get("ok")]
        result.summary = {"moved": len(moved), "failed": len(failed), "blocked": len(result.blockers),
                          "not_started": len(outcomes["not_started"]), "definitions_moved":
                          sum(1 for r in moved if r.get("kind") == DEFINITION)}
        actual_s = round(self.clock() - started, 3)
        downtimes = [r.get("downtime_ms") or 0 for r in moved if r.get("kind") == LIVE]
        result.actual = {"total_s": actual_s, "migrations": len([r for r in result.vms if r.get("kind") == LIVE]),
                         "bytes_sent": sum(r.get("bytes_sent") or 0 for r in result.vms),
                         "worst_downtime_ms": max(downtimes) if downtimes else None,
                         "forecast_total_s": (result.forecast or {}).get("total_s")}
        if self.cancelled:
            state = jr.INTERRUPTED
        elif result.verified_empty and not failed:
            state = jr.DRAINED
        else:
            state = jr.DRAIN_FAILED
        result.state = state
        result.failed = state != jr.DRAINED
        result.message = self._result_message(result, outcomes)
        self.journal.end_run(state, {"message": result.message, **result.summary})
        self._event("run_finished", state=state, moved=len(moved), failed=len(failed), blocked=len(result.blockers),
                    not_started=len(outcomes["not_started"]), duration_s=actual_s,
                    forecast_total_s=(result.forecast or {}).get("total_s"), message=result.message)

    def _result_message(self, result, outcomes):
        s = result.summary
        head = (f"{result.action} of {self.source.name}: {s['moved']} moved, {s['failed']} failed, "
                f"{s['blocked']} blocked, {s['not_started']} not started")
        if result.state == jr.DRAINED:
            return f"{head}; {self.source.name} is empty and stays cordoned."
        parts = [head]
        if self.cancelled:
            parts.append("interrupted: no new migration was started; run again to resume from the journal")
        if outcomes.get("stopped"):
            parts.append(f"stopped starting migrations after {outcomes['failures']} failure(s) "
                         f"(max_failures {self.config.max_failures})")
        if outcomes.get("window_closed"):
            parts.append("the maintenance window closed: running migrations finished, no new one was started "
                         f"(not started: {', '.join(outcomes['not_started']) or 'none'})")
        for r in result.vms:
            if not r.get("ok"):
                where = f" Recovery: {r['recovery']}" if r.get("recovery") else ""
                parts.append(f"{r['vm']}: {r.get('message')}{where}")
        for b in result.blockers:
            parts.append(f"{b['vm']}: {b['message']}")
        if result.action == "drain":
            parts.append(f"{self.source.name} stays cordoned; every VM not listed as moved is still on it")
        return "; ".join(parts)

    def _plan_message(self, result):
        lines = [f"plan for {self.source.name}: {len(result.plan)} to move, {len(result.blockers)} blocked"]
        if result.forecast:
            lines.append(result.forecast.get("summary", ""))
        if result.lock_holder:
            lines.append(f"note: a drain or restore is running now (pid {result.lock_holder.get('pid')})")
        return "; ".join(x for x in lines if x)

    def _options(self):
        c = self.config
        return {"max_parallel": c.max_parallel, "max_outbound": c.max_outbound, "max_inbound": c.max_inbound,
                "bandwidth_mib": c.bandwidth_mib, "max_failures": c.max_failures,
                "destinations": [d.name for d in self.destinations]}

    def _unfinished_entries(self):
        return [e for e in self.journal.vms().values()
                if e.get("state") in (jr.MIGRATING, jr.PAUSED_POSTCOPY, jr.RETURNING)]

    # ---- resume: reconcile the journal with reality ---------------------------------------

    def _dest_by_name(self, name):
        if name == self.source.name:
            return self.source
        return next((d for d in self.destinations if d.name == name), None)

    def _reconcile_journal(self, conns, result):
        """Bring the journal's in-flight entries in line with where the VMs are; returns pinned plans."""
        pinned = {}
        for entry in self._unfinished_entries():
            if entry.get("state") == jr.RETURNING:
                continue  # an interrupted restore: the restore run reconciles it
            name = entry["name"]
            dest = self._dest_by_name(entry.get("destination"))
            note = {"vm": name, "journal_state": entry.get("state"), "destination": entry.get("destination")}
            if dest is None:
                self.journal.update_vm(name, jr.FAILED, note="destination no longer given")
                result.blockers.append(_blocker(
                    name, "unknown_destination", f"the journal says '{name}' was migrating to "
                    f"{entry.get('destination')}, which is not among the destinations given now.",
                    f"add {entry.get('destination')} to the destinations and run again."))
                note.update(found="unknown", changed=False)
                result.reconciled.append(note)
                continue
            if entry.get("kind") == DEFINITION:
                pinned[name] = entry  # move_definition finishes a half-done move by itself
                note.update(found="definition move to finish", changed=False)
                result.reconciled.append(note)
                continue
            src, dst, verdict = self._settle_orphan(conns, name, dest, entry)
            note["found"] = verdict.placement
            note["reason"] = verdict.reason
            if verdict.placement == reconcile.MOVED:
                self.journal.update_vm(name, jr.MOVED, note="found running on the destination after an "
                                       "interrupted run", result=dict(entry.get("result") or {}, outcome="moved",
                                                                      ok=True, message=verdict.reason))
                note["changed"] = True
                result.vms.append(self._vm_result(self.journal.vm(name)))
            elif verdict.placement in (reconcile.POSTCOPY_INTERRUPTED, reconcile.POSTCOPY_ACTIVE):
                pinned[name] = entry
                note["changed"] = False
            elif verdict.placement == reconcile.STAYED:
                self.journal.update_vm(name, jr.PLANNED, note="still on the source after an interrupted run")
                note["changed"] = False
            else:
                self.journal.update_vm(name, jr.FAILED, note=verdict.reason, recovery=verdict.reason)
                result.blockers.append(_blocker(name, "unsafe_state", f"'{name}' is in a state a drain must not "
                                                f"touch: {verdict.reason}", "inspect both hosts and fix it by hand, "
                                                "then run again."))
                note["changed"] = False
            result.reconciled.append(note)
            self._event("note", message=f"resume: {name}: {verdict.reason}")
        return pinned

    def _settle_orphan(self, conns, name, dest, entry):
        """Observe both ends; an orphaned pre-copy job gets orphan_wait_s, then is aborted."""
        src_conn, dst_conn = conns.get(self.source.uri), conns.get(dest.uri)
        postcopy = (entry.get("result") or {}).get("mode_used") == "postcopy"
        deadline = self.clock() + self.config.orphan_wait_s
        aborted = False
        while True:
            src = self.backend.observe(src_conn, name, self.source.uri)
            dst = self.backend.observe(dst_conn, name, dest.uri)
            verdict = reconcile.classify(src, dst, postcopy_started=postcopy or src.postcopy or dst.postcopy)
            if verdict.action != reconcile.WAIT or verdict.placement == reconcile.POSTCOPY_ACTIVE:
                return src, dst, verdict
            if self.clock() >= deadline and not aborted:
                self._event("note", message=f"resume: aborting the orphaned pre-copy job of {name} (the VM stays "
                            f"on {self.source.name})")
                with contextlib.suppress(HvfleetError, Exception):
                    self.backend.abort_job(src_conn, name)
                aborted = True
                deadline = self.clock() + 60.0
            elif self.clock() >= deadline:
                return src, dst, verdict
            self.sleep(1.0)

    # ---- planning -------------------------------------------------------------------------

    def _plan(self, conns, result, reviewed_plan=None, pinned=None, reconcile_only_view=False):
        """Fill result.plan / blockers / forecast for the VMs on the source (pure decisions on facts)."""
        # pylint: disable=too-many-locals,too-many-branches,too-many-statements
        pinned = dict(pinned or {})
        src_conn = conns.get(self.source.uri)
        vms = self.backend.list_vms(src_conn, self.source, measure=self.config.measure_dirty_rate)
        if reconcile_only_view:
            # check mode: VMs the journal has in flight stay with their destination, as a run would do
            for entry in self._unfinished_entries():
                if entry.get("state") != jr.RETURNING and entry.get("destination"):
                    pinned[entry["name"]] = entry
        dest_conns = {}
        capacities = []
        for dest in self.destinations:
            try:
                conn = conns.get(dest.uri)
                cap = self.backend.capacity(conn, dest, self.config.anti_affinity_labels)
                dest_conns[dest.name] = conn
                capacities.append(dataclasses.replace(cap, name=dest.name, cordoned=cap.cordoned or dest.cordoned))
            except HvfleetError as exc:
                capacities.append(HostCapacity(dest.name, 0, 0, 0, 0, cordoned=dest.cordoned))
                result.blockers.append(_blocker(None, "destination_unreachable", f"{dest.name}: {exc.message}",
                                                exc.hint))
        reviewed = _reviewed_index(reviewed_plan, self.source.name, result) if reviewed_plan is not None else None
        demands = []
        info = {}
        for vm in sorted(vms, key=lambda v: v.name):
            match = select_policy(self.policies, vm.name, vm.labels, vm.memory_mib)
            settings = match.settings
            info[vm.name] = (vm, match)
            if vm.postcopy and vm.name not in pinned:
                result.blockers.append(_blocker(vm.name, "postcopy_leftover", f"'{vm.name}' is the stale source "
                                                "copy of an interrupted post-copy to a destination the journal "
                                                "does not know.", "find the host where it runs and resume the "
                                                "post-copy there (domain_migration), or inspect by hand."))
                continue
            if vm.name in pinned:
                continue
            failures = {}
            eligible = set()
            for dest in self.destinations:
                conn = dest_conns.get(dest.name)
                if conn is None:
                    failures[dest.name] = "destination unreachable"
                    continue
                if dest.cordoned:
                    continue  # placement reports it as cordoned
                checks = self.backend.prechecks(src_conn, conn, vm, self.source, dest, settings)
                bad = [c for c in checks if c.failed]
                if bad:
                    failures[dest.name] = "; ".join(f"{c.message}" + (f" (fix: {c.fix})" if c.fix else "")
                                                    for c in bad)
                else:
                    eligible.add(dest.name)
            pins = tuple(settings.get("destinations", {}).get("pin") or ())
            if reviewed is not None and vm.name in reviewed:
                pins = (reviewed[vm.name]["destination"],)
            demands.append(VmDemand(
                name=vm.name,
                memory_mib=vm.memory_mib if vm.active else 0,
                vcpus=vm.vcpus if vm.active else 0,
                dirty_rate_bps=vm.dirty_rate_bps or 0.0,
                anti_affinity={k: vm.labels[k] for k in self.config.anti_affinity_labels if k in vm.labels},
                pin=pins,
                avoid=tuple(settings.get("destinations", {}).get("avoid") or ()),
                eligible=frozenset(eligible),
                precheck_failures=failures,
                order=int(settings.get("drain_order", 0) or 0),
            ))
        placement = plan_placement(self.source.name, demands, capacities, self.config.placement)
        for unplaced in placement.unplaced:
            result.blockers.append(_blocker(
                unplaced.vm, "unplaced", f"no destination for '{unplaced.vm}': " + "; ".join(unplaced.messages()),
                "free capacity, fix the failing checks, or change the VM's policy (pin/avoid, storage).",
                unplaced.reasons))
        live = [a for a in placement.assignments if info[a.vm][0].active]
        lanes = self.config.lanes(len(live) + sum(1 for e in pinned.values() if e.get("kind") != DEFINITION),
                                  len({a.destination for a in live}) or None)
        plan = []
        for name, entry in sorted(pinned.items()):
            vm, match = info.get(name, (None, None))
            plan.append(self._pinned_plan(name, entry, vm, match))
        planned = {}  # vm -> what _vm_plan needs to forecast it again at another bandwidth
        refused = []
        for assignment in placement.assignments:
            vm, match = info[assignment.vm]
            dest = self._dest_by_name(assignment.destination)
            item = self._vm_plan(vm, match, dest, assignment.reason, lanes)
            planned[vm.name] = (vm, match, dest, assignment.reason)
            if item.get("blocked"):
                if item.pop("_refused", False):
                    refused.append(item)  # refused at the lane split: the drain forecast may give it more
                else:
                    result.blockers.append(item["blocked"])
                continue
            plan.append(item)
        plan, schedule = self._simulate(plan, refused, planned, lanes, result)
        if reviewed is not None:
            planned_now = {p["vm"] for p in plan}
            for name in sorted(set(reviewed) - planned_now):
                if name in info:
                    why = next((b["message"] for b in result.blockers if b["vm"] == name), "it cannot go there now")
                    result.plan_differences.append(f"'{name}' cannot go to {reviewed[name]['destination']} as "
                                                   f"reviewed: {why}")
                else:
                    result.plan_differences.append(f"'{name}' is in the reviewed plan but no longer on "
                                                   f"{self.source.name}")
            for name in sorted(planned_now - set(reviewed)):
                result.plan_differences.append(f"'{name}' is on {self.source.name} but not in the reviewed plan")
            for item in plan:
                old = reviewed.get(item["vm"])
                if old and old.get("mode") and old.get("mode") != item["mode"]:
                    item["mode_reason"] += f" (reviewed plan said {old['mode']}; the forecast changed)"
        order = {m.vm: i for i, m in enumerate(Scheduler(
            [Move(p["vm"], self.source.name, p["destination"], _rank_s(p), p.get("order", 0))
             for p in plan], self.config.limits()).queue)} if plan else {}
        plan.sort(key=lambda p: order.get(p["vm"], 0))
        result.plan = plan
        for p in plan:
            p.pop("_forecast", None)
        if any(s.forecast is not None for s in schedule):
            result.forecast = forecast_drain_shared(schedule, concurrency=lanes).as_dict()
            result.forecast["schedule"] = [s.as_dict() for s in schedule]
        else:
            result.forecast = {"total_s": 0.0, "serial_s": 0.0, "concurrency": lanes, "migrations": 0,
                               "blocked": [], "predicted_bytes": 0, "worst_downtime_ms": 0.0,
                               "summary": "no live migration to forecast"}
        result.forecast["blocked"] = sorted({b["vm"] for b in result.blockers if b.get("vm")})
        result.moves = [{"vm": p["vm"], "from": self.source.name, "to": p["destination"]} for p in plan]

    def _simulate(self, plan, refused, planned, lanes, result):
        """The drain forecast: forecast.simulate_drain over the live moves (the scheduler's order and limits,
        the source link shared by what runs). Each VM's mode is decided again on the bandwidth it gets when
        it starts there (at least its lane share), so a VM refused at the lane split can still go when it
        would start with more of the link. Returns the plan (VMs re-forecast replaced, refused ones that fit
        added) and the schedule; VMs still refused become blockers."""
        items = {p["vm"]: p for p in plan if p.get("kind") != DEFINITION}
        items.update({p["vm"]: p for p in refused})
        decided = {}

        def predict(name, bandwidth):
            item = items[name]
            if name not in planned or item.get("resume"):
                return None  # resumed from the journal: its recorded mode stands, no forecast
            vm, match, dest, reason = planned[name]
            again = self._vm_plan(vm, match, dest, reason, lanes, bandwidth=bandwidth)
            again.pop("_refused", None)
            again["rank_s"] = item.get("rank_s")
            decided[name] = again
            if again.get("blocked"):
                return again.get("_forecast") or Forecast(REFUSE, False, "blocked", None, None, None, 0, False)
            return again["_forecast"]

        default = self.config.default_link_mbit
        moves = [Move(p["vm"], self.source.name, p["destination"], _rank_s(p), p.get("order", 0))
                 for p in items.values()]
        schedule = simulate_drain(
            moves, self.config.limits(), self.source.link_bps(default), predict,
            destination_bps={d.name: d.link_bps(default) for d in self.destinations},
            budget_bps=self.config.bandwidth_mib * MIB if self.config.bandwidth_mib else None) if moves else []
        when = {s.vm: s for s in schedule}
        out = []
        for item in plan + refused:
            name = item["vm"]
            item = decided.get(name, item)
            if item.get("blocked"):
                result.blockers.append(item["blocked"])
                continue
            if name in when and when[name].end_s is not None and item.get("_forecast") is not None:
                item.update(predicted_start_s=round(when[name].start_s, 3), predicted_end_s=round(when[name].end_s, 3))
            out.append(item)
        return out, schedule

    def _bandwidth_for(self, dest, lanes):
        """Bytes/s one migration gets when `lanes` run at once: the source link, the destination's
        inbound share and the budget are split among them."""
        default = self.config.default_link_mbit
        src_bw = self.source.link_bps(default) / lanes
        inbound = max(1, min(lanes, self.config.max_inbound or lanes))
        dst_bw = dest.link_bps(default) / inbound
        bws = [src_bw, dst_bw]
        if self.config.bandwidth_mib:
            bws.append(self.config.bandwidth_mib * MIB / lanes)
        return min(bws)

    def _vm_plan(self, vm, match, dest, placement_reason, lanes, bandwidth=None):
        """One VM's plan item; forecast at `bandwidth` (bytes/s) if given, else at its lane share."""
        settings = match.settings
        item = {"vm": vm.name, "kind": vm.kind, "state": vm.state, "memory_mib": vm.memory_mib, "vcpus": vm.vcpus,
                "dirty_rate_bps": vm.dirty_rate_bps, "persistent": vm.persistent, "labels": dict(vm.labels),
                "source": self.source.name, "destination": dest.name, "destination_uri": dest.target_uri,
                "migrate_uri": dest.migrate_uri, "policy": match.policy.name, "policy_reason": match.reason,
                "placement_reason": placement_reason, "order": int(settings.get("drain_order", 0) or 0),
                "settings": settings, "forecast": None, "_forecast": None, "predicted_duration_s": None,
                "predicted_downtime_ms": None, "predicted_bytes": None, "auto_converge": False}
        if vm.kind == DEFINITION:
            item.update(mode="definition", mode_reason="shut off and persistent: its definition moves "
                        "(defined on the destination, undefined here)", spec=None)
            return item
        fc = None
        note = ""
        if bandwidth is None:
            bandwidth = self._bandwidth_for(dest, lanes)
        if vm.dirty_rate_bps is None:
            note = " (dirty rate not measured: assumed 0)"
        domain_type = getattr(vm.facts, "domain_type", None) or "kvm"
        ratio, working_set = guest_memory(vm.memory_mib * MIB, (vm.resident_mib or 0) * MIB, domain_type)
        try:
            fc = forecast_for_settings(settings, vm.memory_mib * MIB, vm.dirty_rate_bps or 0.0, bandwidth,
                                       transferable_ratio=ratio, dirty_working_set=working_set)
        except ForecastError as exc:
            note = f" (no forecast: {exc.message})"
        try:
            mode, auto_converge, why = effective_mode(settings, fc)
            spec = spec_for(settings, fc, migrate_uri=dest.migrate_uri, persistent=vm.persistent)
        except HvfleetError as exc:
            item["blocked"] = _blocker(vm.name, "refused", f"'{vm.name}' to {dest.name}: {exc.message}", exc.hint)
            item["_refused"] = fc is not None and fc.mode == REFUSE
            item["_forecast"] = fc
            return item
        item.update(mode=mode, auto_converge=auto_converge, mode_reason=why + note, spec=spec.describe(),
                    link_share_mib=round(bandwidth / MIB, 1), forecast=fc.as_dict() if fc else None, _forecast=fc)
        if fc is not None:
            item.update(predicted_duration_s=fc.predicted_duration_s, predicted_downtime_ms=fc.predicted_downtime_ms,
                        predicted_bytes=fc.predicted_bytes)
        item["rank_s"] = item["predicted_duration_s"]  # the scheduler's ranking: the lane-share forecast
        return item

    def _pinned_plan(self, name, entry, vm, match):
        item = {k: entry.get(k) for k in ("kind", "destination", "destination_uri", "migrate_uri", "policy",
                                          "policy_reason", "mode", "mode_reason", "auto_converge", "forecast",
                                          "predicted_duration_s", "predicted_downtime_ms", "predicted_bytes",
                                          "settings", "persistent", "memory_mib", "vcpus", "order", "spec")}
        item.update(vm=name, source=self.source.name, state=vm.state if vm else "unknown",
                    placement_reason="resuming the journal's migration to the same destination",
                    labels=dict(vm.labels) if vm else {}, dirty_rate_bps=vm.dirty_rate_bps if vm else None,
                    _forecast=None, resume=True)
        if match is not None and not item.get("settings"):
            item["settings"] = match.settings
        item["order"] = item.get("order") or 0
        return item

    def _record_plan(self, result):
        for item in result.plan:
            entry = {k: v for k, v in item.items() if k not in ("labels",)}
            entry.update(origin=self.source.name, origin_uri=self.source.target_uri, state=jr.PLANNED,
                         result=None, error=None, recovery=None)
            self.journal.put_vm(item["vm"], entry, note="resumed" if item.get("resume") else "planned", save=False)
        for blocker in result.blockers:
            if blocker.get("vm") and self.journal.vm(blocker["vm"]) is None:
                self.journal.put_vm(blocker["vm"], {"kind": None, "state": jr.BLOCKED, "error": blocker["message"],
                                                    "origin": self.source.name,
                                                    "origin_uri": self.source.target_uri}, note="blocked", save=False)
            elif blocker.get("vm") and self.journal.vm(blocker["vm"])["state"] in (jr.PLANNED, jr.BLOCKED,
                                                                                   jr.STAYED, jr.FAILED):
                self.journal.update_vm(blocker["vm"], jr.BLOCKED, note=blocker["message"], error=blocker["message"])
        self.journal.set_plan(result.forecast, result.blockers)

    # ---- execution ------------------------------------------------------------------------

    def _event(self, kind, **fields):
        item = self.journal.event(kind, **fields) if self.journal is not None else dict(fields, event=kind)
        if self.progress is not None:
            with contextlib.suppress(Exception):
                self.progress(item)
        return item

    def _execute(self, moves, definitions, target_of, result, restore=False):
        """Run the live moves concurrently, then the definition moves; fills result.vms."""
        # pylint: disable=too-many-locals,too-many-branches,too-many-statements
        outcomes = {"attempted": 0, "failures": 0, "stopped": False, "not_started": [], "window_closed": False}
        by_vm = {p["vm"]: p for p in moves}
        sched = Scheduler([Move(p["vm"], p["source"], p["destination"], _rank_s(p),
                                p.get("order", 0)) for p in moves], self.config.limits()) if moves else None
        running = {}
        finished = set()
        done = queue.Queue()
        stop_progress = threading.Event()
        ticker = threading.Thread(target=self._progress_loop, args=(running, stop_progress), daemon=True,
                                  name="drain-progress")
        ticker.start()
        try:
            while sched is not None:
                if self._window_closed() and not outcomes["window_closed"]:
                    outcomes["window_closed"] = True
                    self._event("note", message="the maintenance window closed: no new migration starts "
                                "(running ones finish)")
                stopping = self.cancelled or outcomes["failures"] > self.config.max_failures
                if stopping and not outcomes["stopped"] and not self.cancelled:
                    outcomes["stopped"] = True
                    self._event("note", message=f"{outcomes['failures']} failure(s) > max_failures "
                                f"{self.config.max_failures}: no new migration starts")
                if not stopping and not outcomes["window_closed"]:
                    for mig in sched.ready(set(running), finished):
                        plan = by_vm[mig.vm]
                        ok, why = self._recheck(plan, restore)
                        if not ok:
                            finished.add(mig.vm)
                            entry = self._record_not_moved(plan, jr.BLOCKED, "destination_changed", why,
                                                           restore=restore)
                            result.blockers.append(_blocker(plan["vm"], "destination_changed", why,
                                                            "run again: the VM is re-placed with fresh facts."))
                            del entry
                            continue
                        share = sched.bandwidth_for(mig.vm, set(running))
                        worker = _Worker(self, plan, share, done, restore)
                        running[mig.vm] = worker
                        outcomes["attempted"] += 1
                        worker.start()
                        self._rebalance(sched, running)
                if not running:
                    break
                try:
                    name, item = done.get(timeout=0.5)
                except queue.Empty:
                    continue
                worker = running.pop(name)
                worker.join(5)
                finished.add(name)
                result.vms.append(item)
                if not item.get("ok"):
                    outcomes["failures"] += 1
                self._rebalance(sched, running)
        finally:
            stop_progress.set()
            if running:  # an exception escaped: let running migrations finish and be journalled
                for worker in list(running.values()):
                    worker.join()
        for p in moves:
            if p["vm"] not in finished:
                outcomes["not_started"].append(p["vm"])
        for p in definitions:
            if self._window_closed():
                outcomes["window_closed"] = True
            if self.cancelled or outcomes["failures"] > self.config.max_failures or outcomes["window_closed"]:
                outcomes["not_started"].append(p["vm"])
                continue
            outcomes["attempted"] += 1
            item = self._move_definition(p, restore)
            result.vms.append(item)
            if not item.get("ok"):
                outcomes["failures"] += 1
        for name in outcomes["not_started"]:
            plan = by_vm.get(name) or next((p for p in definitions if p["vm"] == name), {"vm": name})
            why = "interrupted before it started" if self.cancelled else (
                f"not started: more than max_failures ({self.config.max_failures}) migrations failed"
                if outcomes["failures"] > self.config.max_failures else "not started: the maintenance window closed")
            self._event("note", message=f"{name}: {why}")
            if plan.get("vm") and self.journal.vm(name) is not None and not restore:
                self.journal.update_vm(name, note=why, error=why)
        result.not_started = list(outcomes["not_started"])
        return outcomes

    def _window_closed(self):
        """True once the start deadline (config.start_deadline, the end of the maintenance window) has passed."""
        deadline = self.config.start_deadline
        return deadline is not None and self.clock() >= deadline

    def _record_not_moved(self, plan, state, kind, why, restore=False):
        if restore:
            return self.journal.update_vm(plan["vm"], jr.MOVED, note=why, restore_error=why)
        return self.journal.update_vm(plan["vm"], state, note=why, error=why)

    def _recheck(self, plan, restore):
        """Fresh facts of the destination right before starting; False with the reason when it no longer fits."""
        dest = self.source if restore else self._dest_by_name(plan["destination"])
        conn = None
        try:
            conn = self.backend.connect(dest.uri)
            cap = self.backend.capacity(conn, dest, self.config.anti_affinity_labels)
        except HvfleetError as exc:
            return False, f"{dest.name} cannot be checked right before the migration: {exc.message}"
        finally:
            if conn is not None:
                self.backend.close(conn)
        cap = dataclasses.replace(cap, name=dest.name, cordoned=(cap.cordoned or dest.cordoned) and not restore)
        demand = VmDemand(plan["vm"], plan.get("memory_mib") or 0, plan.get("vcpus") or 0,
                          anti_affinity={k: plan.get("labels", {})[k] for k in self.config.anti_affinity_labels
                                         if k in (plan.get("labels") or {})})
        ok, why = recheck(demand, cap, self.config.placement)
        if not ok:
            self._event("note", message=f"{plan['vm']}: destination re-check failed: {why}")
        return ok, why

    def _rebalance(self, sched, running):
        """Re-apply bandwidth shares when the number of running migrations changed."""
        if self.config.bandwidth_mib is None:
            return
        for name, worker in list(running.items()):
            share = sched.bandwidth_for(name, set(running))
            if share and worker.bandwidth_bps != share:
                worker.set_bandwidth(share)

    def _progress_loop(self, running, stop):
        last = {}
        while not stop.wait(self.config.progress_interval_s):
            for name, worker in list(running.items()):
                sample = worker.control.sample()
                if sample is None:
                    continue
                key = (sample.get("iteration"), sample.get("percent"))
                if last.get(name) == key:
                    continue
                last[name] = key
                self._event("vm_progress", vm=name, destination=worker.plan["destination"], **sample)

    def _vm_result(self, entry):
        res = entry.get("result") or {}
        return {"vm": entry["name"], "kind": entry.get("kind"), "source": entry.get("source") or entry.get("origin"),
                "destination": entry.get("destination"), "policy": entry.get("policy"),
                "mode": entry.get("mode"), "mode_used": res.get("mode_used"), "state": entry.get("state"),
                "ok": bool(res.get("ok")), "outcome": res.get("outcome"), "duration_s": res.get("duration_s"),
                "downtime_ms": res.get("downtime_ms"), "bytes_sent": res.get("bytes_sent"),
                "predicted_duration_s": entry.get("predicted_duration_s"),
                "predicted_downtime_ms": entry.get("predicted_downtime_ms"), "message": res.get("message"),
                "recovery": res.get("recovery"), "steps": res.get("steps") or [], "attempts": entry.get("attempts"),
                "started": entry.get("started"), "finished": entry.get("finished")}

    def _move_definition(self, plan, restore):
        name = plan["vm"]
        src_host = self._dest_by_name(plan["source"]) if restore else self.source
        dst_host = self.source if restore else self._dest_by_name(plan["destination"])
        self._journal_start(plan, restore)
        self._event("vm_started", vm=name, destination=dst_host.name, mode="definition", auto_converge=False,
                    policy=plan.get("policy"), predicted_duration_s=None, predicted_downtime_ms=None,
                    bandwidth_mib=None)
        start = self.clock()
        src_conn = dst_conn = None
        try:
            src_conn = self.backend.connect(src_host.uri)
            dst_conn = self.backend.connect(dst_host.uri)
            self.backend.move_definition(src_conn, dst_conn, name)
            res = {"outcome": "moved", "ok": True, "mode_used": "definition", "message":
                   f"definition of '{name}' moved from {src_host.name} to {dst_host.name}"}
        except HvfleetError as exc:
            res = {"outcome": "failed", "ok": False, "mode_used": "definition", "message": exc.message,
                   "recovery": exc.hint}
        finally:
            self.backend.close(src_conn)
            self.backend.close(dst_conn)
        res["duration_s"] = round(self.clock() - start, 3)
        return self._journal_finish(plan, res, restore)

    def _journal_start(self, plan, restore):
        state = jr.RETURNING if restore else jr.MIGRATING
        self.journal.update_vm(plan["vm"], state, note=f"to {plan['destination'] if not restore else self.source.name}")

    def _journal_finish(self, plan, res, restore):
        name = plan["vm"]
        if restore:
            if res.get("ok"):
                entry = self.journal.update_vm(name, jr.HOME, note=res.get("message"), restore_result=res)
            else:
                entry = self.journal.update_vm(name, jr.PAUSED_POSTCOPY if res.get("outcome") == "postcopy_paused"
                                               else jr.MOVED, note=res.get("message"), restore_result=res,
                                               restore_error=res.get("message"))
            item = self._vm_result(dict(entry, result=res))
            item.update(source=plan["source"], destination=self.source.name)
        else:
            state = _state_for(res)
            entry = self.journal.update_vm(name, state, note=res.get("message"), result=res,
                                           error=None if res.get("ok") else res.get("message"),
                                           recovery=res.get("recovery"))
            item = self._vm_result(entry)
        self._event("vm_finished", vm=name, destination=item["destination"], ok=item["ok"], state=item["state"],
                    outcome=res.get("outcome"), mode=res.get("mode_used"), duration_s=res.get("duration_s"),
                    downtime_ms=res.get("downtime_ms"), bytes_sent=res.get("bytes_sent"),
                    message=res.get("message"), recovery=res.get("recovery"))
        return item

    # ---- restore --------------------------------------------------------------------------

    def _away_entries(self):
        """Journal entries of VMs from this host that are not back yet."""
        away = (jr.MOVED, jr.RETURNING, jr.PAUSED_POSTCOPY)
        return {n: e for n, e in self.journal.vms().items()
                if e.get("origin") == self.source.name and e.get("state") in away}

    def _restore(self, conns, result, plan_only):
        # pylint: disable=too-many-locals,too-many-branches,too-many-statements
        entries = self._away_entries()
        cordoned = self.backend.read_cordon(self.state_dir)
        if not entries and self.journal.state in (None, jr.RESTORED) and not cordoned:
            result.state = jr.RESTORED
            result.message = f"{self.source.name} is active and has nothing to bring back; nothing to do."
            result.summary = {"moved": 0, "failed": 0, "blocked": 0, "not_started": 0}
            return
        home_conn = conns.get(self.source.uri)
        home = dataclasses.replace(self.source, cordoned=False)
        if not plan_only:
            self.journal.begin_run("restore", by=self.config.by, source_uri=self.source.uri, options=self._options())
        # where is each VM now?
        located = {}
        for name, entry in sorted(entries.items()):
            candidates = [self._dest_by_name(entry.get("destination"))] + self.destinations
            found = None
            here = self.backend.observe(home_conn, name, self.source.uri)
            for dest in [d for d in candidates if d is not None]:
                try:
                    view = self.backend.observe(conns.get(dest.uri), name, dest.uri)
                except HvfleetError:
                    continue
                if view.present and (view.running or view.paused or view.persistent):
                    found = (dest, view)
                    break
            if found is None and here.present and (here.running or here.persistent):
                if not plan_only:
                    self.journal.update_vm(name, jr.HOME, note="already back on its origin host")
                result.reconciled.append({"vm": name, "found": "home", "changed": False})
                continue
            if found is None:
                result.blockers.append(_blocker(name, "not_found", f"'{name}' is not on {entry.get('destination')} "
                                                "(journal) nor on any destination given, nor back home.",
                                                "find it and bring it back by hand (domain_migration)."))
                continue
            located[name] = (entry, found[0], found[1])
        # checks and capacity on the way back
        vms_by_host = {}
        for name, (_entry, dest, _view) in located.items():
            vms_by_host.setdefault(dest.name, []).append(name)
        infos = {}
        for host_name, names in vms_by_host.items():
            dest = self._dest_by_name(host_name)
            for vm in self.backend.list_vms(conns.get(dest.uri), dest, measure=self.config.measure_dirty_rate):
                if vm.name in names:
                    infos[vm.name] = (vm, dest)
        home_cap = dataclasses.replace(self.backend.capacity(home_conn, home, self.config.anti_affinity_labels),
                                       name=home.name, cordoned=False)
        demands = []
        matches = {}
        for name, (vm, dest) in sorted(infos.items()):
            match = select_policy(self.policies, vm.name, vm.labels, vm.memory_mib)
            matches[name] = match
            checks = self.backend.prechecks(conns.get(dest.uri), home_conn, vm, dest, home, match.settings)
            bad = [c for c in checks if c.failed]
            demands.append(VmDemand(
                name=name, memory_mib=vm.memory_mib if vm.active else 0, vcpus=vm.vcpus if vm.active else 0,
                dirty_rate_bps=vm.dirty_rate_bps or 0.0,
                anti_affinity={k: vm.labels[k] for k in self.config.anti_affinity_labels if k in vm.labels},
                eligible=frozenset() if bad else frozenset([home.name]),
                precheck_failures={home.name: "; ".join(c.message for c in bad)} if bad else {},
                order=int(match.settings.get("drain_order", 0) or 0)))
        placement = plan_placement(sorted(vms_by_host), demands, [home_cap], self.config.placement)
        for unplaced in placement.unplaced:
            result.blockers.append(_blocker(unplaced.vm, "unplaced", f"'{unplaced.vm}' cannot come back: "
                                            + "; ".join(unplaced.messages()), "free capacity on the home host or "
                                            "fix the failing checks.", unplaced.reasons))
        live_count = sum(1 for a in placement.assignments if infos[a.vm][0].active)
        lanes = self.config.lanes(live_count)
        plan = []
        for assignment in placement.assignments:
            vm, dest = infos[assignment.vm]
            saved_source = self.source
            self.source = dest  # forecast with the current host's outbound link
            try:
                item = self._vm_plan(vm, matches[vm.name], home, assignment.reason, lanes)
            finally:
                self.source = saved_source
            item.update(source=dest.name, destination=home.name, destination_uri=home.target_uri,
                        migrate_uri=home.migrate_uri)
            if item.get("blocked"):
                result.blockers.append(item["blocked"])
                continue
            plan.append(item)
        forecasts = {p["vm"]: p.pop("_forecast") for p in plan}
        forecasts = {k: v for k, v in forecasts.items() if v is not None}
        result.forecast = forecast_drain(forecasts, concurrency=lanes).as_dict() if forecasts else None
        result.plan = plan
        result.moves = [{"vm": p["vm"], "from": p["source"], "to": home.name} for p in plan]
        if plan_only:
            result.state = "planned"
            result.changed = bool(plan) or cordoned
            result.message = (f"restore plan for {self.source.name}: {len(plan)} to bring back, "
                              f"{len(result.blockers)} blocked" + ("; then uncordon" if cordoned else ""))
            return
        for item in plan:
            self.journal.update_vm(item["vm"], note="restore planned", restore_plan={
                k: item.get(k) for k in ("source", "mode", "mode_reason", "policy", "predicted_duration_s",
                                         "predicted_downtime_ms")})
        started = self.clock()
        self._event("run_started", vms=len(plan), blocked=len(result.blockers),
                    forecast_total_s=(result.forecast or {}).get("total_s"), max_parallel=self.config.max_parallel,
                    resumed=False)
        moves = [p for p in plan if p["kind"] == LIVE]
        definitions = [p for p in plan if p["kind"] == DEFINITION]
        outcomes = self._execute(moves, definitions, home, result, restore=True)
        if outcomes["attempted"] or result.reconciled:
            result.changed = True
        failed = [r for r in result.vms if not r.get("ok")]
        remaining = self._away_entries()
        result.summary = {"moved": len(result.vms) - len(failed), "failed": len(failed),
                          "blocked": len(result.blockers), "not_started": len(outcomes["not_started"])}
        result.actual = {"total_s": round(self.clock() - started, 3), "migrations": len(moves),
                         "forecast_total_s": (result.forecast or {}).get("total_s")}
        if not remaining and not failed and not result.blockers and not self.cancelled:
            changed = self.backend.set_cordon(self.state_dir, False, "restored", self.config.by)
            result.changed = result.changed or bool(changed)
            result.cordon = {"changed": bool(changed), "state": "active"}
            result.state = jr.RESTORED
            result.message = (f"restore of {self.source.name}: {result.summary['moved']} VM(s) back home; "
                              f"{self.source.name} is uncordoned.")
            self.journal.end_run(jr.RESTORED, {"message": result.message, **result.summary})
            self._event("run_finished", state=jr.RESTORED, moved=result.summary["moved"], failed=0, blocked=0,
                        not_started=0, duration_s=result.actual["total_s"],
                        forecast_total_s=result.actual["forecast_total_s"], message=result.message)
            self.journal.archive()
            return
        result.failed = True
        result.state = jr.INTERRUPTED if self.cancelled else jr.DRAIN_FAILED
        result.message = self._result_message(result, outcomes) + (
            f"; {self.source.name} stays cordoned until every VM is back (run again)")
        self.journal.end_run(jr.DRAINED if not self.cancelled else jr.INTERRUPTED,
                             {"message": result.message, **result.summary})
        self._event("run_finished", state=result.state, moved=result.summary["moved"], failed=len(failed),
                    blocked=len(result.blockers), not_started=len(outcomes["not_started"]),
                    duration_s=result.actual["total_s"], forecast_total_s=result.actual["forecast_total_s"],
                    message=result.message)


def _rank_s(plan):
    """The duration the scheduler ranks a planned VM by: its lane-share forecast (`rank_s`), so the drain
    starts VMs in the order its forecast simulated; plans without it (older journals) by their prediction."""
    return plan.get("rank_s", plan.get("predicted_duration_s"))


def _check_host(host):
    """Refuse a host description that cannot work before anything is touched (no lock, cordon or journal)."""
    if not isinstance(host.name, str) or not host.name.strip():
        raise DrainError(f"A host has no usable name ({host.name!r}).", "give every host its inventory name.")
    for field in ("uri", "peer_uri"):
        value = getattr(host, field)
        if (value is not None or field == "uri") and (not isinstance(value, str) or not value.strip()):
            raise DrainError(f"{host.name}: {field} {value!r} is not a libvirt URI.",
                             "give a URI such as qemu+tls://HOST/system.")
    mbit = host.link_mbit
    if mbit is not None and (isinstance(mbit, bool) or not isinstance(mbit, (int, float)) or not math.isfinite(mbit)
                             or mbit <= 0):
        raise DrainError(f"{host.name}: link_mbit {mbit!r} is not a link speed.",
                         "give the link speed in Mbit/s (e.g. 10000), or leave it unset.")
    if host.migration_address is not None and not isinstance(host.migration_address, str):
        raise DrainError(f"{host.name}: migration_address {host.migration_address!r} is not an address.",
                         "give the host's address on the migration network.")
    migrate_uri_for(host.migration_address, f"migration_address of {host.name}")  # InvalidSpec for a URI


def _check_config(config):
    """Refuse settings that cannot work before anything is touched."""
    config.limits()  # scheduler.Limits refuses limits under which nothing could start
    for name, low, high in (("progress_interval_s", 0.0, 3600), ("default_link_mbit", 0.0, 1e9),
                            ("orphan_wait_s", None, 86400)):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                low is not None and value <= low) or value < 0 or value > high:
            raise DrainError(f"{name}={value!r} is not usable.", f"give {name} a positive number up to {high:g}.")
    if isinstance(config.max_failures, bool) or not isinstance(config.max_failures, int) or config.max_failures < 0:
        raise DrainError(f"max_failures={config.max_failures!r} must be 0 or more.",
                         "0 stops new starts at the first failure; N tolerates N failures.")


def _check_reviewed_plan(reviewed_plan, host, destinations):
    """The shape of a reviewed plan (plan_from), checked before the drain touches anything."""
    hint = "give the file written by a check-mode run with plan_file (review a new one if it was edited)."
    if not isinstance(reviewed_plan, dict) or not isinstance(reviewed_plan.get("plan"), list):
        raise DrainError("The reviewed plan is not a plan (expected a mapping with a 'plan' list, as written by "
                         "plan_file).", hint)
    if reviewed_plan.get("host") not in (None, host):
        raise DrainError(f"The reviewed plan is for {reviewed_plan.get('host')!r}, not {host}.", hint)
    seen = set()
    for index, item in enumerate(reviewed_plan["plan"]):
        where = f"item {index} of the reviewed plan"
        if not isinstance(item, dict):
            raise DrainError(f"{where} is not a mapping.", hint)
        name, dest = item.get("vm"), item.get("destination")
        if not isinstance(name, str) or not name:
            raise DrainError(f"{where} names no VM (vm: {name!r}).", hint)
        if name in seen:
            raise DrainError(f"The reviewed plan lists '{name}' twice.", hint)
        seen.add(name)
        if not isinstance(dest, str) or dest not in destinations:
            raise DrainError(f"The reviewed plan sends '{name}' to {dest!r}, which is not among the destinations "
                             f"given ({', '.join(destinations) or 'none'}).", hint)


def _reviewed_index(reviewed_plan, host, result):
    """VM -> reviewed plan item; records a difference when the plan is for another host."""
    if not isinstance(reviewed_plan, dict) or not isinstance(reviewed_plan.get("plan"), list):
        raise DrainError("The reviewed plan is not a plan (expected a mapping with a 'plan' list, as written by "
                         "plan_file).", "give the file written by a check-mode run with plan_file.")
    if reviewed_plan.get("host") not in (None, host):
        result.plan_differences.append(f"the reviewed plan is for {reviewed_plan.get('host')}, not {host}")
    return {item["vm"]: item for item in reviewed_plan["plan"] if isinstance(item, dict) and item.get("vm")}


class _Connections:
    """One connection per URI for the planning phase (workers open their own)."""

    def __init__(self, backend):
        self.backend = backend
        self.conns = {}

    def get(self, uri):
        if uri not in self.conns:
            self.conns[uri] = self.backend.connect(uri)
        return self.conns[uri]

    def close_all(self):
        for conn in self.conns.values():
            with contextlib.suppress(Exception):
                self.backend.close(conn)
        self.conns.clear()


class _Worker(threading.Thread):
    """One live migration in its own thread with its own connections; reports to the drainer's queue."""

    def __init__(self, drainer, plan, bandwidth_bps, done, restore):
        super().__init__(name=f"drain {plan['vm']}", daemon=True)
        self.drainer = drainer
        self.plan = plan
        self.bandwidth_bps = bandwidth_bps
        self.done = done
        self.restore = restore
        self.control = MigrationControl()
        self._src_conn = None

    def set_bandwidth(self, bps):
        self.bandwidth_bps = bps
        conn = self._src_conn
        if conn is None:
            return
        mib = max(1, int(bps // MIB))
        threading.Thread(target=self._set_speed, args=(conn, mib), daemon=True).start()  # may block (libvirt 9.0)

    def _set_speed(self, conn, mib):
        with contextlib.suppress(Exception):
            self.drainer.backend.set_speed(conn, self.plan["vm"], mib)

    def run(self):
        d = self.drainer
        plan = self.plan
        name = plan["vm"]
        src_host = d._dest_by_name(plan["source"]) if self.restore else d.source  # pylint: disable=protected-access
        dst_host = d.source if self.restore else d._dest_by_name(plan["destination"])  # pylint: disable=W0212
        with d._controls_lock:  # pylint: disable=protected-access
            d._controls[name] = self.control  # pylint: disable=protected-access
        item = None
        src_conn = dst_conn = None
        start = d.clock()
        try:
            d._journal_start(plan, self.restore)  # pylint: disable=protected-access
            share_mib = max(1, int(self.bandwidth_bps // MIB)) if self.bandwidth_bps else None
            d._event("vm_started", vm=name, destination=dst_host.name, mode=plan.get("mode"),  # pylint: disable=W0212
                     auto_converge=plan.get("auto_converge"), policy=plan.get("policy"),
                     policy_reason=plan.get("policy_reason"), mode_reason=plan.get("mode_reason"),
                     predicted_duration_s=plan.get("predicted_duration_s"),
                     predicted_downtime_ms=plan.get("predicted_downtime_ms"), bandwidth_mib=share_mib)
            settings = plan.get("settings") or {}
            fc = _ForecastView(plan)
            spec = spec_for(settings, fc, migrate_uri=dst_host.migrate_uri, bandwidth_mib=share_mib,
                            persistent=plan.get("persistent", True))
            src_conn = d.backend.connect(src_host.uri)
            self._src_conn = src_conn
            dst_conn = d.backend.connect(dst_host.uri)
            if d.cancelled:
                raise HvfleetError(f"'{name}' was not started: the run was interrupted.")
            res = self._migrate(src_conn, dst_conn, dst_host, src_host, spec)
            res = summarize_result(res)
        except MigrationFailed as exc:
            res = summarize_result(exc.result)
        except HvfleetError as exc:
            res = {"outcome": "error", "ok": False, "mode_used": "none", "message": exc.message,
                   "recovery": exc.hint, "steps": []}
            if src_conn is not None and dst_conn is not None:
                src = d.backend.observe(src_conn, name, src_host.uri)
                if src.running:
                    res["outcome"] = "stayed"
        except Exception as exc:  # pylint: disable=broad-except
            res = {"outcome": "error", "ok": False, "mode_used": "none", "message": f"unexpected error: {exc}",
                   "recovery": "inspect both hosts before acting.", "steps": []}
        finally:
            self._src_conn = None
            d.backend.close(src_conn)
            d.backend.close(dst_conn)
            with d._controls_lock:  # pylint: disable=protected-access
                d._controls.pop(name, None)  # pylint: disable=protected-access
        if res.get("duration_s") is None:
            res["duration_s"] = round(d.clock() - start, 3)
        if self.control.aborted and not res.get("ok"):
            res["message"] = f"{res.get('message')} (aborted: the run was interrupted)"
        try:
            item = d._journal_finish(plan, res, self.restore)  # pylint: disable=protected-access
        except Exception as exc:  # pylint: disable=broad-except
            item = {"vm": name, "ok": bool(res.get("ok")), "message": f"{res.get('message')} (journal: {exc})",
                    "destination": dst_host.name, "kind": LIVE}
        self.done.put((name, item))

    def _migrate(self, src_conn, dst_conn, dst_host, src_host, spec):
        """The migration; once more if the first failed in libvirt and left the VM running where it was.

        Seen on the lab: after the storage daemon restarted, each VM's next migration failed once at
        switch-over (QEMU's NBD client had lost its connection) and the next attempt worked. The engine
        has established that nothing moved (outcome `stayed`), so a second attempt is as safe as the first.
        """
        d = self.drainer

        def attempt():
            return d.backend.migrate(src_conn, dst_conn, self.plan["vm"], dst_host.target_uri, spec, src_host.uri,
                                     self.control)

        try:
            return attempt()
        except MigrationFailed as exc:
            first = exc.result
            if not worth_retrying(first) or self.control.aborted or d.cancelled:
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


def worth_retrying(result):
    """A failed migration that left the VM running untouched on its source after an error from libvirt,
    not after the engine's own abort or suspend (deadline, ladder, interruption): worth one more try."""
    actions = [step.action for step in result.steps]
    return (result.outcome == STAYED and not result.changed and "call_failed" in actions
            and not any(action in ("abort", "suspend") for action in actions))


class _ForecastView:
    """The plan's recorded mode as a forecast-like object for policy_spec (the plan is authoritative)."""

    def __init__(self, plan):
        self.mode = plan.get("mode") or "precopy"
        self.auto_converge = bool(plan.get("auto_converge"))
        self.reason = plan.get("mode_reason") or ""


# ---- the real backend -----------------------------------------------------------------------


def progress_from_sample(sample, started_at=None):
    """A vm_progress payload from a monitor.JobSample (pure)."""
    if sample is None:
        return None
    total = sample.data_total or sample.memory_total
    remaining = sample.data_remaining if sample.data_total else sample.memory_remaining
    percent = round(100.0 * (total - remaining) / total, 1) if total else None
    eta = round(remaining / sample.bandwidth_bps, 1) if sample.bandwidth_bps else None
    return {"phase": sample.phase, "percent": percent, "eta_s": eta, "iteration": sample.iteration,
            "remaining_bytes": remaining, "bandwidth_bps": sample.bandwidth_bps,
            "elapsed_s": round(sample.t, 1) if started_at is None else started_at}


def labels_of(xml):
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import LABEL_NAMESPACE

    labels = {}
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return labels
    for label in root.iter(f"{{{LABEL_NAMESPACE}}}label"):
        if label.get("name"):
            labels[label.get("name")] = (label.text or "").strip()
    return labels
