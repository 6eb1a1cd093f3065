"""Destination volumes of copied disks (engine/volumes.py) and the engine's use of them, against fakes.

The engine creates each missing volume (same format, same capacity) in the destination's pool at the
disk's directory before the start, refuses before anything changes when there is none, and removes what it
created when the VM stayed on the source. The offline copy moves a volume's bytes with streams.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError, MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import volumes as V
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import PARAM_MIGRATE_DISKS, MigrationSpec
from test_migration import DST_URI, FAST, MIB, SRC_URI, Clock, Dom, Host, LibvirtFail, move, stats

IMAGES = "/var/lib/libvirt/local-images"
GIB = 1024 * MIB
NBD = ("<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='vm1'>"
       "<host name='10.254.0.2' port='10809'/></source><target dev='vda' bus='virtio'/></disk>")


def local(target, name, fmt="qcow2", directory=IMAGES):
    return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{directory}/{name}'/>"
            f"<target dev='{target}' bus='virtio'/></disk>")


class Vol:
    def __init__(self, pool, name, capacity, fmt, data=b""):
        self.pool, self.vname, self.capacity, self.fmt, self.data = pool, name, capacity, fmt, bytearray(data)

    @property
    def path(self):
        return f"{self.pool.target}/{self.vname}"

    def info(self):
        return [0, self.capacity, len(self.data)]

    def XMLDesc(self, _flags=0):  # noqa: N802 - libvirt's name
        return f"<volume><name>{self.vname}</name><target><format type='{self.fmt}'/></target></volume>"

    def delete(self, _flags=0):
        self.pool.host.log.append(("delete", self.path))
        if self.pool.host.delete_error:
            raise LibvirtFail(self.pool.host.delete_error)
        del self.pool.vols[self.vname]

    def download(self, stream, offset, length, flags):
        stream.source = self

    def upload(self, stream, offset, length, flags):
        stream.sink = self
        self.data = bytearray()


class Pool:
    def __init__(self, host, name, target, ptype="dir", vols=()):
        self.host, self.pname, self.target, self.ptype = host, name, target, ptype
        self.vols = {v[0]: Vol(self, *v) for v in vols}
        self.refreshed = 0

    def name(self):
        return self.pname

    def XMLDesc(self, _flags=0):  # noqa: N802
        return f"<pool type='{self.ptype}'><name>{self.pname}</name><target><path>{self.target}</path></target></pool>"

    def refresh(self, _flags=0):
        self.refreshed += 1
        self.host.stale.clear()

    def storageVolLookupByName(self, name):  # noqa: N802
        if name not in self.vols:
            raise LibvirtFail(f"Storage volume not found: no storage vol with matching name '{name}'")
        return self.vols[name]

    def createXML(self, xml, _flags=0):  # noqa: N802
        if self.host.create_error and self.host.create_error[0] in xml:
            raise LibvirtFail(self.host.create_error[1])
        root = ET.fromstring(xml)
        fmt = root.find("target/format")
        vol = Vol(self, root.findtext("name"), int(root.findtext("capacity")),
                  fmt.get("type") if fmt is not None else None)
        self.vols[vol.vname] = vol
        self.host.log.append(("create", vol.path, vol.fmt, vol.capacity))
        return vol


class Stream:
    def __init__(self, host):
        self.host, self.source, self.sink, self.pos, self.state = host, None, None, 0, "open"

    def recv(self, nbytes):
        if self.host.recv_error is not None and self.pos >= self.host.recv_error:
            raise LibvirtFail("stream broke")
        chunk = bytes(self.source.data[self.pos:self.pos + nbytes])
        self.pos += len(chunk)
        return chunk

    def send(self, data):
        part = data[:3]  # a short write: the caller must send the rest
        self.sink.data += part
        return len(part)

    def finish(self):
        self.state = "finished"

    def abort(self):
        self.state = "aborted"


class StorageHost(Host):
    """A fake virConnect with storage pools (dir pools by target path) and streams."""

    def __init__(self):
        super().__init__()
        self.pools, self.log, self.streams = [], [], []
        self.create_error = self.delete_error = self.recv_error = None
        self.stale = set()  # paths the pool learns of at its next refresh (a file made outside libvirt)

    def pool(self, name, target, **kw):
        self.pools.append(Pool(self, name, target, **kw))
        return self.pools[-1]

    def storagePoolLookupByTargetPath(self, path):  # noqa: N802
        for pool in self.pools:
            if pool.target == path:
                return pool
        raise LibvirtFail(f"Storage pool not found: no storage pool with matching target path '{path}'")

    def storagePoolLookupByName(self, name):  # noqa: N802
        return next(p for p in self.pools if p.pname == name)

    def storageVolLookupByPath(self, path):  # noqa: N802
        for pool in [] if path in self.stale else self.pools:
            for vol in pool.vols.values():
                if vol.path == path:
                    return vol
        raise LibvirtFail(f"Storage volume not found: no storage vol with matching path '{path}'")

    def newStream(self, _flags=0):  # noqa: N802
        self.streams.append(Stream(self))
        return self.streams[-1]


class DiskDom(Dom):
    """A fake virDomain with disks: XMLDesc and blockInfo."""

    def __init__(self, name, host, disks, sizes, **kw):
        super().__init__(name, host, **kw)
        self.disks, self.sizes = disks, sizes

    def XMLDesc(self, _flags=0):  # noqa: N802
        return f"<domain type='qemu'><name>{self._name}</name><devices>{self.disks}</devices></domain>"

    def blockInfo(self, target, _flags=0):  # noqa: N802
        return [self.sizes[target], 0, 0]

    def migrateToURI3(self, uri, params, flags):
        self.host.log.append(("migrate", params.get(PARAM_MIGRATE_DISKS)))
        return super().migrateToURI3(uri, params, flags)


@pytest.fixture
def hosts():
    src, dst = StorageHost(), StorageHost()
    src.log = dst.log  # one ordered log of what happened on both hosts
    return src, dst


def engine(src, dst, disks=("vdb",), **kw):
    clock = Clock()
    spec = MigrationSpec(copy_storage="all", copy_disks=disks, **FAST)
    return Migration(src, dst, "vm1", DST_URI, spec, source_uri=SRC_URI, clock=clock, wait=clock.wait,
                     settle_timeout_s=5, **kw)


def mixed_vm(src):
    return DiskDom("vm1", src, NBD + local("vdb", "vm1-data.qcow2"), {"vda": 2 * GIB, "vdb": GIB})


# ---- pure parts ----------------------------------------------------------------------------------


def test_copied_disks_come_from_the_xml_in_the_listed_order_and_a_stale_list_is_refused():
    xml = f"<domain><devices>{NBD}{local('vdb', 'b.qcow2')}{local('vdc', 'c.img', fmt='raw')}</devices></domain>"
    assert V.copied_disks(xml, ["vdc", "vdb"]) == [V.CopiedDisk("vdc", f"{IMAGES}/c.img", "raw"),
                                                   V.CopiedDisk("vdb", f"{IMAGES}/b.qcow2", "qcow2")]
    with pytest.raises(V.VolumeError) as err:  # vda is a network disk: never a file to create
        V.copied_disks(xml, ["vda", "vdb"])
    assert "vda" in err.value.message and "vdb" not in err.value.message and err.value.hint


def test_the_new_volume_has_the_disks_format_and_capacity():
    vol = ET.fromstring(V.volume_xml("d.qcow2", 3 * GIB, "qcow2", "dir"))
    assert vol.findtext("name") == "d.qcow2" and vol.find("capacity").get("unit") == "bytes"
    assert int(vol.findtext("capacity")) == 3 * GIB and vol.find("target/format").get("type") == "qcow2"
    assert ET.fromstring(V.volume_xml("lv0", GIB, "raw", "logical")).find("target") is None


def test_the_refusal_names_the_disk_the_path_the_host_and_the_pool_to_define():
    message, fix = V.no_pool("vm1", "vdb", "/srv/vm/d.qcow2", "hv2")
    assert "vm1" in message and "vdb" in message and "/srv/vm/d.qcow2" in message and "hv2" in message
    assert "only inside a storage pool" in message
    assert "storage pool with target /srv/vm on hv2" in fix
    assert "virsh pool-define-as vm dir --target /srv/vm" in fix and "pool-start vm" in fix


def test_an_existing_file_must_be_as_large_and_of_the_same_format():
    disk = V.CopiedDisk("vdb", "/x/d.qcow2", "qcow2")
    assert V.mismatch(disk, GIB, GIB, "qcow2") is None
    assert "holds" in V.mismatch(disk, GIB, GIB - 1, "qcow2")
    assert "raw" in V.mismatch(disk, GIB, GIB, "raw")


# ---- the engine ----------------------------------------------------------------------------------


def test_the_missing_volume_is_created_before_the_start_and_only_the_local_disk_is_copied(hosts):
    src, dst = hosts
    pool = dst.pool("local", IMAGES)
    dom = mixed_vm(src)
    dom.samples = [stats(1, 100 * MIB)]
    dom.on_end = lambda: move(src, dst, dom) and 0
    result = engine(src, dst).run()
    assert result.outcome == "moved", result.message
    assert src.log == [("create", f"{IMAGES}/vm1-data.qcow2", "qcow2", GIB), ("migrate", ["vdb"])]
    assert pool.refreshed == 1  # a file made by hand since the pool's last look is seen
    steps = {s.action: s.reason for s in result.steps}
    assert f"created {IMAGES}/vm1-data.qcow2 (qcow2, {GIB} bytes) in pool 'local' for disk vdb" in \
        steps["create_volume"]
    assert "source keeps its own file of disk vdb" in steps["source_disk"]


def test_no_pool_at_the_disks_directory_refuses_before_anything_changes(hosts):
    src, dst = hosts
    dst.pool("images", "/var/lib/libvirt/images")  # a pool, but not at the disk's directory
    mixed_vm(src)
    with pytest.raises(HvfleetError) as err:
        engine(src, dst).run()
    assert not isinstance(err.value, MigrationFailed)
    assert "vdb" in err.value.message and f"{IMAGES}/vm1-data.qcow2" in err.value.message
    assert f"virsh pool-define-as local-images dir --target {IMAGES}" in err.value.hint
    assert src.log == [] and list(src.domains) == ["vm1"]


def test_a_migration_that_stays_removes_the_volume_it_created(hosts):
    src, dst = hosts
    pool = dst.pool("local", IMAGES)
    dom = mixed_vm(src)
    dom.samples = [stats(1, 400 * MIB)]

    def end():
        dom.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED)
        raise LibvirtFail("Cannot recv data: Connection reset by peer")

    dom.on_end = end
    with pytest.raises(MigrationFailed) as err:
        engine(src, dst).run()
    result = err.value.result
    assert result.outcome == "stayed"
    assert src.log[-1] == ("delete", f"{IMAGES}/vm1-data.qcow2") and pool.vols == {}
    assert [s.action for s in result.steps if "volume" in s.action] == ["create_volume", "remove_volume"]


def test_a_volume_that_cannot_be_removed_is_named_in_the_result(hosts):
    src, dst = hosts
    dst.pool("local", IMAGES)
    dst.delete_error = "cannot unlink file: Device or resource busy"
    dom = mixed_vm(src)
    dom.samples = [stats(1, 400 * MIB)]

    def end():
        dom.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED)
        raise LibvirtFail("Cannot recv data: Connection reset by peer")

    dom.on_end = end
    with pytest.raises(MigrationFailed) as err:
        engine(src, dst).run()
    assert "could not be removed" in str(err.value) and "Device or resource busy" in str(err.value)
    assert "vol-delete" in err.value.result.recovery


def test_a_file_that_was_there_is_used_and_never_removed(hosts):
    src, dst = hosts
    pool = dst.pool("local", IMAGES, vols=[("vm1-data.qcow2", GIB, "qcow2")])
    dom = mixed_vm(src)
    dom.samples = [stats(1, 400 * MIB)]

    def end():
        dom.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED)
        raise LibvirtFail("Cannot recv data: Connection reset by peer")

    dom.on_end = end
    with pytest.raises(MigrationFailed):
        engine(src, dst).run()
    assert src.log == [("migrate", ["vdb"])] and "vm1-data.qcow2" in pool.vols


def test_a_smaller_existing_file_is_refused(hosts):
    src, dst = hosts
    dst.pool("local", IMAGES, vols=[("vm1-data.qcow2", GIB // 2, "qcow2")])
    mixed_vm(src)
    with pytest.raises(HvfleetError) as err:
        engine(src, dst).run()
    assert "cannot take it" in err.value.message and src.log == []


def test_when_the_second_volume_cannot_be_made_the_first_is_removed_again(hosts):
    src, dst = hosts
    pool = dst.pool("local", IMAGES)
    dst.create_error = ("vm1-c.qcow2", "no space left on device")
    DiskDom("vm1", src, local("vdb", "vm1-b.qcow2") + local("vdc", "vm1-c.qcow2"), {"vdb": GIB, "vdc": GIB})
    with pytest.raises(HvfleetError) as err:
        engine(src, dst, disks=("vdb", "vdc")).run()
    assert "no space left on device" in err.value.message and "vm1-c.qcow2" in err.value.message
    assert pool.vols == {} and ("delete", f"{IMAGES}/vm1-b.qcow2") in src.log
    assert not [e for e in src.log if e[0] == "migrate"]


def test_an_unsettled_failure_keeps_the_volume_and_says_so(hosts):
    """Found running on both hosts: the copy on the destination may be the current one - its disk stays."""
    src, dst = hosts
    pool = dst.pool("local", IMAGES)
    dom = mixed_vm(src)
    dom.samples = [stats(1, 100 * MIB)]

    def end():
        DiskDom("vm1", dst, dom.disks, dom.sizes, state=(rc.RUNNING, rc.RUNNING_MIGRATED))
        raise LibvirtFail("internal error: client socket is closed")

    dom.on_end = end
    with pytest.raises(MigrationFailed) as err:
        engine(src, dst).run()
    assert err.value.result.outcome != "stayed"
    assert "vm1-data.qcow2" in pool.vols and ("delete", f"{IMAGES}/vm1-data.qcow2") not in src.log
    assert "are kept" in err.value.result.message and "are kept" in str(err.value)


def test_check_mode_lists_the_volume_it_would_create_and_creates_nothing(hosts):
    src, dst = hosts
    dst.pool("local", IMAGES)
    mixed_vm(src)
    plan = engine(src, dst).plan()
    assert plan["volumes"] == [dict(target="vdb", path=f"{IMAGES}/vm1-data.qcow2", pool="local", format="qcow2",
                                    capacity=GIB, exists=False)]
    assert f"would create {IMAGES}/vm1-data.qcow2" in plan["message"] and src.log == []


def test_without_a_copy_list_no_volume_is_touched(hosts):
    src, dst = hosts
    dom = mixed_vm(src)
    dom.samples = [stats(1, 100 * MIB)]
    dom.on_end = lambda: move(src, dst, dom) and 0
    clock = Clock()
    result = Migration(src, dst, "vm1", DST_URI, MigrationSpec(**FAST), source_uri=SRC_URI, clock=clock,
                       wait=clock.wait, settle_timeout_s=5).run()
    assert result.outcome == "moved" and src.log == [("migrate", None)]


# ---- the offline copy ----------------------------------------------------------------------------


def offline(src, dst, **kw):
    kw.setdefault("deadline_s", 30)
    return V.copy_offline(src, dst, f"{IMAGES}/d.qcow2", src_name="hv1", dest="hv2", chunk_bytes=5, **kw)


def test_the_offline_copy_moves_every_byte_into_a_new_volume_of_the_same_format_and_size():
    src, dst = StorageHost(), StorageHost()
    data = bytes(range(256)) * 3
    src.pool("local", IMAGES, vols=[("d.qcow2", GIB, "qcow2", data)])
    pool = dst.pool("local", IMAGES)
    vol, copied = offline(src, dst)
    assert copied == len(data) and bytes(pool.vols["d.qcow2"].data) == data
    assert vol.created and (pool.vols["d.qcow2"].fmt, pool.vols["d.qcow2"].capacity) == ("qcow2", GIB)
    assert [s.state for s in src.streams + dst.streams] == ["finished", "finished"]


def test_a_broken_offline_copy_aborts_the_streams_and_removes_the_partial_volume():
    src, dst = StorageHost(), StorageHost()
    src.pool("local", IMAGES, vols=[("d.qcow2", GIB, "qcow2", b"x" * 100)])
    pool = dst.pool("local", IMAGES)
    src.recv_error = 40
    with pytest.raises(V.VolumeError) as err:
        offline(src, dst)
    assert "stream broke" in err.value.message and "was removed" in err.value.message
    assert pool.vols == {} and [s.state for s in src.streams + dst.streams] == ["aborted", "aborted"]


def test_the_offline_copy_ends_by_its_deadline():
    src, dst = StorageHost(), StorageHost()
    src.pool("local", IMAGES, vols=[("d.qcow2", GIB, "qcow2", b"x" * 100)])
    pool = dst.pool("local", IMAGES)
    ticks = iter(range(0, 1000, 10))
    with pytest.raises(V.VolumeError) as err:
        offline(src, dst, deadline_s=25, clock=lambda: next(ticks))
    assert "deadline" in err.value.message and pool.vols == {}


def test_the_offline_copy_never_overwrites_and_needs_pools_on_both_ends():
    src, dst = StorageHost(), StorageHost()
    src.pool("local", IMAGES, vols=[("d.qcow2", GIB, "qcow2", b"x")])
    with pytest.raises(V.VolumeError) as err:
        offline(src, dst)
    assert "no active storage pool" in err.value.message and "pool-define-as" in err.value.hint
    dst.pool("local", IMAGES, vols=[("d.qcow2", GIB, "qcow2", b"y")])
    with pytest.raises(V.VolumeError) as err:
        offline(src, dst)
    assert "already exists on hv2" in err.value.message and dst.streams == []
    with pytest.raises(V.VolumeError) as err:
        offline(StorageHost(), dst)
    assert "in no active storage pool on hv1" in err.value.message and IMAGES in err.value.hint


def test_the_offline_copy_finds_a_source_file_its_pool_learns_of_at_a_refresh():
    src, dst = StorageHost(), StorageHost()
    pool = src.pool("local", IMAGES, vols=[("d.qcow2", GIB, "qcow2", b"abc")])
    dst.pool("local", IMAGES)
    src.stale.add(f"{IMAGES}/d.qcow2")
    vol, copied = offline(src, dst)
    assert copied == 3 and vol.created and pool.refreshed == 1
