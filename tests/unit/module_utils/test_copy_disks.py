"""Which disks a copying storage policy copies: the local ones, listed to libvirt; never a shared one.

Without a list libvirt copies every disk it does not know to be shared, so a disk on a share it cannot
recognise (NFS, a Ceph-backed file) would be mirrored onto itself while the guest writes to it.
"""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (
    DomainNotFound,
    HvfleetError,
    InvalidSpec,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import spec as S
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import volumes
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import copy_list
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import spec_for
from drain_fakes import FakeBackend, fleet, make, vm
from hypothesis import given, settings
from hypothesis import strategies as st
from test_preflight import DST, NBD, SRC, Conn, Pool, Probe, domain, run

COPY_ALL = dict(DEFAULT_SETTINGS, storage="copy_all")


def test_the_list_goes_to_libvirt_as_migrate_disks():
    spec = S.MigrationSpec(copy_storage="all", copy_disks=("vdb",))
    assert spec.params()[S.PARAM_MIGRATE_DISKS] == ["vdb"] and spec.flags() & S.VIR_MIGRATE_NON_SHARED_DISK
    assert "copy storage (all: vdb)" in spec.describe()
    with pytest.raises(InvalidSpec) as err:  # an empty list would make libvirt copy everything it can
        S.MigrationSpec(copy_storage="all", copy_disks=())
    assert "empty list" in err.value.message


def test_nothing_to_copy_copies_nothing_and_a_shared_only_policy_ignores_the_list():
    assert spec_for(COPY_ALL, copy_disks=[]).flags() & S.VIR_MIGRATE_NON_SHARED_DISK == 0
    assert S.PARAM_MIGRATE_DISKS not in spec_for(COPY_ALL, copy_disks=[]).params()
    assert spec_for(COPY_ALL, copy_disks=["vdb"]).params()[S.PARAM_MIGRATE_DISKS] == ["vdb"]
    shared_only = spec_for(dict(DEFAULT_SETTINGS), copy_disks=["vdb"])
    assert shared_only.copy_storage is None and S.PARAM_MIGRATE_DISKS not in shared_only.params()


# a disk of each kind, on target vd<letter>: (xml, shared?)
KINDS = {
    "nbd": lambda t: (NBD.replace("target dev='vda'", f"target dev='{t}'"), True),
    "nfs": lambda t: (f"<disk type='file' device='disk'><source file='/mnt/nfs/{t}.qcow2'/><target dev='{t}'/>"
                      "</disk>", True),
    # in a netfs pool the source knows, outside the mounts the probe reads
    "netfs_pool": lambda t: (f"<disk type='file' device='disk'><source file='/srv/share/{t}.qcow2'/>"
                             f"<target dev='{t}'/></disk>", True),
    # a LUN both hosts see at the same path; the source has no pool for it, so its sharing is unknown
    "lun": lambda t: (f"<disk type='block' device='disk'><source dev='/dev/disk/by-path/{t}'/><target dev='{t}'/>"
                      "</disk>", True),
    "local": lambda t: (f"<disk type='file' device='disk'><source file='/var/lib/libvirt/images/{t}.qcow2'/>"
                        f"<target dev='{t}'/></disk>", False),
    "shareable": lambda t: (f"<disk type='file' device='disk'><source file='/var/lib/libvirt/images/{t}.raw'/>"
                            f"<target dev='{t}'/><shareable/></disk>", True),
}
LETTERS = "abcdef"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=len(LETTERS)), st.booleans())
def test_a_shared_disk_is_never_in_the_copy_list(kinds, on_source):
    """Whatever the mix, and whether or not the check runs on the source (where its mounts can be read)."""
    disks = [KINDS[kind](f"vd{LETTERS[i]}") for i, kind in enumerate(kinds)]
    nfs = Pool("nfs", "netfs", "/mnt/nfs", vols={f"vd{letter}.qcow2" for letter in LETTERS})
    share = Pool("share", "netfs", "/srv/share", vols={f"vd{letter}.qcow2" for letter in LETTERS})
    luns = Pool("luns", "scsi", "/dev/disk/by-path", vols={f"vd{letter}" for letter in LETTERS})
    pools = [Pool("images", "dir", "/var/lib/libvirt/images"), nfs, share, luns]
    res = run(domain("".join(xml for xml, _shared in disks), nics=""), src_conn=Conn([share]), dst_conn=Conn(pools),
              settings=COPY_ALL, probe=Probe(fs={"/mnt/nfs": "nfs4"}), on_source=on_source)
    targets = [f"vd{LETTERS[i]}" for i in range(len(kinds))]
    shared = {t for t, (_xml, is_shared) in zip(targets, disks, strict=True) if is_shared}
    local = {t for t, kind in zip(targets, kinds, strict=True) if kind == "local"}
    assert not shared & set(res.copy_disks), (kinds, on_source, res.copy_disks)
    assert set(res.copy_disks) == local, (kinds, on_source, res.copy_disks, res.summary())
    assert res.copy_storage == ("all" if local else None)


def test_the_drain_migrates_with_the_list_the_preflight_gives_right_before_the_start(tmp_path):
    class ListingBackend(FakeBackend):
        asked = None

        def copy_disks(self, src_conn, dst_conn, name, source, destination, settings):
            self.asked = (name, source.name, destination.name, settings["storage"])
            return ["vdb"]

    world = fleet(mixed=vm(local_disk=True, labels={"storage": "local"}))
    backend = ListingBackend(world)
    policies = [{"name": "local", "selector": {"labels": {"storage": "local"}}, "settings": {"storage": "copy_all"}}]
    drainer, backend, _events = make(tmp_path, world, backend=backend, policies=policies)
    result = drainer.drain()
    assert result.state == "drained", result.message
    spec = backend.calls[0][3]
    assert spec.copy_storage == "all" and spec.params()[S.PARAM_MIGRATE_DISKS] == ["vdb"]
    assert backend.asked[0] == "mixed" and backend.asked[3] == "copy_all"


def test_the_preflight_refuses_a_disk_without_a_pool_as_the_engine_does_before_anything_changes():
    disk = ("<disk type='file' device='disk'><source file='/srv/vm/data.qcow2'/><target dev='vdb'/></disk>")
    res = run(domain(NBD + disk, nics=""), dst_conn=Conn([Pool("images", "dir", "/var/lib/libvirt/images")]),
              settings=COPY_ALL)
    [check] = [c for c in res.checks if c.id == "storage.disk" and c.device == "vdb"]
    message, fix = volumes.no_pool("vm1", "vdb", "/srv/vm/data.qcow2", "hv2")
    assert check.status == "fail" and check.message.startswith(message) and check.fix == fix
    assert "local ext4 filesystem" in check.message  # why it is copied at all
    assert res.copy_disks == () and res.copy_storage is None


def test_a_disk_of_unknown_sharing_that_the_destination_has_at_the_same_path_is_not_copied():
    """Perhaps the very same file: a copy would mirror it onto itself while the guest writes to it."""
    disk = "<disk type='block' device='disk'><source dev='/dev/mapper/data'/><target dev='vdb'/></disk>"
    res = run(domain(disk, nics=""), dst_conn=Conn([Pool("maps", "dir", "/dev/mapper", vols={"data"})]),
              settings=COPY_ALL)
    [check] = [c for c in res.checks if c.id == "storage.disk"]
    assert check.status == "warn" and "not copied" in check.message and "source host" in check.fix
    assert res.copy_disks == ()


class NoDomain(Exception):
    def get_error_code(self):
        return 42  # VIR_ERR_NO_DOMAIN


class SourceConn(Conn):
    def __init__(self, xml, pools=()):
        super().__init__(pools)
        self.xml = xml

    def lookupByName(self, name):  # noqa: N802 - libvirt's name
        if name != "vm1":
            raise NoDomain(f"Domain not found: no domain with matching name '{name}'")
        return self.xml


@pytest.fixture
def module_path(monkeypatch):
    """copy_list as domain_migration calls it, with the hosts' facts and the VM's XML from the fakes."""
    monkeypatch.setattr(copy_list.hvfacts, "domain_facts", lambda xml: domain(xml, nics=""))
    monkeypatch.setattr(copy_list.hvhost, "host_facts", lambda conn, uri=None, local=None: SRC if local is None
                        else DST)
    monkeypatch.setattr(copy_list.preflight, "LocalProbe", Probe)


def test_domain_migration_copies_only_the_local_disk_of_a_mixed_vm(module_path):
    data = "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/d.qcow2'/><target dev='vdb'/></disk>"
    dst = Conn([Pool("images", "dir", "/var/lib/libvirt/images")])
    assert copy_list.copy_list(SourceConn(NBD + data), dst, "vm1", "qemu:///system", DST.uri, "all") == ("vdb",)
    assert copy_list.copy_list(SourceConn(NBD), dst, "vm1", "qemu:///system", DST.uri, "incremental") == ()


def test_domain_migration_refuses_a_disk_it_cannot_copy_before_anything_changes(module_path):
    data = "<disk type='file' device='disk'><source file='/srv/vm/d.qcow2'/><target dev='vdb'/></disk>"
    with pytest.raises(HvfleetError) as err:
        copy_list.copy_list(SourceConn(NBD + data), Conn(), "vm1", "qemu:///system", DST.uri, "all")
    assert "vdb" in err.value.message and "/srv/vm/d.qcow2" in err.value.message
    assert "pool-define-as" in err.value.hint
    with pytest.raises(DomainNotFound):
        copy_list.copy_list(SourceConn(NBD), Conn(), "nope", "qemu:///system", DST.uri, "all")
    with pytest.raises(HvfleetError) as err:
        copy_list.copy_list(SourceConn(NBD), Conn(), "vm1", "qemu:///system", DST.uri, "everything")
    assert "copy_storage='everything'" in err.value.message
