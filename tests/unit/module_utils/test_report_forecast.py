"""The forecast's error in the result: per VM against the schedule's span, and for the whole drain."""

from ansible_collections.hvfleet.drain.plugins.module_utils.drain import report
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult


def entry(**kw):
    base = {"name": "vm1", "kind": "live", "source": "hv1", "destination": "hv2", "mode": "precopy",
            "predicted_duration_s": 5.1, "predicted_start_s": 0.0, "predicted_end_s": 10.7,
            "forecast": {"predicted_stall_ms": None}, "result": {"ok": True, "duration_s": 15.2}}
    base.update(kw)
    return base


def test_the_vm_forecast_is_the_schedule_span_not_the_lane_forecast():
    row = report.vm_result(entry())
    assert row["predicted_duration_s"] == 10.7 and row["lane_forecast_s"] == 5.1
    assert row["forecast_error_s"] == -4.5
    assert row["forecast_error_pct"] == -29.6
    assert row["forecast_within_goal"] is False


def test_without_a_schedule_the_vm_forecast_is_its_own():
    row = report.vm_result(entry(predicted_start_s=None, predicted_end_s=None, result={"ok": True, "duration_s": 4.0}))
    assert row["predicted_duration_s"] == 5.1
    assert row["forecast_within_goal"] is True  # 1.1 s off: within 2 s


def test_a_failed_move_has_no_forecast_error():
    row = report.vm_result(entry(result={"ok": False, "duration_s": 3.0}))
    assert row["forecast_error_s"] is None and row["forecast_within_goal"] is None


def test_the_post_copy_stall_is_carried_into_the_row():
    row = report.vm_result(entry(mode="postcopy", forecast={"predicted_stall_ms": 1867.0}))
    assert row["predicted_stall_ms"] == 1867.0


def test_goal_is_twenty_percent_or_two_seconds_whichever_is_larger():
    assert report.forecast_error(3.9, 2.0)["forecast_within_goal"] is True  # 1.9 s off
    assert report.forecast_error(4.3, 2.0)["forecast_within_goal"] is False  # 2.3 s off, > 2 s and > 20 %
    assert report.forecast_error(55.0, 46.0)["forecast_within_goal"] is True  # +19.6 %
    assert report.forecast_error(56.0, 46.0)["forecast_within_goal"] is False  # +21.7 %
    assert report.forecast_error(None, 3.0) == {"forecast_error_s": None, "forecast_error_pct": None,
                                                "forecast_within_goal": None}


def test_the_drain_total_error_and_the_count_of_vms_within_goal():
    result = DrainResult(action="drain", host="hv1")
    result.forecast = {"total_s": 5.7}
    result.vms = [report.vm_result(entry()), report.vm_result(entry(name="vm2", result={"ok": True,
                                                                                        "duration_s": 10.0}))]
    figures = report.actual(result, 2.2)
    assert figures["forecast_total_s"] == 5.7
    assert figures["forecast_error_pct"] == 159.1 and figures["forecast_within_goal"] is False
    assert (figures["vms_within_goal"], figures["vms_checked"]) == (1, 2)


def test_copied_disks_are_in_the_row_planned_and_sent():
    row = report.vm_result(entry(forecast={"disk_bytes": 10 * 2**30},
                                 result={"ok": True, "duration_s": 100.0, "disk_bytes": 10 * 2**30}))
    assert row["predicted_disk_bytes"] == 10 * 2**30 and row["disk_bytes"] == 10 * 2**30
    plain = report.vm_result(entry())
    assert plain["predicted_disk_bytes"] == 0 and plain["disk_bytes"] is None
    assert report.summarize_result({"ok": True, "disk_bytes": 5})["disk_bytes"] == 5


def test_a_cold_move_has_no_forecast_error_its_figure_is_an_outage_bound():
    row = report.vm_result(entry(kind="cold", mode="cold", predicted_start_s=None, predicted_end_s=None,
                                 predicted_duration_s=40.0, result={"ok": True, "duration_s": 18.0}))
    assert row["predicted_duration_s"] == 40.0
    assert row["forecast_error_s"] is None and row["forecast_within_goal"] is None


def test_the_row_carries_the_slot_start_and_span_so_the_report_draws_it_where_the_schedule_put_it():
    row = report.vm_result(entry(predicted_start_s=3.0, predicted_end_s=23.0))
    assert (row["predicted_start_s"], row["predicted_duration_s"]) == (3.0, 20.0)
