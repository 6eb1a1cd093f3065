"""Lab: a VM libvirt refuses to live-migrate, under each `on_unmigratable` (block, shutdown, leave).

The VM is a lab guest (tests/lab/hvlab/vm.py's XML) with a shared-memory device added:
`<shmem name='hvf'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>`. On the lab (libvirt 9.0,
QEMU 7.2, TCG) a live migration of it is refused: "cannot migrate domain: Migration is disabled when using
feature 'peer mode' in device 'ivshmem'" - the first test shows that, and that the drain's own detection
names the device before anything is tried.

Every case checks the invariants: the VM is defined on exactly one host and runs there alone (a watcher polls
all hosts during the run and never sees two running copies), it keeps its boot where it must (block, leave,
a shutdown that times out) and gets a new one where it must (a cold move), and the result says what happened.

The drain runs in this process over the real backend (drain.Drainer + LibvirtBackend, as the fault matrix
does), with two test-side adaptations, both said where they are made:
* the lab is shared, so the backend lists only this test's VMs on a host (other VMs there are not ours to
  move);
* the lab guest's init (busybox, no acpid) does not react to the ACPI power button. The timeout case relies on
  exactly that. For the cold moves the test plays the guest's part: when the drain reports that it pressed the
  power button (`vm_cold_step` shutdown_requested), the test powers the guest off, as an OS would.
"""

import dataclasses
import json
import threading
import time
import xml.etree.ElementTree as ET

import pytest

pytestmark = [pytest.mark.lab]

libvirt = pytest.importorskip("libvirt")

import test_rolling_upgrade_lab as ru  # noqa: E402  (same directory; prepend import mode)
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import Ledger  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger_store import SecretLedgerStore  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import PlacementConfig  # noqa: E402
from hvlab.storage import LOCAL_POOL_DIR  # noqa: E402
from hvlab.vm import boot_ids  # noqa: E402
from lab_helpers import assert_only_on, clear_ledgers, ledger_of, timed, wait_for  # noqa: E402

SHMEM = "shared-memory device 'hvf' (ivshmem-plain)"


@pytest.fixture(autouse=True)
def ledgers_as_found(lab):
    """A drain cordons hv1 in its capacity ledger (kept in the host's libvirtd): a host that had no ledger before
    the test has none after it, and one that had keeps the cordon it had (the lab is shared)."""
    before = {host: ledger_of(lab, host) for host in lab.hosts()}
    yield
    clear_ledgers(lab, [host for host, ledger in before.items() if ledger is None])
    for host, ledger in before.items():
        if ledger is None:
            continue
        conn = lab.connect(host)
        try:
            store = SecretLedgerStore(conn, host, "unmigratable lab test")
            with store.locked():
                now = store.read()
                old = Ledger.from_json(host, json.dumps(ledger), "the ledger before the test")
                if now.cordon != old.cordon:
                    store.write(dataclasses.replace(now, cordon=old.cordon))
        finally:
            conn.close()


class OnlyTheseVms(LibvirtBackend):
    """The real backend, seeing only `names` on a host: the lab is shared and other VMs are not ours to move."""

    def __init__(self, names, **kwargs):
        super().__init__(**kwargs)
        self.names = set(names)

    def list_vms(self, conn, host, measure=True):
        return [v for v in super().list_vms(conn, host, measure) if v.name in self.names]


class Watcher(threading.Thread):
    """Polls every host while a run goes on; remembers the most hosts the VM was ever active on at once."""

    def __init__(self, lab, name):
        super().__init__(daemon=True)
        self.lab, self.name, self.most, self.seen = lab, name, 0, []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            active = self.lab.running_on(self.name)
            self.most = max(self.most, len(active))
            if active and (not self.seen or self.seen[-1] != active):
                self.seen.append(active)
            self.done.wait(0.2)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join(10)


class PlaysTheGuest:
    """The progress callback: powers the guest off where the drain pressed its power button (see the module
    docstring), and keeps every event."""

    def __init__(self, lab, name, react=True):
        self.lab, self.name, self.react, self.events = lab, name, react, []

    def __call__(self, event):
        self.events.append(event)
        if self.react and event.get("event") == "vm_cold_step" and event.get("vm") == self.name \
                and event.get("step") == "shutdown_requested":
            conn = self.lab.connect(event["step_host"])
            try:
                conn.lookupByName(self.name).destroy()
            finally:
                conn.close()

    def steps(self):
        return [e["step"] for e in self.events if e.get("event") == "vm_cold_step"]


def unmigratable_vm(lab, make_vm):
    """A lab guest on hv1 with an ivshmem device; returns (name, its heartbeat once booted with it)."""
    name = make_vm(host="hv1", disk="none")  # the fixture removes it afterwards, wherever it is
    conn = lab.connect("hv1")
    try:
        dom = conn.lookupByName(name)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        shmem = ET.SubElement(root.find("devices"), "shmem", name="hvf")
        ET.SubElement(shmem, "model", type="ivshmem-plain")
        ET.SubElement(shmem, "size", unit="M").text = "4"
        dom.destroy()
        lab.console_path(name).write_bytes(b"")  # the console log then holds the boot with the device only
        conn.defineXML(ET.tostring(root, encoding="unicode")).create()
    finally:
        conn.close()
    return name, lab.wait_heartbeat_advances(name, beyond=1, timeout=120)


def drainer(lab, tmp_path, name, settings, progress=None):
    policies = [{"name": "odd", "selector": {"domains": [name]}, "settings": settings}]
    source = Host("hv1", lab.uri("hv1"), migration_address=lab.addr("hv1"))
    dests = [Host(d, lab.uri(d), migration_address=lab.addr(d)) for d in ("hv2", "hv3")]
    backend = OnlyTheseVms([name], connect_timeout_s=10, state_dir=str(tmp_path))
    config = DrainConfig(policies=policies, by="unmigratable-lab", reason="unmigratable lab", progress_interval_s=1.0,
                         placement=PlacementConfig(vcpu_overcommit=8.0))  # 2 CPUs per lab host, others' VMs on them
    return Drainer(backend, source, dests, config, state_dir=str(tmp_path), progress=progress)


def new_boot_on(lab, name, host, before):
    """`name` runs on `host` alone, in a boot other than `before`'s, and its heartbeat goes on."""
    assert lab.locate(name) == {host: "running"}, lab.locate(name)

    def new_boot():
        now = lab.heartbeat(name)
        return now if now.boot_id not in (None, before.boot_id) else None

    hb = wait_for(new_boot, 120, f"a new boot of {name} on {host}")
    later = lab.wait_heartbeat_advances(name, beyond=hb.last_n + 1, timeout=60)
    assert later.boot_id == hb.boot_id != before.boot_id
    assert boot_ids(later)[-1] == later.boot_id and before.boot_id in boot_ids(later)
    return later


def test_block_names_the_device_libvirt_refuses(lab, make_vm, tmp_path):
    name, before = unmigratable_vm(lab, make_vm)
    # what libvirt itself says when asked to migrate it live
    conn = lab.connect("hv1")
    try:
        with pytest.raises(libvirt.libvirtError, match="ivshmem"):
            conn.lookupByName(name).migrateToURI3(
                lab.uri("hv2"), {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{lab.addr('hv2')}"},
                libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST)
    finally:
        conn.close()
    with Watcher(lab, name) as watch, timed("unmigratable block"):
        result = drainer(lab, tmp_path, name, {"on_unmigratable": "block"}).drain()
    assert result.failed and result.state == jr.DRAIN_FAILED
    [blocker] = result.blockers
    assert blocker["vm"] == name and blocker["kind"] == "unmigratable" and SHMEM in blocker["message"]
    assert "on_unmigratable: shutdown" in blocker["fix"]
    assert result.vms == [] and watch.most == 1
    assert_only_on(lab, name, "hv1", before)


def test_shutdown_moves_it_cold_and_restore_brings_it_home(lab, make_vm, tmp_path):
    name, before = unmigratable_vm(lab, make_vm)
    guest = PlaysTheGuest(lab, name)
    settings = {"on_unmigratable": "shutdown", "shutdown_timeout_s": 60}
    plan = drainer(lab, tmp_path, name, settings).drain(plan_only=True)
    assert len(plan.plan) == 1, (plan.blockers, plan.message)
    [item] = plan.plan
    assert item["kind"] == "cold" and item["live_blockers"] == [SHMEM]
    assert "outage up to 70 s + the guest's boot" in item["mode_reason"] and item["predicted_downtime_ms"] == 70_000
    with Watcher(lab, name) as watch, timed("unmigratable shutdown: cold move"):
        result = drainer(lab, tmp_path, name, settings, progress=guest).drain()
    assert result.state == jr.DRAINED and not result.failed and result.verified_empty, result.message
    [row] = result.vms
    assert row["ok"] and row["mode_used"] == "cold" and row["kind"] == "cold"
    away = row["destination"]
    assert watch.most == 1 and watch.seen == [["hv1"], [away]], watch.seen
    assert guest.steps() == ["shutdown_requested", "shut_off", "defined", "started"]
    moved = new_boot_on(lab, name, away, before)
    print(f"\nLAB-FIGURE cold move outage: {row['downtime_ms']:.0f} ms until started (then the boot)")

    guest.events.clear()
    with Watcher(lab, name) as watch, timed("unmigratable shutdown: restore"):
        back = drainer(lab, tmp_path, name, settings, progress=guest).restore()
    assert back.state == jr.RESTORED and not back.failed, back.message
    assert [r["mode_used"] for r in back.vms] == ["cold"] and back.vms[0]["ok"]
    assert watch.most == 1 and watch.seen == [[away], ["hv1"]], watch.seen
    assert guest.steps() == ["shutdown_requested", "shut_off", "defined", "started"]
    new_boot_on(lab, name, "hv1", moved)


def test_a_guest_that_ignores_the_power_button_keeps_running_at_home(lab, make_vm, tmp_path):
    name, before = unmigratable_vm(lab, make_vm)
    guest = PlaysTheGuest(lab, name, react=False)  # the lab guest as it is: no ACPI handling
    started = time.monotonic()
    with Watcher(lab, name) as watch, timed("unmigratable shutdown: timeout"):
        result = drainer(lab, tmp_path, name, {"on_unmigratable": "shutdown", "shutdown_timeout_s": 10},
                         progress=guest).drain()
    took = time.monotonic() - started
    assert result.failed and result.state == jr.DRAIN_FAILED
    [row] = result.vms
    assert row["outcome"] == "stayed" and "did not shut down within 10 s" in row["message"]
    assert "keeps running on hv1" in row["message"] and "shutdown_timeout_s" in row["recovery"]
    assert guest.steps() == ["shutdown_requested", "shutdown_timed_out"]
    assert 10 <= took < 60, took
    assert watch.most == 1
    assert_only_on(lab, name, "hv1", before)  # never destroyed: the same boot goes on


def test_leave_keeps_it_running_and_the_host_is_not_empty(lab, make_vm, tmp_path):
    name, before = unmigratable_vm(lab, make_vm)
    with Watcher(lab, name) as watch, timed("unmigratable leave"):
        result = drainer(lab, tmp_path, name, {"on_unmigratable": "leave"}).drain()
    assert result.state == "not_empty" and not result.failed
    assert result.verified_empty is False and result.leftovers == [name]
    [left] = result.left
    assert left["vm"] == name and SHMEM in left["why"] and "must not be rebooted" in left["fix"]
    assert "NOT empty" in result.message and name in result.message
    assert result.vms == [] and watch.most == 1
    assert_only_on(lab, name, "hv1", before)


def test_the_rolling_upgrade_refuses_a_host_the_drain_left_a_vm_on(clean_lab, make_vm, tmp_path):
    """playbooks/rolling_kernel_upgrade.yml on hv1 with a VM its policy leaves there: the drain ends not_empty and
    the host is neither upgraded nor rebooted; the play fails for it naming the VM and the fix."""
    lab = clean_lab
    name, before = unmigratable_vm(lab, make_vm)
    assert set(lab.domains()["hv1"]) == {name}, f"hv1 must hold only this test's VM: {lab.domains()['hv1']}"
    policies = [{"name": "odd", "selector": {"domains": [name]}, "settings": {"on_unmigratable": "leave"}}]
    events = tmp_path / "events.jsonl"
    pids_before = ru.libvirtd_pids(lab)
    rc, out, seconds = ru.run_playbook(*ru.common_args(tmp_path, events), "-e",
                                       json.dumps({"drain_host_policies": policies}), "--limit", "hv1")
    print(f"LAB-TIMING rolling upgrade refused after a not_empty drain (hv1): {seconds:.1f}s")
    assert rc != 0
    assert f"Refusing to upgrade and reboot hv1: its drain left {name} running on it" in out
    assert SHMEM in out and "on_unmigratable shutdown" in out and "--limit hv1" in out
    assert "hv1 is NOT empty" in out  # the drain_host role said so first
    assert ru.events_of(events) == []  # neither the upgrade step nor the reboot ran
    assert ru.libvirtd_pids(lab)["hv1"] == pids_before["hv1"]
    assert ru.cordoned(lab, "hv1")  # left out of service
    assert_only_on(lab, name, "hv1", before)


def local_volumes(lab, path):
    """The hosts whose libvirt has a volume at `path`."""
    found = []
    for host in lab.hosts():
        conn = lab.connect(host)
        try:
            for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
                pool.refresh(0)
            conn.storageVolLookupByPath(path)
            found.append(host)
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()
    return found


def test_shutdown_copies_a_local_disk_there_and_back(lab, make_vm, tmp_path):
    """Under storage: copy_all the cold move copies the VM's local disk (a qcow2 in each host's `local` dir pool)
    while it is shut off; the disk is then on the destination only, and the restore copies it back home."""
    for host in lab.hosts():
        lab.ensure_local_pool(host)
    name, _first = unmigratable_vm(lab, make_vm)
    path = f"{LOCAL_POOL_DIR}/{name}.qcow2"
    conn = lab.connect("hv1")
    try:
        conn.storagePoolLookupByName("local").createXML(
            f"<volume><name>{name}.qcow2</name><capacity unit='MiB'>16</capacity>"
            "<target><format type='qcow2'/></target></volume>", 0)
        dom = conn.lookupByName(name)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        disk = ET.SubElement(root.find("devices"), "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=path)
        ET.SubElement(disk, "target", dev="vdb", bus="virtio")
        dom.destroy()
        lab.console_path(name).write_bytes(b"")
        conn.defineXML(ET.tostring(root, encoding="unicode")).create()
    finally:
        conn.close()
    before = lab.wait_heartbeat_advances(name, beyond=1, timeout=120)
    guest = PlaysTheGuest(lab, name)
    settings = {"on_unmigratable": "shutdown", "storage": "copy_all"}
    try:
        with Watcher(lab, name) as watch, timed("unmigratable shutdown with a local disk: cold move"):
            result = drainer(lab, tmp_path, name, settings, progress=guest).drain()
        assert result.state == jr.DRAINED and not result.failed, result.message
        [row] = result.vms
        away = row["destination"]
        assert row["ok"] and "the old files on hv1 removed" in row["message"], row["message"]
        assert guest.steps() == ["shutdown_requested", "shut_off", "disks_copied", "defined", "started"]
        assert watch.most == 1 and local_volumes(lab, path) == [away]
        moved = new_boot_on(lab, name, away, before)

        guest.events.clear()
        with Watcher(lab, name) as watch, timed("unmigratable shutdown with a local disk: restore"):
            back = drainer(lab, tmp_path, name, settings, progress=guest).restore()
        assert back.state == jr.RESTORED and not back.failed, back.message
        assert guest.steps() == ["shutdown_requested", "shut_off", "disks_copied", "defined", "started"]
        assert watch.most == 1 and local_volumes(lab, path) == ["hv1"]
        new_boot_on(lab, name, "hv1", moved)
    finally:
        for host in lab.hosts():  # the disk, wherever it is (the VM itself goes with the make_vm fixture)
            conn = lab.connect(host)
            try:
                conn.storageVolLookupByPath(path).delete(0)
            except libvirt.libvirtError:
                pass
            finally:
                conn.close()
