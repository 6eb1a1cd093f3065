# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
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
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import migration
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
    monkeypatch.setattr(migration, "ACTION_TIMEOUT_S", 0.3)


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
