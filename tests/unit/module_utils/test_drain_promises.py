"""The drain's promises on the paths that broke them: leftover definitions, interrupted post-copies in the
journal, restores that claimed too much, cancels that were lost, two running copies, a resumed post-copy
waiting behind others, malformed journals and facts. Each test reproduces one such path on the fake fleet."""

from __future__ import annotations

import json
import threading

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import UnsafeState
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host, HostError
from drain_fakes import FakeBackend, World, fleet, hosts, make, vm


def complete_postcopy_by_hand(world, name, src, dst):
    """What `virsh migrate --postcopy-resume` (the engine's recovery advice) or a link that came back
    leaves: the guest runs on the destination, libvirt leaves a shut-off definition on the source."""
    with world.lock:
        data = world.hosts[src].pop(name)
        world.hosts[dst][name] = dict(data, state="running", active=True, persistent=True, postcopy=None)
        world.hosts[src][name] = dict(data, state="shutoff", active=False, persistent=True, postcopy=None)


def test_a_leftover_source_definition_is_removed_never_moved_as_a_second_copy(tmp_path):
    world = fleet(web1=vm(memory=512))
    drainer, backend, _events = make(tmp_path, world)
    backend.fail["web1"] = "postcopy_paused"
    first = drainer.drain()
    dest = first.vms[0]["destination"]
    assert first.vms[0]["state"] == jr.PAUSED_POSTCOPY
    complete_postcopy_by_hand(world, "web1", "hv1", dest)
    backend.fail.clear()
    second, _backend, _events = make(tmp_path, world, backend=backend)
    result = second.drain()
    assert world.where("web1") == [dest]  # defined on exactly one host
    assert ("web1", "hv1") in backend.dropped
    assert backend.calls == [c for c in backend.calls if c[0] != "web1" or c[2] == dest]
    assert result.state == jr.DRAINED
    assert json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]["web1"]["state"] == "moved"
    restored = make(tmp_path, world, backend=backend)[0].restore()
    assert restored.state == jr.RESTORED and world.where("web1") == ["hv1"]
    assert world.hosts["hv1"]["web1"]["state"] == "running"


def test_a_leftover_the_journal_does_not_know_is_removed_too(tmp_path):
    world = fleet(app=vm(memory=512))
    complete_postcopy_by_hand(world, "app", "hv1", "hv3")  # a cycle archived before it completed by hand
    drainer, backend, _events = make(tmp_path, world)
    plan = drainer.drain(plan_only=True)
    assert plan.plan == [] and backend.dropped == []  # check mode only looks
    assert any(r["found"] == "leftover_definition" for r in plan.reconciled)
    result = drainer.drain()
    assert result.state == jr.DRAINED and backend.calls == []
    assert world.where("app") == ["hv3"]


def test_an_interrupted_postcopy_survives_a_cancelled_run_and_is_resumed_first(tmp_path):
    world = fleet(db1=vm(memory=256), big1=vm(memory=2048), big2=vm(memory=3072))
    drainer, backend, _events = make(tmp_path, world, max_parallel=1, max_failures=5)
    backend.fail["db1"] = "postcopy_paused"
    backend.fail["big1"] = backend.fail["big2"] = "stayed"
    first = drainer.drain()
    assert {r["vm"]: r["state"] for r in first.vms}["db1"] == jr.PAUSED_POSTCOPY
    dest = next(r["destination"] for r in first.vms if r["vm"] == "db1")
    cancelled, _backend, _events = make(tmp_path, world, backend=backend, max_parallel=1)
    cancelled.cancel()
    second = cancelled.drain()
    assert second.state == jr.INTERRUPTED
    entry = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]["db1"]
    assert entry["state"] == "paused_postcopy" and entry["destination"] == dest
    backend.fail.clear()
    backend.calls.clear()
    third = make(tmp_path, world, backend=backend, max_parallel=1)[0].drain()
    assert backend.calls[0][:3] == ("db1", "hv1", dest)  # the frozen guest goes first, to the same host
    assert third.state == jr.DRAINED and world.where("db1") == [dest]


def test_restore_finds_a_vm_journalled_failed_that_moved_later(tmp_path):
    world = fleet(app=vm(memory=512), web=vm(memory=512))
    drainer, backend, _events = make(tmp_path, world)

    def still_streaming(name, src, _dst):
        if name == "app":
            raise UnsafeState("A post-copy migration of 'app' is in progress.", "wait for it to complete.")

    backend.before_migrate = still_streaming
    first = drainer.drain()
    assert {r["vm"]: r["state"] for r in first.vms}["app"] == jr.FAILED
    with world.lock:  # the post-copy completes by itself, to hv2
        world.hosts["hv2"]["app"] = dict(world.hosts["hv1"].pop("app"))
    backend.before_migrate = None
    result = make(tmp_path, world, backend=backend)[0].restore()
    assert result.state == jr.RESTORED, result.message
    assert world.where("app") == ["hv1"] and world.where("web") == ["hv1"]
    assert backend.cordoned is False


def test_restore_never_calls_home_a_vm_that_is_not(tmp_path):
    world = fleet(a=vm(), b=vm())
    drainer, backend, _events = make(tmp_path, world)
    assert drainer.drain().state == jr.DRAINED
    away = world.where("b")[0]
    backend.unreachable.add(away)  # b's host cannot be seen: it cannot be brought back, nor called home
    result = make(tmp_path, world, backend=backend)[0].restore()
    assert result.state != jr.RESTORED and result.failed
    assert backend.cordoned is True
    assert "b" in {r["vm"] for r in result.recoverable} or any(x["vm"] == "b" for x in result.blockers)
    assert json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]["b"]["state"] != "home"


def test_a_cancel_that_lands_before_the_migration_starts_is_not_lost(tmp_path):
    world = fleet(a=vm())
    backend = FakeBackend(world)
    drainer, backend, _events = make(tmp_path, world, backend=backend)
    original = backend.connect

    def connect_then_cancel(uri):
        conn = original(uri)
        if uri.endswith("hv1") and threading.current_thread().name.startswith("drain "):
            drainer.cancel()  # Ctrl-C while the worker opens its connections
        return conn

    backend.connect = connect_then_cancel
    result = drainer.drain()
    assert world.where("a") == ["hv1"] and result.state == jr.INTERRUPTED
    assert all(not r["ok"] for r in result.vms)


def test_a_resume_pauses_the_second_running_copy_and_names_both(tmp_path):
    world = fleet(b=vm())
    world.hosts["hv2"]["b"] = vm()  # running on both hosts after a crash
    backend = FakeBackend(world)
    journal = jr.Journal.load(tmp_path, "hv1")
    journal.begin_run("drain")
    journal.put_vm("b", {"kind": "live", "destination": "hv2", "mode": "precopy"})
    journal.update_vm("b", jr.MIGRATING)
    drainer, backend, _events = make(tmp_path, world, backend=backend, orphan_wait_s=0)
    drainer.sleep = lambda s: None
    result = drainer.drain()
    assert sorted(backend.paused) == [("b", "hv1"), ("b", "hv2")]  # which copy is current cannot be told
    running = [h for h in ("hv1", "hv2") if world.hosts[h]["b"]["state"] == "running"]
    assert running == []
    assert [r["vm"] for r in result.recoverable] == ["b"] and "hv2" in result.recoverable[0]["where"]
    assert result.failed and backend.calls == []


def test_a_cancel_stops_waiting_for_an_orphaned_job(tmp_path):
    world = fleet(b=vm())
    world.hosts["hv1"]["b"]["job"] = True
    journal = jr.Journal.load(tmp_path, "hv1")
    journal.begin_run("drain")
    journal.put_vm("b", {"kind": "live", "destination": "hv2", "mode": "precopy"})
    journal.update_vm("b", jr.MIGRATING)
    drainer, backend, _events = make(tmp_path, world, orphan_wait_s=3600)
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        drainer.cancel()

    drainer.sleep = sleep
    result = drainer.drain()
    assert len(waits) == 1 and backend.abort_calls == [] and backend.calls == []
    assert result.state == jr.INTERRUPTED
    assert json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]["b"]["state"] == "migrating"


@pytest.mark.parametrize("entry, named", [
    ({"state": "teleported"}, "teleported"),
    ({"state": "moved"}, "names no destination"),
    ({"state": "planned", "kind": "warp"}, "warp"),
    ("not a mapping", "not a mapping"),
])
def test_a_malformed_journal_entry_is_refused_before_anything_changes(tmp_path, entry, named):
    journal = jr.Journal.load(tmp_path, "hv1")
    journal.begin_run("drain")
    journal.data["vms"]["x"] = entry
    journal.save()
    world = fleet(a=vm())
    drainer, backend, _events = make(tmp_path, world)
    with pytest.raises(jr.JournalError) as info:
        drainer.drain()
    assert named in info.value.message and "'x'" in info.value.message
    assert backend.cordon_calls == [] and backend.calls == []


@pytest.mark.parametrize("facts", [{"cordon": "cordoned"}, {"cordon": {"state": "drained"}}, ["cordon"]])
def test_malformed_destination_facts_name_the_host_and_the_fix(tmp_path, facts):
    src, dests = hosts()
    bad = Host("hv2", World.uri("hv2"), facts=facts)
    world = fleet(a=vm())
    with pytest.raises(HostError) as info:
        make(tmp_path, world)[0].__class__(FakeBackend(world), src, [bad, dests[1]], state_dir=tmp_path)
    assert info.value.message.startswith("hv2:") and "hypervisor_info" in info.value.hint


def test_the_journal_refuses_to_replan_an_interrupted_postcopy(tmp_path):
    journal = jr.Journal.load(tmp_path, "hv1")
    journal.put_vm("p", {"kind": "live", "destination": "hv2", "mode": "postcopy"})
    journal.update_vm("p", jr.MIGRATING)
    journal.update_vm("p", jr.PAUSED_POSTCOPY)
    with pytest.raises(jr.JournalError):
        journal.put_vm("p", {"kind": "live", "destination": "hv3", "mode": "precopy", "state": "planned"})
    assert journal.vm("p")["state"] == "paused_postcopy" and journal.vm("p")["destination"] == "hv2"


def test_the_bandwidth_budget_holds_while_migrations_start_and_end(tmp_path):
    class Watching(FakeBackend):
        def __init__(self, world):
            super().__init__(world)
            self.active = {}
            self.peak = 0
            self.last = {}

        def migrate(self, src_conn, dst_conn, name, dest_uri, spec, source_uri, control):
            with self._lock:
                self.active[name] = control
                self.peak = max(self.peak, sum(c.bandwidth_mib or 0 for c in self.active.values()))
            try:
                return super().migrate(src_conn, dst_conn, name, dest_uri, spec, source_uri, control)
            finally:
                with self._lock:
                    self.last[name] = control.bandwidth_mib
                    del self.active[name]

    world = fleet(a=vm(memory=1024), b=vm(memory=1024))
    backend = Watching(world)
    backend.migrate_delay = 0.3
    drainer, backend, _events = make(tmp_path, world, backend=backend, bandwidth_mib=100, max_parallel=2,
                                     max_inbound=2)
    first = {}
    original = backend.before_migrate

    def slow_second(name, _src, _dst):
        first.setdefault("vm", name)
        if name != first["vm"]:
            backend.migrate_delay = 0.6  # the second outlives the first and gets the whole budget back

    backend.before_migrate = slow_second
    result = drainer.drain()
    assert original is None and result.state == jr.DRAINED
    assert backend.max_concurrent == 2 and backend.peak == 100  # two at once: 50 + 50, never more
    second = next(n for n in ("a", "b") if n != first["vm"])
    assert backend.last[second] == 100
