# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A source daemon stuck in a post-copy resume must not hold the engine past its recovery deadline.

Seen on the lab (libvirt 9.0, once in a full run): after a post-copy was interrupted, the resume call
never returned and the source daemon kept the migration job; the engine's later look at the domain
(job info) blocked too, and migrate() ran on long after its 60 s recovery deadline. Every call the
engine makes after a failure is now bounded; the VM is left as it is and the result says so.
"""

from __future__ import annotations

import threading
import time

import pytest
import test_migration as tm  # the engine's fakes (same directory; prepend import mode)
from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import core, migration, watch
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec


class StuckDom(tm.Dom):
    """Once the resume call is in, every call that needs the domain's job blocks (until released)."""

    def __init__(self, name, host):
        super().__init__(name, host)
        self.stuck = threading.Event()
        self.release = threading.Event()

    def _block_if_stuck(self):
        if self.stuck.is_set():
            self.release.wait()

    def jobInfo(self):  # noqa: N802 - libvirt's name
        self._block_if_stuck()
        return super().jobInfo()

    def jobStats(self, flags=0):  # noqa: N802
        self._block_if_stuck()
        return super().jobStats(flags)

    def suspend(self):
        self._block_if_stuck()
        return super().suspend()


@pytest.fixture
def short_bounds(monkeypatch):
    monkeypatch.setattr(rc, "OBSERVE_CALL_TIMEOUT_S", 0.3)
    monkeypatch.setattr(core, "ACTION_TIMEOUT_S", 0.3)


def test_hung_resume_and_stuck_daemon_end_within_the_recovery_deadline(short_bounds):
    src_host, dst_host = tm.Host(), tm.Host()
    dom = StuckDom("vm1", src_host)
    dom.samples = tm.hot_series(3)
    arrived = None

    def interrupted():
        nonlocal arrived
        dom.st = (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED)
        arrived = tm.Dom("vm1", dst_host, state=(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED))
        raise tm.LibvirtFail("operation failed: migration out job: post-copy failed")

    def hangs():
        arrived.st = (rc.RUNNING, rc.RUNNING_POSTCOPY)  # the destination runs again, the call never ends
        dom.job = 2
        dom.stuck.set()
        dom.release.wait()

    dom.on_end = interrupted
    dom.on_resume = [hangs]
    spec = MigrationSpec(mode="postcopy", postcopy_recovery_timeout_s=2, **tm.FAST)
    started = time.monotonic()
    try:
        with pytest.raises(MigrationFailed) as failed:
            tm.run(src_host, dst_host, spec)
        took = time.monotonic() - started
    finally:
        dom.release.set()
    result = failed.value.result
    assert took < 15, f"the engine took {took:.1f} s with a 2 s recovery deadline"
    assert result.outcome == migration.POSTCOPY_PAUSED, result.message
    assert any("still running at the recovery deadline" in s.reason for s in result.steps), result.steps
    assert result.source_state["job_active"], "a job query that never answers means a job holds the domain"
    assert "must NOT be resumed" in result.recovery
    assert "resume" not in dom.names(), "the stale source copy must never be resumed"


# ---- a call that never returns, at each call the engine makes after a post-copy failed ------------


class HangingDom(tm.Dom):
    """A source domain whose post-copy fails; from then on the calls named in `hang` never return
    (until the test releases them), like a daemon waiting for a QEMU that does not answer."""

    def __init__(self, name, host, hang, armed, release):
        super().__init__(name, host)
        self.hang, self.armed, self.release = hang, armed, release

    def _maybe_hang(self, what):
        if what in self.hang and self.armed.is_set():
            self.release.wait()

    def state(self):
        self._maybe_hang("state")
        return super().state()

    def jobInfo(self):  # noqa: N802 - libvirt's names
        self._maybe_hang("jobInfo")
        return super().jobInfo()

    def isPersistent(self):  # noqa: N802
        self._maybe_hang("isPersistent")
        return super().isPersistent()

    def jobStats(self, flags=0):  # noqa: N802
        self._maybe_hang("jobStats")
        if self.armed.is_set() and not flags & 1:  # the source's job stays, in post-copy failed
            return tm.stats(3, 50 * tm.MIB)
        return super().jobStats(flags)

    def suspend(self):
        self._maybe_hang("suspend")
        return super().suspend()

    def undefineFlags(self, flags=0):  # noqa: N802
        self._maybe_hang("undefineFlags")
        return super().undefineFlags(flags)


class HangingHost(tm.Host):
    def __init__(self, hang, armed, release):
        super().__init__()
        self.hang, self.armed, self.release = hang, armed, release

    def lookupByName(self, name):  # noqa: N802
        if "lookupByName" in self.hang and self.armed.is_set():
            self.release.wait()
        return super().lookupByName(name)

    def getURI(self):  # noqa: N802
        return tm.SRC_URI


class CallConnection:
    """The second connection the engine opens for the blocking call; its close never returns."""

    def __init__(self, host, hang, release):
        self.host, self.hang, self.release, self.closes = host, hang, release, 0

    def lookupByName(self, name):  # noqa: N802
        return self.host.lookupByName(name)

    def close(self):
        self.closes += 1
        if "close" in self.hang:
            self.release.wait()


@pytest.fixture
def tiny_bounds(monkeypatch):
    monkeypatch.setattr(rc, "OBSERVE_CALL_TIMEOUT_S", 0.3)
    monkeypatch.setattr(core, "ACTION_TIMEOUT_S", 0.3)
    monkeypatch.setattr(core, "CLOSE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(watch, "SAMPLE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(watch, "POLL_CALL_TIMEOUT_S", 0.3)
    monkeypatch.setattr(watch, "POSTCOPY_FAILED_GRACE_S", 0.5)
    monkeypatch.setattr(watch, "POSTCOPY_STALL_S", 1.0)


CASES = {
    # what hangs: (the outcomes that name where the VM is, a step that must show how it ended)
    "migrate call": ({"migrate"}, ("postcopy_paused",), "call_abandoned"),
    "resume call": ({"resume"}, ("postcopy_paused",), "postcopy_resume"),
    "job stats": ({"jobStats", "migrate"}, ("postcopy_paused",), "call_abandoned"),
    "job info": ({"jobInfo", "migrate"}, ("postcopy_paused",), "call_abandoned"),
    "state": ({"state", "migrate"}, ("postcopy_paused",), "call_abandoned"),
    "persistence": ({"isPersistent", "migrate"}, ("postcopy_paused",), "call_abandoned"),
    "lookup": ({"lookupByName", "migrate"}, ("postcopy_paused",), "call_abandoned"),
    "suspend of a running source": ({"suspend"}, ("split_brain_paused",), "pause_source"),
    "leftover undefine and completed stats": ({"undefineFlags", "jobStats"}, ("postcopy_recovered",),
                                              "undefine_source"),
    "closing the call connection": ({"close", "resume"}, ("postcopy_paused",), "postcopy_resume"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_call_that_never_returns_after_a_postcopy_failure_does_not_hold_the_engine(
        case, tiny_bounds, monkeypatch):
    hang, outcomes, last_step = CASES[case]
    armed, release = threading.Event(), threading.Event()
    src_host, dst_host = HangingHost(hang, armed, release), tm.Host()
    dom = HangingDom("vm1", src_host, hang, armed, release)
    dom.samples = tm.hot_series(3)
    call_conn = CallConnection(src_host, hang, release)
    monkeypatch.setattr(connection, "connect", lambda uri, **_kw: call_conn)

    def postcopy_fails():
        source_runs = case.startswith("suspend")
        dom.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED) if source_runs else (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED)
        dom.job = 0 if source_runs else 2
        tm.Dom("vm1", dst_host, state=(rc.RUNNING, rc.RUNNING_POSTCOPY_FAILED))
        armed.set()
        if "migrate" in hang:
            release.wait()  # the source daemon waits for the destination for good
        raise tm.LibvirtFail("operation failed: job 'migration in' failed in post-copy phase")

    def resume():
        if "resume" in hang:
            release.wait()
        if case.startswith("leftover"):
            dom.st, dom.job = (rc.SHUTOFF, rc.SHUTOFF_MIGRATED), 0
            dst_host.domains["vm1"].st = (rc.RUNNING, rc.RUNNING_MIGRATED)
            return 0
        raise tm.LibvirtFail("Requested operation is not valid: another migration job is already running")

    dom.on_end = postcopy_fails
    dom.on_resume = [resume] * 50
    spec = MigrationSpec(mode="postcopy", postcopy_recovery_timeout_s=2, **tm.FAST)
    started = time.monotonic()
    try:
        try:
            result = tm.run(src_host, dst_host, spec)
        except MigrationFailed as exc:
            result = exc.result
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 10, f"{case}: migrate() took {took:.1f} s with a 2 s recovery deadline"
    assert result.outcome in outcomes, f"{case}: {result.outcome}: {result.message}"
    assert any(s.action == last_step for s in result.steps), [(s.action, s.reason, s.error) for s in result.steps]
    assert "resume" not in dom.names(), "the stale source copy is never resumed"
    if not result.ok:
        assert result.recovery, "a failed result says what to do"
    if case.startswith("leftover"):
        assert f"still be defined on {tm.SRC_URI}" in result.message, result.message
        assert "undefine vm1" in result.recovery, result.recovery
    if "close" in hang:
        assert call_conn.closes == 1
