"""hypervisor_info reports the host's NUMA nodes with their CPUs and its huge pages per size, and each domain's pins
and huge pages, as Ansible runs it (libvirt's test driver: two NUMA nodes of 8 CPUs, no huge pages reserved)."""

import pytest
from test_preflight_modules import TEST_URI, run_module

pytest.importorskip("libvirt")


def test_hypervisor_info_reports_topology_hugepages_and_domain_shape(tmp_path):
    res = run_module("hypervisor_info", tmp_path, uri=TEST_URI, name="tdrv")
    assert not res.get("failed"), res
    host = res["hypervisor"]
    assert host["numa_cells"] == {"0": list(range(8)), "1": list(range(8, 16))}
    assert host["hugepages"] == {"2048": {"total": 0, "free": 0}, "1048576": {"total": 0, "free": 0}}
    assert host["hugepages_free_nodes"] == {}  # the test driver reports no free pages on any node
    [dom] = res["domains"]
    assert dom["pins"] == {"cpus": [], "nodes": []} and dom["hugepages"] == {} and dom["memory_nodes"] == []
