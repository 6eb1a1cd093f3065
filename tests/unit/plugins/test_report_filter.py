"""Report filters: the SVG timeline, the per-VM rows and the plan lines (plugins/filter/report.py)."""

import re
import xml.etree.ElementTree as ET

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
        "plan": [{"vm": "a", "kind": "live", "destination": "hv2", "policy": "default", "policy_reason": "default",
                  "mode": "precopy", "mode_reason": "idle", "predicted_duration_s": 10.0,
                  "predicted_downtime_ms": 40.0},
                 {"vm": "b", "kind": "live", "destination": "hv3", "policy": "default", "mode": "precopy",
                  "mode_reason": "hot", "predicted_duration_s": 20.0}],
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


def rect(group, cls):
    found = [r for r in group.iter(f"{SVG}rect") if cls in (r.get("class") or "").split()]
    return found[0] if found else None


def test_one_row_per_vm_with_a_predicted_and_an_actual_bar():
    root = parse(timeline_svg(drain_result()))
    rows = rows_of(root)
    assert set(rows) == {"a", "b"}  # the blocked VM has no bar
    for name in ("a", "b"):
        assert rect(rows[name], "predicted") is not None and rect(rows[name], "actual") is not None


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
    # the predicted bar starts where the actual one does
    assert a_act.get("x") == a_pred.get("x")


def test_failed_and_moved_bars_differ_and_downtime_is_labelled():
    root = parse(timeline_svg(drain_result()))
    rows = rows_of(root)
    assert "ok" in rect(rows["a"], "actual").get("class") and "failed" in rect(rows["b"], "actual").get("class")
    assert rect(rows["a"], "actual").get("fill") != rect(rows["b"], "actual").get("fill")
    labels = {n: [t.text for t in g.iter(f"{SVG}text") if t.get("class") == "label"] for n, g in rows.items()}
    assert labels["a"] == ["50 ms down"] and labels["b"] == ["stayed"]


def test_vm_names_are_escaped():
    result = drain_result()
    evil = '<script>alert("x")</script>&'
    result["vms"][0]["vm"] = evil
    svg = timeline_svg(result)
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    rows = rows_of(parse(svg))  # still well-formed XML
    assert evil in rows


def test_a_plan_without_actuals_is_laid_out_on_the_forecast_lanes():
    result = drain_result()
    result["vms"] = []
    result["plan"].append({"vm": "d", "kind": "live", "destination": "hv2", "mode": "precopy",
                           "predicted_duration_s": 5.0})
    root = parse(timeline_svg(result))
    rows = rows_of(root)
    assert all(rect(g, "actual") is None for g in rows.values())
    xs = {n: float(rect(g, "predicted").get("x")) for n, g in rows.items()}
    # two lanes: a and b start together, d after a (the shorter one)
    assert xs["a"] == xs["b"] < xs["d"]
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
    assert rows["c"]["state"] == "blocked" and rows["c"]["recovery"] == "add a host"


def test_plan_lines_name_every_vm_destination_mode_and_blocker():
    result = drain_result()
    result["vms"] = []
    text = "\n".join(plan_lines(result))
    assert text.startswith("Plan for draining hv1: 2 VM(s) to move, 1 blocked; forecast 25.0 s with up to 2")
    assert "- a -> hv2: precopy" in text and "why this mode: idle" in text and "- b -> hv3: precopy" in text
    assert "predicted: 10.0 s, downtime 40 ms" in text
    assert "- c: fits nowhere" in text and "fix: add a host" in text and "hv2: memory" in text


def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {"timeline_svg", "report_rows", "plan_lines"}
