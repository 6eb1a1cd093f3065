"""A mixed fleet on the lab: hv1 and hv2 run the machine's Debian 12 stack (libvirt 9, QEMU 7.2), hv3 runs the
lab's Debian 13 root (libvirt 11, QEMU 10; `lab.py up --gen2 hv3`).

What a rolling upgrade needs from the collection, checked against real daemons of both generations: the facts
tell the generations apart (versions, machine types) on the controller and through the module on each host
(hv3's module runs under Debian 13's Python and libvirt-python); old -> new live migration keeps the machine
type, the CPU definition and the persistent XML and the guest keeps running; new -> old is refused by the
preflight before anything changes, for the reason libvirt then gives too; a VM that came from an old host can
go back. The gen2 host takes the lab's faults like any other host.
"""

import json
import re

import pytest

pytestmark = pytest.mark.lab

libvirt = pytest.importorskip("libvirt")

from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import domain_facts  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import host_facts  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import (  # noqa: E402
    DEFAULT_SETTINGS,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.preflight import run_prechecks  # noqa: E402
from hvlab import Lab, VMSpec  # noqa: E402
from lab_helpers import ansible, assert_only_on, booted, timed, wait_for  # noqa: E402

OLD, NEW = "hv1", "hv3"
LIBVIRT_11, QEMU_10 = 11000000, 10000000


@pytest.fixture(scope="module")
def mixed():
    lab = Lab()
    with timed("mixed lab up (hv3 on the Debian 13 root)"):
        lab.up(hosts_count=3, gen2=(NEW,))
    yield lab
    with timed("default lab back (hv3 on the machine's stack)"):
        lab.up(hosts_count=3)


@pytest.fixture
def vms(mixed):
    made = []

    def make(name, host, **knobs):
        if mixed.locate(name):
            mixed.vm_rm(name)
        mixed.vm_start(VMSpec(name=name, **knobs), host=host)
        made.append(name)
        return name

    yield make
    for name in made:
        mixed.vm_rm(name)


def facts(lab, host):
    conn = connection.connect(lab.uri(host))
    try:
        return host_facts(conn, name=host, uri=lab.uri(host))
    finally:
        connection.close_quietly(conn)


def xml_of(lab, host, vm, flags=0):
    conn = lab.connect(host)
    try:
        return conn.lookupByName(vm).XMLDesc(flags)
    finally:
        conn.close()


def machine_and_cpu(xml):
    machine = re.search(r"<type arch='x86_64' machine='([^']+)'", xml).group(1)
    cpu = re.search(r"<cpu .*?</cpu>", xml, re.S).group(0)
    return machine, re.sub(r"\s+", " ", cpu)


def prechecks(lab, vm, src, dst):
    src_conn, dst_conn = connection.connect(lab.uri(src)), connection.connect(lab.uri(dst))
    try:
        dom = domain_facts(src_conn.lookupByName(vm))
        return run_prechecks(src_conn, dst_conn, dom, host_facts(src_conn, name=src, uri=lab.uri(src)),
                             host_facts(dst_conn, name=dst, uri=lab.uri(dst)), dict(DEFAULT_SETTINGS),
                             migration_address=lab.addr(dst), on_source=False)
    finally:
        connection.close_quietly(src_conn)
        connection.close_quietly(dst_conn)


def move(lab, vm, src, dst):
    src_conn, dst_conn = connection.connect(lab.unix_uri(src)), connection.connect(lab.uri(dst))
    try:
        spec = MigrationSpec(migrate_uri=f"tcp://{lab.addr(dst)}", stats_interval_s=0.5)
        return migration.migrate(src_conn, dst_conn, vm, lab.uri(dst), spec, source_uri=lab.uri(src))
    finally:
        connection.close_quietly(src_conn)
        connection.close_quietly(dst_conn)


def test_facts_tell_the_generations_apart(mixed, tmp_path):
    old, new = facts(mixed, OLD), facts(mixed, NEW)
    print(f"{OLD}: libvirt {old.to_dict()['libvirt_version_text']} QEMU {old.to_dict()['qemu_version_text']}; "
          f"{NEW}: libvirt {new.to_dict()['libvirt_version_text']} QEMU {new.to_dict()['qemu_version_text']}")
    assert mixed.generation(OLD) == 1 and mixed.generation(NEW) == 2
    assert old.libvirt_version < LIBVIRT_11 <= new.libvirt_version
    assert old.qemu_version < QEMU_10 <= new.qemu_version
    newest_pc = new.machine_aliases["pc"]
    assert new.has_machine(newest_pc, "qemu") and not old.has_machine(newest_pc, "qemu")
    assert new.has_machine(old.machine_aliases["pc"], "qemu")  # the new QEMU still runs the old machine type
    # the module on each host: hv3's runs under the Debian 13 root's Python and libvirt-python
    ansible("ansible", f"{OLD},{NEW}", "-m", "hvfleet.drain.hypervisor_info", "-t", str(tmp_path),
            "-a", json.dumps({"include_domains": False}))
    seen = {h: json.loads((tmp_path / h).read_text())["hypervisor"] for h in (OLD, NEW)}
    assert seen[NEW]["libvirt_version"] == new.libvirt_version and seen[OLD]["qemu_version"] == old.qemu_version
    assert newest_pc in seen[NEW]["machine_types"]["qemu"] and newest_pc not in seen[OLD]["machine_types"]["qemu"]


def test_old_to_new_and_back_keeps_machine_cpu_persistent_xml_and_the_guest(mixed, vms):
    vm = vms("mixed-up", OLD, memory=256, dirty_mb=64, dirty_rate=16)
    before = booted(mixed, vm)
    machine, cpu = machine_and_cpu(xml_of(mixed, OLD, vm))
    inactive = machine_and_cpu(xml_of(mixed, OLD, vm, libvirt.VIR_DOMAIN_XML_INACTIVE))
    res = prechecks(mixed, vm, OLD, NEW)
    assert res.ok, res.summary()
    with timed("old -> new live migration"):
        result = move(mixed, vm, OLD, NEW)
    assert result.outcome == "moved", result.message
    assert_only_on(mixed, vm, NEW, before)
    assert machine_and_cpu(xml_of(mixed, NEW, vm)) == (machine, cpu)  # still the old QEMU's machine type
    assert machine_and_cpu(xml_of(mixed, NEW, vm, libvirt.VIR_DOMAIN_XML_INACTIVE)) == inactive  # persistent XML
    conn = mixed.connect(NEW)
    try:
        assert conn.lookupByName(vm).isPersistent()
    finally:
        conn.close()
    # it keeps the old machine type, so it may go back (the prechecks say so) and does
    back = prechecks(mixed, vm, NEW, OLD)
    assert back.ok, back.summary()
    assert {c.id: c.status for c in back.checks}["machine.type"] == "pass"
    # its devices were compared with the old stack's domain capabilities: the lab guest's are all there
    assert {c.id: c.status for c in back.checks}["device.models"] == "pass", back.summary()
    with timed("new -> old live migration of a VM with the old machine type"):
        assert move(mixed, vm, NEW, OLD).outcome == "moved"
    assert_only_on(mixed, vm, OLD, before)


def test_new_to_old_is_refused_by_the_preflight_before_anything_changes(mixed, vms):
    vm = vms("mixed-new", NEW, memory=256)
    before = booted(mixed, vm)
    machine, _cpu = machine_and_cpu(xml_of(mixed, NEW, vm))
    res = prechecks(mixed, vm, NEW, OLD)
    print(res.summary())
    assert not res.ok and res.blockers[0].id == "machine.type"
    assert machine in res.blockers[0].message and "same or a newer generation" in res.blockers[0].fix
    assert mixed.locate(vm) == {NEW: "running"}  # the preflight changed nothing
    # libvirt itself refuses for the same reason, and the guest stays where it was
    src = mixed.connect(NEW)
    try:
        with pytest.raises(libvirt.libvirtError, match=re.escape(machine)):
            src.lookupByName(vm).migrateToURI3(
                mixed.uri(OLD), {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{mixed.addr(OLD)}"},
                libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST)
    finally:
        src.close()
    assert_only_on(mixed, vm, NEW, before)


def test_the_gen2_host_takes_the_labs_faults(mixed, vms):
    vm = vms("mixed-fault", NEW, memory=128)
    booted(mixed, vm)
    mixed.stop_libvirtd(NEW)
    assert NEW not in mixed.domains()
    mixed.start_libvirtd(NEW)
    assert mixed.locate(vm) == {NEW: "running"}  # QEMU outlived its libvirtd, as on a real host
    pid = mixed.kill_qemu(vm)
    assert pid > 0
    wait_for(lambda: mixed.locate(vm) == {NEW: "shutoff"}, 30, f"libvirt on {NEW} to see {vm}'s QEMU gone")
    mixed.shape(NEW, 200)
    try:
        out = mixed.exec(NEW, ["tc", "qdisc", "show"]).stdout
        assert "tbf" in out
    finally:
        mixed.unshape(NEW)
