"""hypervisor_info, migration_preflight and host_maintenance as Ansible runs them, on libvirt's test driver.

Each module is executed as a script with an args file (what AnsiballZ does), so argument specs,
bad-input handling and the returned data are tested without a hypervisor. The lab tests cover
real hosts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libvirt")

REPO = Path(__file__).resolve().parents[3]
COLLECTIONS = REPO / ".collections"
TEST_URI = "test:///default"


def run_module(module, tmp_path, check_mode=False, diff=False, **args):
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    argfile = tmp_path / f"args-{module}.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    res = subprocess.run([sys.executable, "-m", f"ansible_collections.hvfleet.drain.plugins.modules.{module}",
                          str(argfile)], capture_output=True, text=True, env=env, timeout=120, check=False)
    out = res.stdout[res.stdout.index("{"):]
    return json.loads(out)


def dest(name="self", uri=TEST_URI, **extra):
    return dict(name=name, uri=uri, **extra)


def test_hypervisor_info_lists_domains_with_policy(tmp_path):
    policies = [{"name": "tests", "selector": {"domains": ["te*"]}, "settings": {"mode": "precopy"}}]
    res = run_module("hypervisor_info", tmp_path, uri=TEST_URI, name="tdrv", policies=policies)
    assert not res.get("failed"), res
    assert res["changed"] is False and res["hypervisor"]["name"] == "tdrv"
    assert res["hypervisor"]["cordon"] is None  # not read: the URI is not this host
    [dom] = res["domains"]
    assert dom["name"] == "test" and dom["state"] == "running" and dom["policy"]["name"] == "tests"
    assert dom["disks"][0]["path"] == "/guest/diskimage1" and dom["disks"][0]["shared"] is None


def test_hypervisor_info_rejects_a_malformed_policy(tmp_path):
    res = run_module("hypervisor_info", tmp_path, uri=TEST_URI, policies=[{"name": "p", "settings": {"mod": 1}}])
    assert res["failed"] and "$[0].settings.mod" in res["msg"] and "did you mean 'mode'" in res["msg"]
    assert "domains" not in res


def test_preflight_reports_blockers_as_data(tmp_path):
    res = run_module("migration_preflight", tmp_path, uri=TEST_URI, name="src", dirty_rates={"test": 0},
                     destinations=[dest(migration_address="127.0.0.1", cordoned=False)])
    assert not res.get("failed"), res
    assert res["changed"] is False
    [item] = res["results"]
    assert item["vm"] == "test" and item["destination"] == "self" and not item["ok"]
    assert item["blockers"][0]["id"] == "dest.is_source"
    assert item["policy"]["name"] == "builtin-default" and item["forecast"]["mode"] == "precopy"
    assert res["summary"]["stuck"] == ["test"] and "can go nowhere" in res["summary"]["message"]
    assert res["vms"]["test"]["blocked"]["self"]


def test_fail_on_blockers_fails_with_the_summary_and_the_results(tmp_path):
    res = run_module("migration_preflight", tmp_path, uri=TEST_URI, dirty_rates={"test": 0}, fail_on_blockers=True,
                     destinations=[dest(cordoned=False)])
    assert res["failed"] and "test can go nowhere" in res["msg"] and res["results"]


def test_unreachable_destination_is_a_check_not_a_failure(tmp_path):
    res = run_module("migration_preflight", tmp_path, uri=TEST_URI, dirty_rates={"test": 0}, connect_timeout=5,
                     destinations=[dest("gone", "qemu+tcp://127.0.0.1:1/system")])
    assert not res.get("failed"), res
    [item] = res["results"]
    assert [b["id"] for b in item["blockers"]] == ["reach.libvirt"] and "gone" in item["blockers"][0]["message"]


@pytest.mark.parametrize("args, words", [
    ({"vms": ["nosuch"]}, ["'nosuch' not found", "test"]),
    ({"destinations": [dest(uri="hv2")]}, ["'hv2' is not a supported libvirt URI"]),
    ({"destinations": [dest(), dest()]}, ["'self' is listed twice"]),
    ({"policies": [{"name": "x", "default": True, "settings": {"mode": "fast"}}]},
     ["$[0].settings.mode", "'fast'", "nothing was migrated"]),
    ({"memory_headroom_mib": -1}, ["memory_headroom_mib must be >= 0"]),
])
def test_bad_input_fails_naming_the_thing(tmp_path, args, words):
    params = {"uri": TEST_URI, "destinations": [dest()], "measure_dirty_rate": False}
    params.update(args)
    res = run_module("migration_preflight", tmp_path, **params)
    assert res["failed"], res
    for word in words:
        assert word in res["msg"]
    assert "results" not in res


def test_host_maintenance_check_mode_shows_the_change_and_touches_nothing(tmp_path):
    state_dir = tmp_path / "hvfleet"
    res = run_module("host_maintenance", tmp_path, check_mode=True, diff=True, state="cordoned",
                     state_dir=str(state_dir), uri="qemu+tcp://127.0.0.1:1/system")
    assert res["changed"] and res["diff"]["after"]["state"] == "cordoned" and not state_dir.exists()


def test_host_maintenance_refuses_when_the_cordon_cannot_reach_the_ledger(tmp_path):
    """Drains elsewhere read the cordon from the host's ledger in libvirt: a daemon without secrets (libvirt's
    test driver has none) is an error that says so, and the cordon file is not written either."""
    state_dir = tmp_path / "hvfleet"
    res = run_module("host_maintenance", tmp_path, state="cordoned", reason="CHG-7", state_dir=str(state_dir),
                     uri=TEST_URI)
    assert res["failed"] and "capacity ledger" in res["msg"] and "secret driver" in res["msg"], res["msg"]
    assert not (state_dir / "maintenance.json").exists()
