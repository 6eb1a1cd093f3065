"""Placement: capacity, cordon, prechecks, pins, anti-affinity, spreading, determinism, reasons."""

import math
import random
from dataclasses import replace
from fnmatch import fnmatchcase

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    PlacementError,
    VmDemand,
    placement_order,
    plan_placement,
    recheck,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NO_MARGIN = PlacementConfig()


def host(name, mem=65536, used=0, cpus=32, vused=0, **kw):
    return HostCapacity(name, mem, used, cpus, vused, **kw)


def vm(name, mem=4096, cpus=2, **kw):
    return VmDemand(name, mem, cpus, **kw)


# ---------------------------------------------------------------- examples


def test_spreads_instead_of_filling_one_host():
    hosts = [host("hv1"), host("hv2"), host("hv3")]
    vms = [vm(f"vm{i}", mem=8192) for i in range(4)]
    plan = plan_placement("hv1", vms, hosts, NO_MARGIN)
    dest = plan.destinations()
    assert sorted(dest.values()) == ["hv2", "hv2", "hv3", "hv3"]
    assert not plan.unplaced


def test_never_the_source_even_when_it_has_most_room():
    hosts = [host("hv1", mem=1 << 20), host("hv2", mem=16384)]
    plan = plan_placement("hv1", [vm("a")], hosts, NO_MARGIN)
    assert plan.destinations() == {"a": "hv2"}


def test_several_sources_drain_together_and_never_receive():
    hosts = [host("r1-hv1", mem=1 << 20), host("r1-hv2", mem=1 << 20), host("r2-hv1")]
    plan = plan_placement({"r1-hv1", "r1-hv2"}, [vm("a"), vm("b", mem=1 << 19)], hosts, NO_MARGIN)
    assert plan.destinations() == {"a": "r2-hv1"}
    assert plan.unplaced[0].reasons["r1-hv1"] == "the source being drained"
    assert plan.unplaced[0].reasons["r1-hv2"] == "the source being drained"


def test_most_free_memory_wins_and_ties_go_to_smaller_name():
    hosts = [host("hv3", used=1000), host("hv2", used=1000), host("hv4", used=2000)]
    plan = plan_placement("hv1", [vm("a")], hosts, NO_MARGIN)
    assert plan.destinations() == {"a": "hv2"}
    assert "MiB" in plan.assignments[0].reason


def test_order_policy_then_hottest_then_largest():
    vms = [
        vm("small", mem=1024),
        vm("big", mem=8192),
        vm("hot", mem=1024, dirty_rate_bps=5e8),
        vm("last", mem=32768, dirty_rate_bps=9e9, order=5),
        vm("first", mem=512, order=-1),
    ]
    assert [v.name for v in placement_order(vms)] == ["first", "hot", "big", "small", "last"]
    plan = plan_placement("hv1", vms, [host("hv2"), host("hv3")], NO_MARGIN)
    assert [a.vm for a in plan.assignments] == ["first", "hot", "big", "small", "last"]


def test_memory_headroom_blocks_and_reason_says_so():
    hosts = [host("hv2", mem=8192, used=4096)]
    cfg = PlacementConfig(memory_headroom_mib=512)
    plan = plan_placement("hv1", [vm("a", mem=4096)], hosts, cfg)
    assert plan.assignments == []
    assert plan.unplaced[0].reasons == {"hv2": "needs 4096 MiB + 512 MiB headroom, 4096 MiB free"}
    # Exactly fitting with headroom is allowed.
    plan = plan_placement("hv1", [vm("a", mem=3584)], hosts, cfg)
    assert plan.destinations() == {"a": "hv2"}


def test_headroom_fraction_uses_the_larger_margin():
    cfg = PlacementConfig(memory_headroom_mib=100, memory_headroom_fraction=0.25)
    big = host("hv2", mem=16000)
    assert cfg.headroom_mib(big) == 4000
    assert PlacementConfig(memory_headroom_mib=5000, memory_headroom_fraction=0.25).headroom_mib(big) == 5000
    plan = plan_placement("hv1", [vm("a", mem=12001)], [big], cfg)
    assert plan.unplaced and "4000 MiB headroom" in plan.unplaced[0].reasons["hv2"]


def test_earlier_assignments_count_against_capacity():
    hosts = [host("hv2", mem=10000)]
    plan = plan_placement("hv1", [vm("a", mem=6000), vm("b", mem=5000)], hosts, NO_MARGIN)
    assert plan.destinations() == {"a": "hv2"}
    assert plan.unplaced[0].vm == "b"
    assert (
        plan.unplaced[0].reasons["hv2"]
        == "needs 5000 MiB + 0 MiB headroom, 4000 MiB free (after 1 VM(s) planned there)"
    )


def test_vcpu_overcommit_ratio():
    hosts = [host("hv2", cpus=4, vused=6)]
    assert plan_placement("hv1", [vm("a", cpus=2)], hosts, PlacementConfig(vcpu_overcommit=2.0)).unplaced == []
    plan = plan_placement("hv1", [vm("a", cpus=3)], hosts, PlacementConfig(vcpu_overcommit=2.0))
    assert plan.unplaced[0].reasons["hv2"] == "needs 3 vCPUs, 2 of 8 left (4 CPUs x 2 overcommit)"


def test_vcpu_ratio_float_error_does_not_lose_a_cpu():
    assert PlacementConfig(vcpu_overcommit=0.29).vcpu_capacity(host("h", cpus=100)) == 29


def test_cordoned_host_is_never_chosen_and_reason_names_it():
    hosts = [host("hv2", cordoned=True, mem=1 << 20), host("hv3", mem=8192)]
    plan = plan_placement("hv1", [vm("a"), vm("b", mem=8192)], hosts, NO_MARGIN)
    assert plan.destinations() == {"b": "hv3"}
    assert plan.unplaced[0].reasons["hv2"] == "cordoned"
    assert "needs 4096 MiB" in plan.unplaced[0].reasons["hv3"]


def test_only_eligible_hosts_and_precheck_reason_is_named():
    hosts = [host("hv2"), host("hv3"), host("hv4")]
    a = vm("a", eligible=frozenset({"hv4"}), precheck_failures={"hv2": "local disk /var/lib/a.qcow2"})
    plan = plan_placement("hv1", [a, vm("b", eligible=frozenset())], hosts, NO_MARGIN)
    assert plan.destinations() == {"a": "hv4"}
    reasons = plan.unplaced[0].reasons
    assert reasons == {
        "hv2": "did not pass prechecks for this VM",
        "hv3": "did not pass prechecks for this VM",
        "hv4": "did not pass prechecks for this VM",
    }
    plan = plan_placement(
        "hv1", [vm("c", mem=1 << 30, precheck_failures={"hv2": "CPU model differs"})], hosts[:1], NO_MARGIN
    )
    # Both blockers are named, the precheck first: the memory shortfall is not the only story.
    assert plan.unplaced[0].reasons["hv2"].startswith("failed prechecks: CPU model differs; needs")


def test_pin_and_avoid_globs():
    hosts = [host("rack1-hv1"), host("rack1-hv2", used=1000), host("rack2-hv1"), host("rack2-hv2")]
    plan = plan_placement(
        "rack2-hv2",
        [vm("pinned", pin=("rack1-*",)), vm("avoider", avoid=("rack1-*", "rack2-hv1"))],
        hosts,
        NO_MARGIN,
    )
    assert plan.destinations() == {"pinned": "rack1-hv1"}
    reasons = plan.unplaced[0].reasons
    assert reasons["rack1-hv1"] == "avoided by policy (rack1-*, rack2-hv1)"
    assert reasons["rack2-hv2"] == "the source being drained"
    plan = plan_placement("hv1", [vm("a", pin=("db*",))], [host("hv2")], NO_MARGIN)
    assert plan.unplaced[0].reasons == {"hv2": "not in pin list (db*)"}


def test_anti_affinity_with_planned_and_present_vms():
    hosts = [host("hv2"), host("hv3"), host("hv4", anti_affinity={"app": frozenset({"db"})})]
    vms = [vm(f"db{i}", anti_affinity={"app": "db"}) for i in range(3)] + [vm("web", anti_affinity={"app": "web"})]
    plan = plan_placement("hv1", vms, hosts, NO_MARGIN)
    dest = plan.destinations()
    assert {dest["db0"], dest["db1"]} == {"hv2", "hv3"}
    assert [u.vm for u in plan.unplaced] == ["db2"]
    assert plan.unplaced[0].reasons == {
        "hv2": "anti-affinity app=db already there",
        "hv3": "anti-affinity app=db already there",
        "hv4": "anti-affinity app=db already there",
    }
    assert "web" in dest


def test_no_hosts_still_gives_a_reason():
    plan = plan_placement("hv1", [vm("a")], [], NO_MARGIN)
    assert plan.unplaced[0].reasons == {"(none)": "no candidate hosts were given"}


def test_duplicates_and_bad_config_raise_project_errors():
    with pytest.raises(PlacementError, match="VM 'a' is listed twice"):
        plan_placement("hv1", [vm("a"), vm("a")], [host("hv2")], NO_MARGIN)
    with pytest.raises(PlacementError, match="host 'hv2'"):
        plan_placement("hv1", [vm("a")], [host("hv2"), host("hv2")], NO_MARGIN)
    with pytest.raises(PlacementError, match="VM 'a' asks for -1 MiB"):
        plan_placement("hv1", [vm("a", mem=-1)], [host("hv2")], NO_MARGIN)
    for bad in ({"memory_headroom_mib": -1}, {"memory_headroom_fraction": 1.0}, {"vcpu_overcommit": 0}):
        with pytest.raises(HvfleetError) as err:
            PlacementConfig(**bad)
        assert err.value.hint


def test_recheck_with_fresh_facts():
    cfg = PlacementConfig(memory_headroom_mib=1024, vcpu_overcommit=1.0)
    a = vm("a", mem=4096, cpus=4, anti_affinity={"app": "db"})
    ok, why = recheck(a, host("hv2", mem=16384, used=2048, cpus=8, vused=2), cfg)
    assert ok and why == "hv2: fits, 9216 MiB left beyond 1024 MiB headroom, 2 vCPUs left"
    ok, why = recheck(a, host("hv2", mem=16384, used=12000, cpus=8), cfg)
    assert not ok and why == "hv2: needs 4096 MiB + 1024 MiB headroom, 4384 MiB free"
    ok, why = recheck(a, host("hv2", cordoned=True), cfg)
    assert (ok, why) == (False, "hv2: cordoned")
    ok, why = recheck(a, host("hv2", anti_affinity={"app": {"db"}}), cfg)
    assert (ok, why) == (False, "hv2: anti-affinity app=db already there")
    ok, why = recheck(a, host("hv2", cpus=4, vused=1), cfg)
    assert not ok and "needs 4 vCPUs, 3 of 4 left" in why


def test_large_eligible_and_small_eligible_paths_agree():
    """The heap and the linear-scan paths must choose the same hosts."""
    rng = random.Random(7)
    hosts = [host(f"hv{i:03d}", used=rng.randrange(0, 60000), vused=rng.randrange(0, 32)) for i in range(200)]
    names = [h.name for h in hosts]
    vms = [vm(f"v{i}", mem=rng.choice([1024, 2048, 4096]), cpus=rng.choice([1, 2, 4])) for i in range(60)]
    narrow = [replace(v, eligible=frozenset(names[:10])) for v in vms]
    wide = [replace(v, eligible=frozenset(names[:190])) for v in vms]
    for case in (narrow, wide):
        plan = plan_placement("hv999", case, hosts, NO_MARGIN)
        assert plan.destinations() == reference_plan("hv999", case, hosts, NO_MARGIN)
    # Narrow eligibility (scan path) confines VMs; wide (heap path) does not reach the excluded ones.
    assert set(plan_placement("hv999", narrow, hosts, NO_MARGIN).destinations().values()) <= set(names[:10])


def test_ties_go_to_the_smaller_name_on_both_search_paths():
    hosts = [host(f"hv{i:03d}") for i in range(100)]
    narrow = vm("a", eligible=frozenset({"hv021", "hv030", "hv012"}))  # short list: linear scan
    wide = vm("b", avoid=("hv000",))  # whole fleet: heap
    plan = plan_placement("hv999", [narrow, wide], hosts, NO_MARGIN)
    assert plan.destinations() == {"a": "hv012", "b": "hv001"}


# ---------------------------------------------------------------- reference model


def reference_fit(v, h, used_mem, used_cpu, present, source, cfg):
    """Straightforward restatement of the rules, independent of the module's internals."""
    headroom = max(cfg.memory_headroom_mib, math.ceil(h.memory_total_mib * cfg.memory_headroom_fraction))
    return (
        h.name != source
        and not h.cordoned
        and (v.eligible is None or h.name in v.eligible)
        and h.name not in v.precheck_failures
        and (not v.pin or any(fnmatchcase(h.name, p) for p in v.pin))
        and not any(fnmatchcase(h.name, p) for p in v.avoid)
        and all(val not in present[h.name].get(k, set()) for k, val in v.anti_affinity.items())
        and used_mem[h.name] + v.memory_mib + headroom <= h.memory_total_mib
        and used_cpu[h.name] + v.vcpus <= math.floor(h.vcpus_total * cfg.vcpu_overcommit + 1e-9)
    )


def reference_plan(source, vms, hosts, cfg):
    """Brute force: for each VM in order, scan every host; returns the destinations map."""
    used_mem = {h.name: h.memory_used_mib for h in hosts}
    used_cpu = {h.name: h.vcpus_used for h in hosts}
    present = {h.name: {k: set(s) for k, s in h.anti_affinity.items()} for h in hosts}
    out = {}
    order = sorted(vms, key=lambda v: (v.order, -v.dirty_rate_bps, -v.memory_mib, -v.vcpus, v.name))
    for v in order:
        fits = [h for h in hosts if reference_fit(v, h, used_mem, used_cpu, present, source, cfg)]
        if not fits:
            continue
        headroom = {
            h.name: max(cfg.memory_headroom_mib, math.ceil(h.memory_total_mib * cfg.memory_headroom_fraction))
            for h in fits
        }
        best = min(fits, key=lambda h: (-(h.memory_total_mib - used_mem[h.name] - headroom[h.name]), h.name))
        out[v.name] = best.name
        used_mem[best.name] += v.memory_mib
        used_cpu[best.name] += v.vcpus
        for k, val in v.anti_affinity.items():
            present[best.name].setdefault(k, set()).add(val)
    return out


# ---------------------------------------------------------------- properties

NAMES = [f"hv{i}" for i in range(12)]
GLOBS = ["hv1*", "hv[2-4]", "hv?", "*", "hv5", "nomatch*"]


# Strategies are built once: building them inside the composite dominated the run time.
PERCENT = st.one_of(st.integers(0, 60), st.integers(0, 110))
HOST_LABELS = st.dictionaries(
    st.sampled_from(["app", "rack"]), st.frozensets(st.sampled_from("abc"), max_size=2), max_size=2
)
VM_LABELS = st.one_of(
    st.just({}), st.just({}), st.dictionaries(st.sampled_from(["app", "rack"]), st.sampled_from("abcd"), max_size=2)
)
# Constraints are drawn rarely (one branch in four) so that plenty of VMs do get placed.
NONE = st.just(())
PINS = st.one_of(NONE, NONE, NONE, st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2).map(tuple))
AVOIDS = st.one_of(NONE, NONE, NONE, st.lists(st.sampled_from(GLOBS), min_size=1, max_size=1).map(tuple))
ELIGIBLE = st.one_of(st.none(), st.none(), st.none(), st.frozensets(st.sampled_from(NAMES), max_size=10))
FAILURES = st.one_of(
    st.just({}), st.just({}), st.dictionaries(st.sampled_from(NAMES), st.just("local disk"), max_size=2)
)
CORDONED = st.sampled_from([False, False, False, True])
HOST_NAMES = st.lists(st.sampled_from(NAMES), max_size=10, unique=True)
MEMORY = st.one_of(st.sampled_from([8192, 16384]), st.integers(1024, 65536))  # equal hosts test ties
CPUS = st.integers(1, 32)
VM_MEMORY = st.integers(0, 16384)
VM_CPUS = st.integers(1, 8)
DIRTY = st.sampled_from([0.0, 1e6, 5e8])
ORDER = st.integers(0, 2)
VM_COUNT = st.integers(0, 25)


@st.composite
def scenarios(draw):
    hosts = []
    for name in draw(HOST_NAMES):
        total, cpus = draw(MEMORY), draw(CPUS)
        hosts.append(
            HostCapacity(
                name,
                total,
                total * draw(PERCENT) // 100,
                cpus,
                cpus * 3 * draw(PERCENT) // 100,
                cordoned=draw(CORDONED),
                anti_affinity=draw(HOST_LABELS),
            )
        )
    vms = [
        VmDemand(
            f"vm{i}",
            draw(VM_MEMORY),
            draw(VM_CPUS),
            dirty_rate_bps=draw(DIRTY),
            anti_affinity=draw(VM_LABELS),
            pin=draw(PINS),
            avoid=draw(AVOIDS),
            eligible=draw(ELIGIBLE),
            precheck_failures=draw(FAILURES),
            order=draw(ORDER),
        )
        for i in range(draw(VM_COUNT))
    ]
    cfg = PlacementConfig(
        memory_headroom_mib=draw(st.integers(0, 2048)),
        memory_headroom_fraction=draw(st.sampled_from([0.0, 0.05, 0.2])),
        vcpu_overcommit=draw(st.sampled_from([0.5, 1.0, 1.5, 4.0])),
    )
    source = draw(st.sampled_from(NAMES))
    return source, vms, hosts, cfg


PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(scenarios())
def test_property_safety(scenario):
    source, vms, hosts, cfg = scenario
    plan = plan_placement(source, vms, hosts, cfg)
    by_host = {h.name: h for h in hosts}
    by_vm = {v.name: v for v in vms}
    mem = {h.name: h.memory_used_mib for h in hosts}
    cpu = {h.name: h.vcpus_used for h in hosts}
    labels = {h.name: {k: set(s) for k, s in h.anti_affinity.items()} for h in hosts}
    for a in plan.assignments:
        v, h = by_vm[a.vm], by_host[a.destination]
        assert a.destination != source
        assert not h.cordoned
        assert v.eligible is None or a.destination in v.eligible
        assert a.destination not in v.precheck_failures
        assert not v.pin or any(fnmatchcase(h.name, p) for p in v.pin)
        assert not any(fnmatchcase(h.name, p) for p in v.avoid)
        for key, value in v.anti_affinity.items():
            assert value not in labels[h.name].get(key, set()), "anti-affinity violated"
            labels[h.name].setdefault(key, set()).add(value)
        mem[h.name] += v.memory_mib
        cpu[h.name] += v.vcpus
    for h in hosts:
        if mem[h.name] != h.memory_used_mib:  # received VMs: must stay within headroom and ratio
            assert mem[h.name] + cfg.headroom_mib(h) <= h.memory_total_mib
            assert cpu[h.name] <= h.vcpus_total * cfg.vcpu_overcommit + 1e-9
    # Every VM exactly once; every unplaced VM has a real reason for every host.
    placed = [a.vm for a in plan.assignments]
    unplaced = [u.vm for u in plan.unplaced]
    assert sorted(placed + unplaced) == sorted(by_vm)
    for u in plan.unplaced:
        assert set(u.reasons) == ({h.name for h in hosts} or {"(none)"})
        for why in u.reasons.values():
            assert why and "internal error" not in why


@PROPS
@given(scenarios())
def test_property_matches_brute_force_reference(scenario):
    source, vms, hosts, cfg = scenario
    assert plan_placement(source, vms, hosts, cfg).destinations() == reference_plan(source, vms, hosts, cfg)


@PROPS
@given(scenarios(), st.randoms(use_true_random=False))
def test_property_deterministic_and_input_order_independent(scenario, rnd):
    source, vms, hosts, cfg = scenario
    first = plan_placement(source, vms, hosts, cfg)
    assert plan_placement(source, vms, hosts, cfg) == first
    vms2, hosts2 = list(vms), list(hosts)
    rnd.shuffle(vms2)
    rnd.shuffle(hosts2)
    assert plan_placement(source, vms2, hosts2, cfg) == first


@PROPS
@given(scenarios())
def test_property_unplaced_reason_names_a_blocker_that_really_blocks(scenario):
    """Pain point 8: a reason that says 'cordoned' or 'needs N MiB' must be true of that host."""
    source, vms, hosts, cfg = scenario
    plan = plan_placement(source, vms, hosts, cfg)
    by_host = {h.name: h for h in hosts}
    for u in plan.unplaced:
        for name, why in u.reasons.items():
            if name == "(none)":
                continue
            h = by_host[name]
            assert ("cordoned" in why) == (h.cordoned and name != source)
            assert ("the source being drained" in why) == (name == source)


def test_reason_for_memory_names_free_memory_at_that_point():
    h = host("hv2", mem=20000, used=0)
    plan = plan_placement("hv1", [vm("a", mem=12000), vm("b", mem=12000)], [h], NO_MARGIN)
    assert plan.unplaced[0].messages() == [
        "hv2: needs 12000 MiB + 0 MiB headroom, 8000 MiB free (after 1 VM(s) planned there)"
    ]
