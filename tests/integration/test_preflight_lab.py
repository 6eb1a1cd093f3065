"""Prerequisite checks, cordon state and hypervisor facts on the lab, through Ansible over SSH.

migration_preflight runs on the source (hv1) through a playbook that first reads each destination's
facts on the destination itself (hypervisor_info), the way a drain does. Each test asserts the one
blocker it provokes - named for what it is - and that the other checks do not invent a second cause.
Timings are printed (LAB-TIMING), not asserted.
"""

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

libvirt = pytest.importorskip("libvirt")

from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec  # noqa: E402
from hvlab.vm import boot_ids  # noqa: E402
from lab_helpers import ansible, timed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "tests" / "integration" / "playbooks"
IMAGES = "/var/lib/libvirt/images"


def playbook(name, tmp_path, **extra):
    """Run a test playbook with `extra` as extra vars; return what it wrote to `out`."""
    out = tmp_path / f"{name}-{time.monotonic_ns()}.json"
    varfile = tmp_path / f"vars-{time.monotonic_ns()}.json"
    varfile.write_text(json.dumps(dict(extra, out=str(out))))
    ansible("ansible-playbook", str(PLAYBOOKS / f"{name}.yml"), "-e", f"@{varfile}")
    return json.loads(out.read_text())


def preflight(tmp_path, vms, dest_hosts=("hv2",), **extra):
    result = playbook("preflight", tmp_path, source="hv1", dest_hosts=list(dest_hosts), vms=list(vms), **extra)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is False
    return result


def pair(result, vm, dest):
    [item] = [r for r in result["results"] if r["vm"] == vm and r["destination"] == dest]
    return item


def checks(item, check_id):
    return [c for c in item["checks"] if c["id"] == check_id]


@pytest.fixture
def images_pool(lab):
    """A transient dir pool over /var/lib/libvirt/images on hv2: where libvirt creates copied disks."""
    conn = lab.connect("hv2")
    xml = f"<pool type='dir'><name>t7-images</name><target><path>{IMAGES}</path></target></pool>"
    pool = conn.storagePoolCreateXML(xml, 0)
    yield pool
    try:
        pool.destroy()
    finally:
        conn.close()


def test_local_disk_is_blocked_and_moves_with_copy_all(lab, make_vm, tmp_path, request):
    vm = make_vm("hv1", disk="local")
    lab.wait_heartbeat_advances(vm, timeout=60)
    with timed("preflight local disk, shared_only"):
        result = preflight(tmp_path, [vm])
    item = pair(result, vm, "hv2")
    assert [b["id"] for b in item["blockers"]] == ["storage.disk"], item["summary"]
    [disk] = checks(item, "storage.disk")
    assert disk["device"] == "vda" and f"{IMAGES}/{vm}.qcow2" in disk["message"]
    assert "local" in disk["message"] and "hv2" in disk["message"] and vm in disk["message"]
    assert "copy_all" in disk["fix"]
    assert result["summary"]["stuck"] == [vm] and item["policy"]["name"] == "builtin-default"

    copy_policy = [{"name": "copy-local", "selector": {"domains": [vm]}, "settings": {"storage": "copy_all"}}]
    result = preflight(tmp_path, [vm], policies=copy_policy)
    item = pair(result, vm, "hv2")
    [disk] = checks(item, "storage.disk")
    assert disk["status"] == "fail" and "storage pool" in disk["message"], disk
    assert f"target {IMAGES} on hv2" in disk["fix"]

    pool = request.getfixturevalue("images_pool")
    assert pool.isActive()
    result = preflight(tmp_path, [vm], policies=copy_policy)
    item = pair(result, vm, "hv2")
    assert item["ok"], item["summary"]
    assert item["copy_storage"] == "all" and item["copy_disks"] == ["vda"]
    assert item["policy"]["name"] == "copy-local" and item["forecast"]["mode"] in ("precopy", "postcopy")

    before = lab.heartbeat(vm).last_n
    src, dst = lab.connect("hv1"), lab.connect("hv2")
    try:
        spec = MigrationSpec(copy_storage=item["copy_storage"], migrate_uri=f"tcp://{lab.addr('hv2')}",
                             allow_postcopy=False)
        with timed("copy_all migration of a 64 MiB local disk + 256 MiB RAM"):
            moved = Migration(src, dst, vm, lab.uri("hv2"), spec, source_uri=lab.uri("hv1")).run()
    finally:
        src.close()
        dst.close()
    assert moved.outcome == "moved", moved.message
    assert lab.running_on(vm) == ["hv2"]
    hb = lab.wait_heartbeat_advances(vm, beyond=before + 2, timeout=60)
    assert len(boot_ids(hb)) == 1, "the guest restarted instead of moving live"
    copied = lab.root / "hosts" / "hv2" / "lib-libvirt" / "images" / f"{vm}.qcow2"
    assert copied.exists() and copied.stat().st_size > 0
    print(f"\nLAB-RESULT copy_all: {moved.duration_s:.1f}s, downtime {moved.downtime_ms} ms, "
          f"{(moved.bytes_sent or 0) / 2**20:.0f} MiB sent")


def test_bridge_missing_on_destination_is_blocked(lab, make_vm, tmp_path):
    lab.add_bridge("hv1", "t7br")
    vm = None
    try:
        vm = make_vm("hv1", bridges=["labbr0", "t7br"])
        with timed("preflight missing bridge, 2 destinations"):
            result = preflight(tmp_path, [vm], dest_hosts=("hv2", "hv3"))
        for dest in ("hv2", "hv3"):
            item = pair(result, vm, dest)
            assert [b["id"] for b in item["blockers"]] == ["network.bridge"], item["summary"]
            [missing] = [c for c in checks(item, "network.bridge") if c["status"] == "fail"]
            assert "t7br" in missing["message"] and f"does not exist on {dest}" in missing["message"]
            assert "labbr0" in missing["message"]  # what the destination does have
            assert f"create bridge t7br on {dest}" in missing["fix"]
            assert [c["status"] for c in checks(item, "network.bridge")].count("pass") == 1  # labbr0
        assert result["summary"]["stuck"] == [vm]
    finally:
        if vm:
            lab.vm_rm(vm)  # it holds a port on the bridge; make_vm's own cleanup then finds nothing
        lab.remove_bridge("hv1", "t7br")


def test_destination_without_enough_memory_is_blocked(lab, make_vm, tmp_path):
    vm = make_vm("hv1")
    result = preflight(tmp_path, [vm], headroom=10 ** 8)
    item = pair(result, vm, "hv2")
    assert [b["id"] for b in item["blockers"]] == ["capacity.memory"], item["summary"]
    [cap] = checks(item, "capacity.memory")
    assert f"{vm} needs 256 MiB + 100000000 MiB headroom" in cap["message"] and "short" in cap["message"]
    assert "hv2" in cap["message"]
    ok = pair(preflight(tmp_path, [vm]), vm, "hv2")
    assert ok["ok"] and checks(ok, "capacity.memory")[0]["status"] == "pass", ok["summary"]


def test_cordoned_destination_is_skipped(lab, make_vm, tmp_path):
    vm = make_vm("hv1")
    try:
        res = ansible("ansible", "hv2", "-m", "hvfleet.drain.host_maintenance", "-a",
                      json.dumps({"state": "cordoned", "reason": "t7 firmware", "by": "lab-test"}))
        assert "hv2 | CHANGED" in res.stdout
        again = ansible("ansible", "hv2", "-m", "hvfleet.drain.host_maintenance", "-a",
                        json.dumps({"state": "cordoned", "reason": "other"}))
        assert "hv2 | SUCCESS" in again.stdout and "t7 firmware" in again.stdout  # idempotent, keeps why
        with timed("preflight cordoned hv2 + free hv3"):
            result = preflight(tmp_path, [vm], dest_hosts=("hv2", "hv3"))
        blocked = pair(result, vm, "hv2")
        assert [b["id"] for b in blocked["blockers"]] == ["dest.cordoned"], blocked["summary"]
        assert "t7 firmware" in blocked["blockers"][0]["message"] and "lab-test" in blocked["blockers"][0]["message"]
        assert pair(result, vm, "hv3")["ok"]
        assert result["vms"][vm]["destinations_ok"] == ["hv3"]
        assert result["summary"]["movable"] == [vm]
    finally:
        res = ansible("ansible", "hv2", "-m", "hvfleet.drain.host_maintenance", "-a", "state=active reason=t7-done")
    assert "hv2 | CHANGED" in res.stdout
    after = pair(preflight(tmp_path, [vm]), vm, "hv2")
    assert checks(after, "dest.cordoned")[0]["status"] == "pass"


def test_malformed_policy_file_fails_with_the_json_path(lab, make_vm, tmp_path):
    vm = make_vm("hv1")
    bad = Path("/tmp") / f"hvfleet-t7-policies-{os.getpid()}.yml"  # /tmp is shared with the lab hosts
    bad.write_text("hvfleet_migration_policies:\n  - name: fast\n    selector: {domains: ['*']}\n"
                   "    settings:\n      mode: turbo\n      max_downtime_ms: -5\n")
    try:
        result = playbook("preflight", tmp_path, source="hv1", dest_hosts=["hv2"], vms=[vm], policy_file=str(bad))
    finally:
        bad.unlink()
    assert result["failed"]
    msg = result["msg"]
    assert str(bad) in msg and "policy 'fast'" in msg
    assert "$[0].settings.mode" in msg and "'turbo'" in msg and "'precopy'" in msg
    assert "$[0].settings.max_downtime_ms" in msg
    assert "results" not in result  # nothing was checked on a half-understood policy


def test_hypervisor_info_returns_the_lab_hosts_facts(lab, make_vm, tmp_path):
    vm = make_vm("hv1", labels={"app": "web", "tier": "front"}, memory=320, vcpus=2)
    policies = [{"name": "web", "selector": {"labels": {"app": "web"}}, "settings": {"mode": "precopy"}},
                {"name": "rest", "default": True}]
    with timed("hypervisor_info through Ansible"):
        info = playbook("hypervisor_info", tmp_path, target="hv1", policies=policies)
    host = info["hypervisor"]
    assert host["name"] == "hv1" and host["hostname"] == "hv1" and host["local"]
    assert host["memory_total_mib"] > 1024 and 0 < host["memory_available_mib"] <= host["memory_total_mib"]
    assert host["memory_allocated_mib"] >= 320 and host["vcpus_allocated"] >= 2 and host["cpus"] >= 1
    assert host["libvirt_version_text"] == "9.0.0" and host["qemu_version_text"].startswith("7.2")
    assert host["cordoned"] is False and host["cordon"]["state"] == "active"
    assert host["bridges_source"] == "sysfs" and "labbr0" in host["bridges"]
    assert host["postcopy"]["supported"] is True and host["migration_live"] is True
    assert host["host_uuid"] and host["arch"] == "x86_64"
    [dom] = [d for d in info["domains"] if d["name"] == vm]
    assert dom["state"] == "running" and dom["memory_mib"] == 320 and dom["vcpus"] == 2
    assert dom["labels"] == {"app": "web", "tier": "front"}
    assert dom["policy"]["name"] == "web" and "labels app=web" in dom["policy"]["reason"]
    assert [(d["target"], d["type"], d["protocol"], d["shared"]) for d in dom["disks"]] == [
        ("vda", "network", "nbd", True)]
    assert [(i["type"], i["source"]) for i in dom["interfaces"]] == [("bridge", "labbr0")]
    assert dom["local_devices"] == [] and dom["cpu_model"] == "qemu64"
