"""Placement that knows the VM, on the lab: pinned VMs and a VM backed by huge pages.

Each test reads the facts through libvirt as a plan does (domain_facts, host_facts), runs the prerequisite
checks (and, for huge pages, placement) against the real destination, migrates with the engine, and checks the
invariants: the VM runs on one host only, in the same boot, with its pins or huge pages kept.

What the lab cannot show: all lab hosts are one machine (2 CPUs, one NUMA node), and libvirt refuses to start a
VM pinned to a CPU the source lacks, so no real destination lacks a pinned CPU. The refusal and the re-mapping
are therefore decided against hv2's real facts with its topology narrowed to CPU 0 (as a one-CPU host would
report it); the re-mapped destination XML is then given to libvirt for real and must be honoured by it.
Huge pages are real: the lab hosts share this machine's kernel pool, which the fixture reserves and restores.
The CPU definition a plan compares once for many VMs is checked against real libvirt's answers.
"""

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

libvirt = pytest.importorskip("libvirt")

from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import pinning as PN  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import cpu_definition  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import domain_facts  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import host_facts  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.hugepages import free_pages  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (  # noqa: E402
    HostCapacity,
    PlacementConfig,
    VmDemand,
    plan_placement,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import (  # noqa: E402
    DEFAULT_SETTINGS,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.preflight import run_prechecks  # noqa: E402
from lab_helpers import assert_only_on, booted, timed, wait_for  # noqa: E402

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HUGEPAGES_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB")
MOUNT = "/var/lib/libvirt/hvfleet-hugepages"  # inside each lab host's own mount namespace
XML_MIGRATABLE, XML_INACTIVE = 8, 2


@pytest.fixture
def conns(lab):
    src, dst = lab.connect("hv1"), lab.connect("hv2")
    yield src, dst
    src.close()
    dst.close()


def facts(conn, lab, host):
    return host_facts(conn, name=host, uri=lab.uri(host), local=False)


def prechecks(lab, src, dst, vm, dest_facts=None, **settings):
    found = run_prechecks(src, dst, domain_facts(src.lookupByName(vm)), facts(src, lab, "hv1"),
                          dest_facts or facts(dst, lab, "hv2"), dict(DEFAULT_SETTINGS, **settings),
                          migration_address=lab.addr("hv2"))
    return {c.id: c for c in found.checks}


def migrate(lab, src, dst, vm, **spec):
    spec = MigrationSpec(migrate_uri=f"tcp://{lab.addr('hv2')}", allow_postcopy=False, **spec)
    moved = Migration(src, dst, vm, lab.uri("hv2"), spec, source_uri=lab.uri("hv1")).run()
    assert moved.outcome == "moved", moved.message
    return moved


def pins_on(lab, host, vm, inactive=False):
    """{vcpupin / emulatorpin: cpuset} of the domain on `host`, live or as defined there."""
    xml = lab.exec(host, ["virsh", "dumpxml", *(["--inactive"] if inactive else []), vm]).stdout
    tune = ET.fromstring(xml).find("cputune")
    return {} if tune is None else {f"{e.tag}{e.get('vcpu') or ''}": e.get("cpuset") for e in tune}


def pin(lab, vm, vcpu_cpu, emulator_cpu):
    lab.exec("hv1", ["virsh", "vcpupin", vm, "0", vcpu_cpu, "--live", "--config"])
    lab.exec("hv1", ["virsh", "emulatorpin", vm, emulator_cpu, "--live", "--config"])


def test_a_pinned_vm_whose_cpus_exist_moves_as_is_with_its_pins_and_boot(lab, make_vm, conns):
    src, dst = conns
    vm = make_vm("hv1")
    before = booted(lab, vm)
    pin(lab, vm, "1", "0")
    assert domain_facts(src.lookupByName(vm)).pins.cpus == (("vcpupin vcpu 0", (1,)), ("emulatorpin", (0,)))
    found = prechecks(lab, src, dst, vm)
    assert found["cpu.pinning"].status == PASS, found["cpu.pinning"].message
    assert "exist on hv2 (CPUs 0-1 in NUMA nodes 0)" in found["cpu.pinning"].message
    assert PN.adapted_xmls(src.lookupByName(vm), dst) == (None, None)  # nothing to re-map: no destination XML
    with timed("pinned VM, pins kept"):
        migrate(lab, src, dst, vm)
    assert_only_on(lab, vm, "hv2", before)
    assert pins_on(lab, "hv2", vm) == pins_on(lab, "hv2", vm, inactive=True) == {"vcpupin0": "1", "emulatorpin": "0"}


def test_pins_a_destination_lacks_are_refused_and_with_adapt_remapped_by_the_destination_xml(lab, make_vm, conns):
    src, dst = conns
    vm = make_vm("hv1")
    before = booted(lab, vm)
    pin(lab, vm, "1", "1")
    one_cpu = dataclasses.replace(facts(dst, lab, "hv2"), numa_cells={0: (0,)})  # hv2 as a one-CPU host reports it
    refused = prechecks(lab, src, dst, vm, dest_facts=one_cpu)["cpu.pinning"]
    assert refused.status == FAIL
    assert "vcpupin vcpu 0 -> CPUs 1 (lacks 1)" in refused.message and "emulatorpin -> CPUs 1" in refused.message
    assert "hv2 has CPUs 0 in NUMA nodes 0" in refused.message and "choose a destination that has them" in refused.fix
    adapt = prechecks(lab, src, dst, vm, dest_facts=one_cpu, pinning="adapt")["cpu.pinning"]
    assert adapt.status == WARN and "destination XML" in adapt.message

    dom = src.lookupByName(vm)
    topo = one_cpu.topology
    live = PN.adapt_xml(dom.XMLDesc(XML_MIGRATABLE), topo)
    kept = PN.adapt_xml(dom.XMLDesc(XML_MIGRATABLE | XML_INACTIVE), topo)
    assert live and kept
    with timed("pinned VM, pins re-mapped by the destination XML"):
        migrate(lab, src, dst, vm, dest_xml=live, persist_xml=kept)
    assert_only_on(lab, vm, "hv2", before)
    remapped = {"vcpupin0": "0", "emulatorpin": "0"}
    assert pins_on(lab, "hv2", vm) == pins_on(lab, "hv2", vm, inactive=True) == remapped


@pytest.fixture
def hugepages(lab):
    """A hugetlbfs in hv1's and hv2's mount namespaces (libvirtd restarted to find it) and a setter for the kernel's
    2 MiB pool, which the lab hosts share; the pool size, the mounts and the daemons are restored afterwards."""
    saved = NR_HUGEPAGES.read_text().strip()
    mounted = []

    def reserve(pages):
        NR_HUGEPAGES.write_text(str(pages))
        return wait_for(lambda: int((HUGEPAGES_2M / "nr_hugepages").read_text()) == pages, 10, f"{pages} pages")

    def restart(host):
        lab.stop_libvirtd(host)
        lab.start_libvirtd(host)

    try:
        for host in ("hv1", "hv2"):
            lab.exec(host, ["sh", "-c", f"mkdir -p {MOUNT} && mount -t hugetlbfs -o pagesize=2M hugetlbfs {MOUNT}"])
            mounted.append(host)
            restart(host)  # libvirt finds hugetlbfs mounts when it starts
        yield reserve
    finally:
        for host in mounted:
            lab.exec(host, ["sh", "-c", f"umount {MOUNT} && rmdir {MOUNT}"], check=False)
            restart(host)
        NR_HUGEPAGES.write_text(saved)
        assert NR_HUGEPAGES.read_text().strip() == saved


def backed_by_hugepages(lab, conn, vm):
    """Restart the lab VM backed by huge pages (the default 2 MiB size); a fresh console for its new boot."""
    dom = conn.lookupByName(vm)
    xml = dom.XMLDesc(XML_INACTIVE)
    dom.destroy()
    xml = xml.replace("</currentMemory>", "</currentMemory><memoryBacking><hugepages/></memoryBacking>", 1)
    lab.console_path(vm).write_bytes(b"")
    conn.defineXML(xml).create()


def placement_of(vm_facts, dest_facts):
    used = dest_facts.memory_total_mib - dest_facts.memory_available_mib
    host = HostCapacity("hv2", dest_facts.memory_total_mib, used, dest_facts.cpus, dest_facts.vcpus_allocated,
                        hugepages_free=free_pages(dest_facts.hugepages))
    demand = VmDemand(vm_facts.name, vm_facts.memory_mib, vm_facts.vcpus, hugepages=vm_facts.hugepages)
    return plan_placement("hv1", [demand], [host], PlacementConfig(vcpu_overcommit=8.0))  # 2 CPUs, shared lab


def test_a_hugepage_vm_is_refused_without_free_pages_and_moves_when_the_destination_has_them(
        lab, hugepages, make_vm, conns):
    src, dst = conns
    hugepages(64 + 20)  # the VM takes 64 (128 MiB), 20 stay free: too few for its copy on hv2
    vm = make_vm("hv1", memory=128)
    booted(lab, vm)
    backed_by_hugepages(lab, src, vm)
    before = booted(lab, vm)
    vm_facts = domain_facts(src.lookupByName(vm))
    assert vm_facts.hugepages == {2048: 64}
    wait_for(lambda: int((HUGEPAGES_2M / "free_hugepages").read_text()) == 20, 30, "the VM to take its 64 pages")

    found = prechecks(lab, src, dst, vm)["capacity.hugepages"]
    assert found.status == FAIL, found.message
    assert "needs 64 huge pages of 2048 KiB, 20 free on hv2" in found.message
    assert "hugepages-2048kB/nr_hugepages" in found.fix
    plan = placement_of(vm_facts, facts(dst, lab, "hv2"))
    assert not plan.assignments
    assert "needs 64 huge pages of 2048 KiB, 20 free" in plan.unplaced[0].reasons["hv2"]

    hugepages(64 + 64 + 8)  # now hv2 can hold the copy
    found = prechecks(lab, src, dst, vm)["capacity.hugepages"]
    assert found.status == PASS and "72 x 2048 KiB, 0 x 1048576 KiB free on hv2" in found.message
    plan = placement_of(vm_facts, facts(dst, lab, "hv2"))
    assert plan.destinations() == {vm: "hv2"}, plan.unplaced
    with timed("hugepage-backed VM, 128 MiB in 2 MiB pages"):
        migrate(lab, src, dst, vm)
    assert_only_on(lab, vm, "hv2", before)
    assert domain_facts(dst.lookupByName(vm)).hugepages == {2048: 64}  # still backed by huge pages on hv2
    wait_for(lambda: int((HUGEPAGES_2M / "free_hugepages").read_text()) == 72, 30, "hv1's copy to free its pages")


@pytest.mark.parametrize("model, features, expected", [
    ("qemu64", "", {1, 2}),  # TCG offers it: identical or a subset
    ("Haswell-noTSX", "", {0}),  # not on this machine's TCG
    ("qemu64", "<feature policy='require' name='avx512f'/>", {0}),
])
def test_the_cpu_definition_asked_once_gets_libvirts_answer_for_every_vm_shape(lab, model, features, expected):
    """The plan compares a CPU definition without the vCPU topology, guest NUMA cells, cache and address size
    (check_cache.cpu_definition), once for all VMs that share it: real libvirt answers the stripped definition as
    it answers each VM's own."""
    conn = lab.connect("hv2")
    try:
        answers = set()
        for shape in ("", "<topology sockets='1' dies='1' cores='2' threads='1'/>"
                          "<numa><cell id='0' cpus='0-1' memory='262144' unit='KiB'/></numa>",
                      "<maxphysaddr mode='emulate' bits='42'/><cache level='3' mode='emulate'/>"):
            xml = f"<cpu mode='custom' match='exact'><model fallback='forbid'>{model}</model>{features}{shape}</cpu>"
            for asked in (xml, cpu_definition(xml)):
                answers.add(conn.compareHypervisorCPU("/usr/bin/qemu-system-x86_64", "x86_64", "pc", "qemu", asked, 0))
    finally:
        conn.close()
    assert len(answers) == 1 and answers <= expected, answers
