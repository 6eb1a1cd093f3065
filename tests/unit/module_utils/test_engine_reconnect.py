"""A destination libvirtd restarted during a post-copy: the engine's connection to it dies with the old
daemon. Seen on the lab (fault matrix): the VM completed on the destination, but every later look
through the dead connection said "unreachable", so the engine reported `postcopy_paused` ("cannot see
both hosts") for a VM that had moved. The engine now reopens a lost connection by its URI and judges
from what the new one shows."""

from __future__ import annotations

import pytest
import test_migration as tm  # the engine's fakes (same directory; prepend import mode)
from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

DST_URI = tm.DST_URI


class UriHost(tm.Host):
    """A fake connection that knows its URI and can die (its daemon went away)."""

    def __init__(self, uri):
        super().__init__()
        self.uri = uri
        self.dead = False
        self.closed = False

    def getURI(self):  # noqa: N802 - libvirt's name
        return self.uri

    def lookupByName(self, name):  # noqa: N802
        if self.dead:
            raise tm.LibvirtFail("internal error: client socket is closed")
        return super().lookupByName(name)

    def close(self):
        self.closed = True


def interrupted_then_completed(src_host, dst_host, dom, restarted):
    """The migrate call fails as the destination daemon goes away; QEMU finishes the post-copy anyway:
    the source copy ends shut off (migrated), the restarted daemon shows the VM running."""
    def end():
        dom.st = (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED)
        dst_host.dead = True
        tm.Dom("vm1", restarted, state=(rc.RUNNING, rc.RUNNING_MIGRATED))
        raise tm.LibvirtFail("internal error: client socket is closed")
    return end


@pytest.fixture
def restart(monkeypatch):
    """connection.connect() reaches the restarted destination daemon."""
    restarted = UriHost(DST_URI)
    opened = []

    def connect(uri, timeout_s=30, **_kw):
        assert uri == DST_URI, uri
        opened.append(uri)
        return restarted

    monkeypatch.setattr(connection, "connect", connect)
    return restarted, opened


def test_destination_daemon_restart_does_not_hide_a_completed_postcopy(restart):
    restarted, opened = restart
    src_host, dst_host = tm.Host(), UriHost(DST_URI)
    dom = tm.Dom("vm1", src_host)
    dom.samples = tm.hot_series(3)
    dom.on_end = interrupted_then_completed(src_host, dst_host, dom, restarted)

    def resume_refused():
        dom.st = (rc.SHUTOFF, rc.SHUTOFF_MIGRATED)  # QEMU completed meanwhile
        raise tm.LibvirtFail("unable to connect to server at '10.254.0.12:16509': Connection refused")

    dom.on_resume = [resume_refused] * 20
    clock = tm.Clock()
    spec = MigrationSpec(mode="postcopy", postcopy_recovery_timeout_s=30, **tm.FAST)
    result = tm.run(src_host, dst_host, spec, clock)
    assert result.outcome in ("moved", "postcopy_recovered") and result.ok, result.message
    assert result.destination_state["label"].startswith("running"), result.destination_state
    assert opened == [DST_URI], "the lost destination connection is reopened once, by its URI"
    assert any(s.action == "reconnect" and DST_URI in s.reason for s in result.steps), result.steps
    assert "resume" not in dom.names(), "the source copy is never resumed"
    assert restarted.closed, "the connection the engine opened itself is closed at the end"


def test_an_unreachable_destination_is_still_reported_when_it_cannot_be_reopened(monkeypatch):
    def refused(uri, timeout_s=30, **_kw):
        raise connection.LibvirtConnectionError(uri, "Connection refused")

    monkeypatch.setattr(connection, "connect", refused)
    src_host, dst_host = tm.Host(), UriHost(DST_URI)
    dom = tm.Dom("vm1", src_host)
    dom.samples = tm.hot_series(3)

    def end():
        dom.st = (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED)
        dst_host.dead = True
        raise tm.LibvirtFail("internal error: client socket is closed")

    dom.on_end = end
    dom.on_resume = [refuse_resume] * 50
    clock = tm.Clock()
    spec = MigrationSpec(mode="postcopy", postcopy_recovery_timeout_s=20, **tm.FAST)
    with pytest.raises(MigrationFailed) as info:
        tm.run(src_host, dst_host, spec, clock)
    result = info.value.result
    assert result.outcome == "postcopy_paused", result.message
    assert dom.st == (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED) and "resume" not in dom.names()
    assert "must NOT be resumed" in result.recovery
    assert not any(s.action == "reconnect" for s in result.steps)


def test_a_resumed_postcopy_does_not_leave_the_source_definition_behind():
    """Seen on the lab: after a post-copy completed by post-copy resume, libvirt kept the source's
    definition (shut off, migrated) although undefine_source was asked: starting it would run a second
    copy on the same disks. The engine undefines it once the destination runs the VM persistently."""
    src_host, dst_host = tm.Host(), tm.Host()
    dom = tm.Dom("vm1", src_host)
    dom.samples = tm.hot_series(3)
    dom.on_end = tm.postcopy_interrupted(src_host, dst_host, dom)

    def resumed():
        dom.st = (rc.SHUTOFF, rc.SHUTOFF_MIGRATED)  # the source copy stays defined
        dst_host.domains["vm1"].st = (rc.RUNNING, rc.RUNNING_MIGRATED)
        return 0

    dom.on_resume = [resumed]
    result = tm.run(src_host, dst_host, MigrationSpec(mode="postcopy", **tm.FAST), tm.Clock())
    assert result.outcome == "postcopy_recovered" and result.ok
    assert "vm1" not in src_host.domains, "the stale source definition is undefined"
    assert any(s.action == "undefine_source" and not s.error for s in result.steps), result.steps
    assert "resume" not in dom.names() and "suspend" not in dom.names()


def test_the_source_definition_is_kept_when_the_spec_says_so():
    src_host, dst_host = tm.Host(), tm.Host()
    dom = tm.Dom("vm1", src_host)
    dom.samples = tm.hot_series(3)
    dom.on_end = tm.postcopy_interrupted(src_host, dst_host, dom)

    def resumed():
        dom.st = (rc.SHUTOFF, rc.SHUTOFF_MIGRATED)
        dst_host.domains["vm1"].st = (rc.RUNNING, rc.RUNNING_MIGRATED)
        return 0

    dom.on_resume = [resumed]
    spec = MigrationSpec(mode="postcopy", undefine_source=False, **tm.FAST)
    result = tm.run(src_host, dst_host, spec, tm.Clock())
    assert result.ok and "vm1" in src_host.domains and "undefineFlags" not in dom.names()


def refuse_resume():
    raise tm.LibvirtFail("Connection refused")
