"""What planning a drain costs at fleet scale: time and live calls for a grid of VMs x destinations.

The drain plan reads each destination (connection, facts, capacity ledger) and runs the prerequisite checks
(preflight.run_prechecks, the real code) of each VM against its candidate destinations. Here the libvirt
connections and the reachability probe are fakes that wait a fixed time per call, as a remote libvirt over a
LAN does; everything else is the product's code (planner.plan_drain over the test suite's FakeBackend).

- "plain": LiveChecks(workers=1, cache=False, prefilter=False) - every VM against every destination, one call
  after another, every live call made afresh. Its time is modelled (the sum of the per-call latencies, plus the
  measured computing time), not waited: it would take minutes to hours. `--validate` runs one small grid point
  of it for real beside its model.
- "fast": the default LiveChecks (8 threads, a CheckCache per plan, the cheap filter, checks on demand), run
  for real: its calls sleep their latency.

Assumed latencies (per call, stated below as LATENCY; change them with --latency name=seconds): the TCP probe
of a migration address answers in 1 ms when the port is open or refused, and hits its 2 s timeout on a
destination whose firewall drops it; compareHypervisorCPU 10 ms (libvirtd computes the domain capabilities);
a storage pool refresh 20 ms; a lookup or XML read 0.5 ms; reading a destination's facts 30 ms (node info,
memory, capabilities, domain list); its capacity ledger 2 ms; opening a connection 5 ms.

The fleet: destinations of 512 GiB / 64 CPUs, 40-80 % used, 3 % cordoned, 2 in 500 (at least one) behind a
firewall that drops the probe, a fifth of them of an older CPU generation (one VM CPU model in four is
incompatible there); VMs of 2-32 GiB with 1-3 disks on an NFS share every destination has as a netfs pool,
one in ten with a local disk and a shared_only policy (fails everywhere), one in ten pinned to a rack, one in
five in an anti-affinity group. It prints figures and asserts nothing.
Run: .venv/bin/python benchmarks/planning_cost.py [--validate]; with the lab up (tests/lab/lab.py up), `--lab`
measures a few of these calls there and plans its hv1 onto hv2 and hv3 both ways (libvirt, no dirty rates).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import random
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))
sys.path.insert(0, os.path.join(ROOT, "tests", "unit", "module_utils"))

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig, DrainResult  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.planner import LiveChecks, plan_drain  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import preflight  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import parse_domain_xml  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import HostFacts  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import CheckResult, Host  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (  # noqa: E402
    PlacementConfig,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import PASS, WARN  # noqa: E402
from drain_fakes import FakeBackend, World, vm  # noqa: E402

LATENCY = {"probe_open": 0.001, "probe_timeout": 2.0, "cpu_compare": 0.010, "pool_refresh": 0.020, "rpc": 0.0005,
           "host_facts": 0.030, "ledger": 0.002, "connect": 0.005}
GRID_VMS = (20, 50, 100)
GRID_DESTS = (50, 200, 500)
PLAIN = LiveChecks(workers=1, cache=False, prefilter=False, on_demand=False)
FAST = LiveChecks()
CPU_MODELS = ("Skylake-Server", "Cascadelake-Server", "Icelake-Server", "EPYC-Rome")
MIB_GIB = 1024
POLICIES = [
    {"name": "default", "default": True, "settings": {"mode": "auto"}},
    {"name": "rack", "selector": {"labels": {"placement": "rack"}}, "settings": {"destinations": {"pin": ["r01-*"]}}},
]


class Calls:
    """The live calls made, by kind, and the time they take: waited for real, or only added up (modelled)."""

    def __init__(self, latency: dict, modelled: bool) -> None:
        self.latency, self.modelled = latency, modelled
        self.counts: collections.Counter = collections.Counter()
        self.waited = 0.0
        self._lock = threading.Lock()

    def make(self, kind: str, seconds: float | None = None) -> None:
        seconds = self.latency[kind] if seconds is None else seconds
        with self._lock:
            self.counts[kind] += 1
            self.waited += seconds
        if not self.modelled:
            time.sleep(seconds)


class NotFound(Exception):
    pass


class Pool:
    def __init__(self, calls, name, ptype, target, files):
        self.calls, self._name, self.ptype, self.target, self.files = calls, name, ptype, target, files

    def name(self):
        return self._name

    def XMLDesc(self, _flags=0):
        self.calls.make("rpc")
        return f"<pool type='{self.ptype}'><name>{self._name}</name></pool>"

    def isActive(self):
        self.calls.make("rpc")
        return True

    def refresh(self, _flags=0):
        self.calls.make("pool_refresh")


class Vol:
    def __init__(self, pool):
        self.pool = pool

    def storagePoolLookupByVolume(self):
        self.pool.calls.make("rpc")
        return self.pool


class Libvirt:
    """The storage and CPU calls of one host's libvirt, each waiting its latency."""

    def __init__(self, calls, pools, incompatible=()):
        self.calls, self.pools, self.incompatible = calls, pools, set(incompatible)

    def storageVolLookupByPath(self, path):
        self.calls.make("rpc")
        directory, _sep, base = path.rpartition("/")
        for pool in self.pools:
            if pool.target == directory and pool.files(base):
                return Vol(pool)
        raise NotFound(path)

    def storagePoolLookupByTargetPath(self, directory):
        self.calls.make("rpc")
        for pool in self.pools:
            if pool.target == directory:
                return pool
        raise NotFound(directory)

    def compareHypervisorCPU(self, emulator, arch, machine, virttype, xml, flags):
        self.calls.make("cpu_compare")
        if any(model in xml for model in self.incompatible):
            if flags & preflight.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE:
                raise RuntimeError("the CPU is incompatible with host CPU: Host CPU does not provide required "
                                   "features: avx512vnni")
            return preflight.VIR_CPU_COMPARE_INCOMPATIBLE
        return preflight.VIR_CPU_COMPARE_IDENTICAL


class Probe:
    def __init__(self, calls, dropped):
        self.calls, self.dropped = calls, dropped

    def fs_type(self, path):
        return ("nfs4", "/mnt/nfs") if path.startswith("/mnt/nfs/") else ("ext4", "/")

    def reach(self, host, port):
        if host in self.dropped:
            self.calls.make("probe_timeout")
            return WARN, f"no answer from {host}:{port} within 2 s"
        self.calls.make("probe_open")
        return PASS, f"{host}:{port} accepted a TCP connection"


class LatencyBackend(FakeBackend):
    """FakeBackend whose reads wait their latency and whose prechecks are the real ones over fake libvirt."""

    def __init__(self, world, calls, facts, libvirts, probe):
        super().__init__(world)
        self.live, self.facts, self.libvirts, self.probe = calls, facts, libvirts, probe
        self.sizes = {name: (f.memory_total_mib, f.cpus) for name, f in facts.items()}

    def connect(self, uri):
        self.live.make("connect")
        return super().connect(uri)

    def capacity(self, conn, host, anti_affinity_labels=()):
        self.live.make("host_facts")
        cap = super().capacity(conn, host, anti_affinity_labels)
        memory, cpus = self.sizes[conn.host]
        return dataclasses.replace(cap, memory_total_mib=memory, vcpus_total=cpus,
                                   cordoned=bool(self.facts[conn.host].cordoned))

    def ledger(self, conn, host, holder):
        self.live.make("ledger")
        return super().ledger(conn, host, holder)

    def prechecks(self, src_conn, dst_conn, vm, source, destination, settings, cache=None):
        res = preflight.run_prechecks(self.libvirts[src_conn.host], self.libvirts[dst_conn.host], vm.facts["domain"],
                                      self.facts[source.name], self.facts[destination.name], settings,
                                      migration_address=destination.migration_address, probe=self.probe,
                                      memory_headroom_mib=0, cache=cache)
        return [CheckResult(c.id, c.status, c.vm, destination.name, c.message, c.fix) for c in res.checks
                if c.id not in ("capacity.memory", "dest.cordoned")]


def domain_xml(name, rng, disks):
    cpu = rng.choice(CPU_MODELS)
    disk_xml = "".join(f"<disk type='file' device='disk'><source file='{path}'/><target dev='vd{'abc'[n]}'/></disk>"
                       for n, path in enumerate(disks))
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>1024</memory><vcpu>2</vcpu>"
            f"<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>"
            f"<cpu mode='custom' match='exact'><model>{cpu}</model></cpu>"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{disk_xml}"
            "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/></interface>"
            "</devices></domain>")


def host_facts(name, index, memory_mib, cpus, used_mib, cordoned, old_cpu):
    return HostFacts(name=name, uri=World.uri(name), host_uuid=f"uuid-{index}", local=index == 0,
                     cpu_model="Cascadelake" if old_cpu else "Icelake", cpu_vendor="Intel", cpus=cpus,
                     libvirt_version=9000000, qemu_version=7002000, memory_total_mib=memory_mib,
                     memory_free_mib=memory_mib - used_mib, memory_available_mib=memory_mib - used_mib,
                     bridges={"br0": 1500}, userfaultfd=True,
                     cordon={"state": "cordoned" if cordoned else "active"})


def fleet(n_vms, n_dests, calls, seed=7):
    """(backend, source Host, destination Hosts) of one fleet; the same seed gives the same fleet."""
    rng = random.Random(seed)
    names = [f"r{i // 40:02d}-hv{i % 40:02d}" for i in range(n_dests)]
    world = World(["src", *names])
    facts = {"src": host_facts("src", 0, 512 * MIB_GIB, 64, 0, False, False)}
    world.memory_mib = 512 * MIB_GIB
    libvirts = {}
    nfs_files = set()
    for n in range(n_vms):
        name = f"vm{n:03d}"
        local = rng.random() < 0.1
        disks = [f"/var/lib/libvirt/images/{name}.qcow2"] if local else \
            [f"/mnt/nfs/{name}-{d}.qcow2" for d in range(rng.randint(1, 3))]
        nfs_files.update(os.path.basename(p) for p in disks if p.startswith("/mnt/nfs/"))
        labels = {"placement": "rack"} if rng.random() < 0.1 else {}
        if rng.random() < 0.2:
            labels["anti_affinity"] = f"app{rng.randint(0, 9)}"
        data = vm(memory=rng.choice([2, 4, 8, 16, 32]) * MIB_GIB, vcpus=rng.choice([2, 4, 8]), labels=labels,
                  dirty=rng.choice([1, 10, 50]) * 1024 * 1024, resident=1024)
        data["domain"] = dataclasses.replace(parse_domain_xml(domain_xml(name, rng, disks), state="running",
                                                              persistent=True), memory_mib=data["memory"])
        world.place("src", name, data)
    dropped = {f"10.1.{i // 250}.{i % 250}" for i in rng.sample(range(n_dests), max(1, round(n_dests * 2 / 500)))}
    for i, name in enumerate(names):
        used = int(512 * MIB_GIB * rng.uniform(0.4, 0.8))
        old = rng.random() < 0.2
        facts[name] = host_facts(name, i + 1, 512 * MIB_GIB, 64, used, rng.random() < 0.03, old)
        world.place(name, f"{name}-resident", vm(memory=used, vcpus=rng.randint(16, 56),
                                                 labels={"anti_affinity": f"app{rng.randint(0, 9)}"}))
        pools = [Pool(calls, "nfs", "netfs", "/mnt/nfs", nfs_files.__contains__),
                 Pool(calls, "images", "dir", "/var/lib/libvirt/images", lambda _f: False)]
        libvirts[name] = Libvirt(calls, pools, incompatible=("Icelake-Server",) if old else ())
    libvirts["src"] = Libvirt(calls, [Pool(calls, "nfs", "netfs", "/mnt/nfs", nfs_files.__contains__),
                                      Pool(calls, "images", "dir", "/var/lib/libvirt/images", lambda _f: True)])
    backend = LatencyBackend(world, calls, facts, libvirts, Probe(calls, dropped))
    source = Host("src", World.uri("src"), migration_address="10.0.0.1", link_mbit=25000)
    dests = [Host(n, World.uri(n), migration_address=f"10.1.{i // 250}.{i % 250}", link_mbit=25000)
             for i, n in enumerate(names)]
    return backend, source, dests


def plan(n_vms, n_dests, checks, modelled, latency):
    calls = Calls(latency, modelled)
    backend, source, dests = fleet(n_vms, n_dests, calls)
    config = DrainConfig(policies=POLICIES, placement=PlacementConfig(memory_headroom_mib=4096))
    with tempfile.TemporaryDirectory() as state_dir:
        ctx = Drainer(backend, source, dests, config, state_dir=state_dir).ctx
        result = DrainResult("drain", "src")
        started = time.perf_counter()
        cpu_started = time.process_time()
        with Connections(backend) as conns:
            plan_drain(ctx, conns, result, checks=checks)
        wall = time.perf_counter() - started
        computing = time.process_time() - cpu_started
    checked = len(result.plan) + sum(1 for b in result.blockers if b["vm"])
    return {"wall": wall, "computing": computing, "modelled": calls.waited + computing, "calls": calls.counts,
            "planned": len(result.plan), "blocked": checked - len(result.plan), "plan": result.plan,
            "blockers": result.blockers}


def live_calls(counts):
    return sum(counts.values())


def show(counts):
    return ", ".join(f"{kind} {counts[kind]}" for kind in LATENCY if counts[kind])


LAB = {"hv1": "10.254.0.11", "hv2": "10.254.0.12", "hv3": "10.254.0.13"}  # tests/lab: hv1 drained


def timed_call(fn, repeat=5):
    """The median seconds of fn() over `repeat` calls (an exception counts: it is what the check sees)."""
    times = []
    for _call in range(repeat):
        started = time.perf_counter()
        with contextlib.suppress(Exception):
            fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def lab() -> None:
    """On the lab (tests/lab up): a few per-call latencies, and the plan of hv1 onto hv2, hv3 both ways."""
    from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection import connect  # noqa: PLC0415
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import (  # noqa: PLC0415
        LibvirtBackend,
    )
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import domain_facts  # noqa: PLC0415
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import (  # noqa: PLC0415
        host_facts as read_host_facts,
    )
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.probe import LocalProbe  # noqa: PLC0415

    uri = {name: f"qemu+tcp://{address}/system" for name, address in LAB.items()}
    src, dst = connect(uri["hv1"]), connect(uri["hv2"])
    dom = domain_facts(src.listAllDomains(1)[0])
    virttype = dom.domain_type or "kvm"
    print("lab, per call (median of 5):")
    for what, fn in (
        ("probe of hv2:16509 (open)", lambda: LocalProbe().reach(LAB["hv2"], 16509)),
        ("compareHypervisorCPU", lambda: dst.compareHypervisorCPU(dom.emulator, dom.arch, dom.machine, virttype,
                                                                  dom.cpu_xml or "<cpu/>", 0)),
        ("storageVolLookupByPath (absent)", lambda: dst.storageVolLookupByPath("/var/lib/libvirt/images/none.qcow2")),
        ("storagePoolLookupByTargetPath", lambda: dst.storagePoolLookupByTargetPath("/var/lib/libvirt/images")),
        ("listAllDomains", lambda: dst.listAllDomains(0)),
        ("host facts (host_facts)", lambda: read_host_facts(dst, name="hv2", uri=uri["hv2"], local=False)),
    ):
        print(f"  {what}: {timed_call(fn) * 1000:.2f} ms")
    pools = [p for p in dst.listAllStoragePools(0) if p.isActive()]
    if pools:
        print(f"  pool refresh ({pools[0].name()}): {timed_call(lambda: pools[0].refresh(0)) * 1000:.2f} ms")
    src.close()
    dst.close()
    source = Host("hv1", uri["hv1"], migration_address=LAB["hv1"])
    dests = [Host(n, uri[n], migration_address=LAB[n]) for n in ("hv2", "hv3")]
    config = DrainConfig(policies=[{"name": "default", "default": True, "settings": {"mode": "auto"}}],
                         placement=PlacementConfig(memory_headroom_mib=1024, vcpu_overcommit=4.0),  # the role's
                         measure_dirty_rate=False)
    for label, checks in (("plain", PLAIN), ("fast", FAST)):
        with tempfile.TemporaryDirectory() as state_dir:
            backend = LibvirtBackend(state_dir=state_dir)
            ctx = Drainer(backend, source, dests, config, state_dir=state_dir).ctx
            result = DrainResult("drain", "hv1")
            started = time.perf_counter()
            with Connections(backend) as conns:
                plan_drain(ctx, conns, result, checks=checks)
            print(f"lab plan of hv1 ({len(result.plan)} planned, {len(result.blockers)} blocked) onto hv2, hv3, "
                  f"{label}: {time.perf_counter() - started:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--validate", action="store_true", help="also run the plain path for real at 10 x 20")
    parser.add_argument("--lab", action="store_true", help="only measure on the lab (tests/lab up)")
    parser.add_argument("--latency", action="append", default=[], metavar="KIND=SECONDS")
    parser.add_argument("--vms", type=int, nargs="*", default=list(GRID_VMS))
    parser.add_argument("--destinations", type=int, nargs="*", default=list(GRID_DESTS))
    args = parser.parse_args()
    if args.lab:
        lab()
        return
    latency = dict(LATENCY)
    for item in args.latency:
        kind, _sep, value = item.partition("=")
        latency[kind] = float(value)
    print("latency per call (s): " + ", ".join(f"{k} {v:g}" for k, v in latency.items()))
    print(f"{'VMs':>4} {'dests':>5} | {'plain: calls':>12} {'modelled s':>10} | {'fast: calls':>11} {'wall s':>7} "
          f"{'computing s':>11} | {'planned':>7} {'blocked':>7} same-plan")
    for n_vms in args.vms:
        for n_dests in args.destinations:
            plain = plan(n_vms, n_dests, PLAIN, True, latency)
            fast = plan(n_vms, n_dests, FAST, False, latency)
            same = plain["plan"] == fast["plan"] and [b["vm"] for b in plain["blockers"]] == \
                [b["vm"] for b in fast["blockers"]]
            print(f"{n_vms:>4} {n_dests:>5} | {live_calls(plain['calls']):>12} {plain['modelled']:>10.1f} | "
                  f"{live_calls(fast['calls']):>11} {fast['wall']:>7.2f} {fast['computing']:>11.2f} | "
                  f"{fast['planned']:>7} {fast['blocked']:>7} {'yes' if same else 'NO'}", flush=True)
            if n_vms == max(args.vms) and n_dests == max(args.destinations):
                print(f"     plain calls: {show(plain['calls'])}")
                print(f"     fast calls:  {show(fast['calls'])}")
    if args.validate:
        modelled = plan(10, 20, PLAIN, True, latency)
        real = plan(10, 20, PLAIN, False, latency)
        print(f"plain path at 10 VMs x 20 destinations: modelled {modelled['modelled']:.2f} s, run for real "
              f"{real['wall']:.2f} s ({live_calls(real['calls'])} calls)")


if __name__ == "__main__":
    main()
