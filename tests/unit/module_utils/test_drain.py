"""The drain orchestrator against a fake fleet: plan, migrate, fail, resume, lock, restore."""

from __future__ import annotations

import json
import os
import threading

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock, DrainLocked
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import PlacementConfig
from drain_fakes import FakeBackend, World, fleet, make, vm

MIB = 1024 * 1024


def test_drain_moves_every_vm_and_verifies_the_host_is_empty(tmp_path):
    world = fleet(idle=vm(), web=vm(memory=1024), hot=vm(dirty=80 * MIB), off=vm(active=False))
    drainer, backend, events = make(tmp_path, world)
    result = drainer.drain()
    assert result.state == jr.DRAINED and not result.failed and result.changed
    assert result.verified_empty and result.leftovers == []
    assert world.hosts["hv1"] == {}
    assert {r["vm"] for r in result.vms} == {"idle", "web", "hot", "off"}
    assert all(r["ok"] for r in result.vms)
    off = next(r for r in result.vms if r["vm"] == "off")
    assert off["kind"] == "definition"
    assert backend.cordoned is True
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert journal["state"] == jr.DRAINED
    assert {n: e["state"] for n, e in journal["vms"].items()} == dict.fromkeys(["idle", "web", "hot", "off"], "moved")
    assert all(e["origin"] == "hv1" for e in journal["vms"].values())
    kinds = [e["event"] for e in events]
    assert kinds[0] == "note" and "run_started" in kinds and kinds[-1] == "run_finished"
    assert kinds.count("vm_started") == 4 and kinds.count("vm_finished") == 4
    on_disk, _offset = jr.read_events(tmp_path)
    assert [e["event"] for e in on_disk] == kinds
    # spreading: both destinations used
    assert {r["destination"] for r in result.vms} == {"hv2", "hv3"}
    assert result.forecast["migrations"] == 3 and result.actual["total_s"] >= 0


def test_check_mode_plans_and_changes_nothing(tmp_path):
    world = fleet(a=vm(), b=vm(local_disk=True), c=vm(active=False))
    before = json.dumps(world.hosts, sort_keys=True)
    drainer, backend, _events = make(tmp_path, world)
    result = drainer.drain(plan_only=True)
    assert json.dumps(world.hosts, sort_keys=True) == before
    assert backend.calls == [] and backend.cordon_calls == []
    assert not os.listdir(tmp_path)  # no journal, no lock file, no progress file
    assert result.state == "planned" and result.changed
    planned = {p["vm"]: p for p in result.plan}
    assert set(planned) == {"a", "c"}
    assert planned["a"]["mode"] == "precopy" and "pre-copy converges" in planned["a"]["mode_reason"]
    assert planned["a"]["policy"] == "builtin-default" and planned["a"]["policy_reason"]
    assert planned["a"]["predicted_duration_s"] > 0 and planned["a"]["predicted_downtime_ms"] > 0
    assert planned["c"]["mode"] == "definition"
    blocker = next(b for b in result.blockers if b["vm"] == "b")
    assert blocker["kind"] == "unplaced" and "local storage" in blocker["message"]
    assert set(blocker["reasons"]) == {"hv2", "hv3"}
    assert result.forecast["blocked"] == ["b"] and result.forecast["total_s"] > 0
    assert result.moves == [{"vm": p["vm"], "from": "hv1", "to": p["destination"]} for p in result.plan]


def test_blocked_vm_fails_the_drain_but_the_others_move(tmp_path):
    world = fleet(a=vm(), b=vm(), disk=vm(local_disk=True))
    drainer, backend, _events = make(tmp_path, world)
    result = drainer.drain()
    assert result.failed and result.state == jr.DRAIN_FAILED
    assert world.where("a") != ["hv1"] and world.where("b") != ["hv1"] and world.where("disk") == ["hv1"]
    assert result.leftovers == ["disk"] and not result.verified_empty
    assert "disk" in result.message and "local storage" in result.message and "stays cordoned" in result.message
    assert backend.cordoned
    entry = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]["disk"]
    assert entry["state"] == jr.BLOCKED


def test_copy_all_policy_lets_the_local_disk_vm_move(tmp_path):
    world = fleet(disk=vm(local_disk=True, labels={"storage": "local"}))
    policies = [{"name": "local", "selector": {"labels": {"storage": "local"}}, "settings": {"storage": "copy_all"}}]
    drainer, backend, _events = make(tmp_path, world, policies=policies)
    result = drainer.drain()
    assert result.state == jr.DRAINED
    assert backend.calls[0][3].copy_storage == "all"


def test_max_failures_stops_new_starts_but_lets_running_finish(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=100 + i) for i in range(5)})
    backend = FakeBackend(world)
    backend.fail = {"v4": "stayed"}  # largest memory: placed and started first
    drainer, backend, events = make(tmp_path, world, backend=backend, max_parallel=1, max_failures=0)
    result = drainer.drain()
    assert [c[0] for c in backend.calls] == ["v4"]
    assert result.failed and result.summary["failed"] == 1 and result.summary["not_started"] == 4
    assert "max_failures" in result.message and "v4" in result.message
    assert sorted(world.hosts["hv1"]) == ["v0", "v1", "v2", "v3", "v4"]
    assert any("no new migration starts" in e.get("message", "") for e in events)
    stayed = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]["v4"]
    assert stayed["state"] == jr.STAYED


def test_a_libvirt_failure_that_left_the_vm_in_place_is_tried_once_more(tmp_path):
    """Lab: after the storage daemon restarted, each VM's next migration failed once in libvirt (the VM
    stayed running on the source) and the next attempt worked. One retry, recorded; never a third."""
    world = fleet(once=vm(memory=100), twice=vm(memory=200))
    backend = FakeBackend(world)
    backend.fail_in_libvirt = {"once": 1, "twice": 2}
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=1, max_failures=5)
    result = drainer.drain()
    assert [c[0] for c in backend.calls].count("once") == 2 and [c[0] for c in backend.calls].count("twice") == 2
    by_vm = {r["vm"]: r for r in result.vms}
    assert by_vm["once"]["state"] == jr.MOVED and world.hosts["hv1"].keys() == {"twice"}
    assert "at the second attempt" in by_vm["once"]["message"]
    assert by_vm["twice"]["state"] == jr.STAYED
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())["vms"]
    for name in ("once", "twice"):
        steps = journal[name]["result"]["steps"]
        assert steps[0]["action"] == "retry" and "unexpectedly failed" in steps[0]["reason"], steps


def test_an_engine_abort_is_not_retried(tmp_path):
    world = fleet(v=vm(memory=100))
    backend = FakeBackend(world)
    backend.fail = {"v": "stayed"}  # the engine's own decision (no libvirt error): final
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_failures=5)
    drainer.drain()
    assert [c[0] for c in backend.calls] == ["v"]


def test_more_failures_allowed_carries_on(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=100 + i) for i in range(4)})
    backend = FakeBackend(world)
    backend.fail = {"v3": "stayed", "v2": "postcopy_paused"}
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=1, max_failures=5)
    result = drainer.drain()
    assert len(backend.calls) == 4
    states = {r["vm"]: r["state"] for r in result.vms}
    assert states == {"v3": "stayed", "v2": "paused_postcopy", "v1": "moved", "v0": "moved"}
    v2 = next(r for r in result.vms if r["vm"] == "v2")
    assert v2["recovery"].startswith("resume the post-copy Where it is: hv1: paused (post-copy failed); hv")
    assert "resume the post-copy" in result.message


def test_concurrency_limits_are_kept(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=200) for i in range(6)})
    backend = FakeBackend(world, migrate_delay=0.15)
    drainer, backend, events = make(tmp_path, world, backend=backend, max_parallel=3, max_outbound=3, max_inbound=1,
                                    bandwidth_mib=100)
    result = drainer.drain()
    assert result.state == jr.DRAINED
    assert backend.max_concurrent == 2  # two destinations, one inbound each
    assert max(backend.max_inbound_seen.values()) == 1
    shares = [e["bandwidth_mib"] for e in events if e["event"] == "vm_started"]
    assert shares and all(s in (50, 100) for s in shares)
    assert any(e["event"] == "vm_progress" and e["percent"] == 50.0 for e in events)


def test_second_run_is_ok_not_changed(tmp_path):
    world = fleet(a=vm())
    drainer, backend, _events = make(tmp_path, world)
    assert drainer.drain().changed
    again, _backend, _events = make(tmp_path, world, backend=backend)
    result = again.drain()
    assert not result.changed and not result.failed and result.state == jr.DRAINED
    assert len(backend.calls) == 1


def test_concurrent_drain_is_refused_naming_the_holder(tmp_path):
    world = fleet(a=vm())
    drainer, backend, _events = make(tmp_path, world, by="alice@ctl")
    with DrainLock(tmp_path, "hv1", "drain", "bob@other"), pytest.raises(DrainLocked) as info:
        drainer.drain()
    assert f"pid {os.getpid()}" in str(info.value) and "bob@other" in str(info.value)
    assert backend.calls == [] and backend.cordon_calls == []


def test_check_mode_notes_a_running_drain(tmp_path):
    world = fleet(a=vm())
    drainer, _backend, _events = make(tmp_path, world)
    with DrainLock(tmp_path, "hv1", "drain", "bob@other"):
        result = drainer.drain(plan_only=True)
    assert result.lock_holder["by"] == "bob@other" and "running now" in result.message


def _interrupted_journal(tmp_path, world, backend, names, destination="hv2"):
    """A journal as a killed run leaves it: every VM planned, `names` marked migrating."""
    drainer, _backend, _events = make(tmp_path, world, backend=backend)
    drainer.journal = jr.Journal.load(tmp_path, "hv1")
    drainer.journal.begin_run("drain")
    for name in sorted(world.hosts["hv1"]) + [n for n in names if n not in world.hosts["hv1"]]:
        drainer.journal.put_vm(name, {"kind": "live", "destination": destination, "destination_uri":
                                      World.uri(destination), "mode": "precopy", "settings": {}, "persistent": True,
                                      "memory_mib": 512, "vcpus": 1, "source": "hv1"})
    for name in names:
        drainer.journal.update_vm(name, jr.MIGRATING)


def test_resume_records_moved_vms_and_never_migrates_them_again(tmp_path):
    world = fleet(b=vm(), c=vm())
    world.place("hv2", "a", vm())  # the killed run had moved a already
    backend = FakeBackend(world)
    _interrupted_journal(tmp_path, world, backend, ["a", "b"])
    drainer, _backend, _events = make(tmp_path, world, backend=backend)
    result = drainer.drain()
    assert result.resumed and result.state == jr.DRAINED
    assert sorted(c[0] for c in backend.calls) == ["b", "c"]  # a is not migrated again
    found = {r["vm"]: r["found"] for r in result.reconciled}
    assert found == {"a": "moved", "b": "on_source"}
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert journal["vms"]["a"]["state"] == "moved" and journal["vms"]["a"]["attempts"] == 1
    assert journal["vms"]["b"]["attempts"] == 2


def test_resume_aborts_an_orphaned_precopy_then_migrates(tmp_path):
    world = fleet(b=vm())
    world.hosts["hv1"]["b"]["job"] = True  # the dead run's migration job is still active
    backend = FakeBackend(world)
    _interrupted_journal(tmp_path, world, backend, ["b"])
    drainer, _backend, _events = make(tmp_path, world, backend=backend, orphan_wait_s=0)
    drainer.sleep = lambda s: None
    result = drainer.drain()
    assert backend.abort_calls == ["b"]
    assert result.state == jr.DRAINED and world.where("b") != ["hv1"]


def test_resume_of_an_interrupted_postcopy_goes_to_the_same_destination(tmp_path):
    world = fleet()
    world.place("hv1", "p", vm(active=True, state="paused"))
    world.hosts["hv1"]["p"]["postcopy"] = "source"
    world.place("hv3", "p-dst", vm())
    backend = FakeBackend(world)
    _interrupted_journal(tmp_path, world, backend, ["p"], destination="hv3")
    world.hosts["hv3"]["p"] = dict(vm(), postcopy="destination")
    world.hosts["hv3"].pop("p-dst")
    seen = []

    def finish_postcopy(name, src, dst):
        seen.append((name, src, dst))
        with world.lock:
            world.hosts["hv1"].pop(name)
            world.hosts[dst][name]["postcopy"] = None
            world.hosts[dst][name + "-done"] = world.hosts[dst].pop(name)
            world.hosts["hv1"][name] = world.hosts[dst].pop(name + "-done")  # migrate() moves it back to dst

    backend.before_migrate = finish_postcopy
    drainer, _backend, _events = make(tmp_path, world, backend=backend)
    result = drainer.drain()
    assert seen == [("p", "hv1", "hv3")]
    assert result.state == jr.DRAINED and world.where("p") == ["hv3"]


def test_stale_postcopy_copy_without_journal_is_a_blocker(tmp_path):
    world = fleet(p=vm(state="paused"))
    world.hosts["hv1"]["p"]["postcopy"] = "source"
    drainer, backend, _events = make(tmp_path, world)
    result = drainer.drain()
    assert backend.calls == [] and result.failed
    assert result.blockers[0]["kind"] == "postcopy_leftover"


def test_reviewed_plan_is_applied_or_refused(tmp_path):
    world = fleet(a=vm(), b=vm())
    drainer, backend, _events = make(tmp_path, world)
    plan = drainer.drain(plan_only=True).to_dict()
    reviewed = {"host": "hv1", "plan": plan["plan"]}
    # reality changed: a new VM appeared
    world.place("hv1", "c", vm())
    drainer, backend, _events = make(tmp_path, world, backend=backend)
    with pytest.raises(DrainError) as info:
        drainer.drain(reviewed_plan=reviewed)
    assert "'c' is on hv1 but not in the reviewed plan" in str(info.value)
    assert backend.calls == []
    world.hosts["hv1"].pop("c")
    drainer, backend, _events = make(tmp_path, world, backend=backend)
    result = drainer.drain(reviewed_plan=reviewed)
    assert result.state == jr.DRAINED
    assert {r["vm"]: r["destination"] for r in result.vms} == {p["vm"]: p["destination"] for p in plan["plan"]}


def test_reviewed_plan_for_a_destination_that_no_longer_fits_is_refused(tmp_path):
    world = fleet(a=vm(memory=4096))
    drainer, backend, _events = make(tmp_path, world)
    reviewed = {"host": "hv1", "plan": drainer.drain(plan_only=True).to_dict()["plan"]}
    dest = reviewed["plan"][0]["destination"]
    world.place(dest, "big", vm(memory=7000))
    drainer, backend, _events = make(tmp_path, world, backend=backend)
    with pytest.raises(DrainError) as info:
        drainer.drain(reviewed_plan=reviewed)
    assert f"'a' cannot go to {dest} as reviewed" in str(info.value)


def test_a_vm_whose_destination_filled_up_is_re_placed_on_another_that_fits(tmp_path):
    world = fleet(a=vm(memory=3000), b=vm(memory=3000))
    backend = FakeBackend(world)
    planned = {}

    def fill(name, src, dst):
        planned.setdefault(name, dst)
        if name == "a":
            other = "hv3" if dst == "hv2" else "hv2"
            world.place(other, "intruder", vm(memory=7000))

    backend.before_migrate = fill
    drainer, backend, events = make(tmp_path, world, backend=backend, max_parallel=1)
    result = drainer.drain()
    assert [c[2] for c in backend.calls] == [planned["a"], planned["a"]]  # b went where a went: it still fits
    assert not result.failed and not result.blockers, result.message
    assert any("b: re-placed on" in e.get("message", "") for e in events)
    assert drainer.ctx.jr.vm("b")["destination"] == planned["a"]


def test_a_vm_no_destination_takes_any_more_is_blocked_with_the_reasons(tmp_path):
    world = fleet(a=vm(memory=3000), b=vm(memory=3000))
    backend = FakeBackend(world)

    def fill(name, src, dst):
        for host in ("hv2", "hv3"):
            world.place(host, f"intruder-{host}", vm(memory=6000))

    backend.before_migrate = fill
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=1)
    result = drainer.drain()
    assert len(backend.calls) == 1
    [blocker] = [b for b in result.blockers if b["kind"] == "destination_changed"]
    assert blocker["vm"] == "b" and "hv2" in blocker["message"] and "hv3" in blocker["message"]
    assert result.failed and world.where("b") == ["hv1"]


def test_cancel_aborts_precopy_and_starts_nothing_new(tmp_path):
    world = fleet(**{f"v{i}": vm(memory=100 + i) for i in range(3)})
    backend = FakeBackend(world, migrate_delay=5)
    drainer, backend, _events = make(tmp_path, world, backend=backend, max_parallel=1)
    threading.Timer(0.3, drainer.cancel).start()
    result = drainer.drain()
    assert len(backend.calls) == 1 and result.state == jr.INTERRUPTED and result.failed
    assert sorted(world.hosts["hv1"]) == ["v0", "v1", "v2"]
    assert "interrupted" in result.message
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert journal["state"] == jr.INTERRUPTED and journal["vms"]["v2"]["state"] == jr.STAYED
    # and the next run resumes and finishes
    backend.migrate_delay = 0
    drainer, _backend, _events = make(tmp_path, world, backend=backend)
    assert drainer.drain().state == jr.DRAINED


def test_unreachable_destination_is_a_blocker_and_the_other_is_used(tmp_path):
    world = fleet(a=vm())
    backend = FakeBackend(world)
    backend.unreachable = {"hv3"}
    drainer, backend, _events = make(tmp_path, world, backend=backend)
    result = drainer.drain()
    assert world.where("a") == ["hv2"]
    assert any(b["kind"] == "destination_unreachable" for b in result.blockers)


def test_anti_affinity_label_spreads_siblings(tmp_path):
    world = fleet(db1=vm(labels={"anti_affinity": "db"}), db2=vm(labels={"anti_affinity": "db"}),
                  db3=vm(labels={"anti_affinity": "db"}))
    drainer, _backend, _events = make(tmp_path, world)
    result = drainer.drain(plan_only=True)
    assert sorted(p["destination"] for p in result.plan) == ["hv2", "hv3"]
    assert [b["vm"] for b in result.blockers] == ["db3"] and "anti-affinity" in result.blockers[0]["message"]


def test_memory_headroom_is_respected(tmp_path):
    world = fleet(a=vm(memory=6000), b=vm(memory=6000), c=vm(memory=6000))
    drainer, _backend, _events = make(tmp_path, world, placement=PlacementConfig(memory_headroom_mib=1024))
    result = drainer.drain(plan_only=True)
    assert len(result.plan) == 2 and len(result.blockers) == 1


def test_restore_brings_vms_home_using_the_journal_and_uncordons(tmp_path):
    world = fleet(a=vm(), b=vm(), off=vm(active=False))
    world.place("hv2", "native", vm())  # not from hv1: must stay
    drainer, backend, _events = make(tmp_path, world)
    assert drainer.drain().state == jr.DRAINED
    plan = make(tmp_path, world, backend=backend)[0].restore(plan_only=True)
    assert {p["vm"] for p in plan.plan} == {"a", "b", "off"} and plan.changed
    assert backend.cordoned  # check mode changed nothing
    calls = len(backend.calls)
    restorer, _backend, events = make(tmp_path, world, backend=backend)
    result = restorer.restore()
    assert result.state == jr.RESTORED and not result.failed and result.changed
    assert sorted(world.hosts["hv1"]) == ["a", "b", "off"] and "native" in world.hosts["hv2"]
    assert all(c[2] == "hv1" for c in backend.calls[calls:])
    assert backend.cordoned is False
    assert not (tmp_path / jr.JOURNAL_NAME).exists()
    assert any(p.name.startswith("drain-journal.") for p in tmp_path.iterdir())
    assert [e["event"] for e in events if e["event"].startswith("vm_")].count("vm_finished") == 3
    again = make(tmp_path, world, backend=backend)[0].restore()
    assert not again.changed and again.state == jr.RESTORED


def test_restore_failure_keeps_the_host_cordoned(tmp_path):
    world = fleet(a=vm(), b=vm())
    drainer, backend, _events = make(tmp_path, world)
    drainer.drain()
    backend.fail = {"a": "stayed"}
    result = make(tmp_path, world, backend=backend, max_failures=5)[0].restore()
    assert result.failed and backend.cordoned and world.where("b") == ["hv1"]
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert journal["vms"]["a"]["state"] == "moved" and journal["vms"]["b"]["state"] == "home"
    backend.fail = {}
    result = make(tmp_path, world, backend=backend)[0].restore()
    assert result.state == jr.RESTORED and world.where("a") == ["hv1"]


def test_progress_payload_from_a_job_sample():
    from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import progress
    from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample

    sample = JobSample(t=12.34, phase="precopy", data_total=1000 * MIB, data_remaining=250 * MIB,
                       bandwidth_bps=50 * MIB, iteration=1)
    assert progress(sample) == {"phase": "precopy", "percent": 75.0, "eta_s": 5.0, "iteration": 1,
                                "remaining_bytes": 250 * MIB, "bandwidth_bps": 50 * MIB, "elapsed_s": 12.3,
                                "disk_total": 0, "disk_remaining": 0}


def test_progress_counts_the_copied_disks_when_libvirt_gives_no_data_total():
    from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import progress
    from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample

    sample = JobSample(t=3.0, phase="precopy", memory_total=256 * MIB, memory_remaining=256 * MIB,
                       disk_total=768 * MIB, disk_remaining=256 * MIB, bandwidth_bps=64 * MIB, iteration=0)
    got = progress(sample)
    assert got["percent"] == 50.0 and got["remaining_bytes"] == 512 * MIB and got["eta_s"] == 8.0
    assert got["disk_total"] == 768 * MIB and got["disk_remaining"] == 256 * MIB
