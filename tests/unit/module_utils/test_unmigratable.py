"""VMs that cannot live-migrate, over the fake fleet: each on_unmigratable shape and the failure paths of a cold move.

The invariants checked every time: the VM is defined on exactly one host (or the result names where it is), it
never runs twice, and the result and the journal say where it is.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import live_blockers
from drain_fakes import FakeBackend, FakeClock, fleet, make, vm

SHMEM = ("shared-memory device 'hvf' (ivshmem-plain)",)


def policy(on_unmigratable, **settings):
    return [{"name": "odd", "selector": {"labels": {"odd": "1"}},
             "settings": {"on_unmigratable": on_unmigratable, **settings}}]


def odd(**knobs):
    knobs.setdefault("devices", SHMEM)
    return vm(labels={"odd": "1"}, **knobs)


def journal(tmp_path):
    return json.loads((tmp_path / jr.JOURNAL_NAME).read_text())


def events_of(events, kind, name):
    return [e for e in events if e["event"] == kind and e.get("vm") == name]


def assert_defined_once(world, name, host, state):
    assert world.where(name) == [host], world.where(name)
    assert world.hosts[host][name]["state"] == state


# ---- detection --------------------------------------------------------------------------------


def test_the_devices_libvirt_refuses_to_migrate_are_named_from_the_xml():
    xml = """<domain type='qemu'><name>x</name><memory unit='MiB'>256</memory><devices>
      <shmem name='hvf'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>
      <hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0x3b' slot='0' function='0'/></source>
      </hostdev><disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vda'/></disk>
    </devices></domain>"""
    found = live_blockers(xml)
    assert "shared-memory device 'hvf' (ivshmem-plain)" in found
    assert any("0000:3b:00.0" in device for device in found)
    assert live_blockers("<domain type='qemu'><name>y</name><devices/></domain>") == ()


# ---- block (the default) ----------------------------------------------------------------------


def test_block_is_the_default_and_names_the_device_and_the_fix(tmp_path):
    world = fleet(plain=vm(), odd=vm(devices=SHMEM))
    drainer, backend, _events = make(tmp_path, world)
    result = drainer.drain()
    assert result.failed and result.state == jr.DRAIN_FAILED
    blocker = next(b for b in result.blockers if b["vm"] == "odd")
    assert blocker["kind"] == "unmigratable" and "ivshmem-plain" in blocker["message"]
    assert "on_unmigratable: shutdown" in blocker["fix"] and "shut 'odd' down" in blocker["fix"]
    assert_defined_once(world, "odd", "hv1", "running")
    assert world.hosts["hv1"]["odd"]["boot"] == 1 and backend.shutdowns == []
    assert world.where("plain") != ["hv1"]  # the others still move
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.BLOCKED


# ---- shutdown: a cold move --------------------------------------------------------------------


def test_shutdown_moves_it_cold_and_the_plan_shows_its_outage(tmp_path):
    world = fleet(plain=vm(), odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown", shutdown_timeout_s=30))
    planned = drainer.drain(plan_only=True)
    item = next(p for p in planned.plan if p["vm"] == "odd")
    assert item["kind"] == "cold" and item["mode"] == "cold" and item["live_blockers"] == list(SHMEM)
    assert item["predicted_downtime_ms"] == 40_000 and "outage up to 40 s + the guest's boot" in item["mode_reason"]
    assert "odd moves cold to" in planned.message and "outage up to 40 s" in planned.message
    assert planned.forecast["outages"] == [{"vm": "odd", "mode": "cold", "up_to_s": 40.0, "plus": "boot"}]
    assert world.where("odd") == ["hv1"] and backend.shutdowns == []  # check mode changed nothing

    drainer, backend, events = make(tmp_path, world, backend=backend,
                                    policies=policy("shutdown", shutdown_timeout_s=30))
    result = drainer.drain()
    assert result.state == jr.DRAINED and not result.failed and result.verified_empty
    row = next(r for r in result.vms if r["vm"] == "odd")
    assert row["ok"] and row["kind"] == "cold" and row["mode_used"] == "cold" and row["outcome"] == "moved"
    host = row["destination"]
    assert_defined_once(world, "odd", host, "running")
    assert world.hosts[host]["odd"]["boot"] == 2  # a new boot on the destination
    assert backend.shutdowns == [("odd", "hv1")] and backend.starts == [("odd", host)]
    assert not [c for c in backend.calls if c[0] == "odd"]  # never a live migration
    entry = journal(tmp_path)["vms"]["odd"]
    assert entry["state"] == jr.MOVED and entry["kind"] == "cold" and entry["destination"] == host
    assert entry["result"]["downtime_ms"] is not None
    steps = [e["step"] for e in events_of(events, "vm_cold_step", "odd")]
    assert steps == ["shutdown_requested", "shut_off", "defined", "started"]


def test_a_guest_that_ignores_the_power_button_keeps_running_at_the_source(tmp_path):
    world = fleet(odd=odd(acpi=False))
    clock = FakeClock()
    drainer, backend, events = make(tmp_path, world, clock=clock, policies=policy("shutdown", shutdown_timeout_s=20))
    result = drainer.drain()
    assert result.failed and result.state == jr.DRAIN_FAILED
    assert_defined_once(world, "odd", "hv1", "running")
    assert world.hosts["hv1"]["odd"]["boot"] == 1 and backend.starts == []  # never destroyed, nothing moved
    assert 20 <= sum(clock.slept) <= 21  # polled up to the timeout, not longer
    row = result.vms[0]
    assert row["outcome"] == "stayed" and "did not shut down within 20 s" in row["message"]
    assert "keeps running on hv1" in row["message"] and "raise shutdown_timeout_s" in row["recovery"]
    assert "odd" in result.message and "did not shut down" in result.message
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.STAYED
    assert [e["step"] for e in events_of(events, "vm_cold_step", "odd")] == ["shutdown_requested",
                                                                             "shutdown_timed_out"]


def test_a_failed_move_leaves_it_defined_on_the_source_and_running_again(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, events = make(tmp_path, world, policies=policy("shutdown"))
    backend.fail_move = {"odd": "operation failed: domain 'odd' already exists with another uuid"}
    result = drainer.drain()
    assert result.failed
    assert_defined_once(world, "odd", "hv1", "running")
    assert world.hosts["hv1"]["odd"]["boot"] == 2  # it had been shut down: started again, once
    row = result.vms[0]
    assert row["outcome"] == "stayed" and "already exists" in row["message"]
    assert "started again on hv1" in row["message"]
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.STAYED
    assert "restarted_at_source" in [e["step"] for e in events_of(events, "vm_cold_step", "odd")]


def test_a_start_refused_on_the_destination_brings_it_back_to_the_source(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    backend.fail_start = {"odd": {"hv2": "no PCI device 0000:3b:00.0", "hv3": "no PCI device 0000:3b:00.0"}}
    result = drainer.drain()
    assert result.failed
    assert_defined_once(world, "odd", "hv1", "running")
    row = result.vms[0]
    assert "no PCI device" in row["message"] and "started again on hv1" in row["message"]


def test_when_it_can_be_started_nowhere_the_result_names_where_it_is_and_the_fix(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    backend.fail_start = {"odd": {h: f"cannot start on {h}" for h in ("hv1", "hv2", "hv3")}}
    result = drainer.drain()
    assert result.failed and result.state == jr.DRAIN_FAILED
    assert len(world.where("odd")) == 1 and world.hosts[world.where("odd")[0]]["odd"]["state"] == "shutoff"
    row = result.vms[0]
    assert row["outcome"] == "failed" and "is shut off" in row["message"] and "failed too" in row["message"]
    assert f"{world.where('odd')[0]}: shut off" in row["recovery"] and "start" in row["recovery"]
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.FAILED


def refused_cold(tmp_path, **shape):
    """Drain hv1 holding one VM 'odd' of `shape` under on_unmigratable: shutdown; (its blocker, world, backend)."""
    world = fleet(odd=odd(**shape))
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    result = drainer.drain()
    return next(b for b in result.blockers if b["vm"] == "odd"), world, backend


def test_a_cold_move_refuses_a_local_disk_under_shared_only(tmp_path):
    blocker, world, backend = refused_cold(tmp_path, local_disk=True)
    assert blocker["kind"] == "unplaced" and "local storage" in blocker["message"]
    assert "A cold move copies local disks only under storage: copy_all or copy_incremental" in blocker["message"]
    assert_defined_once(world, "odd", "hv1", "running")
    assert backend.shutdowns == [] and backend.offline_copies == []


def test_a_cold_move_copies_a_local_disk_under_copy_all(tmp_path):
    world = fleet(odd=odd(local_disk=True))
    drainer, backend, events = make(tmp_path, world, policies=policy("shutdown", storage="copy_all"))
    result = drainer.drain()
    assert result.state == jr.DRAINED, result.message
    host = world.where("odd")[0]
    assert_defined_once(world, "odd", host, "running")
    assert backend.offline_copies == [("odd", "hv1", host)]
    assert backend.removed_copies == [("/var/lib/libvirt/images/odd.qcow2", "hv1")]  # the stale originals
    assert "the old files on hv1 removed" in result.vms[0]["message"]
    steps = [e["step"] for e in events_of(events, "vm_cold_step", "odd")]
    assert steps == ["shutdown_requested", "shut_off", "disks_copied", "defined", "started"]


def test_a_failed_disk_copy_leaves_it_running_at_the_source(tmp_path):
    world = fleet(odd=odd(local_disk=True))
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown", storage="copy_all"))
    backend.fail_copy = {"odd": "no space left on device"}
    result = drainer.drain()
    assert result.failed
    assert_defined_once(world, "odd", "hv1", "running")
    assert "no space left" in result.vms[0]["message"] and "started again on hv1" in result.vms[0]["message"]


def test_the_disk_copies_of_a_vm_that_stays_are_removed(tmp_path):
    world = fleet(odd=odd(local_disk=True))
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown", storage="copy_all"))
    backend.fail_move = {"odd": "the destination refused the definition"}
    result = drainer.drain()
    assert_defined_once(world, "odd", "hv1", "running")
    [(vm_name, _src, host)] = backend.offline_copies
    assert vm_name == "odd" and backend.removed_copies == [("/var/lib/libvirt/images/odd.qcow2", host)]
    assert f"The disk copies on {host} were removed" in result.vms[0]["message"]


def test_restore_brings_a_cold_moved_vm_home_cold_and_starts_it_there(tmp_path):
    world = fleet(plain=vm(), odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    assert drainer.drain().state == jr.DRAINED
    away = world.where("odd")[0]
    plan = make(tmp_path, world, backend=backend, policies=policy("shutdown"))[0].restore(plan_only=True)
    assert next(p for p in plan.plan if p["vm"] == "odd")["mode"] == "cold"
    result = make(tmp_path, world, backend=backend, policies=policy("shutdown"))[0].restore()
    assert result.state == jr.RESTORED and not result.failed
    assert_defined_once(world, "odd", "hv1", "running")
    assert world.hosts["hv1"]["odd"]["boot"] == 3  # started on the destination, then at home
    assert backend.shutdowns == [("odd", "hv1"), ("odd", away)] and backend.starts[-1] == ("odd", "hv1")
    assert world.where("plain") == ["hv1"] and backend.cordoned is False


# ---- leave -------------------------------------------------------------------------------------


def test_leave_keeps_it_running_and_the_host_is_reported_not_empty(tmp_path):
    world = fleet(plain=vm(), odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("leave"))
    planned = drainer.drain(plan_only=True)
    assert "will NOT be empty" in planned.message and [one["vm"] for one in planned.left] == ["odd"]
    drainer, backend, events = make(tmp_path, world, backend=backend, policies=policy("leave"))
    result = drainer.drain()
    assert result.state == "not_empty" and not result.failed
    assert result.verified_empty is False and result.leftovers == ["odd"]
    assert result.blockers == [] and result.summary["left"] == 1 and result.summary["failed"] == 0
    left = result.left[0]
    assert left["vm"] == "odd" and "ivshmem-plain" in left["why"] and "must not be rebooted" in left["fix"]
    assert "NOT empty" in result.message and "odd" in result.message and "do not reboot hv1" in result.message
    assert_defined_once(world, "odd", "hv1", "running")
    assert world.hosts["hv1"]["odd"]["boot"] == 1 and backend.shutdowns == []  # untouched
    assert world.where("plain") != ["hv1"]
    data = journal(tmp_path)
    assert data["state"] == "not_empty" and data["vms"]["odd"]["left"]["vm"] == "odd"
    assert jr.Journal.load(tmp_path, "hv1").state == "not_empty"  # the journal reads back
    finished = [e for e in events if e["event"] == "run_finished"]
    assert finished[-1]["left"] == 1 and finished[-1]["state"] == "not_empty"
    restored = make(tmp_path, world, backend=backend, policies=policy("leave"))[0].restore()
    assert restored.state == jr.RESTORED and world.where("plain") == ["hv1"] and world.where("odd") == ["hv1"]


def test_leave_also_covers_a_local_disk_under_shared_only(tmp_path):
    world = fleet(disk=vm(local_disk=True, labels={"odd": "1"}))
    result = make(tmp_path, world, policies=policy("leave"))[0].drain()
    assert result.state == "not_empty" and [one["vm"] for one in result.left] == ["disk"]
    assert "local disks" in result.left[0]["why"]


def test_a_left_vm_does_not_hide_a_real_failure(tmp_path):
    world = fleet(odd=odd(), broken=vm(local_disk=True))
    result = make(tmp_path, world, policies=policy("leave"))[0].drain()
    assert result.failed and result.state == jr.DRAIN_FAILED
    assert [b["vm"] for b in result.blockers] == ["broken"] and [one["vm"] for one in result.left] == ["odd"]
    assert "broken" in result.message and "NOT empty" in result.message


# ---- a run killed in the middle of a cold move, resumed -----------------------------------------


class Killed(BaseException):
    """The controller dies at this call (as fault_backend.ProcessKilled)."""


def killed_at(backend, method):
    real = getattr(backend, method)

    def die(*_args, **_kwargs):
        setattr(backend, method, real)  # once
        raise Killed(method)

    setattr(backend, method, die)


def test_a_run_killed_after_the_shutdown_moves_it_cold_when_resumed(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    killed_at(backend, "move_definition")
    with pytest.raises(Killed):
        drainer.drain()
    assert_defined_once(world, "odd", "hv1", "shutoff")  # shut down, not moved
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.MIGRATING
    result = make(tmp_path, world, backend=backend, policies=policy("shutdown"), orphan_wait_s=0)[0].drain()
    assert result.state == jr.DRAINED, result.message
    host = world.where("odd")[0]
    assert_defined_once(world, "odd", host, "running")
    assert host != "hv1" and world.hosts[host]["odd"]["boot"] == 2
    assert next(p for p in result.plan if p["vm"] == "odd")["kind"] == "cold"


def test_a_run_killed_before_the_start_starts_it_on_the_destination_when_resumed(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    killed_at(backend, "start")
    with pytest.raises(Killed):
        drainer.drain()
    [host] = world.where("odd")
    assert host != "hv1" and world.hosts[host]["odd"]["state"] == "shutoff"
    result = make(tmp_path, world, backend=backend, policies=policy("shutdown"), orphan_wait_s=0)[0].drain()
    assert result.state == jr.DRAINED, result.message
    assert_defined_once(world, "odd", host, "running")
    assert world.hosts[host]["odd"]["boot"] == 2 and backend.starts[-1] == ("odd", host)
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.MOVED


def test_restore_starts_a_cold_moved_vm_found_shut_off_at_home(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    backend.fail_start = {"odd": {h: f"cannot start on {h}" for h in ("hv1", "hv2", "hv3")}}
    assert drainer.drain().failed
    assert_defined_once(world, "odd", "hv1", "shutoff")  # put back home, but it could not be started there
    backend.fail_start = {}
    result = make(tmp_path, world, backend=backend, policies=policy("shutdown"))[0].restore()
    assert result.state == jr.RESTORED and not result.failed, result.message
    assert_defined_once(world, "odd", "hv1", "running")
    assert backend.starts[-1] == ("odd", "hv1")


def test_a_destination_that_filled_up_refuses_the_cold_move_before_the_shutdown(tmp_path):
    world = fleet(odd=odd())

    class FillsUp(FakeBackend):
        full = False

        def capacity(self, conn, host, anti_affinity_labels=()):
            cap = super().capacity(conn, host, anti_affinity_labels)
            if self.full and conn.host != "hv1":
                return dataclasses.replace(cap, memory_used_mib=cap.memory_total_mib)
            return cap

    drainer, backend, events = make(tmp_path, world, backend=FillsUp(world), policies=policy("shutdown"),
                                    claim_wait_s=0)

    def progress(event):
        events.append(event)
        if event["event"] == "run_started":  # planned on free destinations; they fill up before the move
            backend.full = True

    drainer.ctx.progress = progress
    result = drainer.drain()
    assert result.failed
    blocker = next(b for b in result.blockers if b["vm"] == "odd")
    assert blocker["kind"] == "destination_changed" and "refused it right before the cold move" in blocker["message"]
    assert_defined_once(world, "odd", "hv1", "running")
    assert world.hosts["hv1"]["odd"]["boot"] == 1 and backend.shutdowns == []
    assert all(not world.ledgers.store(h).read().claims for h in ("hv2", "hv3"))  # no claim left behind
    assert journal(tmp_path)["vms"]["odd"]["state"] == jr.BLOCKED


def test_a_cold_move_holds_a_claim_on_its_destination_while_it_runs(tmp_path):
    world = fleet(odd=odd())
    drainer, backend, _events = make(tmp_path, world, policies=policy("shutdown"))
    seen = []
    real_start = backend.start

    def start(conn, name):
        seen.append([c.vm for c in world.ledgers.store(conn.host).read().claims])
        real_start(conn, name)

    backend.start = start
    assert drainer.drain().state == jr.DRAINED
    assert seen == [["odd"]]
    assert all(not world.ledgers.store(h).read().claims for h in ("hv2", "hv3"))


def test_a_transient_vm_is_never_shut_down_for_a_cold_move(tmp_path):
    blocker, world, backend = refused_cold(tmp_path, persistent=False)
    assert blocker["kind"] == "unmigratable" and "transient" in blocker["message"]
    assert "define 'odd' persistently" in blocker["fix"]
    assert_defined_once(world, "odd", "hv1", "running")
    assert backend.shutdowns == []
