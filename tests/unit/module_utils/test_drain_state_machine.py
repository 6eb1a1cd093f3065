"""Every VM in exactly one place on every path: a stateful property-based test of the drain.

A hypothesis RuleBasedStateMachine drives random sequences of drains (a drain after an interrupted run
is a resume), restores and the passing of time over the fake fleet of drain_fakes (hv1 drained onto
hv2 and hv3; VMs that pre-copy, post-copy, or are shut off), each run with up to three faults injected
at backend calls by fault_backend.FaultBackend: an error (before, during or after the call took
effect), a call that hangs past its deadline, the process killed (the next run starts from the journal;
libvirtd carries on the migrations it was running), a migration link cut, a destination daemon
restart, and drainer.cancel() from another thread. Each run is a new Drainer over the same state
directory and fleet, as a new process would be.

After every step it checks the product's promises:

P1  every VM is defined on exactly one host, or the last result names it as recoverable (a failed VM
    row, a blocker or a `recoverable` entry) and names every host it is on (after a killed run: the
    journal entry it left);
P2  no VM runs on two hosts;
P3  after a resume (a run following a killed or cancelled one) the journal agrees with reality: moved
    -> only on its destination; home/planned/stayed/blocked -> only on the source; paused_postcopy ->
    the destination holds it; migrating/returning -> on its origin and/or that destination, nowhere else;
P4  what a restore calls home (its ok rows, `home` journal entries) is only on hv1, `restored` means
    every VM is back, and hv1 is uncordoned only while every VM is home;
P5  a cancel is honoured: once drainer.cancel() returned, no migration starts in that run;
P6  a run returns (no hang, no worker thread dying) and raises nothing but HvfleetError - and no error
    that declares itself a bug (the journal refusing a transition).

test_known_defect_paths_keep_the_promises plays fixed step sequences through the same machine: the
paths of the repros in shared/repros/drain-core (r1, r3, r9, the lost cancel) and of the violations this
test found, so each stays a deterministic regression test.

Run: .venv/bin/pytest -q tests/unit/module_utils/test_drain_state_machine.py (about 70 s when every
promise holds). A failure prints the step sequence with a note per run (faults that fired, outcome,
where every VM is, journal states) and a @reproduce_failure blob; hypothesis keeps failing examples in
.hypothesis/drain-state-machine (ignored by git) and replays them first next time. Environment:
HVFLEET_DRAIN_SM_EXAMPLES (default 1200), HVFLEET_DRAIN_SM_STEPS (steps per example, default 10),
HVFLEET_DRAIN_SM_SHRINK_S (how long a failure may be shrunk, default 60 s); pytest's
--hypothesis-seed=N makes a run repeatable.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import shutil
import tempfile

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import JOURNAL_NAME
from drain_fakes import DrainConfig, Drainer, FakeBackend, World, hosts, vm
from fault_backend import KINDS, Fault, FaultBackend, Lab, Run, execute, release_dead_locks
from hypothesis import HealthCheck, Phase, settings
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import InvalidArgument
from hypothesis.internal.conjecture import engine as hypothesis_engine
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

SOURCE = "hv1"
HOSTS = ("hv1", "hv2", "hv3")
POLICIES = [{"name": "postcopy-vms", "selector": {"labels": {"migrate": "postcopy"}},
             "settings": {"mode": "postcopy"}}]
VM_KINDS = {"pre": {}, "post": {"labels": {"migrate": "postcopy"}}, "off": {"active": False}}
EXAMPLES = int(os.environ.get("HVFLEET_DRAIN_SM_EXAMPLES", "1200"))
STEPS = int(os.environ.get("HVFLEET_DRAIN_SM_STEPS", "10"))
SHRINK_S = int(os.environ.get("HVFLEET_DRAIN_SM_SHRINK_S", "60"))  # time hypothesis may spend shrinking a failure
RUN_TIMEOUT_S = 10.0  # a run takes milliseconds; one still going after this is hung
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DATABASE = os.path.join(ROOT, ".hypothesis", "drain-state-machine")  # .hypothesis/ is in .gitignore

# journal VM states (their values in drain-journal.json)
MIGRATING, RETURNING, MOVED, HOME, FAILED = "migrating", "returning", "moved", "home", "failed"
PAUSED_POSTCOPY, RETURN_PAUSED_POSTCOPY = "paused_postcopy", "return_paused_postcopy"
ON_THE_SOURCE = ("home", "planned", "stayed", "blocked")

# Where faults fire: every backend method, or the n-th call of any ("*").
METHODS = ("*", "connect", "observe", "list_vms", "capacity", "prechecks", "move_definition", "set_cordon",
           "read_cordon", "abort_job", "drop_leftover_definition", "pause", "close")
LASTING = st.sampled_from((2.0, 45.0, 900.0))  # < orphan wait; between it and the post-copy recovery deadline; past it


@st.composite
def a_migration_fault(draw):
    """A fault while a migration runs - in pre-copy or once it switched to post-copy - or right after it."""
    return Fault(at="migrate", n=draw(st.integers(0, 1)), who=draw(st.integers(0, 3)),
                 kind=draw(st.sampled_from(("kill", "link_cut", "hang", "error", "cancel", "restart"))),
                 when=draw(st.sampled_from(("during", "during", "during", "after", "before"))),
                 postcopy=draw(st.booleans()), host="hv2", lasting=draw(LASTING), finish=draw(st.booleans()))


SMALL_N = st.one_of(st.integers(0, 3), st.integers(0, 30))  # mostly early calls, sometimes late ones


@st.composite
def a_call_fault(draw):
    """A fault at any other backend call (the n-th of a method, or of all calls)."""
    at = draw(st.sampled_from(METHODS))
    who = draw(st.sampled_from(("main", "main", 0, 1, 2, 3)))
    return Fault(at=at, n=draw(SMALL_N if at == "*" else st.integers(0, 3)), who=who,
                 kind=draw(st.sampled_from(KINDS)), when=draw(st.sampled_from(("before", "during", "after"))),
                 host=draw(st.sampled_from(("hv2", "hv3"))), lasting=draw(LASTING), finish=draw(st.booleans()))


@st.composite
def a_kill_or_cancel(draw):
    """The process killed, or drainer.cancel() called from another thread, at a random point of the run."""
    return Fault(at="*", n=draw(SMALL_N), who=draw(st.sampled_from(("main", "main", "main", 0, 1))),
                 kind=draw(st.sampled_from(("cancel", "kill"))), when=draw(st.sampled_from(("before", "after"))),
                 lasting=draw(LASTING), finish=draw(st.booleans()))


FAULTS = st.lists(st.one_of(a_migration_fault(), a_kill_or_cancel(), a_call_fault()), max_size=3)


def _names(text, host):
    return re.search(rf"\b{re.escape(host)}\b", text or "") is not None


class DrainMachine(RuleBasedStateMachine):  # pylint: disable=too-many-instance-attributes
    """The fake fleet, one drain/restore run per step; the promises checked after every step."""

    def __init__(self):
        super().__init__()
        self.state_dir = tempfile.mkdtemp(prefix="hvfleet-drain-sm-")
        self.world = self.lab = self.inner = None
        self.universe = []
        self.config = {}
        self.last = None  # the last run: action, kind (result/killed/hung/error/crash), result, error, run, resumed
        self.fresh = False  # the step just taken was a run: its own claims are checked now
        self.runs = 0
        self.log = []  # the notes, also kept here for scenario tests run outside hypothesis

    def teardown(self):
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def note(self, text):
        self.log.append(text)
        with contextlib.suppress(InvalidArgument):  # outside hypothesis (the scenario tests): kept in self.log
            hypothesis_note(text)

    # ---- the process model ------------------------------------------------------------------

    def _drainer(self, backend):
        src, dests = hosts()
        config = DrainConfig(policies=POLICIES, progress_interval_s=0.02, **self.config)
        kwargs = {"state_dir": self.state_dir}
        params = inspect.signature(Drainer).parameters
        if "clock" in params and "sleep" in params:
            kwargs.update(clock=self.lab.clock, sleep=self.lab.sleep)
        else:  # no virtual time: keep the orphan wait short in real time
            config.orphan_wait_s = 0.05
        return Drainer(backend, src, dests, config, **kwargs)

    def _run(self, action, faults):
        self.runs += 1
        run = Run(faults, action, self.universe)
        drainer = self._drainer(FaultBackend(self.inner, self.lab, run))
        run.drainer = drainer
        resumed = self.last is not None and (self.last["kind"] != "result"
                                             or self.last["result"].get("state") == "interrupted")
        kind, result, error = execute(run, getattr(drainer, action), RUN_TIMEOUT_S)
        result = result.to_dict() if result is not None else None
        if kind != "result":
            release_dead_locks(self.state_dir)
        self.last = {"action": action, "kind": kind, "result": result, "error": error, "run": run,
                     "resumed": resumed, "n": self.runs}
        self.fresh = True
        state = result.get("state") if result else None
        what = f"{action}{' (resume)' if resumed else ''}"
        self.note(f"run {self.runs}: {what} -> {kind} {state or ''} {error or ''}".strip())
        self.note(f"  faults fired: {run.fired or 'none'}; cancel returned: {run.cancel_returned}")
        if result:
            self.note(f"  result: {result.get('message')}")
        for line in self.lab.log:
            self.note(f"  lab: {line}")
        self.lab.log.clear()
        self.note(f"  world: {self._where_text()}; cordoned: {self.inner.cordoned}")
        self.note(f"  journal: {self._journal_states()}")

    # ---- observation ------------------------------------------------------------------------

    def _snapshot(self):
        with self.world.lock:
            return {h: {n: dict(d) for n, d in vms.items()} for h, vms in self.world.hosts.items()}

    def _defined(self, snap):
        return {name: [h for h in HOSTS if name in snap[h]] for name in self.universe}

    def _where_text(self, snap=None):
        snap = snap or self._snapshot()
        parts = []
        for name in self.universe:
            places = []
            for host in HOSTS:
                data = snap[host].get(name)
                if data is not None:
                    extra = "".join(x for x in (data.get("postcopy") and f"/{data['postcopy']}",
                                                data.get("incoming") and "/incoming", data.get("job") and ", job") if x)
                    places.append(f"{host}({data['state']}{extra})")
            parts.append(f"{name} on {', '.join(places) or 'NOWHERE'}")
        return "; ".join(parts)

    def _journal(self):
        path = os.path.join(self.state_dir, JOURNAL_NAME)
        try:
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def _journal_states(self):
        journal = self._journal()
        if journal is None:
            return "none (archived or never written)"
        return f"{journal.get('state')}: " + ", ".join(
            f"{n}={e.get('state')}->{e.get('destination')}" for n, e in sorted(journal["vms"].items()))

    def _explained(self, name, places, journal):
        """The last record names `name` as not (cleanly) moved and names every host it is on."""
        if not places:
            return False
        last = self.last
        texts = []
        if last is not None and last["kind"] == "result":
            result = last["result"]
            for item in result.get("vms") or []:
                if item.get("vm") == name and not item.get("ok"):
                    texts.append(f"{item.get('message')} {item.get('recovery')}")
            for item in result.get("blockers") or []:
                if item.get("vm") == name:
                    texts.append(f"{item.get('message')} {item.get('fix')}")
            for item in result.get("recoverable") or []:
                if item.get("vm") == name:
                    texts.append(f"{item.get('where')} {item.get('fix')}")
        else:
            entry = (journal or {}).get("vms", {}).get(name)
            if entry is not None and entry.get("state") not in (MOVED, HOME):  # not a claim of one clean place
                res = entry.get("result") or {}
                fields = (entry.get("origin"), entry.get("destination"), entry.get("error"), entry.get("recovery"),
                          res.get("message"), res.get("recovery"))
                texts.append(" ".join(str(x) for x in fields))
            if last is not None and last.get("error"):
                texts.append(last["error"])
        return any(all(_names(text, h) for h in places) for text in texts)

    def _disagreements(self, journal, defined):
        out = []
        for name, entry in sorted(((journal or {}).get("vms") or {}).items()):
            if name not in defined:
                continue
            places, state = defined[name], entry.get("state")
            origin, dest = entry.get("origin") or SOURCE, entry.get("destination")
            wrong = None
            if state == MOVED and places != [dest]:
                wrong = f"only on {dest}"
            elif state in ON_THE_SOURCE and places != [origin]:
                wrong = f"only on {origin}"
            elif state == PAUSED_POSTCOPY and dest not in places:
                wrong = f"held by {dest}"
            elif state == RETURN_PAUSED_POSTCOPY and origin not in places:
                wrong = f"held by {origin}"
            elif state in (MIGRATING, RETURNING) and (not places or set(places) - {origin, dest}):
                wrong = f"on its way between {origin} and {dest}"  # "a migration may be under way" (states.py)
            elif state == FAILED and not places:
                wrong = "somewhere"
            if wrong:
                out.append(f"journal says {name} is {state} (so {wrong}); it is on {', '.join(places) or 'no host'}")
        return out

    # ---- rules ------------------------------------------------------------------------------

    @initialize(kinds=st.lists(st.sampled_from(sorted(VM_KINDS)), min_size=1, max_size=4),
                max_parallel=st.sampled_from((1, 2)), max_failures=st.sampled_from((0, 3)))
    def fleet(self, kinds, max_parallel, max_failures):
        self.world = World(list(HOSTS))
        for index, kind in enumerate(kinds):
            self.world.place(SOURCE, f"{kind}{index}", vm(memory=256, **VM_KINDS[kind]))
        self.universe = sorted(self.world.hosts[SOURCE])
        self.inner = FakeBackend(self.world)
        self.lab = Lab(self.world)
        self.config = {"max_parallel": max_parallel, "max_outbound": max_parallel, "max_failures": max_failures}
        self.note(f"fleet: {self._where_text()}; config {self.config}")

    @rule(faults=FAULTS)
    def drain(self, faults):
        self._run("drain", faults)

    @rule(faults=FAULTS)
    def restore(self, faults):
        self._run("restore", faults)

    @rule(seconds=st.sampled_from((1.0, 40.0, 1000.0)))
    def time_passes(self, seconds):
        """Links and daemons come back; migrations libvirtd carries on complete or fail."""
        self.lab.advance(seconds)
        self.fresh = False
        self.note(f"time passes ({seconds:g} s): {'; '.join(self.lab.log) or 'nothing happens'}")
        self.lab.log.clear()
        self.note(f"  world: {self._where_text()}")

    # ---- the promises -----------------------------------------------------------------------

    @invariant()
    def promises(self):
        if self.world is None:
            return
        snap = self._snapshot()
        defined = self._defined(snap)
        journal = self._journal()
        where = self._where_text(snap)
        last = self.last or {}

        # P2: never running on two hosts
        twice = {n: [h for h in HOSTS if n in snap[h] and snap[h][n]["state"] == "running"] for n in self.universe}
        twice = {n: h for n, h in twice.items() if len(h) > 1}
        assert not twice, f"P2 running on two hosts: {twice}; world: {where}"

        # P1: defined on exactly one host, or the last result names it as recoverable and where it is
        astray = {n: p for n, p in defined.items() if len(p) != 1 and not self._explained(n, p, journal)}
        said = f"{last.get('kind')} {(last.get('result') or {}).get('state') or ''}".strip()
        assert not astray, (f"P1 not on exactly one host and the last {last.get('action', 'run')} ({said}) does "
                            f"not say where: {astray}; world: {where}; journal: {self._journal_states()}")

        # P4b: uncordoned only when every VM is back home
        if not self.inner.cordoned:
            away = {n: p for n, p in defined.items() if p != [SOURCE]}
            assert not away, f"P4 {SOURCE} is uncordoned while VMs are not (only) home: {away}; world: {where}"

        if not self.fresh:
            return
        run = last["run"]
        result = last["result"] or {}

        # P6: the run returned, no thread died, only HvfleetError escaped
        threads = [text for what, text in run.violations if what in ("thread", "cancel")]
        assert last["kind"] != "hung" and not threads, (
            f"P6 {last['action']} did not return within {RUN_TIMEOUT_S:g} s or lost a thread: {threads}; "
            f"world: {where}")
        assert last["kind"] != "crash", f"P6 {last['action']} crashed:\n{last['error']}"
        assert not (last["kind"] == "error" and re.search(r"TransitionError|this is a bug", last["error"] or "")), (
            f"P6 {last['action']} stopped on an internal error: {last['error']}; world: {where}")

        # P5: a cancel is honoured
        lost = [text for what, text in run.violations if what == "lost_cancel"]
        assert not lost, f"P5 cancel lost: {lost}; world: {where}"

        # P3: after a resume, the journal agrees with reality
        if last["resumed"] and last["kind"] == "result":
            wrong = self._disagreements(journal, defined)
            assert not wrong, f"P3 after a resumed {last['action']} the journal disagrees with reality: {wrong}"

        # P4: what restore calls home is home
        if last["action"] == "restore" and last["kind"] == "result":
            claimed = {i["vm"] for i in result.get("vms") or [] if i.get("ok")}
            claimed |= {r["vm"] for r in result.get("reconciled") or [] if r.get("found") == "home"}
            claimed |= {n for n, e in ((journal or {}).get("vms") or {}).items() if e.get("state") == HOME}
            not_home = {n: defined.get(n) for n in sorted(claimed) if n in defined and defined[n] != [SOURCE]}
            assert not not_home, f"P4 restore calls home what is not (only) on {SOURCE}: {not_home}; world: {where}"
            if result.get("state") == "restored":
                away = {n: p for n, p in defined.items() if p != [SOURCE]}
                assert not away, (f"P4 restore says '{result.get('message')}' but VMs are not (only) home: {away}; "
                                  f"world: {where}")


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    database=DirectoryBasedExampleDatabase(DATABASE),
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
    report_multiple_bugs=True,
)


def test_every_vm_stays_in_exactly_one_place(monkeypatch):
    """The state machine: drains, resumes, restores and time passing, with faults; the promises after each step."""
    # a failure must be reported within the suite's time limit: shrinking stops after SHRINK_S
    monkeypatch.setattr(hypothesis_engine, "MAX_SHRINKING_SECONDS", SHRINK_S, raising=False)
    run_state_machine_as_test(DrainMachine, settings=SETTINGS)


def test_the_fault_model_is_realistic(tmp_path):
    """The fault layer itself, without faults: a drain and a restore of every kind of VM work untouched."""
    world = World(list(HOSTS))
    for kind in VM_KINDS:
        world.place(SOURCE, kind, vm(memory=256, **VM_KINDS[kind]))
    inner, lab = FakeBackend(world), Lab(world)
    for action in ("drain", "restore"):
        run = Run([], action)
        src, dests = hosts()
        drainer = Drainer(FaultBackend(inner, lab, run), src, dests, DrainConfig(policies=POLICIES),
                          state_dir=tmp_path)
        run.drainer = drainer
        kind, result, error = execute(run, getattr(drainer, action))
        assert kind == "result" and not result.failed, error or result.message
    assert sorted(world.hosts[SOURCE]) == sorted(VM_KINDS) and not inner.cordoned


@pytest.mark.parametrize("when", ["precopy", "postcopy"])
def test_a_killed_run_leaves_the_migration_to_libvirtd(tmp_path, when):
    """A kill during a migration: the run dies, the job goes on in libvirtd and completes later."""
    world = World(list(HOSTS))
    world.place(SOURCE, "v", vm(memory=256, **VM_KINDS["post" if when == "postcopy" else "pre"]))
    inner, lab = FakeBackend(world), Lab(world)
    run = Run([Fault("migrate", 0, "kill", who=0, when="during", postcopy=when == "postcopy", lasting=45.0)],
              "drain", ["v"])
    src, dests = hosts()
    run.drainer = Drainer(FaultBackend(inner, lab, run), src, dests, DrainConfig(policies=POLICIES),
                          state_dir=tmp_path, clock=lab.clock, sleep=lab.sleep)
    kind, _result, _error = execute(run, run.drainer.drain)
    assert kind == "killed" and not run.violations
    job = lab.job_for("v")
    assert job is not None and job.orphan and job.phase == when
    lab.advance(60)
    assert world.where("v") in (["hv2"], ["hv3"]) and lab.job_for("v") is None


# ---- the known defects' paths, played deterministically through the same machine and promises ----------

LINK_CUT_IN_POSTCOPY = {"at": "migrate", "n": 0, "who": 0, "kind": "link_cut", "when": "during", "postcopy": True,
                        "lasting": 900.0}
SCENARIOS = {
    # r1: the post-copy completes by itself once the link is back; libvirt leaves the source's definition
    # (shut off): it must be removed, never moved as a second copy, and restore must not call it home twice
    "r1_leftover_definition": (["post"], [("drain", [Fault(**LINK_CUT_IN_POSTCOPY, finish=True)]),
                                          ("time", 1000.0), ("drain", []), ("restore", [])]),
    # r3: an interrupted post-copy, then a run cancelled before it resumes it: the journal keeps it
    "r3_postcopy_survives_a_cancelled_run": (["post"], [
        ("drain", [Fault(**LINK_CUT_IN_POSTCOPY, finish=False)]),
        ("drain", [Fault(at="*", n=0, who="main", kind="cancel", when="before")]),
        ("time", 1000.0), ("drain", []), ("restore", [])]),
    # r9: the process dies in post-copy; the resume meets it still streaming; it completes later: restore
    # must not call the host restored while it runs elsewhere
    "r9_failed_then_moved": (["post", "pre"], [
        ("drain", [Fault(at="migrate", n=0, who=0, kind="kill", when="during", postcopy=True, lasting=45.0)]),
        ("drain", []), ("time", 60.0), ("restore", []), ("restore", [])]),
    # a cancel that lands after the worker looked at `cancelled` and before the migration job exists
    "cancel_before_the_job_exists": (["pre", "pre"], [
        ("drain", [Fault(at="migrate", n=0, who=0, kind="cancel", when="before")]), ("drain", [])]),
    # killed during a pre-copy that libvirtd then completes or aborts: the resume settles it
    "killed_in_precopy": (["pre", "off"], [
        ("drain", [Fault(at="migrate", n=0, who=1, kind="kill", when="during", lasting=2.0)]),
        ("drain", []), ("restore", [Fault(at="migrate", n=0, who=1, kind="kill", when="during", lasting=45.0)]),
        ("restore", [])]),
    # a restore killed while a VM was on its way back (pre-copy; libvirtd then fails the job): the next
    # drain must find it where it is, not leave the journal saying a migration is in flight
    "drain_after_a_restore_killed_in_precopy": (["pre"], [
        ("drain", []), ("restore", [Fault(at="migrate", n=0, who=0, kind="kill", when="during", finish=False)]),
        ("time", 40.0), ("drain", [])]),
    # the same in post-copy: the guest runs home (post-copy), the stale copy is paused on hv2
    "drain_after_a_restore_killed_in_postcopy": (["post"], [
        ("drain", []), ("restore", [Fault(at="migrate", n=0, who=0, kind="kill", when="during", postcopy=True,
                                          lasting=45.0)]),
        ("drain", [])]),
    # a restore whose post-copy back home stalls past the engine's deadline, then a drain
    "drain_after_a_stalled_postcopy_home": (["post"], [
        ("drain", []), ("restore", [Fault(at="migrate", n=0, who=0, kind="hang", when="during", postcopy=True,
                                          lasting=2.0, finish=False)]),
        ("drain", []), ("time", 1000.0), ("restore", [])]),
    # a drain that stopped after a failure (one VM stayed, one not started), then the restore
    "restore_after_a_partial_drain": (["pre", "pre", "off"], [
        ("drain", [Fault(at="migrate", n=0, who=1, kind="hang", when="during", finish=False)]), ("restore", [])]),
    # an interrupted post-copy pinned to hv2, and hv2 cannot be re-checked right before its resume
    "resume_of_a_postcopy_whose_destination_fails_the_recheck": (["post"], [
        ("drain", [Fault(**LINK_CUT_IN_POSTCOPY, finish=False)]),
        ("drain", [Fault(at="capacity", n=2, who="main", kind="error", when="before")])]),
    # a pre-copy job libvirtd does not end at the engine's deadline, then a killed run and a resume: the
    # journal must not call the VM blocked (on the source, no destination) while it migrates to hv2
    "in_flight_job_is_not_blocked": (["pre"], [
        ("drain", [Fault(at="migrate", n=0, who=0, kind="hang", when="during", finish=True, lasting=900.0)]),
        ("drain", [Fault(at="*", n=0, who="main", kind="kill", when="before")]), ("drain", []),
        ("time", 1000.0), ("drain", [])]),
    # a definition move killed between define and undefine: defined on two hosts until the resume
    "killed_moving_a_definition": (["off"], [
        ("drain", [Fault(at="move_definition", n=0, who="main", kind="kill", when="during")]), ("drain", []),
        ("restore", [])]),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_known_defect_paths_keep_the_promises(name):
    kinds, steps = SCENARIOS[name]
    machine = DrainMachine()
    try:
        machine.fleet(kinds=kinds, max_parallel=1, max_failures=0)
        machine.promises()
        for action, arg in steps:
            if action == "time":
                machine.time_passes(arg)
            else:
                getattr(machine, action)(arg)
            machine.promises()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- steps so far:\n" + "\n".join(machine.log)) from None
    finally:
        machine.teardown()
