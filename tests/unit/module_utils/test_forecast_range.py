"""The drain forecast over what the dirty-rate readings can tell: expected total and range."""

from __future__ import annotations

import math

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import forecast_range as R
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import drain_forecast as D
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import forecast as F
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import VmInfo
from drain_fakes import fleet, make, vm

MIB = 1024 * 1024


def plan(tmp_path, **vms):
    drainer, _backend, _events = make(tmp_path, fleet(**vms))
    return drainer.drain(plan_only=True)


def test_a_guest_near_its_lane_rate_read_for_one_second_widens_the_range(tmp_path):
    # 1000 Mbit/s shared by two: ~60 MiB/s each; 40 MiB/s read over 1 s rests on ~20 sample pages (+-22 %)
    result = plan(tmp_path, busy=vm(memory=2048, dirty=40 * MIB, sampled=1.0), idle=vm(sampled=1.0, dirty=0))
    forecast = result.forecast
    low, high = forecast["range_s"]
    assert low <= forecast["as_read_s"] <= high
    assert low < forecast["total_s"] < high
    # read one node higher the busy guest goes by post-copy and is shorter: the sides pull the total below as read
    assert forecast["total_s"] < forecast["as_read_s"]
    assert high - low > max(2.0, 0.2 * low)
    assert "over the dirty-rate readings' precision" in forecast["summary"]
    assert f"{forecast['total_s']:.0f} s" in forecast["summary"]
    assert forecast["dirty_rate_error_pct"] == {"busy": 22}  # idle read 0: no precision to state


def test_a_longer_reading_narrows_it(tmp_path):
    short = plan(tmp_path / "a", busy=vm(memory=2048, dirty=40 * MIB, sampled=1.0)).forecast["range_s"]
    long = plan(tmp_path / "b", busy=vm(memory=2048, dirty=40 * MIB, sampled=16.0)).forecast["range_s"]
    assert long[1] - long[0] < (short[1] - short[0]) / 2


def test_given_rates_have_no_range_to_speak_of_and_cost_no_second_simulation(tmp_path, monkeypatch):
    calls = []
    simulate = R.run_schedule
    monkeypatch.setattr(R, "run_schedule", lambda *args: calls.append(1) or simulate(*args))
    forecast = plan(tmp_path, busy=vm(memory=2048, dirty=40 * MIB)).forecast  # sampled None: not measured
    assert len(calls) == 1
    assert forecast["range_s"] == [forecast["total_s"]] * 2
    assert forecast["as_read_s"] == forecast["total_s"]
    assert "precision" not in forecast["summary"]
    assert forecast["dirty_rate_error_pct"] == {}


@pytest.mark.parametrize("side, expected", [(R.LOW, 40 * (1 - 0.25 * math.sqrt(3))), (R.MEASURED, 40.0),
                                            (R.HIGH, 40 * (1 + 0.25 * math.sqrt(3)))])
def test_at_side_puts_the_rate_on_the_rules_nodes(side, expected):
    one = VmInfo("a", 1024, 1, True, True, dirty_rate_bps=40 * MIB, dirty_rate_sampled_s=0.8)  # 16 pages: 25 %
    assert R.at_side(one, side).dirty_rate_bps == pytest.approx(expected * MIB)


def test_a_low_node_below_zero_is_zero():
    one = VmInfo("a", 1024, 1, True, True, dirty_rate_bps=2 * MIB, dirty_rate_sampled_s=1.0)  # 1 page: 100 %
    assert R.at_side(one, R.LOW).dirty_rate_bps == 0.0


def test_expected_total_and_range_where_a_higher_rate_would_choose_post_copy(monkeypatch):
    # lab, 200 Mbit/s: read at 9 MiB/s the moderate guest's pre-copy made the drain 54 s; lower it was 43 s,
    # higher it chose post-copy and was 45 s. Range 43-54 s (not 43-45); expected 54 - 11/6 - 9/6 s.
    def slot(end):
        return [D.ScheduledMigration("warm", 0.0, end, 1.0, F.Forecast(F.PRECOPY, False, "t", end, 500.0, 1, 1, True))]

    ends = {R.LOW: 43.0, R.HIGH: 45.0}
    monkeypatch.setattr(R, "run_schedule", lambda ctx, moves, predict: slot(ends[predict]))
    by_side = R.totals(None, [], lambda side: side, slot(54.0))
    assert by_side == {R.LOW: 43.0, R.MEASURED: 54.0, R.HIGH: 45.0}
    assert R.spread(by_side) == [43.0, 54.0]
    assert R.expected(by_side) == pytest.approx(54.0 - 20.0 / 6, abs=1e-3)
    assert R.expected({R.LOW: 23.2885, R.MEASURED: 23.2885, R.HIGH: 23.2885}) == round(23.2885, 3)


def test_a_node_where_a_vm_is_refused_counts_as_read(monkeypatch):
    def slot(end, mode=F.PRECOPY):
        return [D.ScheduledMigration("warm", 0.0, end, 1.0, F.Forecast(mode, False, "t", end, 500.0, 1, 1, True)),
                D.ScheduledMigration("idle", 0.0, 5.0, 1.0, F.Forecast(F.PRECOPY, False, "t", 5.0, 500.0, 1, 1, True))]

    nodes = {R.LOW: slot(20.0), R.HIGH: [slot(0.0)[1], D.ScheduledMigration("warm", 0.0, None, 1.0, None)]}
    monkeypatch.setattr(R, "run_schedule", lambda ctx, moves, predict: nodes[predict])
    assert R.totals(None, [], lambda side: side, slot(30.0)) == {R.LOW: 20.0, R.MEASURED: 30.0, R.HIGH: 30.0}


def test_the_note_appears_only_beyond_the_forecasts_goal():
    assert R.note({R.LOW: 10.0, R.MEASURED: 11.0, R.HIGH: 11.9}) == ""  # within 2 s
    assert R.note({R.LOW: 30.0, R.MEASURED: 33.0, R.HIGH: 35.9}) == ""  # within 20 %
    assert R.note({R.LOW: 30.0, R.MEASURED: 33.0, R.HIGH: 37.0}).endswith("(as read: 33 s; 30-37 s)")
    assert R.note(None) == ""
