"""A fake fleet for the drain orchestrator: hosts holding VMs, migrations that move them (or fail)."""

from __future__ import annotations

import threading
import time

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError, MigrationFailed
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.backend import Backend
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import MemoryLedgers
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import MigrationResult, Step
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JobSample
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import CheckResult, Host, VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import HostCapacity


def vm(memory=512, vcpus=1, active=True, persistent=True, labels=None, dirty=1024 * 1024, local_disk=False,
       state=None, resident=None, devices=(), acpi=True, sampled=None):
    """A fake VM; `devices`: what stops its live migration (planning/unmigratable.py); `acpi`: whether the guest
    shuts down at the ACPI power button. `boot` counts its boots (a cold move starts a new one). `sampled`: the
    seconds of page sampling its dirty rate rests on (None: given, not measured)."""
    return {"memory": memory, "vcpus": vcpus, "active": active, "persistent": persistent, "labels": labels or {},
            "dirty": dirty, "local_disk": local_disk, "state": state or ("running" if active else "shutoff"),
            "job": False, "postcopy": None, "resident": resident, "devices": tuple(devices), "acpi": acpi, "boot": 1,
            "sampled": sampled}


class World:
    """Hosts by name, each with VMs; uri 'fake://NAME'."""

    def __init__(self, hosts, memory_mib=8192, cpus=8):
        self.hosts = {h: {} for h in hosts}
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.lock = threading.RLock()
        self.ledgers = MemoryLedgers()  # every host's capacity ledger, shared by all drains over this world

    @staticmethod
    def uri(name):
        return f"fake://{name}"

    def where(self, name):
        with self.lock:
            return sorted(h for h, vms in self.hosts.items() if name in vms)

    def place(self, host, name, data):
        with self.lock:
            self.hosts[host][name] = data


class FakeConn:
    def __init__(self, host):
        self.host = host
        self.closed = False


class FakeBackend(Backend):
    def __init__(self, world, migrate_delay=0.0):
        self.world = world
        self.migrate_delay = migrate_delay
        self.cordoned = False
        self.cordon_calls = []
        self.fail = {}  # vm -> outcome ("stayed" / "error" / "postcopy_paused")
        self.fail_in_libvirt = {}  # vm -> how many of its next migrations libvirt fails, the VM staying put
        self.calls = []  # (vm, from, to)
        self.concurrent = 0
        self.max_concurrent = 0
        self.max_inbound_seen = {}
        self._inbound = {}
        self.before_migrate = None  # hook(vm, from, to)
        self.unreachable = set()
        self.abort_calls = []
        self.dropped = []
        self.paused = []
        self.connects = 0
        self.fail_move = {}  # vm -> the message its next definition move fails with (nothing moves)
        self.fail_start = {}  # vm -> host -> the message a start of it there fails with
        self.shutdowns = []  # (vm, host): ACPI power button presses
        self.offline_copies = []  # (vm, from, to): local disks copied for a cold move
        self.fail_copy = {}  # vm -> the message its offline disk copy fails with (nothing left on the destination)
        self.removed_copies = []  # (vm disk path, host): copies removed again
        self.starts = []  # (vm, host)
        self._lock = threading.Lock()

    # connections
    def connect(self, uri):
        host = uri.split("://", 1)[1]
        if host in self.unreachable:
            raise HvfleetError(f"Cannot connect to {uri}: unreachable", "fix the network")
        with self._lock:
            self.connects += 1
        return FakeConn(host)

    def close(self, conn):
        if conn is not None:
            conn.closed = True

    # facts
    def list_vms(self, conn, host, measure=True):
        with self.world.lock:
            items = sorted(self.world.hosts[conn.host].items())
        out = []
        for name, d in items:
            if not d["active"] and not d["persistent"]:
                continue
            out.append(VmInfo(name, d["memory"], d["vcpus"], d["active"], d["persistent"], d["state"],
                              dict(d["labels"]), d["dirty"] if measure and d["active"] else None,
                              postcopy=d.get("postcopy") == "source", facts=d,
                              resident_mib=d.get("resident") if d["active"] else None,
                              dirty_rate_sampled_s=d.get("sampled") if measure and d["active"] else None))
        return out

    def capacity(self, conn, host, anti_affinity_labels=()):
        with self.world.lock:
            vms = [d for d in self.world.hosts[conn.host].values() if d["active"]]
        held = {}
        for d in vms:
            for key in anti_affinity_labels:
                if key in d["labels"]:
                    held.setdefault(key, set()).add(d["labels"][key])
        return HostCapacity(conn.host, self.world.memory_mib, sum(d["memory"] for d in vms), self.world.cpus,
                            sum(d["vcpus"] for d in vms), anti_affinity={k: frozenset(v) for k, v in held.items()})

    def prechecks(self, src_conn, dst_conn, vm, source, destination, settings, cache=None):
        if vm.facts["local_disk"] and settings.get("storage", "shared_only") == "shared_only":
            return [CheckResult("storage.disk", "fail", vm.name, destination.name,
                                f"disk vda (/var/lib/libvirt/images/{vm.name}.qcow2) is on local storage",
                                "use shared storage or storage: copy_all")]
        return [CheckResult("cpu.compat", "pass", vm.name, destination.name, "compatible")]

    def observe(self, conn, name, uri):
        with self.world.lock:
            d = self.world.hosts[conn.host].get(name)
        if d is None:
            return reconcile.SideView(uri=uri, present=False)
        state = {"running": reconcile.RUNNING, "paused": reconcile.PAUSED, "shutoff": reconcile.SHUTOFF}[d["state"]]
        reason = 1
        if d.get("postcopy") == "source":
            reason = reconcile.PAUSED_POSTCOPY_FAILED
        elif d.get("postcopy") == "destination":
            reason = reconcile.RUNNING_POSTCOPY_FAILED
        return reconcile.SideView(uri=uri, present=True, state=state, reason=reason, job_active=d["job"],
                                  persistent=d["persistent"])

    def migrate(self, src_conn, dst_conn, name, dest_uri, spec, source_uri, control):
        src, dst = src_conn.host, dst_conn.host
        with self._lock:
            self.calls.append((name, src, dst, spec))
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self._inbound[dst] = self._inbound.get(dst, 0) + 1
            self.max_inbound_seen[dst] = max(self.max_inbound_seen.get(dst, 0), self._inbound[dst])
        control.publish(JobSample(t=0.1, phase="precopy", memory_total=2, memory_processed=1, memory_remaining=1,
                                  iteration=1, bandwidth_bps=1.0))
        try:
            if self.before_migrate:
                self.before_migrate(name, src, dst)
            deadline = time.monotonic() + self.migrate_delay
            while time.monotonic() < deadline and not control.aborted:
                time.sleep(0.01)
            result = MigrationResult(name=name, source=source_uri, destination=dest_uri, mode_used=spec.mode,
                                     duration_s=self.migrate_delay, downtime_ms=20, bytes_sent=1000)
            outcome = self.fail.get(name)
            with self._lock:
                libvirt_fails = self.fail_in_libvirt.get(name, 0) > 0
                if libvirt_fails:
                    self.fail_in_libvirt[name] -= 1
            if libvirt_fails:
                outcome = "stayed"
                result.error = "operation failed: job 'migration out' unexpectedly failed"
                result.steps = [Step(0.5, "call_failed", "the migration call raised; looking at both hosts",
                                     result.error)]
            if control.aborted:
                outcome = "stayed"
            if outcome:
                result.outcome = outcome
                result.message = f"'{name}' did not move ({outcome})"
                if outcome == "postcopy_paused":  # as libvirt leaves it: the guest lives on the destination
                    result.recovery = "resume the post-copy"
                    with self.world.lock:
                        data = self.world.hosts[src][name]
                        data.update(state="paused", postcopy="source")
                        self.world.hosts[dst][name] = dict(data, state="running", postcopy="destination")
                raise MigrationFailed(result)
            with self.world.lock:
                data = self.world.hosts[src].pop(name)
                self.world.hosts[dst][name] = data
            result.outcome = "moved"
            result.changed = True
            result.message = f"'{name}' moved to {dest_uri}"
            return result
        finally:
            with self._lock:
                self.concurrent -= 1
                self._inbound[dst] -= 1

    def move_definition(self, src_conn, dst_conn, name):
        if name in self.fail_move:
            raise HvfleetError(self.fail_move.pop(name), "the fake refused the define")
        with self.world.lock:
            if self.world.hosts[src_conn.host][name]["active"]:  # as the real one: only a shut-off definition moves
                raise HvfleetError(f"'{name}' was started meanwhile; its definition was not moved.", "run again")
            data = self.world.hosts[src_conn.host].pop(name)
            self.world.hosts[dst_conn.host][name] = data

    def live_blockers(self, conn, vm):
        with self.world.lock:
            return tuple(self.world.hosts[conn.host][vm.name].get("devices", ()))

    def copy_disks_offline(self, src_conn, dst_conn, name, source, destination, settings):
        with self.world.lock:
            d = self.world.hosts[src_conn.host][name]
        if not d["local_disk"]:
            return []
        if name in self.fail_copy:
            raise HvfleetError(self.fail_copy.pop(name), "check the destination's pool")
        self.offline_copies.append((name, src_conn.host, dst_conn.host))
        return [(f"/var/lib/libvirt/images/{name}.qcow2", dst_conn.host)]

    def remove_offline_copies(self, conn, copies):
        self.removed_copies.extend((path, conn.host) for path, _copied_to in copies)
        return []

    def shutdown(self, conn, name):
        with self.world.lock:
            d = self.world.hosts[conn.host][name]
            self.shutdowns.append((name, conn.host))
            if d.get("acpi", True) and d["state"] == "running":
                d.update(active=False, state="shutoff")

    def start(self, conn, name):
        with self.world.lock:
            d = self.world.hosts[conn.host].get(name)
            self.starts.append((name, conn.host))
            if d is None or d["active"]:
                raise HvfleetError(f"'{name}' is not a shut-off domain on {conn.host}", "look at it")
            failure = self.fail_start.get(name, {}).get(conn.host)
            if failure:
                raise HvfleetError(failure, f"fix it on {conn.host}, then start '{name}' there")
            d.update(active=True, state="running", boot=d.get("boot", 1) + 1)

    def drop_leftover_definition(self, src_conn, dst_conn, name):
        with self.world.lock:
            here = self.world.hosts[src_conn.host].get(name)
            there = self.world.hosts[dst_conn.host].get(name)
            if here is None or here["active"]:
                raise HvfleetError(f"'{name}' on {src_conn.host} is not a shut-off leftover", "look at it")
            if there is None or not there["active"] or not there["persistent"]:
                raise HvfleetError(f"'{name}' is not running persistently on {dst_conn.host}", "look at it")
            del self.world.hosts[src_conn.host][name]
            self.dropped.append((name, src_conn.host))

    def pause(self, conn, name):
        with self.world.lock:
            d = self.world.hosts[conn.host].get(name)
            if d is None or d["state"] != "running":
                raise HvfleetError(f"'{name}' is not running on {conn.host}", "look at it")
            d["state"] = "paused"
            self.paused.append((name, conn.host))

    def abort_job(self, conn, name):
        self.abort_calls.append(name)
        with self.world.lock:
            d = self.world.hosts[conn.host].get(name)
            if d:
                d["job"] = False

    def ledger(self, conn, host, holder):
        return self.world.ledgers.store(host.name)

    def read_cordon(self, state_dir):
        return self.cordoned

    def set_cordon(self, state_dir, cordoned, reason=None, by=None):
        self.cordon_calls.append(cordoned)
        changed = self.cordoned != cordoned
        self.cordoned = cordoned
        return changed


def hosts(names=("hv2", "hv3")):
    src = Host("hv1", World.uri("hv1"), migration_address="10.0.0.1", link_mbit=1000)
    return src, [Host(n, World.uri(n), migration_address=f"10.0.0.{i + 2}", link_mbit=1000)
                 for i, n in enumerate(names)]


def fleet(**vms):
    """A three-host world with `vms` (name -> vm()) on hv1, the source."""
    world = World(["hv1", "hv2", "hv3"])
    for name, data in vms.items():
        world.place("hv1", name, data)
    return world


class FakeClock:
    """A clock that only moves when slept on: waits with a deadline (a guest's shutdown) take no real time."""

    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def make(tmp_path, world, backend=None, clock=None, **config):
    """A Drainer of hv1 onto hv2 and hv3 over `world`; returns (drainer, backend, the events it emits).
    `clock`: a FakeClock for the run's clock and sleep (default: real time)."""
    backend = backend or FakeBackend(world)
    src, dests = hosts()
    config.setdefault("progress_interval_s", 0.05)
    events = []
    timing = {"clock": clock, "sleep": clock.sleep} if clock is not None else {}
    drainer = Drainer(backend, src, dests, DrainConfig(**config), state_dir=tmp_path, progress=events.append,
                      **timing)
    return drainer, backend, events
