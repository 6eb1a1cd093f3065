"""Huge pages: a VM's need from its XML, a host's free and reserved pages from libvirt, the `capacity.hugepages`
and `cpu.pinning` prerequisite checks, and placement counting the pages of the VMs it planned onto a host."""

import dataclasses
import json
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import host_facts as H
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import hugepages as HP
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import shape_checks
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import parse_domain_xml
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    VmDemand,
    plan_placement,
    recheck,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.shape_checks import shape_findings
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pinning import BIG_CAPS, LAB_CAPS, PINNED
from test_preflight import DST, by_id, domain, run


def dom_xml(backing="<hugepages/>", memory_kib=262144, numa=""):
    return (f"<domain type='qemu'><name>hp</name><memory unit='KiB'>{memory_kib}</memory>"
            f"<memoryBacking>{backing}</memoryBacking><cpu>{numa}</cpu><devices/></domain>")


@pytest.mark.parametrize("backing, numa, need", [
    ("<hugepages/>", "", {2048: 128}),
    ("<hugepages><page size='1' unit='GiB'/></hugepages>", "", {1048576: 1}),  # 256 MiB rounds up to one page
    ("<hugepages><page size='2048' unit='KiB' nodeset='0'/><page size='1048576' unit='KiB' nodeset='1'/>"
     "</hugepages>", "<numa><cell id='0' cpus='0' memory='131072' unit='KiB'/>"
                     "<cell id='1' cpus='1' memory='1' unit='GiB'/></numa>", {2048: 64, 1048576: 1}),
    ("<hugepages><page size='2' unit='M' nodeset='1'/></hugepages>",
     "<numa><cell id='0' memory='64' unit='MiB'/><cell id='1' memory='65' unit='MiB'/></numa>",
     {2048: 32 + 33}),  # cell 0 takes the default size, cell 1 rounds up
])
def test_domain_need_per_size_and_numa_cell(backing, numa, need):
    assert HP.domain_hugepages(ET.fromstring(dom_xml(backing, numa=numa))) == need
    assert parse_domain_xml(dom_xml(backing, numa=numa)).hugepages == need


def test_not_backed_by_hugepages_needs_none():
    assert HP.domain_hugepages(ET.fromstring("<domain><memory>1024</memory></domain>")) == {}
    assert parse_domain_xml(PINNED).hugepages == {}


class PagesConn:
    def __init__(self, free, refuse=False):
        self.free, self.refuse, self.asked = free, refuse, []

    def getFreePages(self, pages, start, count, flags=0):
        self.asked.append((tuple(pages), start, count, flags))
        if self.refuse:
            raise RuntimeError("this function is not supported by the connection driver: virNodeGetFreePages")
        return self.free


def test_host_pages_from_capabilities_and_free_pages():
    conn = PagesConn({0: {2048: 100, 1048576: 0}, 1: {2048: 412, 1048576: 0}})
    pages, nodes = HP.host_pages(conn, ET.fromstring(BIG_CAPS))
    assert pages == {2048: {"total": 1024, "free": 512}} and nodes == {0: {2048: 100}, 1: {2048: 412}}
    assert conn.asked == [((2048,), 0, 2, 0)]  # the sizes the host reserves, every cell at once
    assert HP.host_pages(PagesConn({}, refuse=True), ET.fromstring(BIG_CAPS)) is None
    assert HP.host_pages(conn, ET.fromstring("<capabilities><host/></capabilities>")) is None
    lab, _nodes = HP.host_pages(PagesConn({0: {2048: 64, 1048576: 0}}), ET.fromstring(LAB_CAPS))
    assert lab == {2048: {"total": 64, "free": 64}, 1048576: {"total": 0, "free": 0}}  # every size offered
    arm = ET.fromstring("<capabilities><host><topology><cells><cell id='0'><pages unit='KiB' size='64'>9</pages>"
                        "<pages unit='KiB' size='524288'>4</pages></cell></cells></topology></host></capabilities>")
    assert HP.capabilities_pages(arm) == {524288: 4}  # a 64 KiB base page is no huge page


def test_host_facts_carry_topology_and_pages_through_json():
    facts = dataclasses.replace(DST, numa_cells={0: (0, 1)}, hugepages={2048: {"total": 64, "free": 10}},
                                hugepages_free_nodes={0: {2048: 10}})
    data = facts.to_dict()
    back = H.HostFacts.from_dict(json.loads(json.dumps(data)))  # what hypervisor_info's result gives back
    assert back.numa_cells == {0: (0, 1)} and back.hugepages == {2048: {"total": 64, "free": 10}}
    assert back.hugepages_free_nodes == {0: {2048: 10}} and back == facts
    assert back.topology.describe() == "CPUs 0-1 in NUMA nodes 0"


HP_DOM = dataclasses.replace(domain(), hugepages={2048: 128})


def test_hugepages_check_passes_fails_with_counts_and_fix_and_warns_when_unknown():
    enough = dataclasses.replace(DST, hugepages={2048: {"total": 256, "free": 200}})
    short = dataclasses.replace(DST, hugepages={2048: {"total": 128, "free": 100}, 1048576: {"total": 0, "free": 0}})
    [(cid, status, message, _fix)] = shape_findings(HP_DOM, enough, {})
    assert (cid, status) == ("capacity.hugepages", PASS) and "128 x 2048 KiB" in message
    assert "200 x 2048 KiB free on hv2" in message
    [(cid, status, message, fix)] = shape_findings(HP_DOM, short, {})
    assert status == FAIL and "needs 128 huge pages of 2048 KiB, 100 free on hv2" in message
    assert "hugepages-2048kB/nr_hugepages" in fix
    [(cid, status, message, _fix)] = shape_findings(HP_DOM, DST, {})
    assert status == WARN and "unknown" in message
    assert shape_findings(domain(), short, {}) == []  # no huge pages, no pins: no check at all


def test_prechecks_report_the_shape_checks():
    short = dataclasses.replace(DST, hugepages={2048: {"total": 128, "free": 100}})
    res = run(HP_DOM, dest=short)
    [check] = by_id(res, "capacity.hugepages")
    assert check.status == FAIL and "100 free" in check.message
    assert not by_id(res, "cpu.pinning")


LAB_DST = dataclasses.replace(DST, numa_cells={0: (0, 1)})
PIN_DOM = parse_domain_xml(PINNED, state="running", persistent=True)


@pytest.mark.parametrize("offered", [False, True])
def test_pinning_refused_by_default_naming_pins_cpus_and_fix(monkeypatch, offered):
    """The fix names pinning: adapt only once the policy schema lets a policy set it."""
    monkeypatch.setattr(shape_checks, "ADAPT_OFFERED", offered)
    [(cid, status, message, fix)] = shape_findings(PIN_DOM, LAB_DST, {})
    assert (cid, status) == ("cpu.pinning", FAIL)
    assert "vcpupin vcpu 0 -> CPUs 5 (lacks 5)" in message and "CPUs 0-1 in NUMA nodes 0" in message
    assert "vcpupin" in fix and "choose a destination that has them" in fix
    assert ("pinning: adapt" in fix) is offered


def test_adapt_is_offered_exactly_when_the_policy_schema_has_the_setting():
    assert shape_checks.ADAPT_OFFERED is ("pinning" in DEFAULT_SETTINGS)


def test_pinning_adapt_warns_fit_passes_unknown_warns_bad_setting_fails():
    [(_c, status, message, _f)] = shape_findings(PIN_DOM, LAB_DST, {"pinning": "adapt"})
    assert status == WARN and "destination XML" in message
    big = dataclasses.replace(DST, numa_cells={0: (0, 1, 2, 3), 1: (4, 5, 6, 7)})
    assert shape_findings(PIN_DOM, big, {})[0][1] == PASS
    assert shape_findings(PIN_DOM, DST, {})[0][1] == WARN  # topology unknown
    [(_c, status, message, fix)] = shape_findings(PIN_DOM, LAB_DST, {"pinning": "remap"})
    assert status == FAIL and "'remap'" in message and "refuse or adapt" in fix


def host(name, free, memory=64000):
    return HostCapacity(name, memory, 0, 64, 0, hugepages_free=free)


def test_placement_counts_pages_of_vms_planned_onto_the_same_host():
    vms = [VmDemand(f"vm{i}", 512, 1, hugepages={2048: 256}) for i in range(3)]
    plan = plan_placement("src", vms, [host("src", {}), host("hv2", {2048: 600}, memory=64000),
                                       host("hv3", {2048: 100}, memory=128000)], PlacementConfig())
    assert [a.destination for a in plan.assignments] == ["hv2", "hv2"]  # hv3 has more memory, too few pages
    [left] = plan.unplaced
    assert "needs 256 huge pages of 2048 KiB, 88 free (after 2 VM(s) planned there)" in left.reasons["hv2"]
    assert "hugepages-2048kB/nr_hugepages" in left.reasons["hv2"]
    assert "needs 256 huge pages of 2048 KiB, 100 free" in left.reasons["hv3"]


def test_unknown_pages_are_not_counted_and_a_vm_without_pages_ignores_them():
    plan = plan_placement("src", [VmDemand("a", 512, 1, hugepages={2048: 10}), VmDemand("b", 512, 1)],
                          [host("hv2", None), host("hv3", {})], PlacementConfig())
    assert plan.destinations()["a"] == "hv2" and not plan.unplaced
    ok, why = recheck(VmDemand("a", 512, 1, hugepages={2048: 10}), host("hv3", {2048: 9}), PlacementConfig())
    assert not ok and "needs 10 huge pages of 2048 KiB, 9 free" in why


def test_memory_in_huge_pages_is_not_counted_against_ordinary_memory_twice():
    assert HP.pool_split({2048: 128}, 256) == (0, 256)
    assert HP.pool_split({}, 256) == (256, 0)
    assert HP.pool_split({1048576: 1}, 256) == (0, 256)  # a page larger than the VM: all of it pooled
    big = dataclasses.replace(domain(memory=20000), hugepages={2048: 10000})  # 20000 MiB, all in 2 MiB pages
    tight = dataclasses.replace(DST, memory_available_mib=2000, hugepages={2048: {"total": 10000, "free": 10000}})
    res = run(big, dest=tight)
    [memory] = by_id(res, "capacity.memory")
    assert memory.status == PASS and "needs 0 MiB (and 20000 MiB in huge pages)" in memory.message
    [pages] = by_id(res, "capacity.hugepages")
    assert pages.status == PASS
    [plain] = by_id(run(domain(memory=20000), dest=tight), "capacity.memory")
    assert plain.status == FAIL  # the same VM in ordinary memory does not fit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 64, 128, 512]), st.sampled_from([2048, 1048576])), min_size=1,
                max_size=12),
       st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 3)), min_size=1, max_size=4))
def test_no_plan_puts_more_pages_on_a_host_than_it_has_free(vms, hosts):
    demands = [VmDemand(f"vm{i}", 256, 1, hugepages={size: pages} if pages else {})
               for i, (pages, size) in enumerate(vms)]
    caps = [host(f"hv{i}", {2048: small, 1048576: big}) for i, (small, big) in enumerate(hosts)]
    plan = plan_placement("src", demands, caps, PlacementConfig())
    by_name = {d.name: d for d in demands}
    for cap in caps:
        for size, free in cap.hugepages_free.items():
            used = sum(by_name[a.vm].hugepages.get(size, 0) for a in plan.assignments if a.destination == cap.name)
            assert used <= free
    for left in plan.unplaced:  # only a lack of pages keeps a VM out here, and the reason says so
        assert all("huge pages" in why for why in left.reasons.values())


NUMA_DST = dataclasses.replace(DST, numa_cells={0: (0, 1, 2, 3), 1: (4, 5, 6, 7)},
                               hugepages={2048: {"total": 1024, "free": 300}},
                               hugepages_free_nodes={0: {2048: 250}, 1: {2048: 50}})


@pytest.mark.parametrize("numatune, status, words", [
    ("", PASS, "300 x 2048 KiB free on hv2"),  # not bound: any node
    ("<memory mode='strict' nodeset='1'/>", FAIL, "needs 128 huge pages of 2048 KiB, 50 free on NUMA nodes 1 of hv2"),
    ("<memory nodeset='0'/>", PASS, "250 x 2048 KiB free on NUMA nodes 0 of hv2"),  # strict is the default mode
    ("<memory mode='preferred' nodeset='1'/>", PASS, "300 x 2048 KiB free on hv2"),  # preferred binds nothing
    ("<memory mode='strict' nodeset='1'/><memnode cellid='0' mode='strict' nodeset='0'/>", PASS, "NUMA nodes 0-1"),
    ("<memory mode='strict' nodeset='3'/>", PASS, "over all its nodes: it lacks some of nodes 3"),
])
def test_a_vm_bound_to_numa_nodes_counts_the_free_pages_of_those_nodes(numatune, status, words):
    xml = dom_xml().replace("<cpu>", f"<numatune>{numatune}</numatune><cpu>")
    vm = parse_domain_xml(xml)
    [(_cid, found, message, _fix)] = [f for f in shape_findings(vm, NUMA_DST, {}) if f[0] == "capacity.hugepages"]
    assert found == status and words in message, message
