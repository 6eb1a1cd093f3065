"""A drain plan at fleet scale: the cheap filter, the shared check cache and the threads change how many live
checks run, never the plan. Over randomised fleets the plan with them equals the plain one (every VM checked
against every destination, one after another), and each destination left out was one placement refuses anyway."""

from __future__ import annotations

import collections
import dataclasses
import random
import threading

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import planner
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.context import Connections
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig, DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.planner import LiveChecks, plan_drain
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import CheckCache
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import CheckResult, Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import PlacementConfig
from drain_fakes import FakeBackend, World, vm

PLAIN = LiveChecks(workers=1, cache=False, prefilter=False, on_demand=False)
CANNOT_TAKE = planner.cannot_take
EAGER = LiveChecks(workers=4, on_demand=False)  # every candidate pair checked first
POLICIES = [
    {"name": "default", "default": True, "settings": {"mode": "precopy"}},
    {"name": "pinned", "selector": {"labels": {"pol": "pin"}}, "settings": {"destinations": {"pin": ["d1*", "d2"]}}},
    {"name": "avoiding", "selector": {"labels": {"pol": "avoid"}}, "settings": {"destinations": {"avoid": ["d3*"]}}},
]


class FleetBackend(FakeBackend):
    """Hosts of different sizes, some cordoned; some (VM, destination) pairs fail a check; every check counted."""

    def __init__(self, world, sizes, failing, cordoned=(), barrier=None):
        super().__init__(world)
        self.sizes, self.failing, self.host_cordoned, self.barrier = sizes, failing, set(cordoned), barrier
        self.checked = []  # (vm, destination, thread)
        self.caches = set()
        self.in_flight = collections.Counter()  # destination -> checks running on its connection now
        self.most_at_once = collections.Counter()
        self.count_lock = threading.Lock()

    def capacity(self, conn, host, anti_affinity_labels=()):
        cap = super().capacity(conn, host, anti_affinity_labels)
        memory, cpus, stack = self.sizes[conn.host]
        return dataclasses.replace(cap, memory_total_mib=memory, vcpus_total=cpus, stack=stack,
                                   cordoned=conn.host in self.host_cordoned)

    def prechecks(self, src_conn, dst_conn, vm, source, destination, settings, cache=None):
        with self.count_lock:
            self.in_flight[dst_conn.host] += 1
            self.most_at_once[dst_conn.host] = max(self.most_at_once[dst_conn.host], self.in_flight[dst_conn.host])
        try:
            return self._prechecks(src_conn, dst_conn, vm, source, destination, settings, cache)
        finally:
            with self.count_lock:
                self.in_flight[dst_conn.host] -= 1

    def _prechecks(self, src_conn, dst_conn, vm, source, destination, settings, cache):
        first = not any(d == destination.name for _v, d, _t in self.checked)
        self.checked.append((vm.name, destination.name, threading.get_ident()))
        self.caches.add(cache)
        if self.barrier is not None and first and destination.name in ("d0", "d1"):
            self.barrier.wait()  # both destinations are being checked at once, or this times out
        if (vm.name, destination.name) in self.failing:
            return [CheckResult("cpu.compat", "fail", vm.name, destination.name,
                                f"CPU of {vm.name} is incompatible with {destination.name}", None)]
        return super().prechecks(src_conn, dst_conn, vm, source, destination, settings)


def build(seed, tmp_path, barrier=None):
    rng = random.Random(seed)
    names = [f"d{i}" for i in range(rng.randint(3, 14))]
    world = World(["hv1", *names])
    labels = [{}, {"anti_affinity": "web"}, {"anti_affinity": "db"}, {"pol": "pin"}, {"pol": "avoid"}]
    for i in range(rng.randint(2, 12)):
        world.place("hv1", f"vm{i:02d}", vm(memory=rng.choice([512, 1024, 4096, 12000]), vcpus=rng.choice([1, 2, 6]),
                                            labels=dict(rng.choice(labels)), local_disk=rng.random() < 0.1,
                                            active=rng.random() < 0.9))
    for name in names:
        if rng.random() < 0.4:
            world.place(name, f"old-{name}", vm(memory=rng.choice([1024, 6000]), vcpus=rng.choice([1, 4]),
                                                labels=dict(rng.choice(labels[:3]))))
    stacks = [(7002000, 9000000), (10000000, 11003000)]  # two generations (QEMU, libvirt)
    sizes = {n: (rng.choice([4096, 8192, 16384]), rng.choice([2, 8]), rng.choice(stacks)) for n in ["hv1", *names]}
    failing = {(f"vm{i:02d}", n) for i in range(12) for n in names if rng.random() < 0.2}
    backend = FleetBackend(world, sizes, failing, {n for n in names if rng.random() < 0.15}, barrier)
    backend.unreachable = {n for n in names if rng.random() < 0.1}
    source = Host("hv1", World.uri("hv1"), link_mbit=1000)
    dests = [Host(n, World.uri(n), migration_address=f"10.0.0.{i + 2}", link_mbit=1000,
                  cordoned=rng.random() < 0.1) for i, n in enumerate(names)]
    placement = PlacementConfig(memory_headroom_mib=rng.choice([0, 512]), vcpu_overcommit=rng.choice([1.0, 2.0]))
    config = DrainConfig(policies=POLICIES, placement=placement)
    return Drainer(backend, source, dests, config, state_dir=tmp_path).ctx, backend


def plan(seed, tmp_path, checks, barrier=None):
    ctx, backend = build(seed, tmp_path, barrier)
    result = DrainResult("drain", "hv1")
    with Connections(backend) as conns:
        plan_drain(ctx, conns, result, checks=checks)
    return result, backend


def reasons(blocker):
    return {host: why.split("; ") for host, why in blocker["reasons"].items()}


def compare(seed, tmp_path, monkeypatch):
    """Plan the fleet both ways, assert the fast plan is the plain one; returns how many host reasons lost
    only the checks' own failures (hosts out on capacity, cordon, pins... whose checks also failed)."""
    plain, all_checks = plan(seed, tmp_path / "a", PLAIN)
    filtered = set()

    def recording(vm, host, source, config):
        out = CANNOT_TAKE(vm, host, source, config)
        if out:
            filtered.add((vm.name, host.name))
        return out

    monkeypatch.setattr(planner, "cannot_take", recording)
    fast, few_checks = plan(seed, tmp_path / "b", LiveChecks())
    assert fast.plan == plain.plan and fast.moves == plain.moves and fast.forecast == plain.forecast
    assert [(b["vm"], b["kind"]) for b in fast.blockers] == [(b["vm"], b["kind"]) for b in plain.blockers]
    checked = {(v, d) for v, d, _t in few_checks.checked}
    assert checked <= {(v, d) for v, d, _t in all_checks.checked}
    assert len(few_checks.checked) == len(checked)  # no pair twice
    shortened = 0
    for was, now in zip(plain.blockers, fast.blockers, strict=True):
        if was["kind"] != "unplaced":
            assert now == was
            continue
        before, after = reasons(was), reasons(now)
        assert before and before.keys() == after.keys()
        for host, why in before.items():
            if (now["vm"], host) not in filtered:
                assert after[host] == why
            elif after[host] != why:  # left out by the filter: still says why, less the checks' own failures
                assert after[host] == [w for w in why if not w.startswith("failed prechecks: ")]
                assert after[host] and not any("prechecks" in w for w in after[host])
                shortened += 1
    return shortened


@pytest.mark.parametrize("seed", range(60))
def test_the_plan_is_the_plain_plan_with_fewer_checks(tmp_path, monkeypatch, seed):
    compare(seed, tmp_path, monkeypatch)


def test_the_randomised_fleets_do_meet_left_out_hosts_that_fail_their_checks(tmp_path, monkeypatch):
    assert sum(compare(seed, tmp_path / str(seed), monkeypatch) for seed in range(60)) > 5


def test_the_filter_leaves_out_what_placement_refuses_anyway(tmp_path):
    lefts = 0
    for seed in range(30):
        plain, all_checks = plan(seed, tmp_path / f"a{seed}", PLAIN)
        fast, few_checks = plan(seed, tmp_path / f"b{seed}", LiveChecks(workers=1, cache=False))
        assert fast.plan == plain.plan
        left_out = {(v, d) for v, d, _t in all_checks.checked} - {(v, d) for v, d, _t in few_checks.checked}
        placed = {(p["vm"], p["destination"]) for p in plain.plan}
        assert not left_out & placed
        lefts += len(left_out)
    assert lefts > 0  # the fleets do exercise the filter


def test_one_cache_per_plan_and_none_on_the_plain_path(tmp_path):
    _result, backend = plan(3, tmp_path / "a", LiveChecks())
    assert len(backend.caches) == 1 and isinstance(next(iter(backend.caches)), CheckCache)
    _result, again = plan(3, tmp_path / "b", LiveChecks())
    assert next(iter(again.caches)) is not next(iter(backend.caches))
    _result, plain = plan(3, tmp_path / "c", PLAIN)
    assert plain.caches == {None}


def test_destinations_are_checked_at_once_each_by_one_thread(tmp_path):
    seed = next(s for s in range(100) if {"d0", "d1"} <= {d for _v, d, _t in plan(s, tmp_path / f"s{s}",
                                                                                  EAGER)[1].checked})
    barrier = threading.Barrier(2, timeout=10)
    _result, backend = plan(seed, tmp_path / "run", EAGER, barrier=barrier)
    assert not barrier.broken
    threads = {}
    for _vm, dest, thread in backend.checked:
        threads.setdefault(dest, set()).add(thread)
    assert all(len(t) == 1 for t in threads.values())
    assert threads["d0"] != threads["d1"]


def test_a_destination_connection_is_never_used_by_two_threads_at_once(tmp_path):
    most = collections.Counter()
    for seed in range(10):
        _result, backend = plan(seed, tmp_path / str(seed), LiveChecks(workers=8))
        most.update({f"{seed}/{dest}": n for dest, n in backend.most_at_once.items()})
    assert len(most) > 20 and set(most.values()) == {1}


def test_every_vm_placed_was_checked_on_its_host_even_with_a_wrong_filter(tmp_path, monkeypatch):
    """Placement counts unchecked hosts as passing, but a plan only stands once each VM it places passed its
    checks there: even a filter that wrongly left every host out sends no VM where it was not checked."""
    monkeypatch.setattr(planner, "cannot_take", lambda *_args: True)
    for seed in range(20):
        plain, _all = plan(seed, tmp_path / f"a{seed}", PLAIN)
        fast, few = plan(seed, tmp_path / f"b{seed}", LiveChecks())
        assert fast.plan == plain.plan
        checked = {(v, d) for v, d, _t in few.checked}
        assert {(p["vm"], p["destination"]) for p in fast.plan} <= checked


def test_checks_on_demand_check_few_pairs_of_a_vm_that_passes(tmp_path):
    """A VM whose checks pass on the host placement prefers is checked there only; over the fleets, fewer
    pairs are checked than when every candidate pair is checked first (small fleets, many failures)."""
    lazy_pairs = eager_pairs = 0
    once = []
    for seed in range(10):
        _result, eager = plan(seed, tmp_path / f"a{seed}", EAGER)
        result, lazy = plan(seed, tmp_path / f"b{seed}", LiveChecks())
        per_vm = collections.Counter(v for v, _d, _t in lazy.checked)
        once += [p["vm"] for p in result.plan if per_vm[p["vm"]] == 1 and p["vm"].startswith("vm")]
        lazy_pairs, eager_pairs = lazy_pairs + len(lazy.checked), eager_pairs + len(eager.checked)
    assert len(once) > 10
    assert lazy_pairs < eager_pairs
