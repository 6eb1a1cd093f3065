# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The convergence analysis on job-stats series recorded on the lab (tests/unit/module_utils/data/).

Recorded with `benchmarks/migration_bench.py --record-series DIR` (engine defaults: pre-copy, abort
on a stall or at the deadline; stats every 0.5 s; hv1's link shaped with tc). Each series is replayed
sample by sample through convergence.decide as the engine's _watch does, feeding applied decisions
back into the ladder state. The recording already contains the real engine's reaction, so after the
first step the replay is checked only for agreeing with what the engine did.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import convergence as cv
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

DATA = Path(__file__).resolve().parent / "data"


def load(label):
    path = next(DATA.glob(f"series_{label}_*.json"))
    data = json.loads(path.read_text())
    samples = [JobSample(**s) for s in data["stats"]]
    spec = MigrationSpec(**data["spec"])
    return data, spec, samples


def replay(spec, samples, deadline):
    """[(sample, decision, analysis or None)] for every started pre-copy sample, as the engine decides."""
    state = cv.LadderState(downtime_ms=spec.max_downtime_ms)
    out, series = [], []
    for sample in samples:
        series.append(sample)
        if not sample.active or not sample.started:
            continue
        decision = cv.decide(series, spec, state, deadline)
        analysis = cv.analyse(series, spec, state, deadline) if sample.phase == "precopy" else None
        out.append((sample, decision, analysis))
        if decision.action != cv.CONTINUE:
            state.record(decision, sample.iteration)
    return out


def test_recorded_series_are_small_and_real():
    files = sorted(DATA.glob("series_*.json"))
    assert len(files) >= 2
    assert sum(f.stat().st_size for f in files) < 50_000
    for path in files:
        data = json.loads(path.read_text())
        assert data["stats"] and data["mbit"] > 0 and data["ram_bytes"] > 0


def test_idle_series_converges_without_a_step():
    data, spec, samples = load("idle")
    assert data["outcome"] == "moved"
    steps = replay(spec, samples, data["deadline_s"])
    assert steps, "the idle series should hold samples of the running migration"
    assert all(d.action == cv.CONTINUE for _s, d, _a in steps), [d.reason for _s, d, _a in steps]
    assert all(a.converging for _s, _d, a in steps if a is not None)


def test_moderate_series_converges():
    data, spec, samples = load("moderate")
    assert data["outcome"] == "moved"
    steps = replay(spec, samples, data["deadline_s"])
    finals = [d for _s, d, _a in steps if d.final]
    assert not finals, [d.reason for d in finals]


def test_hot_series_is_not_converging_within_a_few_iterations():
    """Guest rewriting 128 MiB at 100 MiB/s over 100 Mbit/s: QEMU's dirty rate reaches the link's
    bandwidth, so the projected finish is 'never' from the second sync on (iteration 3)."""
    data, spec, samples = load("hot")
    steps = replay(spec, samples, data["deadline_s"])
    late = [(s, a) for s, _d, a in steps if a is not None and not a.converging]
    assert late, "the hot series never looked non-converging"
    sample, analysis = late[0]
    assert sample.iteration <= 3 and sample.t < data["deadline_s"] / 2
    assert analysis.late and analysis.projected_finish_s is not None
    # once not converging, it stays so: no flapping back to "converging" before the end
    first = steps.index(next(x for x in steps if x[0] is sample))
    assert all(a is None or not a.converging for _s, _d, a in steps[first:])


def test_hot_series_dirty_sets_do_not_shrink_and_downtime_cannot_help():
    data, spec, samples = load("hot")
    sets = cv.dirty_sets(samples, 2, samples[-1].iteration)
    assert len(sets) >= 3
    assert min(sets[1:]) > sets[0] * (1 - cv.SHRINK_MARGIN)  # the working set is re-dirtied every pass
    analysis = cv.analyse(samples, spec, cv.LadderState(downtime_ms=spec.max_downtime_ms), data["deadline_s"])
    assert analysis.needed_downtime_ms > spec.max_downtime_cap_ms  # raising max downtime is rightly skipped


def test_hot_series_ends_in_the_final_action_the_engine_took():
    """With ~10 s iterations, K=3 iterations of stall evidence would need iteration 6 (~62 s): the
    60 s deadline comes first, and the replay aborts there, as the engine did on the lab."""
    data, spec, samples = load("hot")
    assert data["outcome"] == "stayed"
    steps = replay(spec, samples, data["deadline_s"])
    acted = [(s, d) for s, d, _a in steps if d.action != cv.CONTINUE]
    assert len(acted) == 1 and acted[0][1].final and acted[0][1].action == spec.on_timeout == cv.ABORT
    assert acted[0][0].t >= data["deadline_s"]
    recorded = [s for s in data["steps"] if s["action"] == "abort"]
    assert recorded and "deadline" in recorded[0]["reason"] and "deadline" in acted[0][1].reason


@pytest.mark.parametrize("label", ["idle", "moderate", "hot"])
def test_bandwidth_estimate_matches_the_shaped_link(label):
    data, spec, samples = load(label)
    started = [s for s in samples if s.started and s.phase == "precopy"]
    bps = cv.bandwidth(started)
    link = data["mbit"] * 1e6 / 8
    assert 0.5 * link < bps <= 1.1 * link  # tc tbf: never above the shaped rate, not far below


def test_hot_series_with_postcopy_allowed_switches_at_the_first_not_converging_verdict():
    data, spec, samples = load("hot")
    spec = MigrationSpec(**dict(data["spec"], mode="postcopy_after_precopy"))
    steps = replay(spec, samples, data["deadline_s"])
    acted = [(s, d) for s, d, _a in steps if d.action != cv.CONTINUE]
    assert acted and acted[0][1].action == cv.POSTCOPY
    assert acted[0][0].iteration <= 3 and acted[0][0].t < data["deadline_s"] / 2


def test_two_stall_iterations_end_the_hot_series_earlier_and_spare_the_moderate_one():
    """What docs/MIGRATION.md says of `stall_iterations: 2` on these series."""
    data, spec, samples = load("hot")
    spec = MigrationSpec(**dict(data["spec"], stall_iterations=2))
    acted = [(s, d) for s, d, _a in replay(spec, samples, data["deadline_s"]) if d.action != cv.CONTINUE]
    assert acted[0][1].action == cv.ABORT and "stalled" in acted[0][1].reason
    assert acted[0][0].iteration == 5 and acted[0][0].t < data["deadline_s"]
    data, spec, samples = load("moderate")
    spec = MigrationSpec(**dict(data["spec"], stall_iterations=2))
    assert all(d.action == cv.CONTINUE for _s, d, _a in replay(spec, samples, data["deadline_s"]))
