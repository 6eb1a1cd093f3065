# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Orchestration of one migration against small fakes of virConnect/virDomain.

The fakes only model what the orchestration depends on: the blocking migrate call
(released when the scripted job-stats samples run out, or on abort), the ladder's
calls, and the domain's (state, reason) on both hosts afterwards. Whether libvirt
really behaves so is the lab's job (tests/lab).
"""

from __future__ import annotations

import threading
import time

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (
    DomainNotFound,
    InvalidSpec,
    MigrationFailed,
    UnsafeState,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import spec as specmod
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration, migrate, plan
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec

MIB = 1024 * 1024
SRC_URI, DST_URI = "qemu:///system", "qemu+tcp://10.254.0.12/system"
FAST = {"stats_interval_s": 0.05}


class LibvirtFail(Exception):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code

    def get_error_code(self):
        return self.code


class Host:
    """A fake virConnect: named domains plus a libvirt version."""

    def __init__(self, version=9000000):
        self.domains = {}
        self.version = version

    def lookupByName(self, name):
        if name not in self.domains:
            raise LibvirtFail(f"Domain not found: no domain with matching name '{name}'", rc.VIR_ERR_NO_DOMAIN)
        return self.domains[name]

    def listAllDomains(self, _flags=0):
        return list(self.domains.values())

    def getLibVersion(self):
        return self.version


class Dom:
    """A fake virDomain with a scripted migration."""

    def __init__(self, name, host, state=(rc.RUNNING, rc.RUNNING_BOOTED), ram_mib=512):
        self._name, self.host, self.st, self.ram_kib = name, host, tuple(state), ram_mib * 1024
        host.domains[name] = self
        self.calls = []
        self.samples = []
        self.done = threading.Event()
        self.aborted = False
        self.on_end = None  # called in the migrate thread when the script ends; may raise
        self.on_resume = []  # callables, one per post-copy resume attempt
        self.job = 0
        self.completed = None
        self.uuid = f"uuid-of-{name}"  # the same domain has the same UUID on every host
        self.undefine_error = None  # raised by undefineFlags when set

    def name(self):
        return self._name

    def UUIDString(self):  # noqa: N802 - libvirt's name
        return self.uuid

    def isActive(self):  # noqa: N802
        return int(self.st[0] in (rc.RUNNING, rc.BLOCKED, rc.PAUSED))

    def undefineFlags(self, flags=0):  # noqa: N802
        self.calls.append(("undefineFlags", flags))
        if self.undefine_error is not None:
            raise self.undefine_error
        del self.host.domains[self._name]

    def state(self):
        return list(self.st)

    def info(self):
        return [self.st[0], self.ram_kib, self.ram_kib, 1, 0]

    def isPersistent(self):
        return 1

    def jobInfo(self):
        return [self.job] + [0] * 11

    def jobStats(self, flags=0):
        if flags & 1:
            if self.completed is None:
                raise LibvirtFail("no completed job")
            return dict(self.completed)
        if self.done.is_set() or not self.samples:
            self.done.set()
            return {"type": 0}
        return self.samples.pop(0)

    def migrateToURI3(self, uri, params, flags):
        self.calls.append(("migrateToURI3", uri, dict(params), flags))
        if flags & specmod.VIR_MIGRATE_POSTCOPY_RESUME:
            return self.on_resume.pop(0)()
        self.job = 2
        assert self.done.wait(10), "the fake migration was never released"
        self.job = 0
        if self.aborted:
            self.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED)
            raise LibvirtFail("operation aborted: migration out job: canceled by client")
        if self.on_end:
            return self.on_end()
        return 0

    def migrateSetMaxDowntime(self, ms, flags=0):
        self.calls.append(("migrateSetMaxDowntime", ms))

    def migrateStartPostCopy(self, flags=0):
        self.calls.append(("migrateStartPostCopy",))
        self.st = (rc.PAUSED, rc.PAUSED_POSTCOPY)

    def abortJob(self):
        self.calls.append(("abortJob",))
        self.aborted = True
        self.done.set()

    def suspend(self):
        self.calls.append(("suspend",))
        self.st = (rc.PAUSED, rc.PAUSED_USER)

    def resume(self):
        self.calls.append(("resume",))
        self.st = (rc.RUNNING, rc.RUNNING_UNPAUSED)

    def names(self):
        return [c[0] for c in self.calls]


class Clock:
    """Real time plus an offset that waits advance instantly (recovery back-off without sleeping)."""

    def __init__(self):
        self.offset = 0.0
        self.waits = []

    def __call__(self):
        return time.monotonic() + self.offset

    def wait(self, seconds):
        self.waits.append(seconds)
        self.offset += seconds


def stats(iteration, remaining, bps=50 * MIB, dirty=0):
    return {"type": 2, "memory_iteration": iteration, "memory_remaining": remaining, "memory_total": 512 * MIB,
            "memory_processed": 512 * MIB - remaining, "data_processed": 512 * MIB - remaining, "memory_bps": bps,
            "memory_dirty_rate": dirty // 4096, "memory_page_size": 4096, "time_elapsed": 1000}


def hot_series(iterations=8):
    """A guest dirtying 140 MiB/s over a 50 MiB/s link: the 256 MiB dirty set never shrinks."""
    out = [stats(1, 500 * MIB), stats(1, 300 * MIB)]
    for it in range(2, iterations + 1):
        out += [stats(it, 256 * MIB, dirty=140 * MIB), stats(it, 100 * MIB, dirty=140 * MIB)]
    return out


def migrate_calls(dom):
    return [c for c in dom.calls if c[0] == "migrateToURI3"]


def move(src_host, dst_host, dom, state=(rc.RUNNING, rc.RUNNING_MIGRATED), downtime=25):
    """What libvirt does at a successful end: the domain leaves the source and runs on the destination."""
    del src_host.domains[dom.name()]
    arrived = Dom(dom.name(), dst_host, state=state)
    arrived.completed = {"type": 3, "downtime": downtime, "data_processed": 530 * MIB, "memory_iteration": 3}
    return arrived


@pytest.fixture
def hosts():
    return Host(), Host()


def run(src_host, dst_host, spec, clock=None, name="vm1"):
    clock = clock or Clock()
    return Migration(src_host, dst_host, name, DST_URI, spec, source_uri=SRC_URI, clock=clock,
                     wait=clock.wait, settle_timeout_s=5).run()


def test_idle_precopy_moves_and_reports_figures(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = [stats(1, 400 * MIB), stats(1, 100 * MIB), stats(2, 5 * MIB)]
    dom.on_end = lambda: move(src_host, dst_host, dom) and 0
    spec = MigrationSpec(migrate_uri="tcp://10.254.0.12", bandwidth_mib=50, **FAST)
    result = run(src_host, dst_host, spec)
    assert result.outcome == "moved" and result.changed and result.ok
    assert result.mode_used == "precopy"
    assert "vm1" not in src_host.domains and dst_host.domains["vm1"].st == (rc.RUNNING, rc.RUNNING_MIGRATED)
    call = migrate_calls(dom)[0]
    assert call[:3] == ("migrateToURI3", DST_URI, {"migrate_uri": "tcp://10.254.0.12", "bandwidth": 50})
    assert call[3] == spec.flags()
    assert ("migrateSetMaxDowntime", 300) in dom.calls
    assert result.downtime_ms == 25 and result.bytes_sent == 530 * MIB
    assert result.ram_bytes == 512 * MIB and result.deadline_s == 75.0
    assert result.stats and result.stats[0]["iteration"] == 1
    assert [s.action for s in result.steps][:2] == ["set_max_downtime", "start"]  # set before the job starts
    assert result.to_dict()["destination_state"]["label"] == "running (migrated)"


def test_already_on_the_destination_changes_nothing(hosts):
    src_host, dst_host = hosts
    there = Dom("vm1", dst_host, state=(rc.RUNNING, rc.RUNNING_MIGRATED))
    result = run(src_host, dst_host, MigrationSpec(**FAST))
    assert result.outcome == "already_there" and not result.changed and result.ok
    assert there.calls == []


def test_unknown_domain_names_the_domain_uri_and_what_is_there(hosts):
    src_host, dst_host = hosts
    Dom("web01", src_host)
    Dom("db01", src_host)
    with pytest.raises(DomainNotFound) as info:
        run(src_host, dst_host, MigrationSpec(**FAST), name="web1")
    text = str(info.value)
    assert "'web1'" in text and SRC_URI in text and "db01, web01" in text
    assert all(d.calls == [] for d in src_host.domains.values())


def test_running_on_both_hosts_is_refused_without_touching_either(hosts):
    src_host, dst_host = hosts
    a, b = Dom("vm1", src_host), Dom("vm1", dst_host)
    with pytest.raises(UnsafeState, match="running on both"):
        run(src_host, dst_host, MigrationSpec(**FAST))
    assert a.calls == [] and b.calls == []


def test_spec_checked_against_the_older_libvirt_before_anything_happens(hosts):
    src_host, dst_host = Host(version=12008000), Host(version=9000000)
    dom = Dom("vm1", src_host)
    with pytest.raises(InvalidSpec, match="9.4.0"):
        run(src_host, dst_host, MigrationSpec(compression="zstd", parallel_connections=4, **FAST))
    assert dom.calls == []


def test_stalled_precopy_is_aborted_and_the_vm_stays(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = hot_series()
    with pytest.raises(MigrationFailed) as info:
        run(src_host, dst_host, MigrationSpec(on_timeout="abort", **FAST))
    result = info.value.result
    assert result.outcome == "stayed" and not result.changed and not result.ok
    assert "abortJob" in dom.names() and "migrateStartPostCopy" not in dom.names()
    assert dom.st == (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED) and "vm1" not in dst_host.domains
    abort = [s for s in result.steps if s.action == "abort"][0]
    assert "stalled" in abort.reason
    assert "still on qemu:///system" in result.message and "stalled" in result.message
    assert result.iterations >= 5


def test_hot_vm_with_postcopy_after_precopy_moves_in_postcopy(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = hot_series()
    dom.on_end = lambda: move(src_host, dst_host, dom) and 0
    result = run(src_host, dst_host, MigrationSpec(mode="postcopy_after_precopy", **FAST))
    assert result.outcome == "moved" and result.mode_used == "postcopy"
    assert "migrateStartPostCopy" in dom.names() and "abortJob" not in dom.names()
    assert migrate_calls(dom)[0][3] & specmod.VIR_MIGRATE_POSTCOPY


def test_failed_call_is_judged_by_where_the_vm_is_not_by_the_exception(hosts):
    """The call raised late (e.g. in the confirm phase) but the VM runs on the destination: moved."""
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = [stats(1, 100 * MIB)]

    def end():
        move(src_host, dst_host, dom)
        raise LibvirtFail("internal error: client socket is closed")

    dom.on_end = end
    result = run(src_host, dst_host, MigrationSpec(**FAST))
    assert result.outcome == "moved" and result.error == "internal error: client socket is closed"


def test_destination_down_during_precopy_leaves_the_vm_running_on_the_source(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = [stats(1, 400 * MIB)]

    def end():
        dom.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED)
        raise LibvirtFail("Cannot recv data: Connection reset by peer")

    dom.on_end = end
    with pytest.raises(MigrationFailed) as info:
        run(src_host, dst_host, MigrationSpec(**FAST))
    result = info.value.result
    assert result.outcome == "stayed" and "Connection reset by peer" in result.message
    assert "resume" not in dom.names()


def postcopy_interrupted(src_host, dst_host, dom):
    """lab-facts: link cut in post-copy -> source paused/post-copy failed, destination running/post-copy."""
    def end():
        dom.st = (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED)
        Dom("vm1", dst_host, state=(rc.RUNNING, rc.RUNNING_POSTCOPY))
        raise LibvirtFail("internal error: client socket is closed")
    return end


def test_interrupted_postcopy_is_resumed_after_a_refusal(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = hot_series(3)
    dom.on_end = postcopy_interrupted(src_host, dst_host, dom)

    def refused():
        raise LibvirtFail("operation failed: QEMU reports migration is still running")

    def accepted():
        move(src_host, dst_host, dom)
        return 0

    dom.on_resume = [refused, accepted]
    clock = Clock()
    result = run(src_host, dst_host, MigrationSpec(mode="postcopy", migrate_uri="tcp://10.254.0.12", **FAST), clock)
    assert result.outcome == "postcopy_recovered" and result.ok
    resumes = [c for c in dom.calls if c[0] == "migrateToURI3" and c[3] & specmod.VIR_MIGRATE_POSTCOPY_RESUME]
    assert len(resumes) == 2
    assert resumes[0][2] == {"migrate_uri": "tcp://10.254.0.12"}
    assert "resume" not in dom.names(), "the source copy must never be resumed after post-copy started"
    assert clock.waits == [1.0]


def test_unrecoverable_postcopy_leaves_it_paused_and_says_what_to_run(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = hot_series(3)
    dom.on_end = postcopy_interrupted(src_host, dst_host, dom)

    def refused():
        raise LibvirtFail("unable to connect to server at '10.254.0.12:49152': No route to host")

    dom.on_resume = [refused] * 50
    clock = Clock()
    spec = MigrationSpec(mode="postcopy", postcopy_recovery_timeout_s=40, migrate_uri="tcp://10.254.0.12", **FAST)
    with pytest.raises(MigrationFailed) as info:
        run(src_host, dst_host, spec, clock)
    result = info.value.result
    assert result.outcome == "postcopy_paused" and result.changed
    assert dom.st == (rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED), "left paused, not resumed"
    assert "resume" not in dom.names() and "abortJob" not in dom.names()
    assert "must NOT be resumed" in result.recovery
    assert f"--postcopy-resume --migrateuri tcp://10.254.0.12 vm1 {DST_URI}" in result.recovery
    assert sum(clock.waits) == pytest.approx(40, abs=0.5)
    assert str(info.value).startswith("'vm1' is stuck in an interrupted post-copy")
    resumes = [s for s in result.steps if s.action == "postcopy_resume"]
    assert len(resumes) == 1 and "attempts, the last at" in resumes[0].reason, "the same refusal is one step"


def test_rerun_after_an_interrupted_postcopy_resumes_it(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host, state=(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED))
    Dom("vm1", dst_host, state=(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED))
    dom.on_resume = [lambda: move(src_host, dst_host, dom) and 0]
    result = run(src_host, dst_host, MigrationSpec(mode="postcopy", **FAST))
    assert result.outcome in ("moved", "postcopy_recovered") and result.changed
    assert [c[0] for c in dom.calls] == ["migrateToURI3"]
    assert dom.calls[0][3] & specmod.VIR_MIGRATE_POSTCOPY_RESUME


def test_suspend_on_timeout_completes_and_resumes_on_the_destination(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = hot_series()
    arrived = {}

    def end():
        arrived["dom"] = move(src_host, dst_host, dom, state=(rc.PAUSED, rc.PAUSED_USER))
        return 0

    dom.on_end = end
    result = run(src_host, dst_host, MigrationSpec(on_timeout="suspend", **FAST))
    assert result.outcome == "moved" and result.suspended
    assert "suspend" in dom.names()
    assert arrived["dom"].calls == [("resume",)]
    assert arrived["dom"].st[0] == rc.RUNNING


def test_suspend_then_failure_resumes_the_source(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = hot_series()

    def end():
        raise LibvirtFail("Cannot recv data: Connection reset by peer")

    dom.on_end = end
    with pytest.raises(MigrationFailed) as info:
        run(src_host, dst_host, MigrationSpec(on_timeout="suspend", **FAST))
    assert info.value.result.outcome == "stayed"
    assert dom.names()[-1] == "resume" and dom.st[0] == rc.RUNNING


def test_plan_reports_without_changing_anything(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    spec = MigrationSpec(mode="postcopy_after_precopy", migrate_uri="tcp://10.254.0.12", **FAST)
    result = plan(src_host, dst_host, "vm1", DST_URI, spec, source_uri=SRC_URI)
    assert result["action"] == "migrate" and result["changed"]
    assert result["flags"] == spec.flags() and result["params"] == {"migrate_uri": "tcp://10.254.0.12"}
    assert result["deadline_s"] == 75.0 and "postcopy_after_precopy" in result["message"]
    assert dom.calls == []
    Dom("vm2", dst_host)
    there = plan(src_host, dst_host, "vm2", DST_URI, spec, source_uri=SRC_URI)
    assert there["action"] == "already_there" and not there["changed"]


def test_migrate_function_raises_migration_failed_with_the_result(hosts):
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = [stats(1, 400 * MIB)]

    def end():
        dom.st = (rc.RUNNING, rc.RUNNING_MIGRATION_CANCELED)
        raise LibvirtFail("Cannot get interface MTU on 'br-vm': No such device")

    dom.on_end = end
    with pytest.raises(MigrationFailed) as info:
        migrate(src_host, dst_host, "vm1", DST_URI, MigrationSpec(**FAST), source_uri=SRC_URI)
    assert "br-vm" in str(info.value)
    assert info.value.result.to_dict()["outcome"] == "stayed"


def test_job_stats_become_samples_in_bytes_and_seconds():
    from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import sample_from_stats

    raw = stats(3, 64 * MIB, bps=40 * MIB, dirty=80 * MIB)
    raw.update({"time_elapsed": 4500, "auto_converge_throttle": 30})
    sample = sample_from_stats(raw, 4.5, state=(rc.PAUSED, rc.PAUSED_POSTCOPY))
    assert sample.phase == "postcopy" and sample.active
    assert sample.dirty_rate_bps == 80 * MIB and sample.bandwidth_bps == 40 * MIB
    assert sample.time_elapsed_s == 4.5 and sample.throttle_pct == 30 and sample.iteration == 3
    assert sample_from_stats(raw, 1, state=(rc.RUNNING, 1)).phase == "precopy"
    assert sample_from_stats(raw, 1, state=(rc.PAUSED, rc.PAUSED_POSTCOPY_FAILED)).phase == "postcopy_failed"
    assert sample_from_stats({"type": 3, "downtime": 19}, 1).downtime_ms == 19
    assert not sample_from_stats({"type": 0}, 1).active


def test_initial_max_downtime_is_set_before_the_job_starts(hosts):
    """Set while no job runs (libvirt 9.0 keeps it for the migration): no extra call during a short one."""
    src_host, dst_host = hosts
    dom = Dom("vm1", src_host)
    dom.samples = [stats(1, 400 * MIB), stats(2, 5 * MIB)]
    dom.on_end = lambda: move(src_host, dst_host, dom) and 0
    result = run(src_host, dst_host, MigrationSpec(migrate_uri="tcp://10.254.0.12", max_downtime_ms=450, **FAST))
    assert result.outcome == "moved"
    assert dom.calls[0] == ("migrateSetMaxDowntime", 450) and dom.calls[1][0] == "migrateToURI3"
    assert dom.names().count("migrateSetMaxDowntime") == 1


class NoJobNoDowntime(Dom):
    """An older libvirt: migrateSetMaxDowntime refused while the domain is not being migrated."""

    def migrateSetMaxDowntime(self, ms, flags=0):
        if not self.job:
            raise LibvirtFail("Requested operation is not valid: domain is not being migrated")
        super().migrateSetMaxDowntime(ms, flags)


def test_initial_max_downtime_falls_back_to_the_first_sample(hosts):
    src_host, dst_host = hosts
    dom = NoJobNoDowntime("vm1", src_host)
    dom.samples = [stats(1, 400 * MIB), stats(1, 100 * MIB), stats(2, 5 * MIB)]
    dom.on_end = lambda: move(src_host, dst_host, dom) and 0
    result = run(src_host, dst_host, MigrationSpec(migrate_uri="tcp://10.254.0.12", **FAST))
    assert result.outcome == "moved"
    assert ("migrateSetMaxDowntime", 300) in dom.calls
    steps = [(s.action, bool(s.error)) for s in result.steps]
    assert steps[:3] == [("set_max_downtime", True), ("start", False), ("set_max_downtime", False)]


class AutostartDom(Dom):
    """A domain whose definition carries libvirt's autostart mark (which a migration does not carry)."""

    def __init__(self, *args, autostart=0, refuse=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mark, self.refuse = autostart, refuse

    def autostart(self):
        return self.mark

    def setAutostart(self, value):  # noqa: N802 - libvirt's name
        if self.refuse is not None:
            raise self.refuse
        self.mark = value


@pytest.mark.parametrize("marked", [0, 1])
def test_the_autostart_mark_follows_the_vm(hosts, marked):
    src_host, dst_host = hosts
    dom = AutostartDom("vm1", src_host, autostart=marked)
    dom.samples = [stats(1, 5 * MIB)]
    dom.on_end = lambda: AutostartDom("vm1", dst_host, state=(rc.RUNNING, rc.RUNNING_MIGRATED)) \
        and src_host.domains.pop("vm1") and 0
    result = run(src_host, dst_host, MigrationSpec(**FAST))
    assert result.outcome == "moved"
    assert dst_host.domains["vm1"].mark == marked
    assert ("autostart" in [s.action for s in result.steps]) == bool(marked)


def test_an_autostart_mark_that_cannot_be_set_is_named_and_the_move_stands(hosts):
    src_host, dst_host = hosts
    dom = AutostartDom("vm1", src_host, autostart=1)
    dom.samples = [stats(1, 5 * MIB)]
    dom.on_end = lambda: AutostartDom("vm1", dst_host, state=(rc.RUNNING, rc.RUNNING_MIGRATED),
                                      refuse=LibvirtFail("operation failed")) and src_host.domains.pop("vm1") and 0
    result = run(src_host, dst_host, MigrationSpec(**FAST))
    assert result.outcome == "moved" and result.ok
    assert "autostart mark could not be set" in result.message
    assert "virsh -c" in result.recovery and "autostart vm1" in result.recovery
