"""The benchmarks' forecast figures: error, the 20 % / 2 s goal, per-VM rows and the Markdown table."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import forecast_report as fr  # noqa: E402


def run(**kw):
    base = {"contender": "hvfleet", "run": 1, "forecast_s": 28.8, "migration_s": 27.5, "vms": [
        {"name": "w", "kind": "moderate", "mode": "precopy", "dirty_rate_mib_s": 8.5, "predicted_span_s": 14.1,
         "duration_s": 14.7, "predicted_pause_ms": 520.0, "guest_pause_ms": 670, "downtime_ms": 600,
         "predicted_stall_ms": None},
        {"name": "h", "kind": "hot", "mode": "postcopy", "dirty_rate_mib_s": 104.0, "predicted_span_s": 25.6,
         "duration_s": 24.0, "predicted_pause_ms": 2066.7, "guest_pause_ms": 931, "downtime_ms": None,
         "predicted_stall_ms": 1866.7}]}
    base.update(kw)
    return base


def test_error_is_relative_to_the_actual():
    assert fr.error(12.0, 10.0) == pytest.approx(0.2)
    assert fr.error(None, 10.0) is None and fr.error(5.0, 0) is None


def test_goal_is_twenty_percent_or_two_seconds():
    assert fr.within_goal(2.4, 3.7)  # 1.3 s off
    assert not fr.within_goal(5.6, 2.8)  # 2.8 s off, 100 %
    assert fr.within_goal(52.0, 44.3)  # +17 %
    assert not fr.within_goal(61.4, 44.3)  # +39 %
    assert fr.within_goal(None, 3.0) is None


def test_vm_rows_compare_the_schedule_span_with_the_duration():
    rows = {r["vm"]: r for r in fr.vm_rows(run())}
    assert rows["w"]["error"] == pytest.approx(14.1 / 14.7 - 1)
    assert rows["w"]["within"] is True
    assert rows["h"]["predicted_stall_ms"] == 1866.7 and rows["h"]["guest_pause_ms"] == 931


def test_render_forecast_names_the_total_and_every_vm():
    text = fr.render_forecast(run())
    assert "forecast 28.8 s vs 27.5 s actual (+5%, within 20 % / 2 s)" in text
    assert "predicted 25.6 s, took 24.0 s (+7%)" in text


def test_markdown_skips_other_contenders_and_runs_without_a_forecast():
    md = fr.forecast_markdown([run(), run(contender="virsh-loop"), run(run=2, forecast_s=None)], label="300-")
    assert md.count("| 300-1 |") == 3  # the total and two VMs
    assert "| 300-2 |" not in md
    assert "| 300-1 | 28.8 | 27.5 | +5% | yes |" in md
