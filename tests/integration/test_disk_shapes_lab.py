"""VMs with local disks on the lab, moved with a copying storage policy: only local disks are copied.

Shapes: a VM whose only disk is a local qcow2 in its host's `local` pool (moved by the domain_migration
module over SSH), and a VM with its system disk on the shared NBD storage plus a local qcow2 data disk
(moved by a drain of hv1 with a `storage: copy_all` policy). For each: the VM ends defined on exactly one
host, in the same boot, still beating; the local disk's content (a pattern written before the start)
is on the destination, in a volume the product created there; libvirt was given only the local disk
(migrate_disks), never the shared one. And a refusal: a local disk whose directory has no storage pool
on the destination fails before anything changes, naming the disk, the path and the pool to define.
"""

import contextlib
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest
from hvlab import netns
from hvlab import storage as labstorage
from hvlab.image import ensure_image, kernel_cmdline
from hvlab.vm import VMSpec, boot_ids, domain_xml
from lab_helpers import ansible, assert_only_on, booted, printed_report, run_playbook, text_of, timed

pytestmark = pytest.mark.lab

POOL_DIR = labstorage.LOCAL_POOL_DIR
MIB = 1024 * 1024
DISK_MB = 64
PATTERN = "0x5a"  # written into the first MiB of each local disk before its VM starts


# ---- helpers (lab VMs with disks in the hosts' local pools) --------------------------------------


def outside(lab, host, path):
    """A path inside a lab host's private /var/lib/libvirt, as seen from here."""
    return lab.root / "hosts" / host / "lib-libvirt" / os.path.relpath(path, "/var/lib/libvirt")


def pool_volumes(lab, host):
    return (lab.local_pool(host) or {}).get("volumes", [])


def qemu_io(path, command, read_only=True):
    """qemu-io on a qcow2 file; -U reads a file a running QEMU holds locked."""
    argv = ["qemu-io", "-f", "qcow2"] + (["-U", "-r"] if read_only else []) + ["-c", command, str(path)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return res.stdout + res.stderr


def has_pattern(path):
    out = qemu_io(path, f"read -P {PATTERN} 0 1M")
    return "Pattern verification failed" not in out and "read 1048576/1048576 bytes" in out


def start_vm(lab, host, name, system, bridges=("labbr0",)):
    """Define and start `name` on `host`: system disk vda on the NBD storage ("nbd") or in the host's local pool
    ("local"); "nbd" also gets a local data disk vdb. Local disks are qcow2 volumes of the host's pool, with the
    pattern written before the start. Recorded in the lab state, so lab.vm_rm removes it and its volumes."""
    spec = VMSpec(name=name, disk="nbd" if system == "nbd" else "none", bridges=list(bridges))
    lab.state.load()
    lab.state.data["vms"][name] = {**spec.to_dict(), "created_on": host}
    lab.state.save()
    local = {"nbd": {"vdb": f"{name}-data.qcow2"}, "local": {"vda": f"{name}-system.qcow2"}}[system]
    if system == "nbd":
        labstorage.create_disk(labstorage.disk_path(lab.root, name), spec.disk_mb)
        labstorage.export(lab.root, name)
    conn = lab.connect(host, via="unix")
    try:
        pool = conn.storagePoolLookupByName(labstorage.LOCAL_POOL)
        for file in local.values():
            pool.createXML(f"<volume><name>{file}</name><capacity unit='MiB'>{DISK_MB}</capacity>"
                           "<target><format type='qcow2'/></target></volume>", 0)
            out = qemu_io(outside(lab, host, f"{POOL_DIR}/{file}"), f"write -P {PATTERN} 0 1M", read_only=False)
            assert "wrote 1048576/1048576 bytes" in out, out
        image = ensure_image()
        console = lab.console_path(name)
        console.parent.mkdir(parents=True, exist_ok=True)
        console.write_bytes(b"")
        root = ET.fromstring(domain_xml(spec, kernel=image.kernel, initrd=image.initrd,
                                        cmdline=kernel_cmdline(name, 0, 0, spec.hb_ms, spec.pti),
                                        console_path=str(console), nbd_host=netns.STORAGE_ADDR,
                                        nbd_port=labstorage.NBD_PORT))
        devices = root.find("devices")
        for target, file in local.items():
            disk = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(disk, "driver", name="qemu", type="qcow2")
            ET.SubElement(disk, "source", file=f"{POOL_DIR}/{file}")
            ET.SubElement(disk, "target", dev=target, bus="virtio")
        conn.defineXML(ET.tostring(root, encoding="unicode")).create()
    finally:
        conn.close()
    return local


@pytest.fixture
def vms(clean_lab):
    """Make VMs with start_vm; each is removed afterwards wherever it is, with its volumes on every host."""
    made = []

    def make(host, system, **kw):
        name = f"t{os.getpid() % 1000}-{system}{len(made)}"
        made.append(name)
        return name, start_vm(clean_lab, host, name, system, **kw)

    yield make
    for name in made:
        clean_lab.vm_rm(name)
    for host in clean_lab.hosts():
        left = [v for v in pool_volumes(clean_lab, host) if v.startswith(tuple(f"{n}-" for n in made))]
        assert not left, f"volumes left on {host}: {left}"


def module(lab, tmp_path, label, host, args, check=False):
    """hvfleet.drain.domain_migration on `host` over SSH; returns (rc, its JSON result)."""
    tree = tmp_path / label
    res = ansible("ansible", host, *(["--check"] if check else []), "-m", "hvfleet.drain.domain_migration",
                  "-t", str(tree), "-a", json.dumps(args), check=False)
    return res.returncode, json.loads((tree / host).read_text())


def steps_of(result, action):
    return [s["reason"] for s in result["steps"] if s["action"] == action]


# ---- the shapes ----------------------------------------------------------------------------------


def test_a_vm_on_a_local_disk_moves_with_its_disk_copied_into_a_volume_the_product_made(clean_lab, vms, tmp_path):
    lab = clean_lab
    name, local = vms("hv1", "local")
    before = booted(lab, name)
    [file] = local.values()
    assert file not in pool_volumes(lab, "hv2")
    args = {"name": name, "dest_uri": lab.uri("hv2"), "migration_address": lab.addr("hv2"), "copy_storage": "all"}

    # check mode: the volume it would create, nothing made
    rc, plan = module(lab, tmp_path, "check", "hv1", args, check=True)
    assert rc == 0 and plan["outcome"] == "would_migrate", plan
    assert plan["plan"]["volumes"] == [{"target": "vda", "path": f"{POOL_DIR}/{file}", "pool": "local",
                                        "format": "qcow2", "capacity": DISK_MB * MIB, "exists": False}]
    assert file not in pool_volumes(lab, "hv2") and lab.locate(name) == {"hv1": "running"}

    with timed("domain_migration copy_storage=all, 64 MiB local system disk + 256 MiB RAM"):
        rc, out = module(lab, tmp_path, "move", "hv1", args)
    assert rc == 0 and out["outcome"] == "moved", out.get("msg")
    assert out["spec"]["copy_storage"] == "all" and out["spec"]["copy_disks"] == ["vda"]
    [made] = steps_of(out, "create_volume")
    assert made.startswith(f"created {POOL_DIR}/{file} (qcow2, {DISK_MB * MIB} bytes) in pool 'local' for disk vda")
    [start] = steps_of(out, "start")
    assert "copy storage (all: vda)" in start
    assert_only_on(lab, name, "hv2", before)
    assert file in pool_volumes(lab, "hv2")
    assert has_pattern(outside(lab, "hv2", f"{POOL_DIR}/{file}")), "the disk's content did not arrive"
    # the check can fail: the pattern is not what an unwritten disk holds
    assert "Pattern verification failed" in qemu_io(outside(lab, "hv2", f"{POOL_DIR}/{file}"), "read -P 0x00 0 1M")
    # the source keeps its own file, as the result says
    assert steps_of(out, "source_disk") and outside(lab, "hv1", f"{POOL_DIR}/{file}").exists()
    print(f"\nLAB-RESULT local disk: {out['duration_s']:.1f}s, downtime {out['downtime_ms']} ms, "
          f"{(out['bytes_sent'] or 0) / MIB:.0f} MiB sent")


def test_a_drain_copies_only_the_local_data_disk_of_a_vm_whose_system_disk_is_shared(clean_lab, vms, tmp_path):
    lab = clean_lab
    name, local = vms("hv1", "nbd")
    others = [vm for vm in lab.domains().get("hv1", {}) if vm != name]
    assert not others, f"hv1 holds other VMs, which this drain would move too: {others}"
    before = booted(lab, name)
    [file] = local.values()
    conn = lab.connect("hv1")
    try:  # the autostart mark, which libvirt does not carry with a migration, follows the VM too
        conn.lookupByName(name).setAutostart(1)
    finally:
        conn.close()
    policies = [{"name": "copy-local", "selector": {"domains": [name]}, "settings": {"storage": "copy_all"}}]
    with timed("drain of hv1: NBD system disk + 64 MiB local data disk, copy_all"):
        rc, lines = run_playbook("drain-host.yml", "-e", "target=hv1", "-e", f"drain_host_report_dir={tmp_path}",
                                 "-e", "drain_host_poll_wait=2", "-e", json.dumps({"drain_host_policies": policies}))
    assert rc == 0, text_of(lines)[-3000:]
    [row] = [r for r in printed_report(lines)["result"]["vms"] if r["vm"] == name]
    assert row["ok"] and row["outcome"] == "moved", row
    dest = row["destination"]
    assert lab.running_on(name) == [dest] and dest in ("hv2", "hv3")
    steps = {s["action"]: s["reason"] for s in row["steps"]}
    assert "copy storage (all: vdb)" in steps["start"], steps["start"]  # migrate_disks: the local disk alone
    assert steps["create_volume"].startswith(f"created {POOL_DIR}/{file} (qcow2, {DISK_MB * MIB} bytes) in pool "
                                             "'local' for disk vdb")
    assert_only_on(lab, name, dest, before)
    hb = lab.wait_heartbeat_advances(name, beyond=before.last_n + 4, timeout=60)
    assert boot_ids(hb) == [before.boot_id]
    assert has_pattern(outside(lab, dest, f"{POOL_DIR}/{file}")), "the data disk's content did not arrive"
    # the shared disk stayed where it was: still the NBD export, nothing of it in any pool
    conn = lab.connect(dest)
    try:
        xml = conn.lookupByName(name).XMLDesc(0)
        assert conn.lookupByName(name).autostart() == 1, "the autostart mark stayed behind"
    finally:
        conn.close()
    assert "marked autostart on" in steps["autostart"], steps
    vda = [d for d in ET.fromstring(xml).iterfind("devices/disk") if d.find("target").get("dev") == "vda"][0]
    assert vda.get("type") == "network" and vda.find("source").get("name") == name
    assert name in labstorage.exports(lab.root)
    assert all(not v.startswith(name) or v == file for h in lab.hosts() for v in pool_volumes(lab, h))
    print(f"\nLAB-RESULT mixed disks, drain: {row['duration_s']:.1f}s, downtime {row['downtime_ms']} ms, "
          f"{(row['bytes_sent'] or 0) / MIB:.0f} MiB sent")


def test_a_local_disk_without_a_pool_on_the_destination_is_refused_before_anything_changes(clean_lab, make_vm,
                                                                                           tmp_path):
    lab = clean_lab
    name = make_vm("hv1", disk="local")  # its disk is /var/lib/libvirt/images/NAME.qcow2: no pool there on hv2
    before = booted(lab, name)
    path = f"/var/lib/libvirt/images/{name}.qcow2"
    args = {"name": name, "dest_uri": lab.uri("hv2"), "migration_address": lab.addr("hv2"), "copy_storage": "all"}
    for label, check in (("refused-check", True), ("refused", False)):
        rc, out = module(lab, tmp_path, label, "hv1", args, check=check)
        print(f"  {label}: {out.get('msg')}")
        assert rc != 0 and out.get("changed") is False, out
        assert "vda" in out["msg"] and path in out["msg"] and "hv2" in out["msg"]
        assert "no active storage pool at /var/lib/libvirt/images" in out["msg"]
        assert "virsh pool-define-as images dir --target /var/lib/libvirt/images" in out["msg"]
        assert not out.get("steps"), "something was started"
    assert not outside(lab, "hv2", path).exists()
    assert_only_on(lab, name, "hv1", before)


def test_a_copy_that_libvirt_refuses_leaves_no_volume_behind(clean_lab, vms, tmp_path):
    """The destination lacks the VM's bridge: libvirt refuses after the product made the volume; it goes again."""
    lab = clean_lab
    bridge = "t8br"
    lab.add_bridge("hv1", bridge)
    try:
        name, local = vms("hv1", "local", bridges=("labbr0", bridge))
        before = booted(lab, name)
        [file] = local.values()
        args = {"name": name, "dest_uri": lab.uri("hv2"), "migration_address": lab.addr("hv2"),
                "copy_storage": "all"}
        rc, out = module(lab, tmp_path, "refused-by-libvirt", "hv1", args)
        print(f"  {out.get('msg')}")
        assert rc != 0 and out["outcome"] == "stayed" and not out["changed"], out
        assert bridge in out["msg"]
        [made] = steps_of(out, "create_volume")
        assert made.startswith(f"created {POOL_DIR}/{file}")
        [removed] = steps_of(out, "remove_volume")
        assert removed.startswith(f"removed {POOL_DIR}/{file} on {lab.uri('hv2')}")
        assert file not in pool_volumes(lab, "hv2") and not outside(lab, "hv2", f"{POOL_DIR}/{file}").exists()
        assert_only_on(lab, name, "hv1", before)
        assert has_pattern(outside(lab, "hv1", f"{POOL_DIR}/{file}"))
    finally:
        for vm in [n for n in lab.domains().get("hv1", {}) if n.startswith(f"t{os.getpid() % 1000}-")]:
            lab.vm_rm(vm)
        lab.remove_bridge("hv1", bridge)


def test_the_offline_copy_moves_a_volume_between_hosts_with_libvirt_streams(clean_lab):
    """engine/volumes.copy_offline (for a shut-off VM's local disk), over the hosts' TCP connections."""
    from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection
    from ansible_collections.hvfleet.drain.plugins.module_utils.engine import volumes

    lab = clean_lab
    file = f"t{os.getpid() % 1000}-offline.qcow2"
    path = f"{POOL_DIR}/{file}"
    src, dst = connection.connect(lab.uri("hv1")), connection.connect(lab.uri("hv3"))
    try:
        src.storagePoolLookupByName(labstorage.LOCAL_POOL).createXML(
            f"<volume><name>{file}</name><capacity unit='MiB'>{DISK_MB}</capacity>"
            "<target><format type='qcow2'/></target></volume>", 0)
        assert "wrote 1048576/1048576" in qemu_io(outside(lab, "hv1", path), f"write -P {PATTERN} 0 1M", False)
        with timed("offline copy of a 64 MiB qcow2 (1 MiB written) hv1 -> hv3"):
            vol, copied = volumes.copy_offline(src, dst, path, src_name="hv1", dest="hv3", deadline_s=120)
        assert vol.created and (vol.pool, vol.fmt, vol.capacity) == ("local", "qcow2", DISK_MB * MIB)
        assert copied == outside(lab, "hv1", path).stat().st_size
        assert has_pattern(outside(lab, "hv3", path))
        both = [str(outside(lab, host, path)) for host in ("hv1", "hv3")]
        res = subprocess.run(["qemu-img", "compare", "-U", *both], capture_output=True, text=True, timeout=60,
                             check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        # a second copy would overwrite: refused, nothing touched
        with pytest.raises(volumes.VolumeError) as err:
            volumes.copy_offline(src, dst, path, src_name="hv1", dest="hv3", deadline_s=120)
        assert "already exists on hv3" in err.value.message
        print(f"\nLAB-RESULT offline copy: {copied} bytes")
    finally:
        for conn, host in ((src, "hv1"), (dst, "hv3")):
            with contextlib.suppress(Exception):
                conn.storageVolLookupByPath(path).delete(0)
            conn.close()
            assert file not in pool_volumes(lab, host)
