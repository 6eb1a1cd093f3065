"""The drain's start deadline (the end of a maintenance window): running migrations finish, nothing new starts,
the VMs not started are listed and the host stays cordoned."""

from __future__ import annotations

import json

from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from drain_fakes import FakeBackend, fleet, make, vm


def close_window_when(drainer, backend, first_vm):
    """Close the window (deadline = now) the moment `first_vm` starts migrating."""

    def hook(name, _src, _dst):
        if name == first_vm:
            drainer.config.start_deadline = drainer.clock()

    backend.before_migrate = hook


def test_window_closing_mid_run_lets_the_running_migration_finish_and_starts_nothing_new(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=100 + i) for i in range(5)})
    backend = FakeBackend(world, migrate_delay=0.2)
    drainer, backend, events = make(tmp_path, world, backend=backend, max_parallel=1)
    close_window_when(drainer, backend, "v4")  # largest memory: started first
    result = drainer.drain()
    assert [c[0] for c in backend.calls] == ["v4"]
    assert [r["vm"] for r in result.vms] == ["v4"] and result.vms[0]["ok"]  # the running one completed
    assert world.where("v4") != ["hv1"]
    assert sorted(result.not_started) == ["v0", "v1", "v2", "v3"]
    assert sorted(world.hosts["hv1"]) == ["v0", "v1", "v2", "v3"]
    assert result.failed and result.state == jr.DRAIN_FAILED
    assert result.summary["not_started"] == 4 and result.summary["blocked"] == 0 and result.blockers == []
    assert "maintenance window closed" in result.message and "(not started: v3, v2, v1, v0)" in result.message
    assert "stays cordoned" in result.message and backend.cordoned is True
    assert any("maintenance window closed" in e.get("message", "") for e in events if e["event"] == "note")
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert journal["vms"]["v4"]["state"] == jr.MOVED
    assert {journal["vms"][f"v{i}"]["state"] for i in range(4)} == {jr.PLANNED}
    assert all("window closed" in journal["vms"][f"v{i}"]["error"] for i in range(4))


def test_every_migration_in_flight_finishes_when_the_window_closes(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=100 + i) for i in range(6)})
    backend = FakeBackend(world, migrate_delay=0.3)
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=2, max_inbound=1)

    def hook(name, _src, _dst):
        with backend._lock:  # pylint: disable=protected-access
            if backend.concurrent == 2 and drainer.config.start_deadline is None:
                drainer.config.start_deadline = drainer.clock()

    backend.before_migrate = hook
    result = drainer.drain()
    started = [c[0] for c in backend.calls]
    assert len(started) == 2 and backend.max_concurrent == 2
    assert all(r["ok"] for r in result.vms) and {r["vm"] for r in result.vms} == set(started)
    assert sorted(result.not_started) == sorted(set(world.hosts["hv1"]))
    assert len(result.not_started) == 4 and result.failed and backend.cordoned


def test_a_deadline_already_past_starts_nothing_and_the_definitions_wait_too(tmp_path):
    world = fleet(a=vm(), off=vm(active=False))
    drainer, backend, _events = make(tmp_path, world, start_deadline=0.0)  # time.monotonic() is past 0
    result = drainer.drain()
    assert backend.calls == []
    assert sorted(result.not_started) == ["a", "off"] and sorted(world.hosts["hv1"]) == ["a", "off"]
    assert result.failed and backend.cordoned
    # a later run inside a window finishes the job from the journal
    drainer2, _backend, _events = make(tmp_path, world, backend=backend)
    again = drainer2.drain()
    assert again.state == jr.DRAINED and again.not_started == [] and world.hosts["hv1"] == {}


def test_a_deadline_in_the_future_does_not_change_a_drain(tmp_path):
    world = fleet(a=vm(), b=vm(), off=vm(active=False))
    drainer, backend, _events = make(tmp_path, world)
    drainer.config.start_deadline = drainer.clock() + 3600
    result = drainer.drain()
    assert result.state == jr.DRAINED and not result.failed and result.not_started == []
    assert len(backend.calls) == 2 and world.hosts["hv1"] == {}


def test_a_restore_stops_at_the_window_end_too_and_the_host_stays_cordoned(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=100 + i) for i in range(3)})
    backend = FakeBackend(world, migrate_delay=0.1)
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=1)
    assert drainer.drain().state == jr.DRAINED
    restorer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=1, max_inbound=1)
    first = []

    def hook(name, _src, _dst):
        if not first:
            first.append(name)
            restorer.config.start_deadline = restorer.clock()

    backend.before_migrate = hook
    backend.calls.clear()
    result = restorer.restore()
    assert len(backend.calls) == 1 and world.where(first[0]) == ["hv1"]
    assert len(result.not_started) == 2 and first[0] not in result.not_started
    assert result.failed and backend.cordoned is True
    assert "maintenance window closed" in result.message and "stays cordoned" in result.message
