"""docs/EVENTS.md lists every progress event the drain writes: kinds, fields, types, presence.

Drains and a restore run over the fake fleet (drain_fakes.py); every event they write to
drain-progress.jsonl is checked against the tables of the document, so a kind or field added to the
code without the document (or with another type) fails here.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import progress
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample
from drain_fakes import FakeBackend, fleet, hosts, vm

DOC = Path(__file__).resolve().parents[3] / "docs" / "EVENTS.md"
MIB = 1024 * 1024
ROW = re.compile(r"^\| `([a-z_]+)` \| ([a-z ]+?) \| ([a-z ]+?) \| .+\|$")
SHMEM = ("shared-memory device 'hvf' (ivshmem-plain)",)
POLICIES = [{"name": "cold", "selector": {"labels": {"cold": "1"}}, "settings": {"on_unmigratable": "shutdown"}},
            {"name": "leave", "selector": {"labels": {"leave": "1"}}, "settings": {"on_unmigratable": "leave"}}]
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None)}


def read_doc():
    """(common fields, {kind: fields}); fields: {name: (allowed python types, always present)}."""
    common, kinds, current = {}, {}, None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## Fields of every event"):
            current = common
        elif line.startswith("### `"):
            current = kinds.setdefault(line.split("`")[1], {})
        elif line.startswith("## "):
            current = None
        elif current is not None and (match := ROW.match(line)):
            name, kind, presence = match.groups()
            words = kind.split(" or ")
            assert set(words) <= set(TYPES), f"unknown type in {line}"
            current[name] = (tuple(TYPES[w] for w in words), presence == "always")
    return common, kinds


COMMON, KINDS = read_doc()


def type_ok(value, allowed):
    if isinstance(value, bool):  # a bool is an int to Python, not to JSON
        return bool in allowed
    return isinstance(value, allowed)


def problems(event):
    """What is wrong with one event against the document (empty: nothing)."""
    kind = event.get("event")
    if kind not in KINDS:
        return [f"kind {kind!r} is not documented"]
    fields = dict(COMMON, **KINDS[kind])
    out = []
    for name, value in event.items():
        if name not in fields:
            out.append(f"{kind}: field {name!r} is not documented")
        elif not type_ok(value, fields[name][0]):
            out.append(f"{kind}: {name}={value!r} is not {fields[name][0]}")
    for name, (_types, always) in fields.items():
        if always and name != "v" and name not in event:  # `v`: see test_every_event_carries_the_version
            out.append(f"{kind}: always-present field {name!r} is missing")
    return out


class Collector:
    """The drain's progress callback: keeps the events and wakes whoever waits for one."""

    def __init__(self):
        self.events = []
        self.cond = threading.Condition()

    def __call__(self, event):
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout=10.0):
        with self.cond:
            return self.cond.wait_for(lambda: any(predicate(e) for e in self.events), timeout)


def drainer(tmp_path, world, backend, **config):
    src, dests = hosts()
    collector = Collector()
    config.setdefault("progress_interval_s", 0.02)
    return Drainer(backend, src, dests, DrainConfig(**config), state_dir=tmp_path, progress=collector), collector


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """[(name, events read back from drain-progress.jsonl)] of a drain with every kind of VM, then a restore."""
    tmp_path = tmp_path_factory.mktemp("events")
    world = fleet(idle=vm(), web=vm(memory=1024), hot=vm(dirty=80 * MIB), off=vm(active=False),
                  disk=vm(local_disk=True), flaky=vm(), shmem=vm(devices=SHMEM, labels={"cold": "1"}),
                  kept=vm(devices=SHMEM, labels={"leave": "1"}))
    backend = FakeBackend(world)
    backend.fail["flaky"] = "stayed"
    drain, collector = drainer(tmp_path, world, backend, max_failures=5, policies=POLICIES)
    # each live migration waits (with a deadline) until the progress loop has reported it once
    backend.before_migrate = lambda name, _src, _dst: collector.wait_for(
        lambda e: e.get("event") == "vm_progress" and e.get("vm") == name)
    drain.drain()
    drained, _offset = jr.read_events(tmp_path)
    backend.before_migrate = None
    restore, _collector = drainer(tmp_path, world, backend, max_failures=5, policies=POLICIES)
    restore.restore()
    restored, _offset = jr.read_events(tmp_path)
    return [("drain", drained), ("restore", restored)]


def test_the_document_lists_kinds_and_fields():
    assert set(KINDS) == {"run_started", "note", "vm_started", "vm_progress", "vm_cold_step", "vm_finished",
                          "run_finished"}
    assert {"v", "seq", "at", "t", "run", "host", "action", "event"} == set(COMMON)
    assert all(KINDS.values())


def test_every_event_written_is_documented(runs):
    for name, events in runs:
        assert events, name
        bad = [p for e in events for p in problems(e)]
        assert not bad, f"{name}: {bad}"


def test_the_runs_cover_every_kind_and_both_kinds_of_move(runs):
    seen = {e["event"] for _name, events in runs for e in events}
    assert seen == set(KINDS)
    drained = dict(runs)["drain"]
    modes = {e["mode"] for e in drained if e["event"] == "vm_started"}
    assert "definition" in modes and "cold" in modes and modes - {"definition", "cold"}
    finished = {e["vm"]: e for e in drained if e["event"] == "vm_finished"}
    assert finished["flaky"]["ok"] is False and finished["flaky"]["outcome"] == "stayed"
    assert finished["idle"]["ok"] is True and finished["off"]["mode"] == "definition"
    assert finished["shmem"]["ok"] is True and finished["shmem"]["mode"] == "cold" and "kept" not in finished
    assert next(e for e in drained if e["event"] == "run_finished")["left"] == 1
    assert {e["step"] for _name, events in runs for e in events if e["event"] == "vm_cold_step"} >= {
        "shutdown_requested", "shut_off", "defined", "started"}
    assert {e["action"] for e in dict(runs)["restore"]} == {"restore"}


def test_the_order_the_document_promises(runs):
    for name, events in runs:
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), name
        assert len({e["run"] for e in events}) == 1 and events[0]["run"], name
        kinds = [e["event"] for e in events]
        assert kinds.count("run_started") == 1 and kinds[-1] == "run_finished" and kinds.count("run_finished") == 1
        start = kinds.index("run_started")
        assert all(k in ("note",) for k in kinds[:start]), name
        per_vm = {}
        for e in events:
            if e["event"].startswith("vm_"):
                per_vm.setdefault(e["vm"], []).append(e["event"])
        for vm_name, seq in per_vm.items():
            assert seq[0] == "vm_started" and seq.count("vm_started") == 1, (name, vm_name, seq)
            assert seq[-1] == "vm_finished" and seq.count("vm_finished") == 1, (name, vm_name, seq)
            assert set(seq) <= {"vm_started", "vm_progress", "vm_cold_step", "vm_finished"}
        assert [e["t"] for e in events] == sorted(e["t"] for e in events)


def test_a_field_the_document_does_not_list_is_caught():
    event = {"v": 1, "seq": 1, "at": "x", "t": 0.0, "run": "r", "host": "hv1", "action": "drain", "event": "note",
             "message": "m"}
    assert problems(event) == []
    assert problems(dict(event, colour="red")) == ["note: field 'colour' is not documented"]
    assert problems(dict(event, event="vm_teleported")) == ["kind 'vm_teleported' is not documented"]
    assert problems(dict(event, seq=True)) == ["note: seq=True is not (<class 'int'>,)"]
    assert problems({k: v for k, v in event.items() if k != "message"}) == [
        "note: always-present field 'message' is missing"]


def test_vm_progress_fields_are_the_engine_progress_payload():
    sample = JobSample(t=1.0, phase="precopy", memory_total=4, memory_processed=1, memory_remaining=3, iteration=2,
                       bandwidth_bps=2.0)
    payload = dict(progress(sample), vm="a", destination="hv2")
    assert set(payload) == set(KINDS["vm_progress"])
    assert problems(dict(payload, v=1, seq=1, at="x", t=0.0, run="r", host="hv1", action="drain",
                         event="vm_progress")) == []


def test_every_event_carries_the_version(runs):
    for _name, events in runs:
        assert all(e.get("v") == 1 for e in events)
