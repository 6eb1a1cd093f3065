# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What libvirt refuses is not done: the ladder retries it, and the completion deadline still holds.

Before: a migrateStartPostCopy that libvirt refused (a transient RPC error, or "post-copy can only be
started while outgoing migration is in progress") was recorded as post-copy, and the ladder said
"in post-copy: nothing to escalate" for good - the deadline never fired and the pre-copy ran on
(repro r11_postcopy_refused.py). A refused abortJob was recorded as taken and never sent again.
"""

from __future__ import annotations

import time

import pytest
import test_migration as tm  # the engine's fakes (same directory; prepend import mode)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import convergence
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

MIB = tm.MIB


class RefusingDom(tm.Dom):
    """migrateStartPostCopy always refused; abortJob refused `abort_refusals` times first."""

    def __init__(self, name, host, abort_refusals=0, switched_anyway=False):
        super().__init__(name, host)
        self.abort_refusals = abort_refusals
        self.switched_anyway = switched_anyway

    def migrateStartPostCopy(self, flags=0):  # noqa: N802 - libvirt's name
        self.calls.append(("migrateStartPostCopy-refused",))
        if self.switched_anyway:  # the switch took, but the answer was lost
            self.st = (rc.PAUSED, rc.PAUSED_POSTCOPY)
        raise tm.LibvirtFail("internal error: client socket is closed")

    def abortJob(self):  # noqa: N802
        if self.abort_refusals:
            self.abort_refusals -= 1
            self.calls.append(("abortJob-refused",))
            raise tm.LibvirtFail("Timed out during operation: cannot acquire state change lock")
        return super().abortJob()


def run_failing(src_host, spec):
    started = time.monotonic()
    with pytest.raises(MigrationFailed) as failed:
        tm.run(src_host, tm.Host(), spec)
    return failed.value.result, time.monotonic() - started


def test_a_refused_switch_to_postcopy_leaves_the_deadline_in_force():
    """r11: post-copy refused at every step; at the deadline the engine tries it once more, then aborts."""
    src_host = tm.Host()
    dom = RefusingDom("vm1", src_host)
    dom.samples = tm.hot_series(60)  # ~6 s of samples unless aborted
    spec = MigrationSpec(mode="postcopy_after_precopy", completion_timeout_s=1.5, on_timeout="abort", **tm.FAST)
    result, took = run_failing(src_host, spec)
    assert result.outcome == "stayed" and result.mode_used == "precopy", result.message
    assert "abortJob" in dom.names(), "the deadline fired"
    assert took < 4, f"the deadline of 1.5 s fired late ({took:.1f} s)"
    switches = [s for s in result.steps if s.action == "postcopy"]
    assert switches and all(s.error for s in switches), "a refused switch is reported as refused"
    assert any("deadline" in s.reason for s in switches), "post-copy is tried again at the deadline"
    abort = [s for s in result.steps if s.action == "abort" and not s.error][0]
    assert "post-copy was refused" in abort.reason and "aborting" in abort.reason, abort
    assert dom.st == (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED), "the VM stays running on the source"


def test_a_switch_libvirt_reports_as_failed_but_made_counts_as_postcopy():
    """The domain's state is the evidence: paused (post-copy) means the switch took."""
    src_host, dst_host = tm.Host(), tm.Host()
    dom = RefusingDom("vm1", src_host, switched_anyway=True)
    dom.samples = tm.hot_series(4)
    dom.on_end = lambda: tm.move(src_host, dst_host, dom) and 0
    result = tm.run(src_host, dst_host, MigrationSpec(mode="postcopy", **tm.FAST))
    assert result.outcome == "moved" and result.mode_used == "postcopy"
    assert dom.names().count("migrateStartPostCopy-refused") == 1, "not asked twice once in post-copy"
    step = [s for s in result.steps if s.action == "postcopy"][0]
    assert step.error and "the domain is in post-copy" in step.reason
    assert "abortJob" not in dom.names()


def test_a_refused_abort_is_sent_again_until_libvirt_takes_it():
    src_host = tm.Host()
    dom = RefusingDom("vm1", src_host, abort_refusals=3)
    dom.samples = tm.hot_series(60)
    result, _took = run_failing(src_host, MigrationSpec(completion_timeout_s=1.0, on_timeout="abort", **tm.FAST))
    assert dom.names().count("abortJob-refused") == 3 and dom.names().count("abortJob") == 1, dom.names()
    assert result.outcome == "stayed"
    aborts = [s for s in result.steps if s.action == "abort"]
    assert aborts[0].error and "retried" in aborts[0].reason, "the first refusal is reported once"
    assert not aborts[-1].error and "accepted after 3 refused attempts" in aborts[-1].reason, aborts


def test_the_ladder_records_only_what_libvirt_accepted():
    spec = MigrationSpec(mode="postcopy_after_precopy", completion_timeout_s=10, on_timeout="suspend")
    state = convergence.LadderState(downtime_ms=300)
    switch = convergence.at_deadline(spec, state, 10.0, 11.0)
    assert switch.action == convergence.POSTCOPY
    state.refused(switch, iteration=4, t=11.0)
    assert not state.postcopy_requested and state.last_step_iteration == 4
    final = convergence.at_deadline(spec, state, 10.0, 12.0)
    assert final.action == convergence.SUSPEND and final.final and "post-copy was refused" in final.reason
    early = convergence.LadderState(downtime_ms=300, postcopy_refused_t=5.0)  # refused before the deadline
    assert convergence.at_deadline(spec, early, 10.0, 10.5).action == convergence.POSTCOPY


def test_on_timeout_postcopy_refused_at_the_deadline_aborts():
    spec = MigrationSpec(on_timeout="postcopy", completion_timeout_s=10)
    state = convergence.LadderState(downtime_ms=300)
    first = convergence.at_deadline(spec, state, 10.0, 10.0)
    assert first.action == convergence.POSTCOPY and first.final
    state.refused(first, iteration=3, t=10.0)
    again = convergence.at_deadline(spec, state, 10.0, 11.0)
    assert again.action == convergence.ABORT and "aborting instead" in again.reason


def test_a_job_that_never_ends_is_given_up_on_past_the_deadline_and_named():
    """The daemon refuses every abort and the migrate call never returns: the engine stops waiting
    settle_timeout_s past the deadline and reports the job as still in flight, with what to run."""
    src_host = tm.Host()
    dom = RefusingDom("vm1", src_host, abort_refusals=10**6)
    dom.samples = [tm.stats(1, 400 * MIB)] * 10**5  # the job never ends by itself
    clock = tm.Clock()
    migration = Migration(src_host, tm.Host(), "vm1", tm.DST_URI, MigrationSpec(completion_timeout_s=1, **tm.FAST),
                          source_uri=tm.SRC_URI, clock=clock, wait=clock.wait, settle_timeout_s=1)
    started = time.monotonic()
    try:
        with pytest.raises(MigrationFailed) as failed:
            migration.run()
    finally:
        dom.done.set()  # let the fake call end
    result = failed.value.result
    assert time.monotonic() - started < 5
    assert result.outcome == "in_flight", result.message
    assert any(s.action == "call_abandoned" and "past the completion deadline" in s.reason for s in result.steps)
    assert f"virsh -c {tm.SRC_URI} domjobabort vm1" in result.recovery
    assert result.error == "the migration call did not return"
