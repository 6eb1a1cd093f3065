# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""MigrationControl: a drain cancels one migration at any moment and changes its bandwidth share.

The caller's side never blocks and never calls libvirt in the caller's thread (it may be a signal
handler); the engine's loop carries the requests out, retrying what libvirt refuses. Before these
tests the drain attached its abort to the engine only once the job ran: an abort during the engine's
preflight called abortJob on a domain without a job, libvirt refused, and the migration started
anyway (repro r10_cancel_race.py); a bandwidth change before the job existed was dropped or
overwritten by the start parameters (r5_budget.py).
"""

from __future__ import annotations

import threading
import time

import pytest
import test_migration as tm  # the engine's fakes (same directory; prepend import mode)
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec, MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.control import MigrationControl
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

MIB = tm.MIB


class LateJobDom(tm.Dom):
    """libvirt refuses abortJob until the migration job exists, which takes `prepare_s` after the call."""

    def __init__(self, name, host, prepare_s=0.3):
        super().__init__(name, host)
        self.prepare_s = prepare_s
        self.before_call = None  # run in the migrate thread right before the job exists
        self.threads = set()

    def _record_thread(self):
        self.threads.add(threading.current_thread().name)

    def abortJob(self):  # noqa: N802 - libvirt's name
        self._record_thread()
        if self.job == 0:
            self.calls.append(("abortJob-refused",))
            raise tm.LibvirtFail("Requested operation is not valid: no job is active on the domain")
        return super().abortJob()

    def migrateToURI3(self, uri, params, flags):  # noqa: N802
        if self.before_call:
            self.before_call()
        time.sleep(self.prepare_s)  # libvirt prepares the destination; no job to abort yet
        return super().migrateToURI3(uri, params, flags)

    def migrateSetMaxSpeed(self, mib, flags=0):  # noqa: N802
        self._record_thread()
        self.calls.append(("migrateSetMaxSpeed", mib, self.job))


def run(src_host, dst_host, spec, control, dom_name="vm1"):
    clock = tm.Clock()
    return Migration(src_host, dst_host, dom_name, tm.DST_URI, spec, source_uri=tm.SRC_URI, clock=clock,
                     wait=clock.wait, settle_timeout_s=5, control=control).run()


def test_an_abort_during_the_engines_preflight_means_the_migration_never_starts():
    """r10: Ctrl-C lands while the engine still prepares (here: while it presets max downtime)."""
    control = MigrationControl()
    src_host, dst_host = tm.Host(), tm.Host()

    class AbortWhilePreparing(LateJobDom):
        def migrateSetMaxDowntime(self, ms, flags=0):  # noqa: N802
            super().migrateSetMaxDowntime(ms, flags)
            assert control.abort() is True

    dom = AbortWhilePreparing("vm1", src_host)
    dom.samples = [tm.stats(1, 400 * MIB), tm.stats(2, 5 * MIB)]
    dom.on_end = lambda: tm.move(src_host, dst_host, dom) and 0
    with pytest.raises(MigrationFailed) as failed:
        LibvirtBackend().migrate(src_host, dst_host, "vm1", tm.DST_URI, MigrationSpec(**tm.FAST), tm.SRC_URI, control)
    result = failed.value.result
    assert result.outcome == "stayed" and not result.changed
    assert "cancelled before the migration started" in result.message, result.message
    assert "migrateToURI3" not in dom.names(), "a cancelled migration must not start"
    assert "vm1" in src_host.domains and "vm1" not in dst_host.domains
    assert control.aborted


def test_an_abort_before_the_job_exists_is_retried_until_libvirt_takes_it():
    """The abort arrives after the call was made but before libvirt has a job: the first abortJob is
    refused ("no job is active"); the engine sends it again at the next poll and the VM stays."""
    control = MigrationControl()
    src_host, dst_host = tm.Host(), tm.Host()
    dom = LateJobDom("vm1", src_host, prepare_s=0.3)
    dom.before_call = control.abort
    dom.samples = [tm.stats(1, 400 * MIB)] * 200
    with pytest.raises(MigrationFailed) as failed:
        run(src_host, dst_host, MigrationSpec(**tm.FAST), control)
    result = failed.value.result
    names = dom.names()
    assert "abortJob-refused" in names and "abortJob" in names, names
    assert names.index("abortJob-refused") < names.index("abortJob")
    assert result.outcome == "stayed" and "vm1" not in dst_host.domains
    abort = [s for s in result.steps if s.action == "abort" and not s.error]
    assert abort and "cancelled by the caller" in abort[0].reason and "accepted after" in abort[0].reason, result.steps
    assert dom.st[0] == rc.RUNNING


def test_abort_never_blocks_and_never_calls_libvirt_in_the_callers_thread():
    """The engine's abortJob hangs in libvirt; the caller (think: a signal handler) is not held up."""
    control = MigrationControl()
    src_host, dst_host = tm.Host(), tm.Host()
    release = threading.Event()

    class HangingAbort(LateJobDom):
        def abortJob(self):  # noqa: N802
            self._record_thread()
            release.wait(10)
            return super().abortJob()

    dom = HangingAbort("vm1", src_host, prepare_s=0.0)
    dom.samples = [tm.stats(1, 400 * MIB)] * 400
    outcome = []

    def migrate():
        try:
            run(src_host, dst_host, MigrationSpec(**tm.FAST), control)
        except MigrationFailed as exc:
            outcome.append(exc.result.outcome)

    engine = threading.Thread(target=migrate, daemon=True)
    engine.start()
    deadline = time.monotonic() + 5
    while control.sample() is None:  # the engine publishes the job's progress once it runs
        assert time.monotonic() < deadline, "no progress published"
        time.sleep(0.01)
    assert control.sample()["phase"] == "precopy" and control.sample()["percent"] == pytest.approx(21.9, abs=0.1)
    started = time.monotonic()
    assert control.abort() is True
    assert time.monotonic() - started < 0.05
    deadline = time.monotonic() + 5
    while not dom.threads:
        assert time.monotonic() < deadline, "the engine never sent the abort"
        time.sleep(0.01)
    assert threading.current_thread().name not in dom.threads, dom.threads
    release.set()
    engine.join(10)
    assert not engine.is_alive() and outcome == ["stayed"]


def test_an_abort_is_not_applied_once_the_migration_is_in_postcopy():
    control = MigrationControl()
    src_host, dst_host = tm.Host(), tm.Host()
    dom = tm.Dom("vm1", src_host)
    dom.samples = tm.hot_series(6)
    answers = []
    switch = dom.migrateStartPostCopy

    def switching(flags=0):
        switch(flags)
        answers.append(control.abort())  # Ctrl-C while libvirt switches: too late for an abort

    dom.migrateStartPostCopy = switching
    dom.on_end = lambda: tm.move(src_host, dst_host, dom) and 0
    result = run(src_host, dst_host, MigrationSpec(mode="postcopy", **tm.FAST), control)
    answers.append(control.abort())
    assert result.outcome == "moved" and result.mode_used == "postcopy"
    assert answers == [False, False], "abort() says it is not applied during (or after) the switch"
    assert "abortJob" not in dom.names()
    assert control.postcopy and control.aborted
    assert any(s.action == "abort_not_applied" for s in result.steps), result.steps


def test_abort_and_the_switch_to_postcopy_exclude_each_other():
    control = MigrationControl()
    assert control.begin_postcopy_switch() is True
    assert control.abort() is False, "a switch under way: the abort may not be applied"
    control.end_postcopy_switch(False)  # libvirt refused the switch: the request still stands
    assert control.aborted and not control.postcopy
    assert control.begin_postcopy_switch() is False, "after an abort, no switch to post-copy"
    other = MigrationControl()
    assert other.abort() is True
    assert other.begin_postcopy_switch() is False


def test_a_bandwidth_share_set_before_the_start_goes_into_the_start_parameters():
    control = MigrationControl()
    control.set_bandwidth(40)
    control.set_bandwidth(25)  # rebalanced before the job existed: the latest value counts
    src_host, dst_host = tm.Host(), tm.Host()
    dom = LateJobDom("vm1", src_host, prepare_s=0.0)
    dom.samples = [tm.stats(1, 400 * MIB), tm.stats(2, 5 * MIB)]
    dom.on_end = lambda: tm.move(src_host, dst_host, dom) and 0
    result = run(src_host, dst_host, MigrationSpec(bandwidth_mib=100, **tm.FAST), control)
    assert result.outcome == "moved"
    assert tm.migrate_calls(dom)[0][2]["bandwidth"] == 25
    assert "migrateSetMaxSpeed" not in dom.names(), "nothing changed after the start: no extra call"


def test_a_bandwidth_change_is_applied_once_qemu_sends_and_again_at_each_change():
    """r5: a rebalance while libvirt still prepares is not lost, nor applied before the job sends."""
    control = MigrationControl()
    src_host, dst_host = tm.Host(), tm.Host()
    dom = LateJobDom("vm1", src_host, prepare_s=0.0)
    preparing = {"type": 2, "memory_iteration": 0, "memory_remaining": 512 * MIB, "memory_total": 512 * MIB}
    dom.samples = [preparing] * 4 + [tm.stats(1, 450 * MIB)] * 6 + [tm.stats(1, 300 * MIB)] * 6 + [
        tm.stats(2, 5 * MIB)]
    dom.on_end = lambda: tm.move(src_host, dst_host, dom) and 0
    dom.before_call = lambda: control.set_bandwidth(50)  # changed while libvirt prepares
    changes = iter([30])

    original = dom.jobStats

    def job_stats(flags=0):
        stats = original(flags)
        if stats.get("memory_remaining") == 300 * MIB:
            value = next(changes, None)
            if value:
                control.set_bandwidth(value)
        return stats

    dom.jobStats = job_stats
    result = run(src_host, dst_host, MigrationSpec(bandwidth_mib=100, **tm.FAST), control)
    assert result.outcome == "moved"
    speeds = [c for c in dom.calls if c[0] == "migrateSetMaxSpeed"]
    assert [c[1] for c in speeds] == [50, 30], speeds
    assert all(job for _name, _mib, job in speeds), "applied only once the job exists"
    assert [s.reason for s in result.steps if s.action == "set_bandwidth"] == [
        "the bandwidth share changed to 50 MiB/s", "the bandwidth share changed to 30 MiB/s"]


def test_sample_is_none_before_the_first_figures_and_set_bandwidth_checks_its_input():
    control = MigrationControl()
    assert control.sample() is None and control.bandwidth_mib is None
    for bad in (0, -5, 1.5, "50", True):
        with pytest.raises(InvalidSpec):
            control.set_bandwidth(bad)
    assert control.bandwidth_mib is None
