"""The drain forecast's range: each measured dirty rate at either end of what its page count can tell."""

from __future__ import annotations

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
    low, high = result.forecast["range_s"]
    total = result.forecast["total_s"]
    assert low < total < high
    assert high - low > max(2.0, 0.2 * low)
    assert "either end of what their readings can tell" in result.forecast["summary"]
    assert result.forecast["dirty_rate_error_pct"] == {"busy": 22}  # idle read 0: no precision to state


def test_a_longer_reading_narrows_it(tmp_path):
    short = plan(tmp_path / "a", busy=vm(memory=2048, dirty=40 * MIB, sampled=1.0)).forecast["range_s"]
    long = plan(tmp_path / "b", busy=vm(memory=2048, dirty=40 * MIB, sampled=16.0)).forecast["range_s"]
    assert long[1] - long[0] < (short[1] - short[0]) / 2


def test_given_rates_have_no_range_to_speak_of(tmp_path):
    result = plan(tmp_path, busy=vm(memory=2048, dirty=40 * MIB))  # sampled None: not measured
    assert result.forecast["range_s"] == [result.forecast["total_s"]] * 2
    assert "either end" not in result.forecast["summary"]
    assert result.forecast["dirty_rate_error_pct"] == {}


@pytest.mark.parametrize("side, expected", [(R.LOW, 30.0), (R.MEASURED, 40.0), (R.HIGH, 50.0)])
def test_at_side_moves_the_rate_by_one_standard_deviation(side, expected):
    one = VmInfo("a", 1024, 1, True, True, dirty_rate_bps=40 * MIB, dirty_rate_sampled_s=0.8)  # 16 pages: 25 %
    assert R.at_side(one, side).dirty_rate_bps == pytest.approx(expected * MIB)


def test_the_note_appears_only_beyond_the_forecasts_goal():
    assert R.note([10.0, 11.9]) == ""  # within 2 s
    assert R.note([30.0, 35.9]) == ""  # within 20 %
    assert R.note([30.0, 37.0]).startswith("; 30-37 s")
    assert R.note(None) == ""


def test_the_range_holds_the_forecast_even_where_a_higher_rate_would_choose_post_copy(monkeypatch):
    # lab, 200 Mbit/s: read at 9 MiB/s the moderate guest's pre-copy made the drain 54 s; one deviation lower
    # it was 43 s, one higher it chose post-copy and was 45 s. The range is 43-54 s, not 43-45.
    def slot(end):
        return [D.ScheduledMigration("warm", 0.0, end, 1.0, F.Forecast(F.PRECOPY, False, "t", end, 500.0, 1, 1, True))]

    ends = {R.LOW: 43.0, R.HIGH: 45.0}
    monkeypatch.setattr(R, "run_schedule", lambda ctx, moves, predict: slot(ends[predict]))
    assert R.total_range(None, [], lambda side: side, slot(54.0)) == [43.0, 54.0]
