# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where is the VM, and what is the one safe thing to do: classification and post-copy recovery."""

from __future__ import annotations

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.reconcile import SideView

SRC, DST = "qemu:///system", "qemu+tcp://10.254.0.12/system"


def src(state=None, reason=0, **kw):
    return SideView(uri=SRC, present=state is not None, state=state, reason=reason, **kw)


def dst(state=None, reason=0, **kw):
    return SideView(uri=DST, present=state is not None, state=state, reason=reason, **kw)


UNREACHABLE = SideView(uri=DST, reachable=False, error="Cannot recv data: Connection reset by peer")


@pytest.mark.parametrize("s, d, postcopy_started, was_running, placement, action", [
    # lab-facts: link down during pre-copy -> source running "migration canceled", nothing on the destination
    (src(rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED), dst(), False, True, rc.STAYED, rc.NONE),
    (src(rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED), UNREACHABLE, False, True, rc.STAYED, rc.NONE),
    # lab-facts: link cut during post-copy -> source paused "post-copy failed", destination running "post-copy"
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED), dst(rc.RUNNING, rc.RUNNING_POSTCOPY), True, True,
     rc.POSTCOPY_INTERRUPTED, rc.POSTCOPY_RESUME),
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED), UNREACHABLE, True, True, rc.POSTCOPY_INTERRUPTED, rc.POSTCOPY_RESUME),
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY), dst(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED), True, True,
     rc.POSTCOPY_INTERRUPTED, rc.POSTCOPY_RESUME),
    # lab: post-copy paused while the destination loaded the device state -> destination QEMU died
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED, job_active=True), dst(rc.SHUTOFF, 6), True, True,
     rc.POSTCOPY_DEST_LOST, rc.NONE),
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED), dst(), True, True, rc.POSTCOPY_DEST_LOST, rc.NONE),
    # post-copy healthy and still streaming
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY, job_active=True), dst(rc.RUNNING, rc.RUNNING_POSTCOPY), True, True,
     rc.POSTCOPY_ACTIVE, rc.WAIT),
    # ... and completed: the source is gone, destination "migrated"
    (src(), dst(rc.RUNNING, rc.RUNNING_MIGRATED), True, True, rc.MOVED, rc.NONE),
    (src(rc.PAUSED, rc.PAUSED_POSTCOPY), dst(rc.RUNNING, rc.RUNNING_MIGRATED), True, True, rc.MOVED, rc.NONE),
    # plain successful migration, with or without undefine on the source
    (src(), dst(rc.RUNNING, rc.RUNNING_MIGRATED), False, True, rc.MOVED, rc.NONE),
    (src(rc.SHUTOFF, rc.SHUTOFF_MIGRATED), dst(rc.RUNNING, rc.RUNNING_MIGRATED), False, True, rc.MOVED, rc.NONE),
    # a job still finishing
    (src(rc.RUNNING, rc.RUNNING_BOOTED, job_active=True), dst(rc.PAUSED, rc.PAUSED_MIGRATION), False, True,
     rc.IN_FLIGHT, rc.WAIT),
    (src(rc.PAUSED, rc.PAUSED_MIGRATION, job_active=True), dst(rc.PAUSED, rc.PAUSED_MIGRATION), False, True,
     rc.IN_FLIGHT, rc.WAIT),
    # the only copy is paused by the migration (switch-over, or our suspend on timeout)
    (src(), dst(rc.PAUSED, rc.PAUSED_USER), False, True, rc.PAUSED_ON_DESTINATION, rc.RESUME_DESTINATION),
    (src(), dst(rc.PAUSED, rc.PAUSED_MIGRATION), False, True, rc.PAUSED_ON_DESTINATION, rc.RESUME_DESTINATION),
    (src(), dst(rc.PAUSED, rc.PAUSED_USER), False, False, rc.PAUSED_ON_DESTINATION, rc.NONE),
    (src(rc.PAUSED, rc.PAUSED_USER), dst(), False, True, rc.PAUSED_ON_SOURCE, rc.RESUME_SOURCE),
    (src(rc.PAUSED, rc.PAUSED_MIGRATION), dst(), False, True, rc.PAUSED_ON_SOURCE, rc.RESUME_SOURCE),
    (src(rc.PAUSED, rc.PAUSED_USER), dst(), False, False, rc.STAYED, rc.NONE),
    # never resume a source once post-copy started, nor one paused for an I/O error
    (src(rc.PAUSED, rc.PAUSED_MIGRATION), dst(), True, True, rc.PAUSED_ON_SOURCE, rc.NONE),
    (src(rc.PAUSED, 5), dst(), False, True, rc.PAUSED_ON_SOURCE, rc.NONE),
    # the destination may hold a running copy we cannot see: do nothing
    (src(rc.PAUSED, rc.PAUSED_MIGRATION), UNREACHABLE, False, True, rc.UNKNOWN, rc.NONE),
    (src(rc.PAUSED, rc.PAUSED_MIGRATION), dst(rc.PAUSED, rc.PAUSED_MIGRATION), False, True, rc.BOTH_PAUSED, rc.NONE),
    # split brain
    (src(rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED), dst(rc.RUNNING, rc.RUNNING_MIGRATED), False, True,
     rc.BOTH_RUNNING, rc.PAUSE_SOURCE),
    (src(rc.RUNNING, rc.RUNNING_BOOTED), dst(rc.RUNNING, rc.RUNNING_BOOTED), False, True,
     rc.BOTH_RUNNING, rc.PAUSE_BOTH),
    (src(rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED), dst(rc.RUNNING, rc.RUNNING_BOOTED), False, True,
     rc.BOTH_RUNNING, rc.PAUSE_DESTINATION),
    (src(rc.RUNNING, rc.RUNNING_UNPAUSED), dst(rc.RUNNING, rc.RUNNING_POSTCOPY), True, True,
     rc.BOTH_RUNNING, rc.PAUSE_SOURCE),
    # lost
    (src(), dst(), False, True, rc.NOWHERE, rc.NONE),
    (src(rc.SHUTOFF, 1), dst(), False, True, rc.NOWHERE, rc.NONE),
    (src(), UNREACHABLE, False, True, rc.UNKNOWN, rc.NONE),
])
def test_classify(s, d, postcopy_started, was_running, placement, action):
    verdict = rc.classify(s, d, postcopy_started=postcopy_started, was_running=was_running)
    assert (verdict.placement, verdict.action) == (placement, action), verdict.reason
    assert SRC in verdict.reason and DST in verdict.reason, "the reason says where the VM is on both hosts"


def test_dangerous_states_are_loud():
    for s, d in ((src(rc.RUNNING, 1), dst(rc.RUNNING, 1)), (src(), dst()),
                 (src(rc.PAUSED, rc.PAUSED_MIGRATION), UNREACHABLE)):
        assert rc.classify(s, d).loud
    assert not rc.classify(src(rc.RUNNING, 1), dst()).loud


def all_views(uri):
    """Every combination that matters: absent, unreachable, and each state x reason x job flag."""
    yield SideView(uri=uri, reachable=False, error="down")
    for job in (False, True):
        yield SideView(uri=uri, present=False, job_active=job)
        for state in (rc.RUNNING, rc.BLOCKED, rc.PAUSED, rc.SHUTOFF):
            # running/paused reason numbers overlap on purpose: 1, 2, 5 mean something for both
            for reason in (0, 1, 2, 5, 6, 10, 11, 12, 13):
                yield SideView(uri=uri, present=True, state=state, reason=reason, job_active=job)


ALL_PAIRS = [(s, d) for s in all_views(SRC) for d in all_views(DST)]


def test_no_decision_can_create_a_second_running_copy():
    """Exhaustive over all_views x all_views x flags: resumes only where no other copy can be."""
    for s, d in ALL_PAIRS:
        for postcopy_started in (False, True):
            for was_running in (False, True):
                verdict = rc.classify(s, d, postcopy_started=postcopy_started, was_running=was_running)
                context = (s.label(), d.label(), postcopy_started, was_running, verdict)
                if verdict.action == rc.RESUME_SOURCE:
                    assert d.reachable and not d.running and not d.paused, context
                    assert not postcopy_started and not s.postcopy and not d.postcopy, context
                if verdict.action == rc.RESUME_DESTINATION:
                    assert s.reachable and not s.running and not s.paused, context
                if verdict.action == rc.POSTCOPY_RESUME:
                    assert not s.running, context
                if s.running and d.running:
                    assert verdict.action in (rc.PAUSE_SOURCE, rc.PAUSE_DESTINATION, rc.PAUSE_BOTH), context


def test_the_source_is_never_resumed_once_postcopy_started():
    for s, d in ALL_PAIRS:
        for was_running in (False, True):
            verdict = rc.classify(s, d, postcopy_started=True, was_running=was_running)
            assert verdict.action != rc.RESUME_SOURCE, (s.label(), d.label(), verdict)
            if s.postcopy or d.postcopy:
                assert verdict.action in (rc.NONE, rc.WAIT, rc.POSTCOPY_RESUME, rc.PAUSE_SOURCE), verdict


# ---- observe ----------------------------------------------------------------------------


class FakeError(Exception):
    def __init__(self, code, message="boom"):
        super().__init__(message)
        self.code = code

    def get_error_code(self):
        return self.code


class FakeDom:
    def __init__(self, state, job=0, persistent=True):
        self._state, self._job, self._persistent = state, job, persistent

    def state(self):
        return list(self._state)

    def jobInfo(self):
        return [self._job] + [0] * 11

    def isPersistent(self):
        return 1 if self._persistent else 0


class FakeConn:
    def __init__(self, domains=None, error=None):
        self.domains, self.error = domains or {}, error

    def lookupByName(self, name):
        if self.error:
            raise self.error
        if name not in self.domains:
            raise FakeError(rc.VIR_ERR_NO_DOMAIN, f"Domain not found: no domain with matching name '{name}'")
        return self.domains[name]


def test_observe_reads_state_reason_and_job():
    view = rc.observe(FakeConn({"vm": FakeDom((rc.PAUSED, rc.PAUSED_POSTCOPY), job=2)}), "vm", SRC)
    assert (view.present, view.state, view.reason, view.job_active, view.persistent) == \
        (True, rc.PAUSED, rc.PAUSED_POSTCOPY, True, True)
    assert view.label() == "paused (post-copy), job active"


def test_observe_tells_absent_from_unreachable():
    absent = rc.observe(FakeConn(), "vm", SRC)
    assert absent.reachable and not absent.present and absent.gone
    broken = rc.observe(FakeConn(error=FakeError(38, "Cannot write data: Broken pipe")), "vm", DST)
    assert not broken.reachable and "Broken pipe" in broken.error and not broken.gone
    assert rc.observe(None, "vm", DST).reachable is False


# ---- post-copy recovery -----------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0
        self.waits = []

    def __call__(self):
        return self.now

    def wait(self, seconds):
        self.waits.append(seconds)
        self.now += seconds


INTERRUPTED = (src(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED), dst(rc.RUNNING, rc.RUNNING_POSTCOPY))
RECOVERED = (src(), dst(rc.RUNNING, rc.RUNNING_MIGRATED))


def test_recovery_retries_a_refused_resume_then_sees_the_stream_recover_by_itself():
    clock = Clock()
    views = iter([INTERRUPTED, INTERRUPTED, RECOVERED])
    calls = []

    def resume():
        calls.append(clock.now)
        raise RuntimeError("operation failed: QEMU reports migration is still running")

    report = rc.recover_postcopy(lambda: next(views), resume, deadline_s=60, clock=clock, wait=clock.wait)
    assert report.ok and report.final.placement == rc.MOVED
    assert len(calls) == 2 and clock.waits == [1.0, 2.0]
    assert all("still running" in a["result"] for a in report.attempts)


def test_recovery_succeeds_when_resume_is_accepted():
    clock = Clock()
    state = {"views": INTERRUPTED}

    def resume():
        state["views"] = RECOVERED

    report = rc.recover_postcopy(lambda: state["views"], resume, deadline_s=60, clock=clock, wait=clock.wait)
    assert report.ok and clock.waits == []
    assert report.attempts[0]["result"] == "resume call returned"


def test_recovery_gives_up_at_the_deadline_and_leaves_it_paused():
    clock = Clock()

    def resume():
        raise RuntimeError("unable to connect to server at '10.254.0.12:49152': No route to host")

    report = rc.recover_postcopy(lambda: INTERRUPTED, resume, deadline_s=30, clock=clock, wait=clock.wait)
    assert not report.ok
    assert report.final.placement == rc.POSTCOPY_INTERRUPTED
    assert clock.now == pytest.approx(30)
    assert clock.waits[:5] == [1.0, 2.0, 4.0, 8.0, 15.0]
    assert len(report.attempts) >= 5


def test_recovery_waits_without_resuming_while_postcopy_still_streams():
    clock = Clock()
    streaming = (src(rc.PAUSED, rc.PAUSED_POSTCOPY, job_active=True), dst(rc.RUNNING, rc.RUNNING_POSTCOPY))
    views = iter([streaming, streaming, RECOVERED])

    def resume():
        raise AssertionError("must not resume a healthy post-copy")

    report = rc.recover_postcopy(lambda: next(views), resume, deadline_s=60, clock=clock, wait=clock.wait)
    assert report.ok and report.attempts == []


def test_recovery_stops_at_once_when_the_destination_copy_is_gone():
    """Lab: the destination QEMU died during the switch-over ("shut off (failed)"); retrying the
    resume for the whole deadline only delays the report (every attempt: "not processing incoming
    migration")."""
    clock = Clock()
    lost = (src(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED, job_active=True), dst(rc.SHUTOFF, 6))

    def resume():
        raise AssertionError("nothing to resume into")

    report = rc.recover_postcopy(lambda: lost, resume, deadline_s=120, clock=clock, wait=clock.wait)
    assert not report.ok and report.final.placement == rc.POSTCOPY_DEST_LOST and report.final.loud
    assert report.attempts == [] and clock.now == 0
