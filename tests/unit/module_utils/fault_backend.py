"""Faults for the drain's fake fleet: a wrapper around drain_fakes.FakeBackend that injects them.

`FaultBackend(inner, lab, run)` delegates to a FakeBackend (anything it does not model itself is
passed on by `__getattr__`, so new Backend methods get faults too) and adds what a real fleet does
that the plain fake does not:

* `Lab` - the parts of the fleet beyond the domains of `World`: a virtual clock (the Drainer's
  `clock`/`sleep`, advanced a little by every backend call of a run's main thread and by
  `Lab.advance`), migration jobs in libvirtd (a pre-copy shows a transient, paused incoming copy on
  the destination; a job whose caller died or gave up is carried on by libvirtd and completes or
  fails later), libvirt daemons that restart (their connections die, new ones are refused for a
  while, incoming pre-copies die with them) and migration links that are cut (pre-copy fails, the VM
  stays on the source; post-copy goes "post-copy failed": source paused, destination running, and
  the stream may resume by itself once the link is back, libvirt then leaving the source's
  definition shut off - lab-facts.md "Network shaping and faults", RELIABILITY.md).
* a model of the engine (engine/migration.py) for `migrate`: its preflight over the fake world, then
  a migration job that goes pre-copy (-> post-copy for post-copy specs) and honours the
  MigrationControl protocol (engine/control.py), with the outcomes and messages the engine gives for
  each fault (stayed, post-copy recovered, post-copy paused with the resume command, a job still in
  flight at its deadline); `move_definition` as Backend documents it (on failure the definition is on
  exactly one host - but a process killed between define and undefine leaves it on two).
* `Run` - one drain or restore run ("one process"): its fault schedule, its cancel (`drainer.cancel()`
  from another thread), its death (`ProcessKilled`, a BaseException: once a run is killed every
  backend call from any of its threads raises it, and its running migrations become libvirtd's
  orphans).

A `Fault` fires at the `n`-th call of a backend method (`at="*"`: of any method) made by one thread of
a run - its main thread, or the migration thread of one VM - so that where it fires does not depend on
how concurrent migrations interleave.
Kinds: `error` (HvfleetError before the call took effect, "during" it, or after it), `hang` (the
call takes past its deadline - virtual time - then fails like a timeout, leaving things as they
got), `kill`, `cancel`, `link_cut` and `restart` (of `host`, for `lasting` virtual seconds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import traceback

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (
    DomainNotFound,
    HvfleetError,
    InvalidSpec,
    MigrationFailed,
    UnsafeState,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import LOCK_NAME, DrainLock
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from drain_fakes import JobSample, MigrationResult, Step  # the engine's types, wherever the fakes take them from

MOVED = "moved"
ALREADY_THERE = "already_there"
STAYED = "stayed"
POSTCOPY_RECOVERED = "postcopy_recovered"
POSTCOPY_PAUSED = "postcopy_paused"

KINDS = ("error", "kill", "cancel", "hang", "link_cut", "restart")
CALL_HANG_S = 30.0  # a libvirt call that does not answer: the caller's timeout
TICK_S = 0.1  # virtual time every backend call takes
SOCKET_CLOSED = "internal error: client socket is closed"
JOB_FAILED = "operation failed: job 'migration out' unexpectedly failed"


class ProcessKilled(BaseException):
    """The process running the drain died (SIGKILL, lost host): nothing of it runs any more."""


class DrainHung(ProcessKilled):
    """The run did not return in time; the harness stopped it."""


@dataclasses.dataclass(frozen=True)
class Fault:  # pylint: disable=too-many-instance-attributes
    """What goes wrong at the `n`-th call of `at` ("*": of any backend method) in one run."""

    at: str
    n: int
    kind: str
    who: object = "main"  # whose call: "main" (the run's own thread) or i: the migration thread of the i-th VM
    when: str = "during"  # before / during / after the call took effect
    postcopy: bool = False  # migrate: the fault hits once the migration switched to post-copy (post-copy specs)
    host: str = "hv2"  # link_cut / restart outside migrate: which host (migrate: its destination)
    lasting: float = 2.0  # how long a link / daemon stays down, or an orphaned or stuck job still runs (virtual s)
    finish: bool = True  # an orphaned/stuck job completes (else fails); a cut post-copy resumes by itself

    def __repr__(self):  # short, and still Python: the failing step sequence reads (and pastes) well
        extra = "".join(f", {f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)[3:]
                        if getattr(self, f.name) != f.default)
        return f"Fault({self.at!r}, {self.n!r}, {self.kind!r}{extra})"

    def _repr_pretty_(self, printer, _cycle):  # hypothesis prints dataclasses field by field otherwise
        printer.text(repr(self))


@dataclasses.dataclass(eq=False)
class Job:  # pylint: disable=too-many-instance-attributes
    """A migration job in libvirtd."""

    vm: str
    src: str
    dst: str
    phase: str = "precopy"
    state: str = "active"  # active / done / failed / aborted
    error: str | None = None
    orphan: bool = False  # nobody waits for it any more (its caller died or gave up): libvirtd carries it on
    ends_at: float = 0.0
    finish: bool = True
    libvirt_finishes: bool = True  # libvirt ends the call itself and undefines the source
    replaced: dict | None = None  # an inactive definition the destination had before the incoming copy


def _running(data):
    return dict(data, state="running", active=True, postcopy=None, job=False)


class Lab:
    """Virtual time, libvirtd jobs, daemon restarts and link cuts over a drain_fakes.World."""

    def __init__(self, world):
        self.world = world
        self.lock = world.lock
        self.now = 0.0
        self.jobs = []
        self.down_until = {}
        self.epoch = {}
        self.link_until = {}
        self.heal = []  # (vm, src, dst): cut post-copies whose stream resumes by itself once the link is back
        self.log = []

    # ---- time -----------------------------------------------------------------------------

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.advance(max(0.0, float(seconds)))

    def advance(self, seconds):
        with self.lock:
            self.now += seconds
            self._settle()

    def _settle(self):
        for job in list(self.jobs):
            if job.orphan and job.state == "active" and self.now >= job.ends_at:
                if job.finish:
                    self._complete(job, job.libvirt_finishes)
                    self.log.append(f"t={self.now:g}: libvirtd completed the orphaned migration of {job.vm} to "
                                    f"{job.dst}")
                else:
                    self._fail(job, JOB_FAILED)
                    self.log.append(f"t={self.now:g}: the orphaned migration of {job.vm} to {job.dst} failed")
        for item in list(self.heal):
            name, src, dst = item
            if self.link_up(src, dst):
                self.heal.remove(item)
                s, d = self.world.hosts[src].get(name), self.world.hosts[dst].get(name)
                if s and d and s.get("postcopy") == "source" and d.get("postcopy") == "destination":
                    self.world.hosts[dst][name] = dict(_running(d), persistent=True)
                    self.world.hosts[src][name] = dict(s, state="shutoff", active=False, persistent=True,
                                                       postcopy=None, job=False)  # libvirt did not finish it
                    self.log.append(f"t={self.now:g}: the link is back; the post-copy of {name} to {dst} "
                                    "completed by itself (the source keeps its definition, shut off)")

    # ---- hosts and links ------------------------------------------------------------------

    def up(self, host):
        return self.now >= self.down_until.get(host, float("-inf"))

    def link_up(self, a, b):
        return all(self.now >= self.link_until.get(h, float("-inf")) for h in (a, b))

    def conn_ok(self, conn):
        host = getattr(conn, "host", None)
        return self.up(host) and getattr(conn, "fault_epoch", 0) == self.epoch.get(host, 0)

    def restart(self, host, lasting):
        """libvirtd of `host` restarts: its connections die, it refuses new ones for `lasting` s; incoming
        pre-copies are killed with it (the VM stays on the source), a post-copy goes on (QEMU streams)."""
        with self.lock:
            self.down_until[host] = max(self.down_until.get(host, float("-inf")), self.now + lasting)
            self.epoch[host] = self.epoch.get(host, 0) + 1
            self.log.append(f"t={self.now:g}: libvirtd of {host} restarts (down {lasting:g} s)")
            for job in list(self.jobs):
                if job.state == "active" and host in (job.src, job.dst) and job.phase == "precopy":
                    self._fail(job, SOCKET_CLOSED)

    def cut_link(self, host, lasting, heal):
        with self.lock:
            self.link_until[host] = max(self.link_until.get(host, float("-inf")), self.now + lasting)
            self.log.append(f"t={self.now:g}: the migration link of {host} is cut for {lasting:g} s")
            for job in list(self.jobs):
                if job.state == "active" and host in (job.src, job.dst):
                    self._fail(job, SOCKET_CLOSED)
                    if job.phase == "postcopy" and heal:
                        self.heal.append((job.vm, job.src, job.dst))

    # ---- domains --------------------------------------------------------------------------

    def view(self, host, name, uri):
        """What libvirt on `host` shows for `name` (reconcile.SideView), as a fresh connection sees it."""
        with self.lock:
            if not self.up(host):
                return reconcile.SideView(uri=uri, reachable=False, error=f"Cannot recv data: {SOCKET_CLOSED}")
            data = self.world.hosts[host].get(name)
            if data is None:
                return reconcile.SideView(uri=uri, present=False)
            return reconcile.SideView(uri=uri, present=True, state=_state(data), reason=_reason(data),
                                      job_active=bool(data.get("job")), persistent=bool(data.get("persistent")))

    def job_for(self, name):
        with self.lock:
            return next((j for j in self.jobs if j.vm == name and j.state == "active"), None)

    def start(self, name, src, dst):
        """A pre-copy starts: the source has a job, the destination a transient, paused incoming copy."""
        with self.lock:
            data = self.world.hosts[src][name]
            data["job"] = True
            job = Job(name, src, dst, replaced=self.world.hosts[dst].get(name))
            self.jobs.append(job)
            if not self.link_up(src, dst):
                self._fail(job, SOCKET_CLOSED)
            else:
                self.world.hosts[dst][name] = dict(data, state="paused", active=True, persistent=False, job=True,
                                                   postcopy=None, incoming=True)
            return job

    def _drop_incoming(self, job):
        """A pre-copy that ends without moving: the destination's incoming copy goes (what it had stays)."""
        data = self.world.hosts[job.dst].get(job.vm)
        if data is not None and data.get("incoming"):
            if job.replaced is not None:
                self.world.hosts[job.dst][job.vm] = job.replaced
            else:
                del self.world.hosts[job.dst][job.vm]

    def switch_postcopy(self, job):
        with self.lock:
            if job.state != "active":
                return False
            data = self.world.hosts[job.src][job.vm]
            data.update(state="paused", postcopy="source_active", job=True)
            self.world.hosts[job.dst][job.vm] = dict(data, state="running", active=True, persistent=False,
                                                     postcopy="destination_active", job=True, incoming=False)
            job.phase = "postcopy"
            return True

    def _complete(self, job, libvirt_finishes):
        data = self.world.hosts[job.src].get(job.vm)
        self.world.hosts[job.dst][job.vm] = dict(_running(data or self.world.hosts[job.dst][job.vm]), persistent=True,
                                                 incoming=False)
        if data is not None:
            if libvirt_finishes:
                del self.world.hosts[job.src][job.vm]
            else:  # the call had failed: QEMU completed, libvirt left the source's definition (shut off)
                self.world.hosts[job.src][job.vm] = dict(data, state="shutoff", active=False, persistent=True,
                                                         postcopy=None, job=False)
        job.state = "done"
        with contextlib.suppress(ValueError):
            self.jobs.remove(job)

    def complete(self, job, libvirt_finishes=True):
        with self.lock:
            self._complete(job, libvirt_finishes)

    def _fail(self, job, error):
        src = self.world.hosts[job.src].get(job.vm)
        if job.phase == "precopy":
            if src is not None:
                src.update(state="running", job=False)
            self._drop_incoming(job)
        else:  # post-copy failed: the destination holds the guest, the source copy is stale
            dst = self.world.hosts[job.dst].get(job.vm)
            if src is not None:
                src.update(state="paused", postcopy="source", job=False)
            if dst is not None:
                dst.update(state="running", postcopy="destination", job=False)
        job.state, job.error = "failed", error
        with contextlib.suppress(ValueError):
            self.jobs.remove(job)

    def fail(self, job, error):
        with self.lock:
            if job.state == "active":
                self._fail(job, error)

    def abort(self, host, name):
        """virDomainAbortJob on the source: cancels a pre-copy; refused in post-copy or without a job."""
        with self.lock:
            job = next((j for j in self.jobs if j.vm == name and j.src == host and j.state == "active"), None)
            if job is None:
                raise HvfleetError("Requested operation is not valid: no job is active on the domain")
            if job.phase == "postcopy":
                raise HvfleetError("Requested operation is not valid: cannot abort migration in post-copy mode")
            self.world.hosts[job.src][name].update(state="running", job=False)
            self._drop_incoming(job)
            job.state, job.error = "aborted", "operation aborted: migration out job: canceled by client"
            self.jobs.remove(job)

    def abort_quietly(self, job):
        """The engine's own abortJob on its job (pre-copy): the VM stays on the source."""
        with self.lock:
            if job.state == "active" and job.phase == "precopy":
                self.world.hosts[job.src][job.vm].update(state="running", job=False)
                self._drop_incoming(job)
                job.state, job.error = "aborted", "operation aborted: migration out job: canceled by client"
                self.jobs.remove(job)

    def adopt(self, name, src, dst):
        """A job for a post-copy resume call (phase post-copy from the start)."""
        with self.lock:
            job = Job(name, src, dst, phase="postcopy")
            for host, flag in ((src, "source_active"), (dst, "destination_active")):
                data = self.world.hosts[host].get(name)
                if data is not None:
                    data.update(postcopy=flag, job=True)
            self.jobs.append(job)
            return job

    def resume_postcopy(self, name, src, dst):
        """A post-copy resume that completes: the destination runs the VM; libvirt did not finish the
        original call, so the source keeps its definition, shut off."""
        with self.lock:
            s, d = self.world.hosts[src].get(name), self.world.hosts[dst].get(name)
            if d is not None and (d.get("postcopy") or (s is not None and s.get("postcopy"))):
                self.world.hosts[dst][name] = dict(_running(d), persistent=True)
                if s is not None:
                    self.world.hosts[src][name] = dict(s, state="shutoff", active=False, persistent=True,
                                                       postcopy=None, job=False)

    def orphan(self, job, lasting, finish, libvirt_finishes=True):
        with self.lock:
            if job.state == "active" and not job.orphan:
                job.orphan, job.ends_at, job.finish, job.libvirt_finishes = True, self.now + lasting, finish, \
                    libvirt_finishes
                self.log.append(f"t={self.now:g}: the migration of {job.vm} to {job.dst} ({job.phase}) goes on in "
                                f"libvirtd without its caller")

    def drop_stale_source(self, name, src, dst):
        """The engine's _drop_stale_source: undefine the source's shut-off leftover once the destination runs it."""
        with self.lock:
            s, d = self.world.hosts[src].get(name), self.world.hosts[dst].get(name)
            if (s is not None and not s["active"] and d is not None and d["active"] and d["persistent"]
                    and not d.get("postcopy")):
                del self.world.hosts[src][name]
                return True
            return False


def _state(data):
    return {"running": reconcile.RUNNING, "paused": reconcile.PAUSED, "shutoff": reconcile.SHUTOFF}[data["state"]]


def _reason(data):
    if data.get("incoming"):
        return reconcile.PAUSED_MIGRATION
    return {"source_active": reconcile.PAUSED_POSTCOPY, "source": reconcile.PAUSED_POSTCOPY_FAILED,
            "destination_active": reconcile.RUNNING_POSTCOPY,
            "destination": reconcile.RUNNING_POSTCOPY_FAILED}.get(data.get("postcopy"), 1)


class Run:  # pylint: disable=too-many-instance-attributes
    """One drain or restore run - one process: its faults, its cancel, its death."""

    def __init__(self, faults, action="", vms=()):
        self.faults = list(faults)
        self.action = action
        self.vms = sorted(vms)  # Fault.who = i names the migration thread of the i-th of these
        self.counts = {}
        self.used = set()
        self.fired = []
        self.dead = False
        self.hung = False
        self.kill_fault = None
        self.cancel_returned = False
        self.violations = []  # (what, text) seen by the backend: a lost cancel, a dying thread
        self.lock = threading.Lock()
        self.main = threading.current_thread()
        self.in_drain = False
        self.in_backend = 0
        self.drainer = None
        self._signalled = False

    def _who(self, fault):
        if fault.who == "main" or not self.vms:
            return "main"
        return self.vms[int(fault.who) % len(self.vms)]

    def thread_key(self):
        """"main", or the VM whose migration thread this is (the drain names them after the VM)."""
        thread = threading.current_thread()
        if thread is self.main:
            return "main"
        words = thread.name.split()
        return next((vm for vm in self.vms if vm in words), thread.name)

    def take(self, method):
        key = self.thread_key()
        with self.lock:
            n = self.counts.get((method, key), 0)
            self.counts[(method, key)] = n + 1
            total = self.counts.get(("*", key), 0)
            self.counts[("*", key)] = total + 1
            for index, fault in enumerate(self.faults):
                if index in self.used or self._who(fault) != key:
                    continue
                if (fault.at == method and fault.n == n) or (fault.at == "*" and fault.n == total):
                    self.used.add(index)
                    self.fired.append(f"{fault.kind}/{fault.when} at {method}#{n} of {key}")
                    return fault
        return None

    def alive(self):
        if self.dead:
            raise DrainHung() if self.hung else ProcessKilled()

    def kill(self, fault=None):
        """The process dies now: every later backend call of the run raises ProcessKilled."""
        with self.lock:
            if self.dead:
                return
            self.dead = True
            self.kill_fault = fault
        if threading.current_thread() is not self.main:
            self.interrupt_main()

    def hang(self):
        """The harness gives up on a run that does not return: stop it as if killed."""
        with self.lock:
            self.hung = True
            self.dead = True
        self.interrupt_main()

    def interrupt_main(self):
        """Make the run's main thread (waiting for its workers, say) die now, as the process would."""
        with self.lock:
            if self._signalled or not self.in_drain:
                return
            self._signalled = True
        with contextlib.suppress(Exception):
            signal.pthread_kill(self.main.ident, signal.SIGUSR1)

    def on_signal(self):
        """The SIGUSR1 handler's part (runs in the main thread): raise there unless inside the backend,
        whose own check raises on the way out."""
        if self.in_drain and self.dead and not self.in_backend:
            raise DrainHung() if self.hung else ProcessKilled()

    def cancel_now(self):
        """drainer.cancel() from another thread (as the module's signal handler does); waits for it."""
        thread = threading.Thread(target=self.drainer.cancel, name="cancel", daemon=True)
        thread.start()
        thread.join(5)
        if thread.is_alive():
            self.violations.append(("cancel", "drainer.cancel() did not return within 5 s"))
        self.cancel_returned = True


class FaultBackend:
    """drain_fakes.FakeBackend with faults; see the module docstring."""

    def __init__(self, inner, lab, run):
        self._inner = inner
        self.lab = lab
        self.run = run

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def call(*args, **kwargs):
            return self._call(name, lambda _fault: attr(*args, **kwargs), args)

        return call

    # ---- the fault machinery --------------------------------------------------------------

    def _call(self, method, fn, args=(), aware=False):
        """Every backend call: the run must be alive, time passes, a scheduled fault fires."""
        run = self.run
        main = threading.current_thread() is run.main
        if main:
            run.in_backend += 1
        try:
            run.alive()
            fault = run.take(method)
            if main:  # time passes with the run's own calls (not with its threads': their order varies)
                self.lab.advance(TICK_S)
            if fault is not None:
                fault = self._before(method, fault, aware)
            during = fault if aware and fault is not None and fault.when == "during" else None
            for conn in args:
                if hasattr(conn, "fault_epoch") and not self.lab.conn_ok(conn):
                    raise HvfleetError(f"{method}: {SOCKET_CLOSED}", "reconnect to the host's libvirt daemon.")
            out = fn(during)
            run.alive()  # died meanwhile: the answer is never seen
            if fault is not None and fault.when == "after":
                self._after(method, fault)
            return out
        finally:
            if main:
                run.in_backend -= 1
                if run.dead and not run.in_backend:
                    raise DrainHung() if run.hung else ProcessKilled()

    def _before(self, method, fault, aware):
        """Faults before the call takes effect; returns the fault when the call itself (`aware`, "during")
        or `_after` must act on it."""
        kind, when = fault.kind, fault.when
        in_migration = method == "migrate" and when == "during"
        if method == "observe" and kind in ("error", "hang"):
            return dataclasses.replace(fault, when="during")  # observe never raises: an unreachable side
        if when == "after":
            return fault
        if kind == "cancel":
            if in_migration:
                return fault
            self.run.cancel_now()
            return None
        if kind in ("restart", "link_cut"):
            if in_migration:
                return fault
            self._disturb(fault, fault.host)
            return None
        if aware and when == "during":
            return fault
        if kind == "kill":
            self.run.kill(fault)
            raise ProcessKilled()
        if kind == "hang":
            self.lab.advance(CALL_HANG_S)
            raise HvfleetError(f"{method}: no answer from libvirt within {CALL_HANG_S:g} s",
                               "check the libvirt daemon.")
        raise HvfleetError(f"{method}: {SOCKET_CLOSED}", "check the libvirt daemon.")

    def _after(self, method, fault):
        """Faults once the call took effect: its caller never learns that it did."""
        if fault.kind == "kill":
            self.run.kill(fault)
            raise ProcessKilled()
        if fault.kind == "hang":
            self.lab.advance(CALL_HANG_S)
            raise HvfleetError(f"{method}: no answer from libvirt within {CALL_HANG_S:g} s",
                               "check the libvirt daemon.")
        if fault.kind == "error":
            raise HvfleetError(f"{method}: Cannot recv data: Connection reset by peer", "check the libvirt daemon.")
        if fault.kind == "cancel":
            self.run.cancel_now()
        elif fault.kind in ("restart", "link_cut"):
            self._disturb(fault, fault.host)

    def _disturb(self, fault, host):
        if fault.kind == "restart":
            self.lab.restart(host, fault.lasting)
        else:
            self.lab.cut_link(host, fault.lasting, fault.finish)

    # ---- connections, facts -----------------------------------------------------------------

    def connect(self, uri):
        host = uri.split("://", 1)[1]

        def do(_fault):
            if not self.lab.up(host):
                raise HvfleetError(f"Cannot connect to {uri}: Failed to connect socket: Connection refused",
                                   "check that libvirtd runs there.")
            conn = self._inner.connect(uri)
            conn.fault_epoch = self.lab.epoch.get(host, 0)
            return conn

        return self._call("connect", do)

    def close(self, conn):
        return self._call("close", lambda _fault: self._inner.close(conn))

    def list_vms(self, conn, host, measure=True):
        def do(_fault):
            found = self._inner.list_vms(conn, host, measure)
            return [dataclasses.replace(v, postcopy=True)
                    if isinstance(v.facts, dict) and v.facts.get("postcopy") == "source_active" else v for v in found]

        return self._call("list_vms", do, (conn,))

    def observe(self, conn, name, uri):
        """Never raises (as reconcile.observe): a fault or a dead connection is an unreachable side."""

        def do(fault):
            if fault is not None:
                if fault.kind == "hang":
                    self.lab.advance(CALL_HANG_S)
                    return reconcile.SideView(uri=uri, reachable=False, error="no answer", no_answer=True)
                if fault.kind in ("restart", "link_cut"):
                    self._disturb(fault, fault.host)
                elif fault.kind == "kill":
                    self.run.kill(fault)
                    raise ProcessKilled()
                else:
                    return reconcile.SideView(uri=uri, reachable=False, error=SOCKET_CLOSED)
            if not self.lab.conn_ok(conn):
                return reconcile.SideView(uri=uri, reachable=False, error=SOCKET_CLOSED)
            view = self._inner.observe(conn, name, uri)
            if view.present:
                with self.lab.lock:
                    data = self.lab.world.hosts[conn.host].get(name)
                if data is not None and (data.get("postcopy") or data.get("incoming")):  # states the plain fake lacks
                    view = dataclasses.replace(view, reason=_reason(data), job_active=bool(data.get("job")))
            return view

        return self._call("observe", do, aware=True)

    # ---- actions ----------------------------------------------------------------------------

    def abort_job(self, conn, name):
        return self._call("abort_job", lambda _fault: self.lab.abort(conn.host, name), (conn,))

    def move_definition(self, src_conn, dst_conn, name):
        """Define on the destination, then undefine on the source (Backend.move_definition). A fault
        "during": the undefine is refused (snapshots) and the new definition is rolled back - or the
        process dies between the two, leaving it defined on both."""
        world = self.lab.world

        def do(fault):
            src, dst = src_conn.host, dst_conn.host
            with self.lab.lock:
                data = world.hosts[src].get(name)
                if data is None:
                    raise HvfleetError(f"'{name}' is no longer defined on the source: Domain not found",
                                       "run again; the drain looks at the host afresh.")
                if data["active"]:
                    raise HvfleetError(f"'{name}' was started meanwhile; its definition was not moved.",
                                       "run the drain again: it is now migrated live.")
                existing = world.hosts[dst].get(name)
                if existing is not None and existing["active"]:
                    raise HvfleetError(f"'{name}' runs on the destination while its definition is still on the "
                                       "source.", "inspect both hosts; undefine the stale copy by hand.")
                if existing is None:
                    world.hosts[dst][name] = dict(data, job=False, postcopy=None)
            if fault is not None and fault.kind == "kill":
                self.run.kill(fault)
                raise ProcessKilled()
            if fault is not None and fault.kind in ("error", "hang"):
                with self.lab.lock:
                    if existing is None:
                        world.hosts[dst].pop(name, None)
                raise HvfleetError(f"Moving the definition of '{name}' failed: Requested operation is not valid: "
                                   "cannot undefine domain with 1 snapshots",
                                   "remove the snapshots (or move them by hand), then run again.")
            with self.lab.lock:
                world.hosts[src].pop(name, None)

        return self._call("move_definition", do, (src_conn, dst_conn), aware=True)

    def migrate(self, src_conn, dst_conn, name, dest_uri, spec, source_uri, control):  # pylint: disable=R0913
        def do(fault):
            return _EngineRun(self, src_conn.host, dst_conn.host, name, dest_uri, spec, source_uri, control,
                              fault).run()

        return self._call("migrate", do, aware=True)


class _EngineRun:  # pylint: disable=too-many-instance-attributes
    """One call of the engine (engine/migration.py run()) modelled over the fake world.

    Its contract as the drain sees it: a preflight that looks at both hosts (an interrupted post-copy
    is resumed, a VM already on the destination is `already_there` - its shut-off leftover on the
    source removed, engine/leftover.py), then a job that runs pre-copy and, for post-copy specs,
    switches to post-copy; MigrationControl (engine/control.py) is read at every poll: an abort asked
    for before the job exists means it never starts, during pre-copy it aborts the job (the VM stays),
    and a post-copy switch is only begun when no abort was asked for. Whatever fails, the result says
    where the VM is (stayed / postcopy_recovered / postcopy_paused with the resume command / in_flight).
    """

    def __init__(self, backend, src, dst, name, dest_uri, spec, source_uri, control, fault):
        self.b, self.lab, self.run_ = backend, backend.lab, backend.run
        self.src, self.dst, self.name = src, dst, name
        self.dest_uri, self.source_uri, self.spec = dest_uri, source_uri, spec
        self.control, self.fault = control, fault
        self.job = None
        self.res = MigrationResult(name=name, source=source_uri, destination=dest_uri, mode_used="none")
        self.res.deadline_s = spec.deadline_s(512 * 1024 * 1024)

    def step(self, action, reason, error=None):
        self.res.steps.append(Step(round(self.lab.now, 3), action, reason, error))

    def publish(self, phase):
        with contextlib.suppress(Exception):
            self.control.publish(JobSample(t=0.01, phase=phase, memory_total=2, memory_processed=1,
                                           memory_remaining=1, iteration=1, bandwidth_bps=1.0))

    def abort_requested(self):
        return bool(getattr(self.control, "aborted", False))

    # ---- preflight --------------------------------------------------------------------------

    def views(self):
        return self.lab.view(self.src, self.name, self.source_uri), self.lab.view(self.dst, self.name, self.dest_uri)

    def preflight(self):
        """'migrate', 'already_there' or 'resume_postcopy'; raises what the engine raises otherwise."""
        src, dst = self.views()
        where = f"source {self.source_uri}: {src.label()}; destination {self.dest_uri}: {dst.label()}"
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
            raise UnsafeState(f"Domain '{self.name}' is running on both {self.source_uri} and {self.dest_uri}; "
                              "refusing to act.", "find out which copy is current, stop the other one, run again.")
        if (dst.running and not src.running) or (dst.paused and src.gone):
            if src.job_active or dst.job_active:
                raise UnsafeState(f"A migration of '{self.name}' is still finishing ({where}).",
                                  "wait for it, then run again.")
            return "already_there"
        if src.paused and dst.paused:
            raise UnsafeState(f"Domain '{self.name}' is paused on both hosts ({where}); refusing to act.",
                              "find out which copy is current, destroy the other, run again.")
        if not src.present:
            raise DomainNotFound(self.name, self.source_uri)
        if src.job_active:
            raise UnsafeState(f"Domain '{self.name}' already has a job running on {self.source_uri} (another "
                              "migration?).", "wait for it to finish, or abort it, then run again.")
        if not (src.running or src.paused):
            raise InvalidSpec(f"Domain '{self.name}' is {src.label()} on {self.source_uri}; live migration needs a "
                              "running (or paused) domain.", "start the domain first.")
        if not dst.reachable:
            raise UnsafeState(f"Cannot read domains on the destination {self.dest_uri}: {dst.error}",
                              "check the destination libvirt daemon.")
        return "migrate"

    # ---- the run ----------------------------------------------------------------------------

    def run(self):
        what = self.preflight()
        if what == "already_there":
            self.drop_leftover()
            return self.finish(ALREADY_THERE, False, f"'{self.name}' already runs on {self.dest_uri}; nothing done.")
        if what == "resume_postcopy":
            with contextlib.suppress(Exception):
                self.control.mark_postcopy()
            self.res.mode_used = "postcopy"
            self.step("postcopy_resume", "found an interrupted post-copy from an earlier run; resuming it")
            return self.recover(resumed=True)
        if self.abort_requested():
            self.step("abort", "an abort was asked for before the migration started; not started")
            src = self.lab.view(self.src, self.name, self.source_uri)
            return self.fail(STAYED, False, f"'{self.name}' did not move and is still on {self.source_uri} "
                             f"({src.label()}): interrupted before the migration started", None)
        if self.run_.cancel_returned:
            self.run_.violations.append(("lost_cancel", f"the migration of {self.name} to {self.dst} started "
                                                        "although drainer.cancel() had returned"))
        self.job = self.lab.start(self.name, self.src, self.dst)
        self.res.mode_used = "precopy"
        self.step("start", f"migrateToURI3 to {self.dest_uri}")
        fault = self.fault
        postcopy = self.spec.mode == "postcopy" or (self.spec.mode == "postcopy_after_precopy" and fault is not None
                                                    and fault.postcopy)
        for phase in ("precopy", "postcopy") if postcopy else ("precopy",):
            if phase == "postcopy" and not self.switch():
                break
            self.publish(phase)
            self.progress()
            if fault is not None and (phase == "postcopy") == (fault.postcopy and postcopy):
                self.inject(fault)
                self.progress()
            if self.job.state != "active" or self.job.orphan:
                break
        if self.job.state == "active" and not self.job.orphan:
            self.lab.complete(self.job)
        return self.outcome()

    def switch(self):
        """The switch to post-copy, as control.py orders it against an abort."""
        begin = getattr(self.control, "begin_postcopy_switch", None)
        if begin is not None and not begin():
            self.lab.abort_quietly(self.job)
            self.step("abort", "an abort was asked for before the switch to post-copy (the VM stays on the source)")
            return False
        switched = self.lab.switch_postcopy(self.job)
        with contextlib.suppress(Exception):
            self.control.end_postcopy_switch(switched)
        if switched:
            self.res.mode_used = "postcopy"
            self.step("postcopy", "switched to post-copy")
        return switched

    def progress(self):
        """A few ms of migration, watching the control; the process may die meanwhile (the job goes on
        in libvirtd without it)."""
        for _attempt in range(3):
            if self.run_.dead:
                kf = self.run_.kill_fault
                self.lab.orphan(self.job, kf.lasting if kf else 2.0, kf.finish if kf else True)
                raise ProcessKilled()
            if self.job.state != "active" or self.job.orphan:
                return
            if self.job.phase == "precopy" and self.abort_requested():
                self.lab.abort_quietly(self.job)
                return
            time.sleep(0.001)

    def inject(self, fault):
        job, lab = self.job, self.lab
        if fault.kind == "kill":
            lab.orphan(job, fault.lasting, fault.finish)
            self.run_.kill(fault)
            raise ProcessKilled()
        if fault.kind == "cancel":
            self.run_.cancel_now()
        elif fault.kind == "restart":
            lab.restart(self.dst, fault.lasting)
        elif fault.kind == "link_cut":
            lab.cut_link(self.dst, fault.lasting, fault.finish)
        elif fault.kind == "error":
            if job.phase == "precopy":
                lab.fail(job, JOB_FAILED)
            else:  # the call raised, QEMU goes on streaming and completes; the engine reconciles
                self.res.error = SOCKET_CLOSED
                self.step("call_failed", "the migration call raised; looking at both hosts", SOCKET_CLOSED)
                lab.complete(job, libvirt_finishes=False)
                self.drop_leftover()
        elif fault.kind == "hang":
            if job.phase == "precopy":
                lab.advance(self.res.deadline_s)  # the engine's completion deadline passes
                if fault.finish:  # libvirtd does not take the abort: the job goes on past the engine
                    lab.orphan(job, fault.lasting, True)
                    self.step("abort", "completion deadline reached; aborting", "no answer: the job is still running")
                else:
                    lab.abort_quietly(job)
                    self.step("abort", "completion deadline reached; aborted (the VM stays on the source)")
            else:  # a post-copy that stalls: the engine waits out its recovery deadline, libvirtd carries on
                lab.advance(self.spec.postcopy_recovery_timeout_s)
                lab.orphan(job, fault.lasting, fault.finish)

    def outcome(self):
        job = self.job
        if job.state == "done":
            return self.finish(POSTCOPY_RECOVERED if self.res.error else MOVED, True,
                               f"'{self.name}' moved to {self.dest_uri} ({self.res.mode_used}).")
        src, dst = self.views()
        if job.orphan and job.state == "active":
            self.res.source_state, self.res.destination_state = src.to_dict(), dst.to_dict()
            if job.phase == "postcopy":
                return self.fail(POSTCOPY_PAUSED, True, f"'{self.name}' is stuck in a post-copy that did not complete "
                                 f"within {self.spec.postcopy_recovery_timeout_s:g} s: post-copy in progress (source "
                                 f"{self.source_uri}: {src.label()}; destination {self.dest_uri}: {dst.label()})",
                                 self.postcopy_recovery_text(src, dst))
            return self.fail(reconcile.IN_FLIGHT, True, f"'{self.name}': migration job still active on the source "
                             f"(source {self.source_uri}: {src.label()}; destination {self.dest_uri}: {dst.label()})",
                             f"'{self.name}' is on source {self.source_uri}: {src.label()}; destination "
                             f"{self.dest_uri}: {dst.label()}. Nothing more was changed; inspect both hosts before "
                             "acting.")
        if job.phase == "postcopy":  # failed post-copy (link cut): the engine's recovery
            self.res.error = job.error
            self.step("call_failed", "the migration call raised; looking at both hosts", job.error)
            return self.recover(resumed=False)
        if job.state == "failed" or not any(s.action == "abort" for s in self.res.steps):
            self.res.error = job.error  # libvirt failed it, or it was aborted through the control
            self.step("call_failed", "the migration call raised; looking at both hosts", job.error)
        cause = f"libvirt: {self.res.error}" if self.res.error else "completion deadline reached"
        return self.fail(STAYED, False, f"'{self.name}' did not move and is still on {self.source_uri} "
                         f"({src.label()}): {cause}", None)

    def recover(self, resumed):
        """An interrupted post-copy: resume it once the link is back, within the recovery deadline."""
        lab, fault = self.lab, self.fault
        if resumed and fault is not None:
            if fault.kind == "kill":  # the resume call goes on in libvirtd
                lab.orphan(lab.adopt(self.name, self.src, self.dst), fault.lasting, fault.finish,
                           libvirt_finishes=False)
                self.run_.kill(fault)
                raise ProcessKilled()
            if fault.kind == "cancel":
                self.run_.cancel_now()  # not applied: post-copy
            elif fault.kind in ("restart", "link_cut"):
                self.b._disturb(fault, self.dst)  # pylint: disable=protected-access
        deadline = self.spec.postcopy_recovery_timeout_s
        stalled = resumed and fault is not None and fault.kind in ("hang", "error")
        with lab.lock:
            back_in = max(lab.link_until.get(h, float("-inf")) for h in (self.src, self.dst)) - lab.now
        if not stalled and back_in <= deadline:
            lab.advance(max(0.0, back_in))
            lab.resume_postcopy(self.name, self.src, self.dst)
            self.drop_leftover()
            self.step("postcopy_resume", "resume call returned")
            return self.finish(POSTCOPY_RECOVERED, True, f"'{self.name}' moved to {self.dest_uri} (post-copy, "
                               "recovered after an interruption).")
        lab.advance(deadline)
        src, dst = self.views()
        if dst.running and not dst.postcopy and not src.running and not src.postcopy:  # completed by itself meanwhile
            self.drop_leftover()
            return self.finish(POSTCOPY_RECOVERED, True, f"'{self.name}' moved to {self.dest_uri} (post-copy, "
                               "recovered after an interruption).")
        self.res.source_state, self.res.destination_state = src.to_dict(), dst.to_dict()
        self.step("postcopy_resume", f"refused: {SOCKET_CLOSED}")
        return self.fail(POSTCOPY_PAUSED, True, f"'{self.name}' is stuck in an interrupted post-copy and could not be "
                         f"resumed within {deadline:g} s: post-copy interrupted (source {self.source_uri}: "
                         f"{src.label()}; destination {self.dest_uri}: {dst.label()})",
                         self.postcopy_recovery_text(src, dst))

    def drop_leftover(self):
        """engine/leftover.py: the shut-off definition libvirt left on the source goes once the
        destination holds the VM with a persistent definition of its own."""
        if self.lab.drop_stale_source(self.name, self.src, self.dst):
            self.step("undefine_source", "the source kept its definition while the VM runs on the destination")

    def postcopy_recovery_text(self, src, dst):
        return (f"The current state of '{self.name}' is on the destination {self.dest_uri} ({dst.label()}); the copy "
                f"on the source {self.source_uri} ({src.label()}) is stale and must NOT be resumed, started or "
                "destroyed. Once the migration network works again, run this task again (it resumes the post-copy), "
                f"or on the source host: virsh -c {self.source_uri} migrate --live --p2p --postcopy --postcopy-resume "
                f"{self.name} {self.dest_uri}")

    def finish(self, outcome, changed, message):
        self.res.outcome, self.res.changed, self.res.message = outcome, changed, message
        return self.res

    def fail(self, outcome, changed, message, recovery):
        self.res.outcome, self.res.changed, self.res.message, self.res.recovery = outcome, changed, message, recovery
        raise MigrationFailed(self.res)

# ---- one run as one process -----------------------------------------------------------------


def execute(run, call, timeout_s=10.0):
    """Run `call()` (drainer.drain / restore) as the run's process, in the main thread; returns
    (kind, value, error) with kind result / killed / hung / error (HvfleetError) / crash (anything else).

    A kill from a worker thread reaches the main thread as SIGUSR1 (its handler raises ProcessKilled
    there, wherever the drain waits); a worker thread dying of an exception or a run that does not return
    within `timeout_s` is stopped the same way and reported "hung". Afterwards every thread the run
    started has ended (any of them still calling the backend dies there)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("fault_backend.execute runs in the main thread (it stops a run with a signal)")
    run.main = threading.current_thread()
    before = set(threading.enumerate())
    old_handler = signal.signal(signal.SIGUSR1, lambda _signum, _frame: run.on_signal())
    old_hook = threading.excepthook

    def hook(args):
        if issubclass(args.exc_type, ProcessKilled):
            return  # a thread of a killed run just stops
        run.violations.append(("thread", f"thread '{args.thread.name if args.thread else '?'}' died: "
                                         f"{args.exc_type.__name__}: {args.exc_value}"))
        timer = threading.Timer(0.3, run.hang)  # its result will never come: do not wait timeout_s for it
        timer.daemon = True
        timer.start()

    threading.excepthook = hook
    watchdog = threading.Timer(timeout_s, run.hang)
    watchdog.daemon = True
    kind, value, error = "result", None, None
    try:
        watchdog.start()
        try:
            try:
                run.in_drain = True
                value = call()
            finally:
                run.in_drain = False
        except DrainHung:
            kind = "hung"
        except ProcessKilled:
            kind = "killed"
        except HvfleetError as exc:
            kind, error = "error", f"{type(exc).__name__}: {exc}"
        except Exception:  # pylint: disable=broad-except
            kind, error = "crash", traceback.format_exc()
        watchdog.cancel()
        run.dead = True  # whatever is left of this run dies at its next backend call
        for thread in set(threading.enumerate()) - before:
            _join(thread, 5.0)
            if thread.is_alive() and thread is not watchdog:
                run.violations.append(("thread", f"thread '{thread.name}' of the run still alive 5 s after it"))
    finally:
        signal.signal(signal.SIGUSR1, old_handler)
        threading.excepthook = old_hook
    return kind, value, error


def _join(thread, timeout_s):
    """Join, also a thread whose start() the kill interrupted (it still runs, and dies at its first call)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            thread.join(max(0.0, deadline - time.monotonic()))
            return
        except RuntimeError:  # "cannot join thread before it is started"
            if time.monotonic() >= deadline:
                return
            time.sleep(0.001)


def release_dead_locks(state_dir):
    """The kernel drops a dead process's flock: close any descriptor of the drain lock a killed run left."""
    if DrainLock(state_dir).is_locked_elsewhere() is None:
        return
    path = os.path.realpath(os.path.join(os.fspath(state_dir), LOCK_NAME))
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.path.realpath(f"/proc/self/fd/{fd}") == path:
                os.close(int(fd))
