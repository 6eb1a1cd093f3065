"""Prerequisite checks with fake libvirt connections: each blocker is named for what it is."""

import dataclasses
import socket

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import preflight as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import probe as probe_mod
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import parse_domain_xml
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import HostFacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN


class NotFound(Exception):
    pass


class Pool:
    def __init__(self, name, ptype, target, vols=(), active=True, hidden=()):
        self._name, self.ptype, self.target, self.active = name, ptype, target, active
        self.vols, self.hidden = set(vols), set(hidden)  # hidden: files that appear after refresh()
        self.refreshed = 0

    def name(self):
        return self._name

    def XMLDesc(self, _flags=0):
        return f"<pool type='{self.ptype}'><name>{self._name}</name></pool>"

    def isActive(self):
        return self.active

    def refresh(self, _flags=0):
        self.refreshed += 1
        self.vols |= self.hidden

    def storageVolLookupByName(self, name):
        if name not in self.vols:
            raise NotFound(name)
        return Vol(self)


class Vol:
    def __init__(self, pool):
        self.pool = pool

    def storagePoolLookupByVolume(self):
        return self.pool


class Conn:
    """The storage / CPU parts of a virConnect."""

    def __init__(self, pools=(), cpu_result=P.VIR_CPU_COMPARE_IDENTICAL, cpu_error=None):
        self.pools = list(pools)
        self.cpu_result, self.cpu_error = cpu_result, cpu_error
        self.cpu_calls = []

    def storageVolLookupByPath(self, path):
        for pool in self.pools:
            directory, _sep, base = path.rpartition("/")
            if pool.target == directory and base in pool.vols:
                return Vol(pool)
        raise NotFound(path)

    def storagePoolLookupByTargetPath(self, directory):
        for pool in self.pools:
            if pool.target == directory:
                return pool
        raise NotFound(directory)

    def storagePoolLookupByName(self, name):
        for pool in self.pools:
            if pool.name() == name:
                return pool
        raise NotFound(name)

    def compareHypervisorCPU(self, emulator, arch, machine, virttype, xml, flags):
        self.cpu_calls.append((emulator, arch, machine, virttype, xml, flags))
        if self.cpu_error:
            raise RuntimeError(self.cpu_error)
        if flags & P.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE and self.cpu_result == 0:
            raise RuntimeError("the CPU is incompatible with host CPU: Host CPU does not provide required "
                               "features: avx512f")
        return self.cpu_result


class Probe:
    def __init__(self, fs=None, reach=(PASS, "10.0.0.12 answered on port 16509")):
        self.fs = fs or {}
        self.reach_result = reach
        self.reached = []

    def fs_type(self, path):
        for prefix, value in self.fs.items():
            if path.startswith(prefix):
                return value, prefix
        return "ext4", "/"

    def reach(self, host, port):
        self.reached.append((host, port))
        return self.reach_result


def domain(disks="", nics="<interface type='bridge'><mac address='52:54:00:aa:00:01'/><source bridge='br0'/>"
           "</interface>", extra="", memory=1024, cpu="<cpu mode='custom' match='exact'><model>qemu64</model></cpu>"):
    xml = (f"<domain type='qemu'><name>vm1</name><memory unit='MiB'>{memory}</memory>"
           f"<os><type arch='x86_64' machine='pc'>hvm</type></os>{cpu}"
           f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disks}{nics}{extra}</devices></domain>")
    return parse_domain_xml(xml, state="running", persistent=True)


NBD = ("<disk type='network' device='disk'><source protocol='nbd' name='vm1'><host name='10.254.0.2' port='10809'/>"
       "</source><target dev='vda'/></disk>")
LOCAL = "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/vm1.qcow2'/><target dev='vda'/></disk>"
NFS = "<disk type='file' device='disk'><source file='/mnt/nfs/vm1.qcow2'/><target dev='vdb'/></disk>"
ISO = ("<disk type='file' device='cdrom'><source file='/srv/iso/d.iso'/><target dev='sda'/><readonly/></disk>")

SRC = HostFacts(name="hv1", uri="qemu:///system", host_uuid="u1", cpu_model="Skylake", cpu_vendor="Intel",
                libvirt_version=9000000, qemu_version=7002000, bridges={"br0": 1500}, userfaultfd=True,
                cordon={"state": "active"}, local=True)
DST = HostFacts(name="hv2", uri="qemu+tcp://10.0.0.12/system", host_uuid="u2", cpu_model="Skylake",
                cpu_vendor="Intel", libvirt_version=9000000, qemu_version=7002000, memory_total_mib=32768,
                memory_free_mib=8000, memory_available_mib=16000, bridges={"br0": 1500}, userfaultfd=True,
                cordon={"state": "active"})


def run(dom, src_conn=None, dst_conn=None, source=SRC, dest=DST, settings=None, probe=None, **kwargs):
    merged = dict(DEFAULT_SETTINGS, **(settings or {}))
    kwargs.setdefault("migration_address", "10.0.0.12")
    return P.run_prechecks(src_conn or Conn(), dst_conn if dst_conn is not None else Conn(), dom, source, dest,
                           merged, probe=probe or Probe(), **kwargs)


def by_id(result, check_id):
    return [c for c in result.checks if c.id == check_id]


def test_all_good_vm_passes_every_check():
    res = run(domain(NBD))
    assert res.ok and res.status == PASS, res.summary()
    ids = {c.id for c in res.checks}
    assert ids >= {"dest.is_source", "dest.cordoned", "reach.libvirt", "reach.migration_address", "version.libvirt",
                   "version.qemu", "device.hostdev", "storage.disk", "network.bridge", "network.mtu", "cpu.compat",
                   "capacity.memory", "postcopy.support"}
    assert all(c.vm == "vm1" and c.destination == "hv2" and c.fix is None for c in res.checks)
    assert res.copy_storage is None
    assert res.summary() == "vm1 -> hv2: can migrate"


def test_local_disk_is_blocked_naming_disk_filesystem_and_fix():
    res = run(domain(LOCAL))
    [check] = by_id(res, "storage.disk")
    assert check.status == FAIL and check.device == "vda"
    assert "vm1" in check.message and "vda" in check.message and "/var/lib/libvirt/images/vm1.qcow2" in check.message
    assert "local ext4 filesystem" in check.message and "hv2" in check.message
    assert "copy_all" in check.fix
    # pain point 8: the blocker is the storage, not memory or anything else
    assert [b.id for b in res.blockers] == ["storage.disk"]
    assert "blocked: [storage.disk]" in res.summary()


def test_local_disk_with_copy_all_passes_when_the_destination_has_a_pool_there():
    pool = Pool("images", "dir", "/var/lib/libvirt/images")
    res = run(domain(LOCAL), dst_conn=Conn([pool]), settings={"storage": "copy_all"})
    [check] = by_id(res, "storage.disk")
    assert check.status == PASS and "copied to hv2" in check.message and "copy_storage=all" in check.message
    assert res.ok and res.copy_storage == "all" and res.copy_disks == ("vda",)
    assert pool.refreshed == 1  # looked for a pre-created file first


def test_copy_incremental_maps_to_incremental():
    dst = Conn([Pool("images", "dir", "/var/lib/libvirt/images", vols={"vm1.qcow2"})])
    res = run(domain(LOCAL), dst_conn=dst, settings={"storage": "copy_incremental"})
    assert res.ok and res.copy_storage == "incremental"
    assert "existing file" in by_id(res, "storage.disk")[0].message


def test_copy_all_without_a_pool_on_the_destination_fails_with_the_pool_fix():
    res = run(domain(LOCAL), settings={"storage": "copy_all"})
    [check] = by_id(res, "storage.disk")
    assert check.status == FAIL and "only inside a storage pool" in check.message
    assert "storage pool with target /var/lib/libvirt/images on hv2" in check.fix
    assert res.copy_storage is None


def test_nfs_disk_passes_when_the_destination_has_it():
    dst = Conn([Pool("nfs", "netfs", "/mnt/nfs", hidden={"vm1.qcow2"})])
    res = run(domain(NBD + NFS), dst_conn=dst, probe=Probe(fs={"/mnt/nfs": "nfs4"}))
    [_nbd, nfs] = by_id(res, "storage.disk")
    assert nfs.status == PASS and "shared nfs4 filesystem" in nfs.message and "netfs pool 'nfs'" in nfs.message


def test_nfs_disk_without_a_pool_on_the_destination_is_only_a_warning():
    res = run(domain(NFS), probe=Probe(fs={"/mnt/nfs": "nfs4"}))
    [check] = by_id(res, "storage.disk")
    assert check.status == WARN and "assumed, not proven" in check.message
    assert res.ok


def test_nfs_disk_missing_from_the_destination_pool_fails():
    dst = Conn([Pool("nfs", "netfs", "/mnt/nfs")])
    res = run(domain(NFS), dst_conn=dst, probe=Probe(fs={"/mnt/nfs": "nfs4"}))
    [check] = by_id(res, "storage.disk")
    assert check.status == FAIL and "has no vm1.qcow2" in check.message


def test_disk_in_a_shared_source_pool_is_shared_without_looking_at_mounts():
    src = Conn([Pool("san", "iscsi", "/dev/disk/by-path", vols={"lun1"})])
    dst = Conn([Pool("san", "iscsi", "/dev/disk/by-path", vols={"lun1"})])
    disk = "<disk type='block' device='disk'><source dev='/dev/disk/by-path/lun1'/><target dev='vdc'/></disk>"
    res = run(domain(disk), src_conn=src, dst_conn=dst)
    assert by_id(res, "storage.disk")[0].status == PASS


def test_not_on_the_source_sharing_is_unknown_and_a_reach_failure_only_warns():
    res = run(domain(LOCAL), on_source=False, probe=Probe(reach=(FAIL, "no route to 10.0.0.12")))
    [disk] = by_id(res, "storage.disk")
    assert disk.status == WARN and "not checked" in disk.message
    [reach] = by_id(res, "reach.migration_address")
    assert reach.status == WARN and "not the source host" in reach.message


def test_cdrom_missing_on_destination_fails_and_empty_tray_passes():
    dst = Conn([Pool("iso", "dir", "/srv/iso")])
    res = run(domain(NBD + ISO + "<disk type='file' device='cdrom'><target dev='sdb'/><readonly/></disk>"),
              dst_conn=dst)
    checks = {c.device: c for c in by_id(res, "storage.cdrom")}
    assert checks["sda"].status == FAIL and "/srv/iso/d.iso" in checks["sda"].message
    assert "eject" in checks["sda"].fix
    assert checks["sdb"].status == PASS
    present = run(domain(NBD + ISO), dst_conn=Conn([Pool("iso", "dir", "/srv/iso", vols={"d.iso"})]))
    assert by_id(present, "storage.cdrom")[0].status == PASS


def test_missing_bridge_is_blocked_naming_bridge_and_destination():
    dest = dataclasses.replace(DST, bridges={"br1": 1500})
    res = run(domain(NBD), dest=dest)
    [check] = by_id(res, "network.bridge")
    assert check.status == FAIL and "bridge br0" in check.message and "does not exist on hv2" in check.message
    assert "br1" in check.message and "create bridge br0 on hv2" in check.fix
    assert check.device == "interface 52:54:00:aa:00:01"
    assert [b.id for b in res.blockers] == ["network.bridge"]


def test_unknown_bridges_warn():
    res = run(domain(NBD), dest=dataclasses.replace(DST, bridges=None))
    assert by_id(res, "network.bridge")[0].status == WARN and res.ok


def test_libvirt_networks_must_exist_and_be_active():
    nic = "<interface type='network'><mac address='52:54:00:aa:00:02'/><source network='prod'/></interface>"
    dom = domain(NBD, nics=nic)
    src = dataclasses.replace(SRC, networks={"prod": {"active": True, "bridge": "virbr1"}}, bridges={"virbr1": 1500})
    missing = run(dom, source=src)
    assert by_id(missing, "network.bridge")[0].status == FAIL
    assert "not defined on hv2" in by_id(missing, "network.bridge")[0].message
    inactive = run(dom, source=src, dest=dataclasses.replace(DST, networks={"prod": {"active": False}}))
    assert "not active" in by_id(inactive, "network.bridge")[0].message
    dest = dataclasses.replace(DST, networks={"prod": {"active": True, "bridge": "virbr5"}}, bridges={"virbr5": 9000})
    ok = run(dom, source=src, dest=dest)
    assert by_id(ok, "network.bridge")[0].status == PASS
    [mtu] = by_id(ok, "network.mtu")
    assert mtu.status == WARN and "9000" in mtu.message and "1500" in mtu.message


def test_hostdev_fails_naming_the_device():
    extra = ("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03' "
             "slot='0x00' function='0x0'/></source></hostdev>")
    res = run(domain(NBD, extra=extra))
    [check] = by_id(res, "device.hostdev")
    assert check.status == FAIL and "host PCI device 0000:03:00.0" in check.message and "hv1" in check.message
    assert check.device == "host PCI device 0000:03:00.0" and "detach" in check.fix


def test_cpu_comparison_uses_the_domain_cpu_and_names_missing_features():
    dst = Conn(cpu_result=P.VIR_CPU_COMPARE_INCOMPATIBLE)
    res = run(domain(NBD), dst_conn=dst)
    [check] = by_id(res, "cpu.compat")
    assert check.status == FAIL and "avx512f" in check.message and "qemu64" in check.message
    emulator, arch, machine, virttype, xml, flags = dst.cpu_calls[0]
    assert (emulator, arch, machine, virttype, flags) == ("/usr/bin/qemu-system-x86_64", "x86_64", "pc", "qemu", 0)
    assert "<model>qemu64</model>" in xml
    assert by_id(run(domain(NBD), dst_conn=Conn(cpu_result=P.VIR_CPU_COMPARE_SUPERSET)), "cpu.compat")[0].status \
        == PASS
    errored = run(domain(NBD), dst_conn=Conn(cpu_error="machine type 'pc' not supported"))
    assert by_id(errored, "cpu.compat")[0].status == WARN


def test_host_passthrough_needs_the_same_host_cpu():
    dom = domain(NBD, cpu="<cpu mode='host-passthrough'/>")
    res = run(dom, dest=dataclasses.replace(DST, cpu_model="EPYC"))
    assert by_id(res, "cpu.compat")[0].status == FAIL and "EPYC" in by_id(res, "cpu.compat")[0].message
    assert by_id(run(dom), "cpu.compat")[0].status == WARN


def test_capacity_counts_headroom():
    res = run(domain(NBD, memory=4096), memory_headroom_mib=12000)
    [check] = by_id(res, "capacity.memory")
    assert check.status == FAIL and "16096 MiB" in check.message and "16000 MiB available" in check.message
    assert "96 MiB short" in check.message and [b.id for b in res.blockers] == ["capacity.memory"]
    assert by_id(run(domain(NBD, memory=4096), memory_headroom_mib=11904), "capacity.memory")[0].status == PASS


def test_postcopy_checked_only_when_the_mode_may_use_it():
    old = dataclasses.replace(DST, userfaultfd=False)
    assert by_id(run(domain(NBD), dest=old, mode="precopy"), "postcopy.support")[0].status == PASS
    res = run(domain(NBD), dest=old, mode="postcopy")
    assert by_id(res, "postcopy.support")[0].status == FAIL and "userfaultfd" in res.blockers[0].message
    on_timeout = run(domain(NBD), dest=old, mode="precopy", settings={"on_timeout": "postcopy"})
    assert by_id(on_timeout, "postcopy.support")[0].status == FAIL
    unknown = run(domain(NBD), dest=dataclasses.replace(DST, userfaultfd=None), mode="postcopy_after_precopy")
    assert by_id(unknown, "postcopy.support")[0].status == WARN
    no_resume = run(domain(NBD), dest=dataclasses.replace(DST, libvirt_version=8000000), mode="postcopy")
    assert "cannot resume" in by_id(no_resume, "postcopy.support")[0].message


def test_cordoned_destination_fails_with_who_and_why_and_unknown_warns():
    dest = dataclasses.replace(DST, cordon={"state": "cordoned", "reason": "CHG-9", "by": "alice", "since": "t0"})
    res = run(domain(NBD), dest=dest)
    [check] = by_id(res, "dest.cordoned")
    assert check.status == FAIL and "CHG-9" in check.message and "alice" in check.message
    assert "uncordon" in check.fix and res.blockers[0].id == "dest.cordoned"
    assert by_id(run(domain(NBD), dest=dataclasses.replace(DST, cordon=None)), "dest.cordoned")[0].status == WARN


def test_destination_equal_to_source_fails():
    res = run(domain(NBD), dest=dataclasses.replace(DST, host_uuid="u1"))
    assert res.blockers[0].id == "dest.is_source" and "host UUID u1" in res.blockers[0].message


def test_older_destination_versions_warn_and_the_machine_type_decides():
    older = dataclasses.replace(DST, libvirt_version=8000000, qemu_version=6002000)
    res = run(domain(NBD), dest=older)
    versions = {c.id: c for c in res.checks if c.id.startswith("version.")}
    assert versions["version.libvirt"].status == WARN and versions["version.qemu"].status == WARN
    assert "8.0.0" in versions["version.libvirt"].message and "9.0.0" in versions["version.libvirt"].message
    assert "same or a newer generation" in versions["version.qemu"].fix
    # machine types unknown on an older QEMU: cannot tell, so a warning, never a pass
    assert by_id(res, "machine.type")[0].status == WARN


def gen(machine, domain_type="qemu"):
    return dataclasses.replace(domain(NBD), machine=machine, domain_type=domain_type)


NEW_SRC = dataclasses.replace(SRC, libvirt_version=11003000, qemu_version=10000013)
OLD_DST = dataclasses.replace(DST, libvirt_version=9000000, qemu_version=7002022,
                              machine_types={"qemu": ("pc", "pc-i440fx-7.2", "pc-q35-7.2"), "kvm": ("pc",)},
                              machine_aliases={"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"})


def test_new_to_old_blocked_by_a_machine_type_the_older_qemu_lacks():
    res = run(gen("pc-i440fx-10.0"), source=NEW_SRC, dest=OLD_DST)
    assert not res.ok and res.blockers[0].id == "machine.type"
    [check] = res.blockers
    assert "pc-i440fx-10.0" in check.message and "7.2.22" in check.message and "pc = pc-i440fx-7.2" in check.message
    assert "same or a newer generation" in check.fix and "10.0.13" in check.fix


def test_new_to_old_allowed_for_a_vm_that_still_has_the_old_machine_type():
    res = run(gen("pc-i440fx-7.2"), source=NEW_SRC, dest=OLD_DST)
    assert res.ok, res.summary()
    assert by_id(res, "machine.type")[0].status == PASS
    assert {c.status for c in res.checks if c.id.startswith("version.")} == {WARN}


def test_machine_type_of_another_domain_type_does_not_count():
    res = run(gen("pc-q35-7.2", "kvm"), source=NEW_SRC, dest=OLD_DST)
    assert by_id(res, "machine.type")[0].status == FAIL


def test_unreachable_destination_names_only_that_cause():
    dest = P.unreachable_host("hv3", "qemu+tcp://10.0.0.13/system")
    res = P.run_prechecks(Conn(), None, domain(NBD), SRC, dest, dict(DEFAULT_SETTINGS),
                          destination_error="Cannot connect: Connection refused", probe=Probe())
    assert [b.id for b in res.blockers] == ["reach.libvirt"]
    assert "Connection refused" in res.blockers[0].message
    assert not by_id(res, "capacity.memory")  # no "not enough memory" for a host we could not read


def test_forecast_refusal_is_a_blocker_with_its_reason():
    res = run(domain(NBD), mode="refuse", forecast_reason="dirty 400 MiB/s = 3.2 x link")
    assert res.blockers[-1].id == "forecast.mode" and "3.2 x link" in res.blockers[-1].message


def test_migration_address_probe_uses_the_libvirt_port_never_a_migration_port():
    probe = Probe()
    run(domain(NBD), probe=probe, migration_address="10.9.0.12")
    assert probe.reached == [("10.9.0.12", 16509)]
    probe = Probe()
    run(domain(NBD), probe=probe, migration_address="[fd00::12]:2222")
    assert probe.reached == [("fd00::12", 2222)]
    missing = run(domain(NBD), migration_address=None)
    assert by_id(missing, "reach.migration_address")[0].status == WARN


@pytest.mark.parametrize("uri, port", [("qemu+tls://h/system", 16514), ("qemu+ssh://root@h/system", 22),
                                       ("qemu+tcp://h:1234/system", 1234), ("qemu:///system", 16509)])
def test_probe_port(uri, port):
    assert probe_mod.probe_port(uri) == port


def test_local_probe_against_real_sockets():
    probe = probe_mod.LocalProbe(timeout_s=1)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        status, text = probe.reach("127.0.0.1", port)
        assert status == PASS and "accepted" in text
    status, text = probe.reach("127.0.0.1", port)  # nothing listens any more
    assert status == PASS and "refused" in text
    status, text = probe.reach("no-such-host.invalid", 16509)
    assert status == FAIL and "does not resolve" in text


def test_to_dict_is_plain_data():
    res = run(domain(LOCAL))
    data = res.to_dict()
    assert data["status"] == "fail" and not data["ok"] and data["blockers"][0]["id"] == "storage.disk"
    assert {"id", "status", "vm", "destination", "message", "fix", "device"} == set(data["checks"][0])


class XmlConn(Conn):
    """A source that hands out the domain's XML, or a destination that answers domain capabilities."""

    def __init__(self, xml=None, caps=None):
        super().__init__()
        self.xml, self.caps, self.caps_calls = xml, caps, []

    def lookupByName(self, name):  # noqa: N802 (libvirt's name)
        xml = self.xml

        class Dom:
            def XMLDesc(self, flags):  # noqa: N802
                return xml

        return Dom()

    def getDomainCapabilities(self, *args):  # noqa: N802
        self.caps_calls.append(args)
        return self.caps


OLD_CAPS = ("<domainCapabilities><devices><video supported='yes'><enum name='modelType'><value>vga</value>"
            "<value>virtio</value></enum></video></devices></domainCapabilities>")


def test_new_to_old_blocked_by_a_device_model_the_older_stack_lacks():
    xml = "<domain type='qemu'><name>vm1</name><devices><video><model type='bochs'/></video></devices></domain>"
    dst = XmlConn(caps=OLD_CAPS)
    res = run(gen("pc-i440fx-7.2"), src_conn=XmlConn(xml=xml), dst_conn=dst, source=NEW_SRC, dest=OLD_DST)
    [check] = by_id(res, "device.models")
    assert check.status == FAIL and "video modelType 'bochs'" in check.message and "hv2" in check.message
    assert "same or a newer generation" in check.fix and not res.ok
    assert dst.caps_calls == [(None, "x86_64", "pc-i440fx-7.2", "qemu", 0)]


def test_device_models_are_not_compared_towards_the_same_or_a_newer_stack():
    dst = XmlConn(caps=OLD_CAPS)
    res = run(gen("pc-i440fx-7.2"), src_conn=XmlConn(xml="<domain/>"), dst_conn=dst)
    assert by_id(res, "device.models") == [] and dst.caps_calls == []
