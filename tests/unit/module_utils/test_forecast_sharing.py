"""The drain forecast as a simulation: lanes from the scheduler, one link shared by what runs."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import drain_forecast as D
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import forecast as F
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Limits
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration as Move

LINK = 100.0  # bytes/s: small round numbers, checkable by hand
TWO_LANES = Limits(max_outbound=2, max_inbound=1, max_total=2)


def by_bytes(sizes, refuse_below=None, calls=None):
    """predict(): a bandwidth-bound migration of sizes[vm] bytes; refused under `refuse_below` bytes/s."""

    def predict(vm, bw):
        if calls is not None:
            calls.append((vm, bw))
        if refuse_below is not None and vm in refuse_below and bw < refuse_below[vm]:
            return F.Forecast(F.REFUSE, False, "too slow", None, None, None, 0, False)
        return F.Forecast(F.PRECOPY, False, "test", sizes[vm] / bw, 20.0, sizes[vm], 1, True)

    return predict


def ends(schedule):
    return {s.vm: s.end_s for s in schedule}


def test_the_last_one_gets_the_whole_link():
    moves = [Move("a", "hv1", "hv2", 20.0), Move("b", "hv1", "hv3", 60.0)]
    calls = []
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, by_bytes({"a": 1000, "b": 3000}, calls=calls))
    # both start at 0 with 50 B/s; a ends at 1000/50 = 20 s, b has sent 1000 and sends 2000 alone: +20 s
    assert [s.vm for s in schedule] == ["b", "a"]  # the scheduler's order: longest first
    assert sorted(calls) == [("a", 50.0), ("b", 50.0)]
    assert ends(schedule) == pytest.approx({"a": 20.0, "b": 40.0})
    total = D.forecast_drain_shared(schedule, concurrency=2)
    assert total.total_s == pytest.approx(40.0)  # = 4000 bytes / 100 B/s: the link never idles
    assert total.serial_s == pytest.approx(80.0)  # each at the share it started with
    # the fixed lane split of forecast_drain would say 60 s (b at half the link throughout)
    lanes = D.forecast_drain({"a": by_bytes({"a": 1000})("a", 50.0),
                              "b": by_bytes({"b": 3000})("b", 50.0)}, concurrency=2)
    assert lanes.total_s == pytest.approx(60.0)


def test_lane_limit_and_start_bandwidth():
    moves = [Move(v, "hv1", d, 10.0) for v, d in (("a", "hv2"), ("b", "hv3"), ("c", "hv2"))]
    calls = []
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, by_bytes(dict.fromkeys("abc", 1000), calls=calls))
    # a, b at 50 B/s end at 20 s; c starts then, alone: 100 B/s, 10 s
    assert calls == [("a", 50.0), ("b", 50.0), ("c", 100.0)]
    assert ends(schedule) == pytest.approx({"a": 20.0, "b": 20.0, "c": 30.0})
    assert schedule[2].start_s == pytest.approx(20.0) and schedule[2].start_bandwidth == 100.0


def test_per_destination_limit_serialises():
    moves = [Move("a", "hv1", "hv2", 10.0), Move("b", "hv1", "hv2", 10.0)]
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, by_bytes({"a": 1000, "b": 1000}))
    # max_inbound 1: one after the other, each with the whole link: 10 s + 10 s
    assert ends(schedule) == pytest.approx({"a": 10.0, "b": 20.0})


def test_reshare_when_a_third_starts():
    limits = Limits(max_outbound=3, max_inbound=None, max_total=3)
    moves = [Move("a", "hv1", "hv2", 30.0), Move("b", "hv1", "hv3", 20.0), Move("c", "hv1", "hv2", 10.0)]
    schedule = D.simulate_drain(moves, limits, 90.0, by_bytes({"a": 900, "b": 600, "c": 300}))
    # 30 B/s each: c done at 10 s (300); a, b have 600 and 300 left at 45 B/s: b at 10 + 300/45,
    # then a has 300 left at 90 B/s
    t_b = 10 + 300 / 45
    assert ends(schedule) == pytest.approx({"c": 10.0, "b": t_b, "a": t_b + 300 / 90})
    assert ends(schedule)["a"] == pytest.approx(1800 / 90)


def test_destination_link_caps_the_share():
    moves = [Move("a", "hv1", "hv2", 10.0), Move("b", "hv1", "hv3", 10.0)]
    calls = []
    D.simulate_drain(moves, TWO_LANES, LINK, by_bytes({"a": 1000, "b": 1000}, calls=calls),
                     destination_bps={"hv2": 20.0})
    assert sorted(calls) == [("a", 20.0), ("b", 50.0)]


def test_mode_decided_on_start_bandwidth():
    # hot needs 80 B/s: refused at the lane split, accepted when it starts alone after the others
    moves = [Move("x", "hv1", "hv2", 10.0), Move("y", "hv1", "hv3", 10.0), Move("hot", "hv1", "hv2", None)]
    sizes = {"x": 500, "y": 500, "hot": 2000}
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, by_bytes(sizes, refuse_below={"hot": 80}))
    hot = schedule[-1]
    assert hot.vm == "hot" and hot.start_s == pytest.approx(10.0) and hot.start_bandwidth == 100.0
    assert hot.forecast.mode == F.PRECOPY and hot.end_s == pytest.approx(30.0)
    # ranked first (longest), it would start beside another at 50 B/s and be refused
    moves[2] = Move("hot", "hv1", "hv2", 99.0)
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, by_bytes(sizes, refuse_below={"hot": 80}))
    hot = next(s for s in schedule if s.vm == "hot")
    assert hot.forecast.mode == F.REFUSE and hot.end_s is None
    total = D.forecast_drain_shared(schedule, concurrency=2)
    assert total.blocked == ("hot",) and total.migrations == 2
    assert total.total_s == pytest.approx(10.0)  # x and y side by side at 50 B/s: 500 B each in 10 s


def test_abort_holds_its_lane_for_its_time():
    def predict(vm, bw):
        if vm == "late":
            return F.Forecast(F.PRECOPY, False, "abort", 60.0, 0.0, 1000, 5, False)
        return F.Forecast(F.PRECOPY, False, "ok", 1000 / bw, 20.0, 1000, 1, True)

    moves = [Move("late", "hv1", "hv2", 60.0), Move("ok", "hv1", "hv3", 20.0)]
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, predict)
    assert ends(schedule) == pytest.approx({"late": 60.0, "ok": 20.0})
    assert D.forecast_drain_shared(schedule, 2).blocked == ("late",)


def test_no_forecast_takes_no_time_and_empty_is_empty():
    moves = [Move("a", "hv1", "hv2", None), Move("b", "hv1", "hv3", 10.0)]
    schedule = D.simulate_drain(moves, TWO_LANES, LINK, lambda vm, bw: None if vm == "a" else
                                by_bytes({"b": 1000})(vm, bw))
    # b is forecast at 50 B/s (a counted when both start), then runs alone at 100 B/s: 1000 B in 10 s
    assert ends(schedule)["a"] == 0.0 and ends(schedule)["b"] == pytest.approx(10.0)
    assert D.simulate_drain([], TWO_LANES, LINK, by_bytes({})) == []
    with pytest.raises(F.ForecastError):
        D.simulate_drain(moves, TWO_LANES, 0, by_bytes({}))


def test_deterministic_with_real_forecasts():
    def predict(vm, bw):
        return F.forecast(256 * F.MIB, (100 if vm == "hot" else 1) * F.MIB, bw)

    moves = [Move(v, "hv1", "hv2" if i % 2 else "hv3", None) for i, v in enumerate(["i1", "i2", "mod", "hot"])]
    first = D.simulate_drain(moves, TWO_LANES, 35.8 * F.MIB, predict)
    again = D.simulate_drain(moves, TWO_LANES, 35.8 * F.MIB, predict)
    assert first == again
    total = D.forecast_drain_shared(first, 2)
    # the link never idles while something runs: at least every predicted byte over the link
    assert total.total_s >= total.predicted_bytes / (35.8 * F.MIB) - 1e-6


# ---- in the drain's plan -------------------------------------------------------------------------


def test_drain_plan_moves_a_vm_the_lane_split_refused(tmp_path):
    """200 Mbit/s (23.8 MiB/s), two lanes: at half the link (11.9 MiB/s) a 384 MiB guest dirtying 100 MiB/s
    needs ~65 s by post-copy (> its 60 s deadline) and is refused; it ranks last, starts when the two small
    guests are done and gets the whole link (~33 s): planned, by post-copy, not a blocker."""
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig
    from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
    from drain_fakes import FakeBackend, World, hosts, vm

    world = World(["hv1", "hv2", "hv3"])
    world.place("hv1", "a", vm(memory=64, dirty=0))
    world.place("hv1", "b", vm(memory=64, dirty=0))
    world.place("hv1", "hot", vm(memory=384, dirty=100 * F.MIB))
    _src, dests = hosts()
    src = Host("hv1", World.uri("hv1"), migration_address="10.0.0.1", link_mbit=200)
    # max_inbound 2: the small guests may go to the same host side by side whatever placement picks,
    # so the two lanes are theirs first (with max_inbound 1 the scheduler would start `hot` beside one of them)
    drainer = Drainer(FakeBackend(world), src, dests, DrainConfig(max_inbound=2), state_dir=tmp_path)
    result = drainer.drain(plan_only=True)
    assert result.blockers == []
    plan = {p["vm"]: p for p in result.plan}
    assert [p["vm"] for p in result.plan][-1] == "hot"
    assert plan["a"]["link_share_mib"] == plan["b"]["link_share_mib"] == 11.9
    assert plan["hot"]["link_share_mib"] == 23.8 and plan["hot"]["mode"] == "postcopy"
    assert plan["hot"]["predicted_start_s"] == pytest.approx(plan["a"]["predicted_end_s"])
    assert plan["hot"]["predicted_duration_s"] < 60
    assert result.forecast["total_s"] == pytest.approx(plan["hot"]["predicted_end_s"])
    assert [s["vm"] for s in result.forecast["schedule"]][-1] == "hot"
    # with one lane only the same guest also gets the whole link: the same decision
    lone = Drainer(FakeBackend(world), src, dests, DrainConfig(max_parallel=1), state_dir=tmp_path / "one")
    assert {p["vm"]: p["mode"] for p in lone.drain(plan_only=True).plan}["hot"] == "postcopy"


def test_drain_plan_forecasts_from_the_memory_in_use(tmp_path):
    """The resident size the backend reads (libvirt memoryStats rss) goes into each VM's forecast."""
    from drain_fakes import fleet, make, vm

    world = fleet(sparse=vm(memory=1024, dirty=0, resident=200), unknown=vm(memory=1024, dirty=0))
    drainer, _backend, _events = make(tmp_path, world)
    plan = {p["vm"]: p for p in drainer.drain(plan_only=True).plan}
    touched = 200 - F.DEFAULT_PARAMS.qemu_overhead_mib_kvm
    # pass 1 sends the memory in use; the final pause what an idle guest dirties meanwhile (the rate floor)
    assert touched * F.MIB < plan["sparse"]["predicted_bytes"] < 1.05 * touched * F.MIB
    assert 1024 * F.MIB < plan["unknown"]["predicted_bytes"] < 1.05 * 1024 * F.MIB
    assert plan["sparse"]["predicted_duration_s"] < plan["unknown"]["predicted_duration_s"] / 4
    assert f"~{touched:.0f} of 1024 MiB in use" in plan["sparse"]["mode_reason"]


def test_a_small_drain_is_summarised_in_tenths_of_a_second():
    fc = F.forecast(256 * F.MIB, 0, 200 * F.MIB, transferable_ratio=0.4)
    small = D.forecast_drain({"a": fc, "b": fc}, concurrency=2)
    assert f"{small.total_s:.1f} s (serial {small.serial_s:.1f} s)" in small.summary
    big = D.forecast_drain({"a": F.forecast(64 * F.GIB, 0, 200 * F.MIB)}, concurrency=1)
    assert f": {big.total_s:.0f} s (serial" in big.summary
