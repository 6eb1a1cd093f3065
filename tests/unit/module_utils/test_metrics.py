"""The drain's Prometheus textfile (drain/metrics.py): format, escaping, bounded series, atomic write."""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest
import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import metrics
from drain_fakes import FakeBackend, fleet, make, vm
from prometheus_client.parser import text_string_to_metric_families

MIB = 1024 * 1024
NOW = 1_780_000_000.5

# the text format's sample line, strictly: name, optional {label="value",...}, one value (no timestamp)
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)"
_LABELS = r'\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\}'
SAMPLE_LINE = re.compile(rf"^(hvfleet_drain_[a-zA-Z0-9_:]+)(?:{_LABELS})? {_VALUE}$")


def parse(text):
    """{metric name: [(labels, value)]} through prometheus_client's parser; every family must be a gauge."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        assert family.documentation, family.name
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def strict_check(text):
    """Our own reading of the format: HELP then TYPE before each family, families contiguous, lines well formed."""
    assert text.endswith("\n")
    seen, current = set(), None
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in seen, f"family {name} appears twice"
            assert lines[index + 1] == f"# TYPE {name} gauge"
            seen.add(name)
            current = name
        elif line.startswith("# TYPE "):
            assert lines[index - 1].startswith(f"# HELP {line.split(' ')[2]} ")
        else:
            match = SAMPLE_LINE.match(line)
            assert match, line
            assert match.group(1) == current, f"{line} outside its family {current}"
    return seen


def result(**over):
    base = {
        "action": "drain", "host": "hv1", "state": "drained", "failed": False, "verified_empty": True,
        "summary": {"moved": 3, "failed": 1, "blocked": 2, "not_started": 0, "definitions_moved": 1},
        "actual": {"total_s": 44.0, "migrations": 3, "bytes_sent": 6_300_000_000, "worst_downtime_ms": 95,
                   "forecast_total_s": 40.0},
        "forecast": {"total_s": 40.0},
        "vms": [
            {"vm": "web1", "kind": "live", "destination": "hv2", "mode": "precopy", "mode_used": "precopy",
             "ok": True, "outcome": "moved", "duration_s": 18.0, "downtime_ms": 35, "bytes_sent": 2_090_000_000,
             "predicted_duration_s": 20.0, "attempts": 1},
            {"vm": "db1", "kind": "live", "destination": "hv3", "mode": "postcopy", "mode_used": "postcopy",
             "ok": True, "outcome": "moved", "duration_s": 30.0, "downtime_ms": None, "bytes_sent": 4_000_000_000,
             "predicted_duration_s": 25.0, "predicted_downtime_ms": 1867.0, "attempts": 2},
            {"vm": "cache", "kind": "live", "destination": "hv2", "mode": "precopy", "mode_used": "precopy",
             "ok": False, "outcome": "stayed", "duration_s": 60.0, "downtime_ms": None, "bytes_sent": 210_000_000,
             "predicted_duration_s": None, "attempts": 1},
            {"vm": "off", "kind": "definition", "destination": "hv3", "mode": "definition",
             "mode_used": "definition", "ok": True, "outcome": "moved", "duration_s": 0.2, "attempts": 1},
        ],
    }
    base.update(over)
    return base


def only(samples, **labels):
    found = [v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (labels, samples)
    return found[0]


def test_every_family_is_prefixed_documented_and_parses():
    text = metrics.render(result(), now=NOW)
    families = strict_check(text)
    assert families and all(name.startswith("hvfleet_drain_") for name in families)
    parsed = parse(text)
    assert set(parsed) == families
    assert only(parsed["hvfleet_drain_last_run_timestamp_seconds"], host="hv1", action="drain") == NOW


def test_run_figures():
    parsed = parse(metrics.render(result(), now=NOW))
    states = parsed["hvfleet_drain_last_run_state"]
    assert {lab["outcome"]: v for lab, v in states} == {
        "drained": 1, "not_empty": 0, "failed": 0, "interrupted": 0, "restored": 0, "cancelled": 0, "planned": 0}
    assert only(parsed["hvfleet_drain_last_run_failed"]) == 0
    assert only(parsed["hvfleet_drain_last_run_duration_seconds"]) == 44.0
    assert only(parsed["hvfleet_drain_last_run_forecast_seconds"]) == 40.0
    assert only(parsed["hvfleet_drain_last_run_forecast_error_ratio"]) == pytest.approx(0.1)
    assert only(parsed["hvfleet_drain_last_run_sent_bytes"]) == 6_300_000_000
    assert only(parsed["hvfleet_drain_last_run_worst_downtime_seconds"]) == pytest.approx(0.095)
    assert {lab["outcome"]: v for lab, v in parsed["hvfleet_drain_last_run_vms"]} == {
        "moved": 3, "failed": 1, "blocked": 2, "not_started": 0}
    assert only(parsed["hvfleet_drain_last_run_verified_empty"]) == 1


def test_per_migration_figures_and_their_labels():
    parsed = parse(metrics.render(result(), now=NOW))
    ok = parsed["hvfleet_drain_migration_ok"]
    keys = ("vm", "destination", "mode", "outcome", "host", "action")
    assert {tuple(lab[k] for k in keys): v for lab, v in ok} == {
        ("web1", "hv2", "precopy", "moved", "hv1", "drain"): 1, ("db1", "hv3", "postcopy", "moved", "hv1", "drain"): 1,
        ("cache", "hv2", "precopy", "stayed", "hv1", "drain"): 0,
        ("off", "hv3", "definition", "moved", "hv1", "drain"): 1}
    downtime = parsed["hvfleet_drain_migration_downtime_seconds"]
    assert [lab["vm"] for lab, _v in downtime] == ["web1"]  # post-copy and failures report none: no sample, not 0
    assert only(downtime, vm="web1") == pytest.approx(0.035)
    errors = parsed["hvfleet_drain_migration_forecast_error_ratio"]
    assert {lab["vm"]: v for lab, v in errors} == {"web1": pytest.approx(-0.1), "db1": pytest.approx(0.2)}
    assert only(parsed["hvfleet_drain_migration_sent_bytes"], vm="db1") == 4_000_000_000
    assert only(parsed["hvfleet_drain_migration_attempts"], vm="db1") == 2
    assert only(parsed["hvfleet_drain_migration_duration_seconds"], vm="cache") == 60.0
    # the post-copy's predicted pause (switch + stall) is there even though libvirt reports no downtime for it
    pauses = parsed["hvfleet_drain_migration_predicted_pause_seconds"]
    assert {lab["vm"]: v for lab, v in pauses} == {"db1": pytest.approx(1.867)}


def test_a_failed_interrupted_run_and_an_unknown_state():
    parsed = parse(metrics.render(result(state="interrupted", failed=True, verified_empty=None), now=NOW))
    assert only(parsed["hvfleet_drain_last_run_state"], outcome="interrupted") == 1
    assert sum(v for _l, v in parsed["hvfleet_drain_last_run_state"]) == 1
    assert only(parsed["hvfleet_drain_last_run_failed"]) == 1
    assert "hvfleet_drain_last_run_verified_empty" not in parsed  # not known: no sample
    odd = parse(metrics.render(result(state="something_new"), now=NOW))["hvfleet_drain_last_run_state"]
    assert only(odd, outcome="something_new") == 1 and sum(v for _l, v in odd) == 1


def test_label_values_are_escaped_and_read_back_unchanged():
    name = 'we"ird\\vm\nname'
    rows = [{"vm": name, "destination": 'hv"2', "mode_used": "precopy", "ok": True, "outcome": "moved",
             "duration_s": 1.5}]
    text = metrics.render(result(host="h\\1", vms=rows), now=NOW)
    strict_check(text)
    assert '\\"' in text and "\\\\" in text and "\\n" in text
    assert len(text.splitlines()) == text.count("\n")  # the newline inside the name did not split a line
    parsed = parse(text)
    assert only(parsed["hvfleet_drain_migration_duration_seconds"], vm=name, destination='hv"2', host="h\\1") == 1.5


def test_help_text_is_escaped():
    family = metrics.format_family("x", "a \\ b\nc", [({}, 1)])
    assert family.splitlines()[0] == "# HELP hvfleet_drain_x a \\\\ b\\nc"
    assert metrics.format_family("x", "nothing", []) == ""  # a family without samples is left out
    with pytest.raises(ValueError):
        metrics.format_family("x-y", "bad name", [({}, 1)])
    with pytest.raises(ValueError):
        metrics.format_family("x", "bad label", [({"a-b": "1"}, 1)])


def test_per_migration_series_are_bounded():
    rows = [{"vm": f"vm{i}", "destination": "hv2", "mode_used": "precopy", "ok": True, "outcome": "moved",
             "duration_s": float(i)} for i in range(7)]
    rows.append(dict(rows[0], duration_s=99.0))  # the same VM twice: its first row counts
    parsed = parse(metrics.render(result(vms=rows), now=NOW, max_migrations=3))
    assert [lab["vm"] for lab, _v in parsed["hvfleet_drain_migration_ok"]] == ["vm0", "vm1", "vm2"]
    assert only(parsed["hvfleet_drain_last_run_migrations_omitted"]) == 4
    everything = parse(metrics.render(result(vms=rows), now=NOW))
    assert len(everything["hvfleet_drain_migration_ok"]) == 7
    assert only(everything["hvfleet_drain_migration_duration_seconds"], vm="vm0") == 0.0
    assert only(everything["hvfleet_drain_last_run_migrations_omitted"]) == 0
    with pytest.raises(ValueError):
        metrics.render(result(), now=NOW, max_migrations=-1)


def test_values_are_written_exactly():
    assert metrics.format_value(6_300_000_000) == "6300000000"
    assert metrics.format_value(0.1) == "0.1"
    assert metrics.format_value(True) == "1"
    assert metrics.format_value(float("inf")) == "+Inf" and metrics.format_value(float("nan")) == "NaN"
    # a non-finite or non-numeric figure in a result is left out, not written as a value
    text = metrics.render(result(actual={"total_s": float("nan"), "bytes_sent": "lots"}, forecast=None), now=NOW)
    parsed = parse(text)
    assert "hvfleet_drain_last_run_duration_seconds" not in parsed and "hvfleet_drain_last_run_sent_bytes" not in parsed


def test_a_real_drain_result_over_the_fake_fleet(tmp_path):
    world = fleet(idle=vm(), hot=vm(dirty=80 * MIB), off=vm(active=False), disk=vm(local_disk=True))
    backend = FakeBackend(world)
    backend.fail["hot"] = "stayed"
    drainer, _backend, _events = make(tmp_path, world, backend=backend, max_failures=5)
    outcome = drainer.drain().to_dict()
    parsed = parse(metrics.render(outcome, now=NOW))
    assert only(parsed["hvfleet_drain_last_run_state"], outcome="failed") == 1
    assert {lab["outcome"]: v for lab, v in parsed["hvfleet_drain_last_run_vms"]} == {
        "moved": 2, "failed": 1, "blocked": 1, "not_started": 0, "left": 0}
    assert {lab["vm"]: v for lab, v in parsed["hvfleet_drain_migration_ok"]} == {"idle": 1, "hot": 0, "off": 1}
    hot = next(lab for lab, _v in parsed["hvfleet_drain_migration_ok"] if lab["vm"] == "hot")
    row = next(r for r in outcome["vms"] if r["vm"] == "hot")
    assert hot["outcome"] == "stayed" and hot["destination"] == row["destination"] and hot["mode"] == row["mode_used"]
    assert only(parsed["hvfleet_drain_migration_sent_bytes"], vm="idle") == 1000  # what the fake reports
    assert only(parsed["hvfleet_drain_last_run_verified_empty"]) == 0


def test_textfile_name():
    assert metrics.textfile_name("drain") == "hvfleet_drain_drain.prom"
    assert metrics.textfile_name("restore") == "hvfleet_drain_restore.prom"
    with pytest.raises(ValueError):
        metrics.textfile_name("../x")


def test_write_textfile_renames_a_temporary_file_of_the_same_directory(tmp_path, monkeypatch):
    target = tmp_path / "hvfleet_drain_drain.prom"
    renames = []
    real = os.replace

    def spy(src, dst):
        renames.append((src, dst, open(src, encoding="utf-8").read()))  # noqa: SIM115 - read and closed at once
        real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    metrics.write_textfile(target, "a 1\n")
    (src, dst, content), = renames
    assert os.path.dirname(src) == str(tmp_path) and not src.endswith(".prom") and dst == str(target)
    assert content == "a 1\n"  # complete before the rename
    assert target.read_text() == "a 1\n"
    assert os.stat(target).st_mode & 0o777 == metrics.TEXTFILE_MODE
    assert os.listdir(tmp_path) == [target.name]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "hvfleet_drain_drain.prom"
    metrics.write_textfile(target, "old 1\n")

    def broken(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        metrics.write_textfile(target, "new 2\n")
    assert target.read_text() == "old 1\n"
    assert os.listdir(tmp_path) == [target.name]


def test_a_reader_never_sees_part_of_a_file(tmp_path):
    """A reader that lists and reads *.prom as the collector does, while the file is rewritten again and again."""
    target = tmp_path / "hvfleet_drain_drain.prom"
    versions = ["".join(f"hvfleet_drain_x{{n=\"{i}\"}} {k}\n" for i in range(2000)) for k in range(40)]
    metrics.write_textfile(target, versions[0])
    done = threading.Event()
    seen, bad = [], []

    def reader():
        while not done.is_set():
            for name in os.listdir(tmp_path):
                if name.endswith(".prom"):
                    text = (tmp_path / name).read_text()
                    seen.append(text)
                    if text not in versions:
                        bad.append(len(text))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for text in versions[1:] * 3:
            metrics.write_textfile(target, text)
    finally:
        done.set()
        thread.join()
    assert seen and not bad
    assert os.listdir(tmp_path) == [target.name]


def test_the_examples_use_only_metrics_and_labels_that_are_written():
    """The alert rules and the Grafana panel (examples/prometheus) name families and labels render() writes."""
    root = Path(__file__).resolve().parents[3] / "examples" / "prometheus"
    rules = yaml.safe_load((root / "hvfleet-drain-alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    panel = json.loads((root / "hvfleet-drain-grafana-panel.json").read_text())
    exprs += [t["expr"] for t in panel["targets"]]
    written = {f"hvfleet_drain_{name}" for name in metrics.FAMILIES}
    labels = {"host", "action", "vm", "destination", "mode", "outcome", "instance"}
    for expr in exprs:
        names = set(re.findall(r"hvfleet_drain_[a-z0-9_]+", expr))
        assert names and names <= written, expr
        used = set(re.findall(r"([a-z_]+)\s*(?:=~|!=|=)\s*\"", expr))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            used |= {x.strip() for x in group.split(",")}
        assert used <= labels, expr
    outcomes = re.findall(r'outcome=~"([^"]+)"', "\n".join(exprs))
    assert all(set(o.split("|")) <= set(metrics.RUN_STATES) for o in outcomes)


def test_a_drain_that_leaves_vms_by_policy_is_not_empty_not_failed(tmp_path):
    """on_unmigratable: leave ends a drain `not_empty`: its own state, the VMs left counted, not a failure;
    a cold move (on_unmigratable: shutdown) is a migration row of mode `cold`, its outage as its downtime."""
    shmem = ("shared-memory device 'hvf' (ivshmem-plain)",)
    policies = [{"name": "cold", "selector": {"labels": {"cold": "1"}}, "settings": {"on_unmigratable": "shutdown"}},
                {"name": "leave", "selector": {"labels": {"leave": "1"}}, "settings": {"on_unmigratable": "leave"}}]
    world = fleet(idle=vm(), shmem=vm(devices=shmem, labels={"cold": "1"}),
                  kept=vm(devices=shmem, labels={"leave": "1"}))
    drainer, _backend, _events = make(tmp_path, world, policies=policies)
    outcome = drainer.drain().to_dict()
    parsed = parse(metrics.render(outcome, now=NOW))
    states = {lab["outcome"]: v for lab, v in parsed["hvfleet_drain_last_run_state"]}
    assert states["not_empty"] == 1 and sum(states.values()) == 1
    assert only(parsed["hvfleet_drain_last_run_failed"]) == 0
    assert only(parsed["hvfleet_drain_last_run_verified_empty"]) == 0
    assert only(parsed["hvfleet_drain_last_run_vms"], outcome="left") == 1
    assert only(parsed["hvfleet_drain_migration_ok"], vm="shmem", mode="cold") == 1
    assert "kept" not in {lab["vm"] for lab, _v in parsed["hvfleet_drain_migration_ok"]}


def test_a_cold_move_has_no_forecast_error_its_figure_bounds_an_outage():
    base = result()
    cold = {"vm": "dongle", "kind": "cold", "mode": "cold", "mode_used": "cold", "destination": "hv3", "ok": True,
            "outcome": "moved", "duration_s": 40.0, "predicted_duration_s": 130.0, "downtime_ms": 40000}
    parsed = parse(metrics.render(dict(base, vms=[*base["vms"], cold]), now=NOW))
    assert "dongle" not in {lab["vm"] for lab, _v in parsed["hvfleet_drain_migration_forecast_error_ratio"]}
    assert only(parsed["hvfleet_drain_migration_duration_seconds"], vm="dongle") == 40.0
