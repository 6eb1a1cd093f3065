# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The escalation ladder on synthetic pre-copy series.

`simulate` is a coarse model of QEMU pre-copy (one sample per interval; an
iteration ends when its dirty set is sent; at each sync the new dirty set is what
the guest dirtied meanwhile, bounded by its working set; the migration completes at
a sync when the set fits into max downtime at the link's bandwidth). The ladder's
decisions are fed back into the model, so each test runs the closed loop.
"""

from __future__ import annotations

import math

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import convergence as cv
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

MIB = 1024 * 1024


def simulate(spec, ram, bw, dirty, working_set, deadline, throttle_step=0, limit_s=3000):
    """Run the model until completion, post-copy, abort or the time limit; returns (end, t, decisions)."""
    state = cv.LadderState(downtime_ms=spec.max_downtime_ms, last_step_iteration=1)
    series, decisions = [], []
    t, iteration, remaining, processed, iter_start = 0.0, 1, float(ram), 0.0, 0.0
    throttle, paused = 0, False
    while t < limit_s:
        t += 1.0
        sent = min(remaining, bw)
        remaining -= sent
        processed += sent
        if remaining <= 0:
            rate = 0.0 if paused else dirty * (1 - throttle / 100.0)
            remaining = min(working_set, rate * (t - iter_start))
            iteration += 1
            iter_start = t
            if remaining <= bw * state.downtime_ms / 1000.0:
                return "completed", t, decisions
            if spec.auto_converge and iteration >= 3:
                throttle = min(99, throttle + throttle_step)
        series.append(JobSample(
            t=t, phase="precopy", memory_total=ram, memory_processed=int(processed), memory_remaining=int(remaining),
            dirty_rate_bps=0.0 if iteration < 2 or paused else dirty * (1 - throttle / 100.0), iteration=iteration,
            bandwidth_bps=bw, throttle_pct=throttle))
        decision = cv.decide(series, spec, state, deadline)
        if decision.action == cv.CONTINUE:
            continue
        decisions.append(decision)
        state.record(decision, iteration)
        if decision.action in (cv.POSTCOPY, cv.ABORT):
            return decision.action, t, decisions
        if decision.action == cv.SUSPEND:
            paused = True
    return "timeout", t, decisions


def test_idle_vm_converges_without_any_step():
    spec = MigrationSpec()
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=100 * MIB, dirty=1 * MIB, working_set=10 * MIB,
                                  deadline=spec.deadline_s(512 * MIB))
    assert end == "completed"
    assert decisions == []


def test_hot_vm_precopy_aborts_when_stalled_before_the_deadline():
    """Dirtying 140 MiB/s over a 50 MiB/s link: raising downtime cannot help, so abort early."""
    spec = MigrationSpec(on_timeout="abort")
    deadline = spec.deadline_s(512 * MIB)
    end, t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=140 * MIB, working_set=256 * MIB,
                                 deadline=deadline)
    assert end == "abort"
    assert t < deadline, "stall detection must act before the clock runs out"
    assert [d.action for d in decisions] == ["abort"]
    assert decisions[0].final
    assert "stalled" in decisions[0].reason and "above the cap" in decisions[0].reason


def test_hot_vm_with_postcopy_after_precopy_switches_after_the_first_pass():
    spec = MigrationSpec(mode="postcopy_after_precopy")
    end, t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=140 * MIB, working_set=256 * MIB,
                                 deadline=spec.deadline_s(512 * MIB))
    assert end == "postcopy"
    assert [d.action for d in decisions] == ["postcopy"]
    assert t <= 13, "the first pass takes ~11 s; the switch follows right after it"
    assert "never" in decisions[0].reason  # dirty rate >= bandwidth


def test_postcopy_after_precopy_does_not_switch_when_precopy_converges():
    spec = MigrationSpec(mode="postcopy_after_precopy")
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=100 * MIB, dirty=20 * MIB, working_set=64 * MIB,
                                  deadline=spec.deadline_s(512 * MIB))
    assert end == "completed"
    assert decisions == []


def test_mode_postcopy_switches_after_the_first_pass_even_if_it_would_converge():
    spec = MigrationSpec(mode="postcopy")
    end, t, decisions = simulate(spec, ram=512 * MIB, bw=100 * MIB, dirty=60 * MIB, working_set=256 * MIB,
                                 deadline=spec.deadline_s(512 * MIB))
    assert end == "postcopy"
    assert "first pass" in decisions[0].reason
    assert 5 <= t <= 7


def test_raising_downtime_within_the_cap_makes_a_small_working_set_converge():
    """60 MiB dirty set at 50 MiB/s needs ~1.2 s downtime: raise to that (+25 %), within the 2 s cap."""
    spec = MigrationSpec(max_downtime_ms=300, max_downtime_cap_ms=2000)
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=100 * MIB, working_set=60 * MIB,
                                  deadline=spec.deadline_s(512 * MIB))
    assert end == "completed"
    assert [d.action for d in decisions] == ["raise_downtime"]
    assert 1200 <= decisions[0].downtime_ms <= 2000
    assert decisions[0].downtime_ms == math.ceil(1200 * 1.25)


def test_downtime_raise_is_clipped_to_the_cap():
    """40 MiB at 50 MiB/s needs ~800 ms; +25 % would be 1000 ms, the cap is 900 ms."""
    spec = MigrationSpec(max_downtime_ms=300, max_downtime_cap_ms=900)
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=100 * MIB, working_set=40 * MIB,
                                  deadline=spec.deadline_s(512 * MIB))
    assert end == "completed"
    assert [(d.action, d.downtime_ms) for d in decisions] == [("raise_downtime", 900)]


def test_downtime_is_not_raised_when_even_the_cap_would_not_suffice():
    spec = MigrationSpec(max_downtime_ms=300, max_downtime_cap_ms=1000, on_timeout="abort")
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=100 * MIB, working_set=60 * MIB,
                                  deadline=spec.deadline_s(512 * MIB))
    assert end == "abort"
    assert [d.action for d in decisions] == ["abort"]
    assert "~1200 ms, above the cap of 1000 ms" in decisions[0].reason


def test_deadline_ends_a_slow_but_progressing_first_pass():
    spec = MigrationSpec(completion_timeout_s=60, on_timeout="abort")
    end, t, decisions = simulate(spec, ram=4096 * MIB, bw=10 * MIB, dirty=0, working_set=0, deadline=60)
    assert end == "abort"
    assert t == 60
    assert "deadline" in decisions[0].reason


def test_deadline_with_suspend_suspends_and_the_copy_completes():
    spec = MigrationSpec(completion_timeout_s=30, on_timeout="suspend")
    end, t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=140 * MIB, working_set=256 * MIB,
                                 deadline=30)
    assert end == "completed"
    assert [d.action for d in decisions] == ["suspend"]
    assert t > 30


def test_stall_with_suspend_suspends_before_the_deadline():
    spec = MigrationSpec(on_timeout="suspend")
    deadline = spec.deadline_s(512 * MIB)
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=140 * MIB, working_set=256 * MIB,
                                  deadline=deadline)
    assert end == "completed"
    assert decisions[-1].action == "suspend" and decisions[-1].final


def test_auto_converge_throttle_is_given_time_and_converges():
    spec = MigrationSpec(auto_converge=True, on_timeout="abort")
    end, _t, decisions = simulate(spec, ram=512 * MIB, bw=50 * MIB, dirty=140 * MIB, working_set=256 * MIB,
                                  deadline=spec.deadline_s(512 * MIB), throttle_step=20)
    assert end == "completed", [d.reason for d in decisions]
    assert "abort" not in [d.action for d in decisions]
    # without auto-converge the same guest is aborted: the throttle is what made the difference
    plain = MigrationSpec(on_timeout="abort")
    assert simulate(plain, ram=512 * MIB, bw=50 * MIB, dirty=140 * MIB, working_set=256 * MIB,
                    deadline=plain.deadline_s(512 * MIB))[0] == "abort"


def test_auto_converge_reason_mentions_the_throttle_while_it_rises():
    spec = MigrationSpec(auto_converge=True)
    state = cv.LadderState(downtime_ms=2000, last_step_iteration=2)
    series = []
    t = 0.0
    for iteration, throttle in ((2, 0), (3, 20), (4, 40), (5, 60), (6, 60), (7, 60), (8, 60), (9, 60)):
        for _sample in range(3):
            t += 1
            series.append(JobSample(t=t, phase="precopy", memory_remaining=256 * MIB, iteration=iteration,
                                    bandwidth_bps=50 * MIB, dirty_rate_bps=140 * MIB, throttle_pct=throttle,
                                    memory_total=512 * MIB))
    rising = cv.decide(series[:12], spec, state, deadline_s=1000)
    assert rising.action == cv.CONTINUE and "auto-converge throttle at 60%" in rising.reason
    flat = cv.decide(series, spec, cv.LadderState(downtime_ms=2000, last_step_iteration=2), deadline_s=1000)
    assert flat.action == cv.ABORT, flat.reason


def test_nothing_is_escalated_during_postcopy_or_after_the_final_action():
    spec = MigrationSpec(mode="postcopy_after_precopy")
    sample = JobSample(t=500, phase="postcopy", memory_remaining=100 * MIB, iteration=5, bandwidth_bps=MIB)
    assert cv.decide([sample], spec, cv.LadderState(downtime_ms=300), 60).action == cv.CONTINUE
    pre = JobSample(t=500, phase="precopy", memory_remaining=100 * MIB, iteration=5, bandwidth_bps=MIB)
    done = cv.LadderState(downtime_ms=300, final_action="abort")
    assert cv.decide([pre], spec, done, 60).action == cv.CONTINUE
    asked = cv.LadderState(downtime_ms=300, postcopy_requested=True)
    assert cv.decide([pre], spec, asked, 60).action == cv.CONTINUE


def test_no_job_visible_yet_continues():
    assert cv.decide([], MigrationSpec(), cv.LadderState(downtime_ms=300), 60).action == cv.CONTINUE


def test_dirty_sets_take_the_largest_remaining_of_each_complete_iteration():
    series = [JobSample(t=i, phase="precopy", iteration=it, memory_remaining=rem)
              for i, (it, rem) in enumerate([(1, 500), (2, 90), (2, 40), (3, 80), (3, 10), (4, 70)])]
    assert cv.dirty_sets(series, 2, 4) == (90, 80)
    assert cv.dirty_sets(series, 3, 4) == (80,)


def test_bandwidth_falls_back_to_the_processed_slope():
    series = [JobSample(t=t, phase="precopy", memory_processed=int(t * 30 * MIB)) for t in range(1, 6)]
    assert cv.bandwidth(series) == pytest.approx(30 * MIB)
    assert cv.bandwidth([JobSample(t=1, phase="precopy", bandwidth_bps=7.0)]) == 7.0


def test_without_bandwidth_figures_only_a_stall_escalates():
    spec = MigrationSpec()
    series = [JobSample(t=t, phase="precopy", iteration=2 + t // 3, memory_remaining=256 * MIB) for t in range(1, 30)]
    decision = cv.decide(series, spec, cv.LadderState(downtime_ms=300, last_step_iteration=1), 1000)
    # constant dirty sets are a stall even without bandwidth figures, but no downtime target can be computed
    assert decision.action in (cv.RAISE_DOWNTIME, cv.ABORT)
    short = series[:4]
    assert cv.decide(short, spec, cv.LadderState(downtime_ms=300, last_step_iteration=1), 1000).action == cv.CONTINUE
