"""Two generations of hypervisors: machine types in the host facts, and placement preferring the same or a
newer generation (with the reason saying so)."""

import xml.etree.ElementTree as ET

from ansible_collections.hvfleet.drain.plugins.module_utils.planning import host_facts as H
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    VmDemand,
    plan_placement,
)

CAPS = """<capabilities>
  <host><uuid>u3</uuid><cpu><arch>x86_64</arch></cpu></host>
  <guest><os_type>hvm</os_type><arch name='i686'><machine>pc-i440fx-10.0</machine>
    <machine canonical='pc-i440fx-10.0'>pc</machine><domain type='qemu'/></arch></guest>
  <guest><os_type>hvm</os_type><arch name='x86_64'>
    <machine maxCpus='255'>pc-i440fx-10.0</machine>
    <machine canonical='pc-i440fx-10.0' maxCpus='255'>pc</machine>
    <machine maxCpus='4096'>pc-q35-10.0</machine>
    <machine canonical='pc-q35-10.0' maxCpus='4096'>q35</machine>
    <machine maxCpus='255'>pc-i440fx-7.2</machine>
    <domain type='qemu'/>
    <domain type='kvm'><machine>kvm-only-1.0</machine></domain>
  </arch></guest>
</capabilities>"""

OLD = (7002022, 9000000)
NEW = (10000013, 11003000)


def test_machine_types_per_domain_type_with_aliases():
    machines, aliases = H.machine_types(ET.fromstring(CAPS), "x86_64")
    assert machines["qemu"] == ("pc", "pc-i440fx-10.0", "pc-i440fx-7.2", "pc-q35-10.0", "q35")
    assert "kvm-only-1.0" in machines["kvm"] and "kvm-only-1.0" not in machines["qemu"]
    assert aliases == {"pc": "pc-i440fx-10.0", "q35": "pc-q35-10.0"}
    assert H.machine_types(ET.fromstring(CAPS), "aarch64") == (None, {})


def test_has_machine_and_round_trip_through_the_module_result():
    machines, aliases = H.machine_types(ET.fromstring(CAPS), "x86_64")
    facts = H.HostFacts(name="hv3", qemu_version=NEW[0], libvirt_version=NEW[1], machine_types=machines,
                        machine_aliases=aliases)
    assert facts.has_machine("pc-i440fx-7.2", "qemu") is True
    assert facts.has_machine("pc-i440fx-11.0", "qemu") is False
    assert facts.has_machine("kvm-only-1.0", "qemu") is False
    assert H.HostFacts(name="x").has_machine("pc", "qemu") is None  # unknown, never guessed
    data = facts.to_dict()
    assert data["machine_types"]["qemu"][0] == "pc" and isinstance(data["machine_types"]["qemu"], list)
    back = H.HostFacts.from_dict(data)
    assert back.machine_types == facts.machine_types and back.stack == NEW


def hosts(*stacks, mem=65536):
    return [HostCapacity(f"hv{i}", mem, 0, 32, 0, stack=s) for i, s in enumerate(stacks, start=1)]


def test_prefers_same_or_newer_generation_even_with_less_memory():
    fleet = hosts(OLD, OLD, NEW)
    fleet[2] = HostCapacity("hv3", 16384, 0, 32, 0, stack=NEW)  # the new host has the least memory
    vm = VmDemand("vm1", 4096, 2, source_stack=NEW)
    plan = plan_placement("hv4", [vm], fleet, PlacementConfig())
    [a] = plan.assignments
    assert a.destination == "hv3"
    assert a.reason.startswith("same generation as the source (QEMU 10.0.13, libvirt 11.3.0)")


def test_old_source_may_go_anywhere_and_says_newer():
    fleet = hosts(OLD, NEW)
    plan = plan_placement("hv1", [VmDemand("vm1", 4096, 2, source_stack=OLD)], fleet, PlacementConfig())
    [a] = plan.assignments
    assert a.destination == "hv2" and a.reason.startswith("newer generation than the source")


def test_older_host_only_when_no_newer_one_fits_and_the_reason_says_so():
    fleet = [HostCapacity("hv1", 65536, 0, 32, 0, stack=OLD), HostCapacity("hv2", 4096, 2048, 32, 0, stack=NEW)]
    plan = plan_placement("hv9", [VmDemand("vm1", 4096, 2, source_stack=NEW)], fleet, PlacementConfig())
    [a] = plan.assignments
    assert a.destination == "hv1"
    assert "older generation than the source" in a.reason and "no host of the same or a newer generation fits" \
        in a.reason


def test_unknown_stacks_keep_the_memory_rule():
    fleet = [HostCapacity("hv1", 65536, 0, 32, 0), HostCapacity("hv2", 16384, 0, 32, 0, stack=NEW)]
    plan = plan_placement("hv9", [VmDemand("vm1", 4096, 2, source_stack=NEW)], fleet, PlacementConfig())
    [a] = plan.assignments
    assert a.destination == "hv1" and "generation" not in a.reason
