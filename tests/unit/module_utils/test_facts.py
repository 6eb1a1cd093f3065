"""Domain and host facts: the pure XML parser, mounts, bridges, and host_facts over a fake libvirt."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import maintenance
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import facts as F
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import host_facts as H
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import LABEL_NAMESPACE
from hvlab.vm import VMSpec, domain_xml

RICH_XML = f"""
<domain type='kvm'>
  <name>db01</name>
  <uuid>1b4e28ba-2fa1-11d2-883f-0016d3cca427</uuid>
  <metadata>
    <hvfleet:drain xmlns:hvfleet='{LABEL_NAMESPACE}'>
      <hvfleet:label name='app'>db</hvfleet:label>
      <hvfleet:label name='rack'> r7 </hvfleet:label>
    </hvfleet:drain>
    <other:thing xmlns:other='https://example.com/x'><other:label name='ignored'>x</other:label></other:thing>
  </metadata>
  <memory unit='GiB'>4</memory>
  <currentMemory unit='KiB'>2097152</currentMemory>
  <vcpu placement='static' current='2'>8</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>Haswell-noTSX</model>
    <feature policy='require' name='vmx'/></cpu>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/db01.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><source dev='/dev/vg0/db01-data'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/db01-logs'>
      <host name='mon1' port='6789'/><host name='mon2' port='6789'/></source><target dev='vdc' bus='virtio'/></disk>
    <disk type='volume' device='disk'><source pool='shared' volume='db01-extra'/><target dev='vdd'/></disk>
    <disk type='file' device='cdrom'><source file='/srv/iso/debian.iso'/><target dev='sda' bus='sata'/>
      <readonly/></disk>
    <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>
    <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-prod'/><model type='virtio'/>
      <mtu size='9000'/><target dev='vnet3'/></interface>
    <interface type='network'><mac address='52:54:00:00:00:02'/><source network='default'/></interface>
    <interface type='direct'><mac address='52:54:00:00:00:03'/><source dev='eth1' mode='bridge'/></interface>
    <interface type='hostdev' managed='yes'><mac address='52:54:00:00:00:04'/>
      <source><address type='pci' domain='0x0000' bus='0x05' slot='0x10' function='0x2'/></source></interface>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>
    <hostdev mode='subsystem' type='usb'><source><vendor id='0x046d'/><product id='0xc52b'/></source></hostdev>
    <serial type='dev'><source path='/dev/ttyS1'/><target port='1'/></serial>
    <serial type='pty'><target port='0'/></serial>
    <filesystem type='mount'><driver type='virtiofs'/><source dir='/srv/share'/><target dir='share'/></filesystem>
  </devices>
</domain>
"""


def test_rich_domain_xml():
    d = F.parse_domain_xml(RICH_XML, state="running", persistent=True)
    assert (d.name, d.uuid, d.state, d.persistent) == ("db01", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "running", True)
    assert (d.memory_mib, d.current_memory_mib, d.vcpus) == (4096, 2048, 2)
    assert (d.domain_type, d.arch, d.machine, d.emulator) == ("kvm", "x86_64", "pc-q35-7.2",
                                                              "/usr/bin/qemu-system-x86_64")
    assert (d.cpu_mode, d.cpu_model) == ("custom", "Haswell-noTSX")
    assert d.cpu_xml.startswith("<cpu") and "vmx" in d.cpu_xml
    assert d.labels == {"app": "db", "rack": "r7"}
    by_target = {disk.target: disk for disk in d.disks}
    assert by_target["vda"].type == "file" and by_target["vda"].path.endswith("db01.qcow2")
    assert by_target["vda"].format == "qcow2" and not by_target["vda"].readonly
    assert by_target["vdb"].type == "block" and by_target["vdb"].path == "/dev/vg0/db01-data"
    rbd = by_target["vdc"]
    assert (rbd.type, rbd.protocol, rbd.name, rbd.hosts) == ("network", "rbd", "pool/db01-logs",
                                                             ("mon1:6789", "mon2:6789"))
    assert rbd.source == "rbd://mon1:6789/pool/db01-logs"
    assert (by_target["vdd"].pool, by_target["vdd"].name) == ("shared", "db01-extra")
    assert by_target["sda"].device == "cdrom" and by_target["sda"].readonly and not by_target["sda"].empty
    assert by_target["sdb"].empty
    nics = {n.mac: n for n in d.interfaces}
    assert (nics["52:54:00:00:00:01"].type, nics["52:54:00:00:00:01"].source, nics["52:54:00:00:00:01"].mtu,
            nics["52:54:00:00:00:01"].target) == ("bridge", "br-prod", 9000, "vnet3")
    assert nics["52:54:00:00:00:02"].source == "default"
    assert nics["52:54:00:00:00:03"].source == "eth1"
    local = [dev.description for dev in d.local_devices]
    assert "host PCI device 0000:03:00.0" in local
    assert "host USB device 0x046d:0xc52b" in local
    assert any("SR-IOV" in t and "0000:05:10.2" in t for t in local)
    assert "serial passthrough of host device /dev/ttyS1" in local
    assert any(t.startswith("virtiofs filesystem share /srv/share") for t in local)
    assert len(local) == 5  # the pty serial is not host-bound
    assert d.to_dict()["disks"][2]["hosts"] == ["mon1:6789", "mon2:6789"]


def test_lab_domain_xml_round_trip():
    """The lab writes labels the way operators will; the collection must read them back."""
    spec = VMSpec(name="web1", memory=384, vcpus=2, disk="local", bridges=["labbr0", "labbr9"],
                  labels={"app": "web", "tier": "front"})
    d = F.parse_domain_xml(domain_xml(spec, kernel="/k", initrd="/i", cmdline="c", console_path="/c.log"))
    assert d.labels == {"app": "web", "tier": "front"}
    assert (d.memory_mib, d.vcpus, d.domain_type, d.cpu_model) == (384, 2, "qemu", "qemu64")
    assert [(x.type, x.source) for x in d.interfaces] == [("bridge", "labbr0"), ("bridge", "labbr9")]
    assert [(x.target, x.type, x.path) for x in d.disks] == [("vda", "file", "/var/lib/libvirt/images/web1.qcow2")]
    assert d.local_devices == ()  # file serial/console are not host-bound
    nbd = F.parse_domain_xml(domain_xml(VMSpec(name="n1"), kernel="/k", initrd="/i", cmdline="c",
                                        console_path="/c.log", nbd_host="10.254.0.2"))
    expected = [("network", "nbd", "n1", ("10.254.0.2:10809",))]
    assert [(x.type, x.protocol, x.name, x.hosts) for x in nbd.disks] == expected


@pytest.mark.parametrize("unit, value, mib", [("KiB", 1048576, 1024), ("MiB", 512, 512), ("G", 2, 2048),
                                              ("bytes", 268435456, 256), ("MB", 1000, 953)])
def test_memory_units(unit, value, mib):
    xml = f"<domain><name>x</name><memory unit='{unit}'>{value}</memory></domain>"
    assert F.parse_domain_xml(xml).memory_mib == mib


def test_bad_xml_is_a_clear_error():
    with pytest.raises(F.FactsError, match="Cannot parse"):
        F.parse_domain_xml("<domain>")
    with pytest.raises(F.FactsError, match="<network>"):
        F.parse_domain_xml("<network/>")


MOUNTS = """/dev/vda / ext4 rw 0 0
proc /proc proc rw 0 0
nfs1:/export/images /var/lib/libvirt/images nfs4 rw 0 0
/dev/vdb /var/lib/libvirt/images/local ext4 rw 0 0
tmpfs /srv/with\\040space tmpfs rw 0 0
"""


def test_mounts_longest_prefix_and_escapes():
    mounts = H.parse_mounts(MOUNTS)
    assert H.mount_of("/var/lib/libvirt/images/a.qcow2", mounts)[1] == "nfs4"
    assert H.mount_of("/var/lib/libvirt/images/local/b.qcow2", mounts)[1] == "ext4"
    assert H.mount_of("/var/lib/libvirt/imagesX/c", mounts)[0] == "/"
    assert H.mount_of("/srv/with space/d", mounts)[1] == "tmpfs"
    assert "nfs4" in H.SHARED_FS_TYPES and "ext4" not in H.SHARED_FS_TYPES


def test_local_bridges_from_sysfs(tmp_path):
    net = tmp_path / "class" / "net"
    for name, bridge, mtu in (("labbr0", True, 1500), ("br-jumbo", True, 9000), ("eth0", False, 1500)):
        (net / name).mkdir(parents=True)
        (net / name / "mtu").write_text(f"{mtu}\n")
        if bridge:
            (net / name / "bridge").mkdir()
    assert H.local_bridges(tmp_path) == {"br-jumbo": 9000, "labbr0": 1500}
    assert H.local_bridges(tmp_path / "missing") is None


@pytest.mark.parametrize("uri, local", [("qemu:///system", True), (None, True), ("qemu+unix:///system", True),
                                        ("qemu+tcp://10.0.0.1/system", False), ("qemu+ssh://root@hv2/system", False)])
def test_is_local_uri(uri, local):
    assert H.is_local_uri(uri) is local


# ---- host facts over a fake connection ---------------------------------------------------------

CAPS = """<capabilities><host><uuid>aaaaaaaa-0000-0000-0000-000000000001</uuid>
<cpu><arch>x86_64</arch><model>Skylake-Client-IBRS</model><vendor>Intel</vendor></cpu>
<migration_features><live/><uri_transports><uri_transport>tcp</uri_transport><uri_transport>rdma</uri_transport>
</uri_transports></migration_features></host></capabilities>"""


class FakeDom:
    def __init__(self, name, max_kib, vcpus):
        self._name, self.max_kib, self.vcpus = name, max_kib, vcpus

    def name(self):
        return self._name

    def info(self):
        return [1, self.max_kib, self.max_kib, self.vcpus, 0]


class FakeIface:
    def __init__(self, name, xml):
        self._name, self.xml = name, xml

    def name(self):
        return self._name

    def XMLDesc(self, _flags=0):
        return self.xml


class FakeNet:
    def __init__(self, name, active, bridge):
        self._name, self.active, self.bridge = name, active, bridge

    def name(self):
        return self._name

    def isActive(self):
        return self.active

    def bridgeName(self):
        return self.bridge


class FakeConn:
    def __init__(self, interfaces=True):
        self.interfaces = interfaces

    def getInfo(self):
        return ["x86_64", 32000, 16, 2400, 1, 1, 8, 2]

    def getHostname(self):
        return "hv2.example.com"

    def getCapabilities(self):
        return CAPS

    def getLibVersion(self):
        return 9000000

    def getVersion(self):
        return 7002000

    def getMemoryStats(self, _cell, _flags=0):
        return {"total": 32 * 1024 * 1024, "free": 10 * 1024 * 1024, "buffers": 1024 * 1024, "cached": 5 * 1024 * 1024}

    def listAllDomains(self, flags=0):
        assert flags == H.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        return [FakeDom("a", 2 * 1024 * 1024, 2), FakeDom("b", 512 * 1024, 1)]

    def listAllInterfaces(self, _flags=0):
        if not self.interfaces:
            raise RuntimeError("this function is not supported by the connection driver: virConnectListAllInterfaces")
        return [FakeIface("br0", "<interface type='bridge' name='br0'><mtu size='9000'/></interface>"),
                FakeIface("eth0", "<interface type='ethernet' name='eth0'/>")]

    def listAllNetworks(self, _flags=0):
        return [FakeNet("default", True, "virbr0"), FakeNet("isolated", False, "virbr1")]


def test_host_facts_remote_leave_local_parts_unknown():
    h = H.host_facts(FakeConn(), name="hv2", uri="qemu+tcp://hv2/system")
    assert (h.name, h.hostname, h.host_uuid, h.cpu_model, h.cpus) == (
        "hv2", "hv2.example.com", "aaaaaaaa-0000-0000-0000-000000000001", "Skylake-Client-IBRS", 16)
    assert (h.memory_total_mib, h.memory_free_mib, h.memory_available_mib) == (32768, 10240, 16384)
    assert (h.memory_allocated_mib, h.vcpus_allocated, h.domains_running) == (2560, 3, 2)
    assert (h.libvirt_version, h.qemu_version, h.migration_live) == (9000000, 7002000, True)
    assert h.migration_transports == ("tcp", "rdma")
    assert h.bridges == {"br0": 9000} and h.bridges_source == "libvirt"
    assert h.networks == {"default": {"active": True, "bridge": "virbr0"},
                          "isolated": {"active": False, "bridge": "virbr1"}}
    assert h.cordon is None and h.cordoned is None and h.userfaultfd is None and not h.local
    assert h.postcopy["supported"] is None and h.postcopy["resume"]
    data = h.to_dict()
    assert data["libvirt_version_text"] == "9.0.0" and data["qemu_version_text"] == "7.2.0"
    assert H.HostFacts.from_dict(data) == h


def test_host_facts_local_reads_sysfs_userfaultfd_and_cordon(tmp_path):
    sysfs = tmp_path / "sys"
    (sysfs / "class" / "net" / "labbr0" / "bridge").mkdir(parents=True)
    (sysfs / "class" / "net" / "labbr0" / "mtu").write_text("1500")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "userfaultfd").write_text("")
    state = tmp_path / "state"
    maintenance.set_state(state, maintenance.CORDONED, reason="disk swap", by="ops")
    h = H.host_facts(FakeConn(interfaces=False), name="hv1", uri="qemu:///system", state_dir=state,
                     sysfs=sysfs, proc=tmp_path / "proc", dev=dev)
    assert h.local and h.bridges == {"labbr0": 1500} and h.bridges_source == "sysfs"
    assert h.userfaultfd is True and h.postcopy["supported"] is True
    assert h.cordoned is True and h.cordon["reason"] == "disk swap"


def test_no_interface_driver_means_bridges_unknown():
    h = H.host_facts(FakeConn(interfaces=False), uri="qemu+tcp://hv2/system")
    assert h.bridges is None and h.bridges_source is None


def test_merged_with_takes_only_what_could_not_be_read_remotely():
    remote = H.host_facts(FakeConn(interfaces=False), name="hv2", uri="qemu+tcp://hv2/system")
    on_host = dict(remote.to_dict(), memory_available_mib=1, bridges={"labbr0": 1500}, bridges_source="sysfs",
                   userfaultfd=True, cordon={"state": "cordoned", "reason": "r", "by": "b", "since": "s"})
    merged = remote.merged_with(on_host)
    assert merged.cordoned is True and merged.userfaultfd is True and merged.bridges == {"labbr0": 1500}
    assert merged.memory_available_mib == remote.memory_available_mib  # live value wins
    assert remote.merged_with(None) is remote


def test_postcopy_support_explains_old_versions():
    h = H.HostFacts(name="old", libvirt_version=1002000, qemu_version=2004000, userfaultfd=True)
    assert h.postcopy["supported"] is False
    assert "libvirt 1.2.0 < 1.3.3" in h.postcopy["reason"] and "QEMU 2.4.0 < 2.5.0" in h.postcopy["reason"]
    assert not h.postcopy["resume"]
    assert H.HostFacts(name="k", libvirt_version=9000000, qemu_version=7002000,
                       userfaultfd=False).postcopy["supported"] is False


# ---- dirty rate ------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


class RateDom:
    def __init__(self, name, polls_until_done=2, fail=False, conn=None):
        self._name, self.left, self.fail, self.conn = name, polls_until_done, fail, conn
        self.started = None

    def name(self):
        return self._name

    def connect(self):
        return self.conn

    def startDirtyRateCalc(self, seconds, _flags):
        if self.fail:
            raise RuntimeError("Requested operation is not valid: domain is not running")
        self.started = seconds


class RateConn:
    def domainListGetStats(self, doms, stats):
        assert stats == F.VIR_DOMAIN_STATS_DIRTYRATE
        dom = doms[0]
        dom.left -= 1
        status = 2 if dom.left <= 0 else 1
        return [(dom, {"dirtyrate.calc_status": status, "dirtyrate.megabytes_per_second": 140})]


def test_dirty_rates_are_measured_together_and_failures_are_named():
    conn, clock = RateConn(), Clock()
    doms = [RateDom("hot", 3, conn=conn), RateDom("idle", 1, conn=conn), RateDom("off", fail=True, conn=conn)]
    rates = F.measure_dirty_rates(doms, seconds=2, clock=clock, wait=clock.sleep)
    assert rates["hot"] == rates["idle"] == 140 * F.MIB
    assert isinstance(rates["off"], F.FactsError) and "off" in str(rates["off"])
    assert clock.t < 4  # one shared 2 s window, not 2 s per VM
    with pytest.raises(F.FactsError, match="not running"):
        F.measure_dirty_rate(RateDom("off", fail=True, conn=conn), clock=clock, wait=clock.sleep)


def test_dirty_rate_times_out():
    conn, clock = RateConn(), Clock()
    with pytest.raises(F.FactsError, match="did not finish within 3 s"):
        F.measure_dirty_rate(RateDom("slow", 10 ** 6, conn=conn), seconds=1, timeout_s=3, clock=clock,
                             wait=clock.sleep)
