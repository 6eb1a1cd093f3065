"""The generated lab inventory: what a playbook needs to reach every lab hypervisor."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lab"))

from hvlab.inventory import build_inventory, render_yaml, write_inventory  # noqa: E402

ROOT = Path("/var/tmp/hvfleet-lab")


def test_hosts_and_vars():
    inv = build_inventory(["hv2", "hv1", "hv10"], ROOT)
    hosts = inv["all"]["children"]["hypervisors"]["hosts"]
    assert list(hosts) == ["hv1", "hv2", "hv10"]
    hv2 = hosts["hv2"]
    assert hv2["ansible_host"] == "10.254.0.12"
    assert hv2["ansible_user"] == "root"
    assert hv2["ansible_ssh_private_key_file"] == "/var/tmp/hvfleet-lab/ssh/id_ed25519"
    assert "StrictHostKeyChecking=no" in hv2["ansible_ssh_common_args"]
    assert "UserKnownHostsFile=/dev/null" in hv2["ansible_ssh_common_args"]
    assert hv2["ansible_python_interpreter"] == "/usr/bin/python3"
    assert hv2["hvfleet_libvirt_uri"] == "qemu+tcp://10.254.0.12/system"
    assert hv2["hvfleet_libvirt_tls_uri"] == "qemu+tls://10.254.0.12/system?pkipath=/var/tmp/hvfleet-lab/pki/controller"
    assert hv2["hvfleet_migration_address"] == "10.254.0.12"
    assert "hvfleet_link_mbit" not in hv2
    assert hosts["hv10"]["ansible_host"] == "10.254.0.20"


def test_link_speed_only_on_shaped_hosts():
    hosts = build_inventory(["hv1", "hv2"], ROOT, {"hv2": 100})["all"]["children"]["hypervisors"]["hosts"]
    assert hosts["hv2"]["hvfleet_link_mbit"] == 100
    assert "hvfleet_link_mbit" not in hosts["hv1"]


def test_rendered_yaml_parses_back_to_the_same_data():
    inv = build_inventory(["hv1", "hv2", "hv3"], Path("/tmp/we ird: root"), {"hv1": 50.5})
    assert yaml.safe_load(render_yaml(inv)) == inv


def test_written_file_is_a_valid_ansible_inventory(tmp_path):
    path = write_inventory(tmp_path / "lab" / "hosts.yml", ["hv1", "hv2"], ROOT)
    assert path.read_text().startswith("# Generated")
    ansible_inventory = Path(sys.executable).with_name("ansible-inventory")
    if not ansible_inventory.exists():
        pytest.skip("ansible-inventory is not installed next to this Python")
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    out = subprocess.run(
        [str(ansible_inventory), "-i", str(path), "--host", "hv2"],
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg")},
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert yaml.safe_load(out.stdout)["hvfleet_libvirt_uri"] == "qemu+tcp://10.254.0.12/system"
