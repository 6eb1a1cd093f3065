"""The example inventory's GitOps maintenance declarations are what playbooks/reconcile.yml accepts."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible_collections.hvfleet.drain.plugins.filter.maintenance import maintenance_window

REPO = Path(__file__).resolve().parents[3]


def hostvars():
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    res = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(REPO / "inventories" /
                          "example"), "--list"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)["_meta"]["hostvars"]


def test_every_hypervisor_declares_a_valid_state_and_window():
    found = hostvars()
    assert len(found) == 4
    for host, hv in found.items():
        declared = hv["hvfleet_maintenance"]
        assert set(declared) <= {"state", "reason", "window"}, host
        assert declared["state"] in ("drained", "active"), host
        if declared["state"] == "drained":
            assert declared.get("reason"), f"{host}: a drained host needs a reason"
        window = declared.get("window", hv.get("hvfleet_maintenance_window"))
        assert maintenance_window(window, now="2030-07-01T23:00:00Z")["defined"], host


def test_windows_come_from_the_host_then_its_rack_then_the_fleet():
    found = hostvars()
    at = "2030-07-01T23:00:00Z"

    def window(host):
        hv = found[host]
        return maintenance_window(hv["hvfleet_maintenance"].get("window", hv.get("hvfleet_maintenance_window")), at)

    assert found["kvm-a02"]["hvfleet_maintenance"]["state"] == "drained"
    assert window("kvm-a02")["closes_at"] == "2030-07-02T02:00:00Z"  # its own window
    assert window("kvm-a01")["description"] == "daily 22:00-04:00 UTC" and window("kvm-a01")["open"]  # the fleet's
    assert window("kvm-b01")["description"] == "daily 01:00-05:00 UTC" and not window("kvm-b01")["open"]  # rack b's
