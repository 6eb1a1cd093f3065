"""Report filters: the SVG timeline, the per-VM rows and the plan lines (plugins/filter/report.py)."""

import re
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.hvfleet.drain.plugins.filter.report import (
    FilterModule,
    _nice_step,
    plan_lines,
    report_rows,
    timeline_svg,
)

SVG = "{http://www.w3.org/2000/svg}"


def vm(name, started, finished, ok=True, duration=None, predicted=10.0, kind="live", downtime=50.0, **extra):
    return {"vm": name, "kind": kind, "source": "hv1", "destination": "hv2", "policy": "default", "mode": "precopy",
            "mode_used": "precopy", "state": "moved" if ok else "stayed", "ok": ok,
            "outcome": "moved" if ok else "stayed", "duration_s": duration, "downtime_ms": downtime if ok else None,
            "bytes_sent": 100 * 1024 * 1024, "predicted_duration_s": predicted, "predicted_downtime_ms": 40.0,
            "message": "ok" if ok else "did not converge", "recovery": None, "steps": [], "attempts": 1,
            "started": started, "finished": finished, **extra}


def drain_result():
    return {
        "action": "drain", "host": "hv1", "state": "failed",
        # the schedule: a from 0 to 10 s, b from 3 to 23 s; a really ran 0-12 s, b 5-45 s
        "plan": [{"vm": "a", "kind": "live", "destination": "hv2", "policy": "default", "policy_reason": "default",
                  "mode": "precopy", "mode_reason": "idle", "predicted_duration_s": 8.0,
                  "predicted_start_s": 0.0, "predicted_end_s": 10.0, "predicted_downtime_ms": 40.0},
                 {"vm": "b", "kind": "live", "destination": "hv3", "policy": "default", "mode": "precopy",
                  "mode_reason": "hot", "predicted_duration_s": 20.0, "predicted_start_s": 3.0,
                  "predicted_end_s": 23.0}],
        "vms": [vm("a", "2030-01-01T10:00:00.000+00:00", "2030-01-01T10:00:12.000+00:00", duration=12.0),
                vm("b", "2030-01-01T10:00:05.000+00:00", "2030-01-01T10:00:45.000+00:00", ok=False, duration=40.0,
                   predicted=20.0)],
        "blockers": [{"vm": "c", "kind": "capacity", "message": "fits nowhere", "fix": "add a host",
                      "reasons": {"hv2": "memory", "hv3": "memory"}}],
        "forecast": {"total_s": 25.0, "serial_s": 30.0, "concurrency": 2, "worst_downtime_ms": 40.0},
    }


def parse(svg):
    return ET.fromstring(svg)


def rows_of(root):
    return {g.get("data-vm"): g for g in root.iter(f"{SVG}g") if g.get("class") == "vm"}


def labels(group, cls="label"):
    """The texts of a VM's row with class `cls` (all labels by default), without their tooltips."""
    return [t.text for t in group.iter(f"{SVG}text") if cls in (t.get("class") or "").split()]


def rect(group, cls):
    found = [r for r in group.iter(f"{SVG}rect") if cls in (r.get("class") or "").split()]
    return found[0] if found else None


def test_one_row_per_vm_with_a_predicted_and_an_actual_bar():
    root = parse(timeline_svg(drain_result()))
    rows = rows_of(root)
    assert set(rows) == {"a", "b", "c"}
    for name in ("a", "b"):
        assert rect(rows[name], "predicted") is not None and rect(rows[name], "actual") is not None
    # the blocked VM has no bar, and says why
    assert rect(rows["c"], "predicted") is None and rect(rows["c"], "actual") is None
    assert labels(rows["c"]) == ["blocked, not moved: fits nowhere"]


def test_bars_are_placed_and_sized_by_time():
    root = parse(timeline_svg(drain_result()))
    rows = rows_of(root)
    a_act, b_act = rect(rows["a"], "actual"), rect(rows["b"], "actual")
    a_pred, b_pred = rect(rows["a"], "predicted"), rect(rows["b"], "predicted")
    # a started first; b started 5 s later
    assert float(a_act.get("x")) < float(b_act.get("x"))
    # a: 12 s actual vs 10 s predicted; b: 40 s actual vs 20 s predicted - widths keep those ratios
    assert abs(float(a_act.get("width")) / float(a_pred.get("width")) - 1.2) < 0.01
    assert abs(float(b_act.get("width")) / float(b_pred.get("width")) - 2.0) < 0.01
    # a was planned at 0 and started at 0: both bars begin at the axis' zero
    assert a_act.get("x") == a_pred.get("x")


def test_failed_and_moved_bars_differ_and_downtime_is_labelled():
    root = parse(timeline_svg(drain_result()))
    rows = rows_of(root)
    assert "ok" in rect(rows["a"], "actual").get("class") and "failed" in rect(rows["b"], "actual").get("class")
    assert rect(rows["a"], "actual").get("fill") != rect(rows["b"], "actual").get("fill")
    assert labels(rows["a"], "actual") == ["ran 0.0-12.0 s, 50 ms down"]
    assert labels(rows["b"], "actual") == ["ran 5.0-45.0 s, stayed"]


def test_vm_names_are_escaped():
    result = drain_result()
    evil = '<script>alert("x")</script>&'
    result["vms"][0]["vm"] = evil
    svg = timeline_svg(result)
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    rows = rows_of(parse(svg))  # still well-formed XML
    assert evil in rows


def test_a_plan_without_actuals_draws_the_schedule_slots():
    result = drain_result()
    result["vms"] = []
    result["plan"].append({"vm": "d", "kind": "live", "destination": "hv2", "mode": "precopy",
                           "predicted_start_s": 10.0, "predicted_end_s": 15.0})
    result["plan"].append({"vm": "e", "kind": "definition", "destination": "hv2", "mode": "definition"})
    root = parse(timeline_svg(result))
    rows = rows_of(root)
    assert all(rect(g, "actual") is None for g in rows.values())
    xs = {n: float(rect(rows[n], "predicted").get("x")) for n in ("a", "b", "d")}
    # each where the schedule put it: a at 0, b at 3 s, d at 10 s (when a was predicted to end)
    assert xs["a"] < xs["b"] < xs["d"]
    assert float(rect(rows["a"], "predicted").get("x")) + float(rect(rows["a"], "predicted").get("width")) == \
        pytest.approx(xs["d"], abs=0.2)
    assert labels(rows["d"], "predicted") == ["plan 10.0-15.0 s"]
    assert rect(rows["e"], "predicted") is None and labels(rows["e"])[0].startswith("no prediction: a definition")
    assert "Forecast" in root.find(f"{SVG}title").text


def test_an_empty_result_still_draws():
    root = parse(timeline_svg({}))
    assert rows_of(root) == {}
    assert any(t.text == "nothing to migrate" for t in root.iter(f"{SVG}text"))


def test_axis_ticks_cover_the_run():
    svg = timeline_svg(drain_result())
    ticks = [int(m) for m in re.findall(r">(\d+) s</text>", svg)]
    assert ticks[0] == 0 and ticks[-1] >= 45


def test_nice_steps():
    assert _nice_step(45) in (5, 10)
    assert _nice_step(3600) in (500, 1000)


def test_report_rows_merge_plan_outcome_and_blockers():
    rows = {r["vm"]: r for r in report_rows(drain_result())}
    assert rows["a"]["mode_reason"] == "idle" and rows["a"]["delta_s"] == 2.0 and rows["a"]["mib_sent"] == 100.0
    assert rows["b"]["ok"] is False and rows["b"]["delta_s"] == 20.0
    assert (rows["b"]["predicted_start_s"], rows["b"]["predicted_end_s"]) == (3.0, 23.0)
    assert (rows["b"]["actual_start_s"], rows["b"]["actual_end_s"]) == (5.0, 45.0)
    assert rows["c"]["state"] == "blocked" and rows["c"]["recovery"] == "add a host"


def test_plan_lines_name_every_vm_destination_mode_and_blocker():
    result = drain_result()
    result["vms"] = []
    text = "\n".join(plan_lines(result))
    assert text.startswith("Plan for draining hv1: 2 VM(s) to move, 1 blocked; forecast 25.0 s with up to 2")
    assert "- a -> hv2: precopy" in text and "why this mode: idle" in text and "- b -> hv3: precopy" in text
    assert "predicted: 10.0 s (from 0.0 s to 10.0 s of the drain), downtime 40 ms" in text
    assert "- c: fits nowhere" in text and "fix: add a host" in text and "hv2: memory" in text


def test_plan_lines_say_when_the_total_is_expected_over_the_readings_precision():
    result = drain_result()
    result["vms"] = []
    result["forecast"].update(total_s=50.7, as_read_s=54.1, range_s=[42.9, 54.1])
    head = plan_lines(result)[0]
    assert "forecast 50.7 s" in head
    assert "[expected over the dirty-rate readings' precision: 54.1 s as read, 42.9 s to 54.1 s]" in head
    result["forecast"].update(total_s=25.0, as_read_s=25.0, range_s=[24.0, 26.0])  # within the goal: not said
    assert "precision" not in plan_lines(result)[0]


def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {"timeline_svg", "report_rows", "plan_lines"}


# ---- the predicted bar is the schedule's slot, on the axis of the actual run ----------------------


def x_of(group, cls):
    found = rect(group, cls)
    return float(found.get("x")), float(found.get("x")) + float(found.get("width"))


def test_the_predicted_bar_runs_from_the_predicted_start_to_the_predicted_end():
    """b was planned from 3 s to 23 s and ran from 5 s to 45 s: its light bar must start at 3 s - not at
    the axis' zero, and not where it really started (5 s)."""
    rows = rows_of(parse(timeline_svg(drain_result())))
    zero, ten = x_of(rows["a"], "predicted")  # a's slot is 0-10 s: the axis' zero and its scale
    per_s = (ten - zero) / 10.0
    b_pred, b_act = x_of(rows["b"], "predicted"), x_of(rows["b"], "actual")
    assert b_pred[0] == pytest.approx(zero + 3 * per_s, abs=0.2)
    assert b_pred[1] == pytest.approx(zero + 23 * per_s, abs=0.2)
    assert b_act[0] == pytest.approx(zero + 5 * per_s, abs=0.2)
    assert b_act[1] == pytest.approx(zero + 45 * per_s, abs=0.2)
    assert b_pred[0] != pytest.approx(zero, abs=1) and b_pred[0] != pytest.approx(b_act[0], abs=1)
    assert labels(rows["b"], "predicted") == ["plan 3.0-23.0 s"]
    assert labels(rows["b"], "actual") == ["ran 5.0-45.0 s, stayed"]


def test_the_axis_zero_is_the_first_migration_start_not_a_resumed_vms_earlier_start():
    result = drain_result()
    result["vms"].append(vm("r", "2030-01-01T09:00:00.000+00:00", "2030-01-01T10:00:01.000+00:00", duration=None,
                            predicted_start_s=0.0, predicted_end_s=4.0))
    result["reconciled"] = [{"vm": "r", "journal_state": "migrating", "found": "moved"}]
    rows = {r["vm"]: r for r in report_rows(result)}
    assert (rows["b"]["actual_start_s"], rows["b"]["actual_end_s"]) == (5.0, 45.0)
    assert rows["r"]["predicted_start_s"] is None and rows["r"]["forecast_error_s"] is None
    assert rows["r"]["predicted_duration_s"] is None  # the earlier run's prediction is not this run's
    assert rows["r"]["no_prediction"].startswith("no prediction: resumed from the journal")
    svg = rows_of(parse(timeline_svg(result)))
    assert rect(svg["r"], "predicted") is None and rect(svg["r"], "actual") is not None
    assert labels(svg["r"], "no-prediction") == [rows["r"]["no_prediction"]]
    assert labels(svg["r"], "actual") == ["ran until 1.0 s (began in an earlier run), 50 ms down"]


def test_a_cold_move_has_only_its_actual_bar_and_says_why():
    result = drain_result()
    result["plan"].append({"vm": "k", "kind": "cold", "destination": "hv2", "mode": "cold",
                           "predicted_duration_s": 40.0})
    result["vms"].append(vm("k", "2030-01-01T10:00:12.000+00:00", "2030-01-01T10:00:30.000+00:00", kind="cold",
                            duration=18.0, predicted=40.0, downtime=18000.0))
    rows = {r["vm"]: r for r in report_rows(result)}
    assert rows["k"]["predicted_start_s"] is None and rows["k"]["forecast_within_goal"] is None
    svg = rows_of(parse(timeline_svg(result)))
    assert rect(svg["k"], "predicted") is None and x_of(svg["k"], "actual")[0] > x_of(svg["a"], "actual")[0]
    assert labels(svg["k"], "no-prediction")[0].startswith("no prediction: a cold move")


def test_rows_carry_the_forecast_error_and_the_goal():
    result = drain_result()
    rows = {r["vm"]: r for r in report_rows(result)}
    # a: slot 10 s, ran 12 s: -2.0 s, -16.7 %, within (2 s); b failed: no error
    assert (rows["a"]["forecast_error_s"], rows["a"]["forecast_error_pct"]) == (-2.0, -16.7)
    assert rows["a"]["forecast_within_goal"] is True
    assert rows["b"]["forecast_error_s"] is None and rows["b"]["forecast_within_goal"] is None
    result["vms"][0]["duration_s"] = 13.0  # 3 s off and 23 %: outside the goal
    result["vms"][0]["finished"] = "2030-01-01T10:00:13.000+00:00"
    assert report_rows(result)[0]["forecast_within_goal"] is False
    # the module's own figures win when the VM row has them
    result["vms"][0].update(forecast_error_s=-1.5, forecast_error_pct=-13.0, forecast_within_goal=True)
    first = report_rows(result)[0]
    assert (first["forecast_error_s"], first["forecast_error_pct"], first["forecast_within_goal"]) == \
        (-1.5, -13.0, True)
    tip = rect(rows_of(parse(timeline_svg(result)))["a"], "actual").find(f"{SVG}title").text
    assert "forecast off by -1.5 s (-13.0 %), within the goal" in tip


def left_result():
    result = drain_result()
    result["state"] = "not_empty"
    result["left"] = [{"vm": "odd", "policy": "pinned", "live_blockers": ["ivshmem-plain"],
                       "why": "cannot live-migrate (ivshmem-plain)", "fix": "shut 'odd' down for the maintenance"}]
    result["forecast"]["left"] = ["odd"]
    return result


def test_a_vm_left_on_the_host_is_a_row_and_a_line_in_the_chart():
    rows = {r["vm"]: r for r in report_rows(left_result())}
    assert rows["odd"]["state"] == "left" and rows["odd"]["recovery"] == "shut 'odd' down for the maintenance"
    svg = rows_of(parse(timeline_svg(left_result())))
    assert rect(svg["odd"], "predicted") is None and rect(svg["odd"], "actual") is None
    assert labels(svg["odd"])[0].startswith("left on the host by its policy")


def test_plan_lines_say_which_vms_are_left_on_the_host_why_and_the_fix():
    result = left_result()
    result["vms"] = []
    text = "\n".join(plan_lines(result))
    assert "1 blocked, 1 left on the host (it will NOT be empty)" in text.splitlines()[0]
    assert "Left on the host (hv1 will NOT be empty; a rolling upgrade refuses to reboot it):" in text
    assert "- odd: cannot live-migrate (ivshmem-plain)\n    fix: shut 'odd' down for the maintenance" in text
    # only the names (an older result): still said
    result.pop("left")
    assert "- odd: left by its policy (on_unmigratable: leave)" in "\n".join(plan_lines(result))
    result["forecast"]["left"] = []
    assert "Left on the host" not in "\n".join(plan_lines(result))
