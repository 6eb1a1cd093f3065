"""The production example inventory stays valid: its policies load and select as documented."""

from pathlib import Path

import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy

EXAMPLE = Path(__file__).resolve().parents[3] / "inventories" / "example"


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
