"""The production example inventory stays valid: its policies load and select as documented, and its
rolling settings take effect."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "inventories" / "example"


def test_example_policies_load_and_each_policy_is_reachable():
    data = yaml.safe_load((EXAMPLE / "group_vars" / "hypervisors.yml").read_text())
    policies = policy.load_policies(data["hvfleet_migration_policies"], source="inventories/example")
    chosen = {
        policy.select_policy(policies, name, labels, mem).policy.name
        for name, labels, mem in [
            ("web1", {}, 4096),
            ("pg1", {"app": "db"}, 8192),
            ("ci-runner-3", {}, 2048),
            ("bigdata", {}, 131072),
        ]
    }
    assert chosen == {p.name for p in policies}


def test_example_uses_encrypted_libvirt_transport():
    data = yaml.safe_load((EXAMPLE / "group_vars" / "hypervisors.yml").read_text())
    assert data["hvfleet_libvirt_uri"].startswith(("qemu+tls://", "qemu+ssh://"))


def test_example_rack_setting_takes_effect_in_the_rolling_strategy(tmp_path):
    """group_vars/hypervisors.yml sets the failure domain key: two in flight are never of one rack."""
    playbook = tmp_path / "roll.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Roll through the example fleet", "hosts": "hypervisors", "strategy": "hvfleet.drain.rolling",
        "gather_facts": False,
        "tasks": [{"name": "Stand in for the maintenance", "ansible.builtin.debug": {"msg": "done"}}],
    }]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_DEPRECATION_WARNINGS="false",
               ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false")
    # the example's windows depend on the time of day: open them for the test (extra vars win)
    settings = {"hvfleet_rolling_max_in_flight": 2, "hvfleet_maintenance_window": "00:00-24:00"}
    res = subprocess.run([Path(sys.executable).parent / "ansible-playbook", "-i", EXAMPLE, playbook,
                          "-e", json.dumps(settings)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "(max in flight 2, failure domain key rack, max failures 0)" in out
    admissions = re.findall(r"hvfleet\.drain\.rolling: admitting (\S+) \(in flight \d/2: ([^)]*)\)", out)
    # in name order kvm-a01 and kvm-a02 come first, but they share rack a
    assert admissions[:2] == [("kvm-a01", "kvm-a01"), ("kvm-b01", "kvm-a01, kvm-b01")], out


def test_example_rack_setting_takes_effect_through_rolling_turn(tmp_path):
    """The same under ansible-core's free strategy with hvfleet.drain.rolling_turn: the example's group_vars give
    max in flight 2 and the rack key; each admitted host notes who held a turn with it, and no two share a rack."""
    seen = tmp_path / "seen.jsonl"
    playbook = tmp_path / "roll.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Roll through the example fleet", "hosts": "hypervisors", "strategy": "free", "gather_facts": False,
        "tasks": [{"name": "Take the turn, note who is in flight, give it back", "block": [
            {"name": "Wait for the turn", "hvfleet.drain.rolling_turn": {
                "state": "acquired", "ledger": str(tmp_path / "ledger.json"), "poll_interval": 0.1},
             "register": "turn"},
            {"name": "Note who is in flight", "delegate_to": "localhost", "ansible.builtin.lineinfile": {
                "path": str(seen), "create": True, "mode": "0600",
                "line": "{{ {'host': inventory_hostname, 'in_flight': turn.in_flight} | to_json }}"}},
            {"name": "Stand in for the maintenance", "delegate_to": "localhost",
             "ansible.builtin.wait_for": {"timeout": 1}},
        ], "always": [{"name": "Give the turn back", "hvfleet.drain.rolling_turn": {
            "state": "released", "ledger": str(tmp_path / "ledger.json")}}]}],
    }]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="false")
    res = subprocess.run([Path(sys.executable).parent / "ansible-playbook", "-i", EXAMPLE, playbook,
                          "-e", json.dumps({"hvfleet_maintenance_window": "00:00-24:00"})],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "deprecat" not in out.lower(), out  # no third-party strategy: no deprecation warning
    hosts = yaml.safe_load((EXAMPLE / "hosts.yml").read_text())["all"]["children"]["hypervisors"]["children"]
    rack = {host: group["vars"]["rack"] for group in hosts.values() for host in group["hosts"]}
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    assert sorted(r["host"] for r in records) == sorted(rack)
    for record in records:
        assert len(record["in_flight"]) <= 2, record
        racks = [rack[h] for h in record["in_flight"]]
        assert len(racks) == len(set(racks)), record
    assert max(len(r["in_flight"]) for r in records) == 2, records  # two racks: the limit of 2 is reached
