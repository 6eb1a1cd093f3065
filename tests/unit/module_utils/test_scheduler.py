"""Scheduler: per-source, per-destination, total and bandwidth limits; priority; determinism."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import (
    Limits,
    Migration,
    ScheduleError,
    Scheduler,
)
from hypothesis import given, settings
from hypothesis import strategies as st

GIB = 1 << 30


def names(migs):
    return [m.vm for m in migs]


def test_outbound_limit_per_source():
    migs = [Migration(f"vm{i}", "hv1", f"hv{i + 2}") for i in range(5)]
    sched = Scheduler(migs, Limits(max_outbound=2, max_inbound=None))
    assert names(sched.ready(running=[])) == ["vm0", "vm1"]
    assert sched.ready(running=["vm0", "vm1"]) == []
    assert names(sched.ready(running=["vm1"], finished=["vm0"])) == ["vm2"]


def test_inbound_limit_per_destination_does_not_block_others():
    migs = [
        Migration("a", "hv1", "hv2"),
        Migration("b", "hv1", "hv2"),
        Migration("c", "hv1", "hv3"),
    ]
    sched = Scheduler(migs, Limits(max_outbound=None, max_inbound=1))
    # b waits for hv2, but c behind it starts: no head-of-line blocking.
    assert names(sched.ready([])) == ["a", "c"]
    assert names(sched.ready(["a", "c"])) == []
    assert names(sched.ready(["c"], finished=["a"])) == ["b"]


def test_limits_apply_per_source_in_a_rack_drain():
    migs = [Migration(f"{src}-vm{i}", src, f"dst{i}") for src in ("hv1", "hv2") for i in range(3)]
    sched = Scheduler(migs, Limits(max_outbound=1, max_inbound=None))
    assert names(sched.ready([])) == ["hv1-vm0", "hv2-vm0"]


def test_total_limit():
    migs = [Migration(f"vm{i}", f"src{i}", f"dst{i}") for i in range(6)]
    sched = Scheduler(migs, Limits(max_outbound=None, max_inbound=None, max_total=3))
    assert names(sched.ready([])) == ["vm0", "vm1", "vm2"]
    assert names(sched.ready(["vm0", "vm1"])) == ["vm2"]


def test_bandwidth_budget_caps_concurrency_and_is_shared():
    migs = [Migration(f"vm{i}", "hv1", f"hv{i + 2}") for i in range(6)]
    limits = Limits(max_outbound=None, max_inbound=None, bandwidth_bps=10 * GIB, min_bandwidth_bps=3 * GIB)
    sched = Scheduler(migs, limits)
    assert limits.bandwidth_slots() == 3
    assert names(sched.ready([])) == ["vm0", "vm1", "vm2"]
    assert sched.bandwidth_for("vm0", []) == 10 * GIB
    assert sched.bandwidth_for("vm3", ["vm0", "vm1"]) == 10 * GIB // 3
    assert [sched.bandwidth_for(vm, ["vm0", "vm1"]) for vm in ("vm0", "vm1")] == [5 * GIB, 5 * GIB]
    # Every share stays at or above the floor when ready() is obeyed.
    running = names(sched.ready([]))
    assert all(sched.bandwidth_for(vm, running) >= 3 * GIB for vm in running)


def test_per_migration_cap_and_no_budget():
    migs = [Migration("a", "hv1", "hv2"), Migration("b", "hv1", "hv3")]
    assert Scheduler(migs, Limits()).bandwidth_for("a", ["b"]) is None
    assert Scheduler(migs, Limits(per_migration_bps=GIB)).bandwidth_for("a", []) == GIB
    assert Scheduler(migs, Limits(bandwidth_bps=4 * GIB, per_migration_bps=GIB)).bandwidth_for("a", ["b"]) == GIB
    assert Scheduler(migs, Limits(bandwidth_bps=GIB, per_migration_bps=4 * GIB)).bandwidth_for("a", ["b"]) == GIB // 2


def test_priority_order_then_longest_first_then_plan_order():
    migs = [
        Migration("unknown", "hv1", "a"),
        Migration("short", "hv1", "b", predicted_seconds=10),
        Migration("long", "hv1", "c", predicted_seconds=300),
        Migration("late", "hv1", "d", predicted_seconds=9999, order=1),
        Migration("unknown2", "hv1", "e"),
    ]
    sched = Scheduler(migs, Limits(max_outbound=None, max_inbound=None))
    assert names(sched.queue) == ["long", "short", "unknown", "unknown2", "late"]
    assert names(Scheduler(migs, Limits(max_outbound=2)).ready([])) == ["long", "short"]


def test_waves_hold_back_higher_order_until_lower_finished():
    migs = [Migration("a", "hv1", "hv2"), Migration("b", "hv1", "hv3", order=1)]
    waves = Scheduler(migs, Limits(max_outbound=None, waves=True))
    assert names(waves.ready([])) == ["a"]
    assert waves.ready(["a"]) == []
    assert names(waves.ready([], finished=["a"])) == ["b"]
    assert names(Scheduler(migs, Limits(max_outbound=None)).ready([])) == ["a", "b"]


def test_all_finished_means_nothing_ready():
    migs = [Migration("a", "hv1", "hv2")]
    assert Scheduler(migs, Limits(waves=True)).ready([], finished=["a"]) == []


def test_errors():
    with pytest.raises(ScheduleError, match="planned twice"):
        Scheduler([Migration("a", "hv1", "hv2"), Migration("a", "hv1", "hv3")], Limits())
    with pytest.raises(ScheduleError, match="to itself"):
        Scheduler([Migration("a", "hv1", "hv1")], Limits())
    sched = Scheduler([Migration("a", "hv1", "hv2")], Limits())
    with pytest.raises(ScheduleError, match="not in the plan: zz"):
        sched.ready(["zz"])
    for bad in (
        {"max_outbound": 0},
        {"max_inbound": 0},
        {"max_total": 0},
        {"bandwidth_bps": 0},
        {"per_migration_bps": -1},
        {"min_bandwidth_bps": -1},
        {"bandwidth_bps": 10, "min_bandwidth_bps": 11},
    ):
        with pytest.raises(HvfleetError):
            Limits(**bad)


# ---------------------------------------------------------------- properties

HOSTS = ["hv1", "hv2", "hv3", "hv4", "hv5"]


@st.composite
def plans(draw):
    count = draw(st.integers(0, 15))
    migs = []
    for i in range(count):
        src = draw(st.sampled_from(HOSTS))
        dst = draw(st.sampled_from([h for h in HOSTS if h != src]))
        migs.append(
            Migration(
                f"vm{i}",
                src,
                dst,
                predicted_seconds=draw(st.none() | st.integers(1, 600)),
                order=draw(st.integers(0, 1)),
            )
        )
    limits = Limits(
        max_outbound=draw(st.none() | st.integers(1, 3)),
        max_inbound=draw(st.none() | st.integers(1, 3)),
        max_total=draw(st.none() | st.integers(1, 5)),
        bandwidth_bps=draw(st.sampled_from([None, 10 * GIB])),
        min_bandwidth_bps=draw(st.sampled_from([0, GIB, 4 * GIB])),
        waves=draw(st.booleans()),
    )
    return migs, limits


def within_limits(migs, limits, running):
    by_vm = {m.vm: m for m in migs}
    out, inb = {}, {}
    for vm in running:
        out[by_vm[vm].source] = out.get(by_vm[vm].source, 0) + 1
        inb[by_vm[vm].destination] = inb.get(by_vm[vm].destination, 0) + 1
    ok = True
    if limits.max_outbound is not None:
        ok &= all(n <= limits.max_outbound for n in out.values())
    if limits.max_inbound is not None:
        ok &= all(n <= limits.max_inbound for n in inb.values())
    if limits.max_total is not None:
        ok &= len(running) <= limits.max_total
    if limits.bandwidth_bps is not None and limits.min_bandwidth_bps and running:
        ok &= limits.bandwidth_bps // len(running) >= limits.min_bandwidth_bps
    return ok


@settings(max_examples=300, deadline=None)
@given(plans(), st.randoms(use_true_random=False))
def test_property_simulated_drain_keeps_limits_and_finishes_everything(plan, rnd):
    """Run a drain to the end, finishing random running migrations: limits hold at every step."""
    migs, limits = plan
    sched = Scheduler(migs, limits)
    running, finished = [], []
    for _step in range(10 * len(migs) + 1):
        started = sched.ready(running, finished)
        assert sched.ready(running, finished) == started  # deterministic
        assert not {m.vm for m in started} & set(running + finished)
        running += [m.vm for m in started]
        assert within_limits(migs, limits, running)
        if limits.waves and running:
            open_orders = {m.order for m in migs if m.vm not in finished}
            assert {m.order for m in migs if m.vm in running} == {min(open_orders)}
        if not running:
            break
        done = rnd.choice(running)
        running.remove(done)
        finished.append(done)
    assert sorted(finished) == sorted(m.vm for m in migs), "some migration never started"


@settings(max_examples=200, deadline=None)
@given(plans(), st.randoms(use_true_random=False))
def test_property_ready_is_maximal_and_independent_of_input_order(plan, rnd):
    migs, limits = plan
    sched = Scheduler(migs, limits)
    ready = sched.ready([])
    # Maximal: no further pending migration could be added without breaking a limit.
    started = [m.vm for m in ready]
    for m in migs:
        if m.vm not in started and not (limits.waves and m.order > min(x.order for x in migs)):
            assert not within_limits(migs, limits, started + [m.vm])
    # With distinct predictions and orders, the priority is a total order: input order is irrelevant.
    keyed = [m._replace(predicted_seconds=1000 + i) for i, m in enumerate(migs)]
    shuffled = list(keyed)
    rnd.shuffle(shuffled)
    assert Scheduler(shuffled, limits).ready([]) == Scheduler(keyed, limits).ready([])
