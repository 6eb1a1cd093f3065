"""The lab hosts' `local` image pool: defined, autostarted and started once, left alone when healthy."""

import libvirt
from hvlab import storage


class FakePool:
    def __init__(self, active=False, autostart=False):
        self.active, self.auto, self.calls = active, autostart, []

    def autostart(self):
        return self.auto

    def setAutostart(self, flag):  # noqa: N802 - libvirt's name
        self.calls.append("autostart")
        self.auto = bool(flag)

    def isActive(self):  # noqa: N802
        return self.active

    def create(self, _flags=0):
        self.calls.append("start")
        self.active = True


class FakeConn:
    def __init__(self, pool=None):
        self.pool, self.defined = pool, []

    def storagePoolLookupByName(self, name):  # noqa: N802
        if self.pool is None:
            raise libvirt.libvirtError(f"Storage pool not found: no storage pool with matching name '{name}'")
        return self.pool

    def storagePoolDefineXML(self, xml, _flags=0):  # noqa: N802
        self.defined.append(xml)
        self.pool = FakePool()
        return self.pool


def test_a_host_without_the_pool_gets_it_defined_autostarted_and_started(tmp_path):
    conn = FakeConn()
    assert storage.ensure_local_pool(conn, tmp_path) == "defined"
    assert conn.defined == [storage.local_pool_xml()] and conn.pool.calls == ["autostart", "start"]
    assert "<name>local</name>" in conn.defined[0] and f"<path>{storage.LOCAL_POOL_DIR}</path>" in conn.defined[0]
    # the directory exists below the host's private /var/lib/libvirt
    assert (tmp_path / "lib-libvirt" / "local-images").is_dir()


def test_a_healthy_pool_is_left_alone_and_a_stopped_one_is_started(tmp_path):
    healthy = FakeConn(FakePool(active=True, autostart=True))
    assert storage.ensure_local_pool(healthy, tmp_path) == "present" and healthy.pool.calls == []
    stopped = FakeConn(FakePool(active=False, autostart=True))
    assert storage.ensure_local_pool(stopped, tmp_path) == "started" and stopped.pool.calls == ["start"]
    assert healthy.defined == stopped.defined == []


def test_a_vm_claims_only_its_own_volumes():
    assert storage.vm_volume("t1", "t1.qcow2") and storage.vm_volume("t1", "t1-data.qcow2")
    assert not storage.vm_volume("t1", "t1-2-data.qcow2")  # VM t1-2's
    assert not storage.vm_volume("t1", "t10.qcow2") and not storage.vm_volume("t1.x", "t1-data.qcow2")
