"""The qemu+ssh:// transport on the lab: connect through each host's sshd, keepalive, a migration whose
destination is a qemu+ssh URI (the source libvirtd opens the SSH session to the destination itself,
peer to peer), and a clear error for an SSH URI nobody answers at.

Every lab host runs its own sshd on its lab address with the lab's key (tests/lab/hvlab/hosts.py).
The URIs carry `keyfile=` (the lab key) and `no_verify=1` (the lab's host keys are throwaway, so
they are not checked - production URIs leave it out and rely on known_hosts); connection.connect
adds `no_tty=1` so a password prompt can never hang.

Each migration test ends by asserting where the VM is and that its heartbeat never reset.
Synchronisation is by polling with deadlines; nothing sleeps to wait for an event.
"""

import time

import pytest

pytestmark = pytest.mark.lab

libvirt = pytest.importorskip("libvirt")

from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (  # noqa: E402
    LibvirtConnectionError,
    MigrationFailed,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec  # noqa: E402
from lab_helpers import assert_only_on, booted  # noqa: E402


def ssh_uri(lab, host, addr=None):
    """qemu+ssh URI of a lab host: root with the lab key, host key not checked (lab-only)."""
    return f"qemu+ssh://root@{addr or lab.addr(host)}/system?keyfile={lab.ssh_key}&no_verify=1"


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def test_ssh_connection_has_keepalive_and_sees_its_host(lab, monkeypatch):
    calls = []
    real = libvirt.virConnect.setKeepAlive

    def spy(self, interval, count):
        calls.append((interval, count))
        return real(self, interval, count)

    monkeypatch.setattr(libvirt.virConnect, "setKeepAlive", spy)
    conn = connection.connect(ssh_uri(lab, "hv2"), timeout_s=30)
    try:
        # libvirt accepted keepalive (it raises for a transport that cannot do it) and runs its event loop
        assert calls == [(connection.KEEPALIVE_INTERVAL_S, connection.KEEPALIVE_COUNT)]
        thread = connection._event_thread  # pylint: disable=protected-access
        assert thread is not None and thread.is_alive()
        assert conn.getURI().startswith("qemu+ssh://") and "no_tty=1" in conn.getURI()
        assert conn.getHostname() == "hv2" and conn.isAlive() == 1
        # a keepalive that works turns a peer gone silent into a dead connection (interval x count),
        # instead of a call that blocks for ever
        lab.cut_link("hv2")
        try:
            t0 = time.monotonic()
            limit = connection.KEEPALIVE_INTERVAL_S * (connection.KEEPALIVE_COUNT + 1) + 10
            wait_until(lambda: conn.isAlive() != 1, limit, "keepalive to declare the silent peer dead")
            print(f"\nLAB-TIMING qemu+ssh keepalive noticed the cut link after {time.monotonic() - t0:.1f}s")
        finally:
            lab.restore_link("hv2")
    finally:
        connection.close_quietly(conn)


def test_idle_vm_migrates_to_a_qemu_ssh_destination(lab, make_vm):
    vm = make_vm("hv1")
    before = booted(lab, vm)
    src, dst, call = connection.connect_all([ssh_uri(lab, "hv1"), ssh_uri(lab, "hv2"), ssh_uri(lab, "hv1")])
    spec = MigrationSpec(migrate_uri=f"tcp://{lab.addr('hv2')}", stats_interval_s=0.5)
    dest = ssh_uri(lab, "hv2")  # given to hv1's libvirtd: it opens the SSH session to hv2 itself
    try:
        t0 = time.monotonic()
        try:
            result = migration.migrate(src, dst, vm, dest, spec, source_uri=ssh_uri(lab, "hv1"), call_conn=call)
        except MigrationFailed as exc:
            result = exc.result
        print(f"\nLAB-TIMING idle pre-copy over qemu+ssh hv1 -> hv2: {time.monotonic() - t0:.1f}s, "
              f"downtime {result.downtime_ms} ms; {result.message}")
    finally:
        for conn in (call, src, dst):
            connection.close_quietly(conn)
    assert result.outcome == "moved" and result.changed and result.mode_used == "precopy", result.message
    assert result.downtime_ms is not None and result.downtime_ms < spec.max_downtime_cap_ms
    assert not [s for s in result.steps if s.error], result.steps
    assert_only_on(lab, vm, "hv2", before)


def test_unreachable_ssh_uri_names_the_uri(lab):
    uri = ssh_uri(lab, "hv9", addr="10.254.0.99")  # on the lab network, nobody there
    with pytest.raises(LibvirtConnectionError) as info:
        connection.connect(uri, timeout_s=8)
    print(f"\n  unreachable: {info.value}")
    assert uri in str(info.value) and info.value.hint

    closed = ssh_uri(lab, "storage", addr="10.254.0.2")  # a lab address without sshd: refused at once
    with pytest.raises(LibvirtConnectionError) as info:
        connection.connect(closed, timeout_s=15)
    print(f"  refused: {info.value}")
    assert closed in str(info.value) and "ssh" in str(info.value).lower()
