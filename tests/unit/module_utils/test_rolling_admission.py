"""Admission rules of the rolling strategy: examples, windows, and simulated runs (hypothesis)."""

import datetime
import random

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_admission as RA
from hypothesis import given, settings
from hypothesis import strategies as st

UTC = datetime.UTC
NOON = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def H(name, **kw):
    return RA.Host(name=name, **kw)


# ------------------------------------------------------------------------------------ examples


def test_admits_up_to_max_in_flight_in_order():
    hosts = [H("c"), H("a"), H("b"), H("d")]
    decision = RA.decide(RA.Settings(max_in_flight=2), hosts, now=NOON)
    assert decision.admit == ("a", "b")
    assert decision.waiting == {"c": "max in flight reached (2)", "d": "max in flight reached (2)"}
    assert not decision.final


def test_next_host_as_soon_as_one_finishes():
    hosts = [H("a"), H("b"), H("c")]
    decision = RA.decide(RA.Settings(max_in_flight=2), hosts, in_flight=["b"], finished=["a"], now=NOON)
    assert decision.admit == ("c",)


def test_one_per_failure_domain_and_busy_domain_does_not_block_others():
    hosts = [H("a", domain="r1"), H("b", domain="r1"), H("c", domain="r2"), H("d", domain="r3")]
    decision = RA.decide(RA.Settings(max_in_flight=3), hosts, now=NOON)
    assert decision.admit == ("a", "c", "d")
    assert decision.waiting["b"].startswith(RA.REASON_DOMAIN) and "r1: a in flight" in decision.waiting["b"]


def test_undefined_domain_is_one_shared_domain():
    hosts = [H("a", domain=RA.UNDEFINED_DOMAIN), H("b", domain=RA.UNDEFINED_DOMAIN), H("c", domain=None)]
    decision = RA.decide(RA.Settings(max_in_flight=3), hosts, now=NOON)
    assert decision.admit == ("a", "c")


def test_order_key_numbers_then_strings_then_undefined_then_name():
    hosts = [H("z", order=None), H("y", order="b"), H("x", order=10), H("w", order=2), H("v", order="a"),
             H("u", order=None), H("t", order=2)]
    assert [h.name for h in RA.order_hosts(hosts)] == ["t", "w", "x", "v", "y", "u", "z"]


def test_failures_beyond_threshold_stop_admission_for_good():
    hosts = [H("a"), H("b"), H("c"), H("d")]
    s0 = RA.Settings(max_in_flight=2, max_failures=0)
    d = RA.decide(s0, hosts, in_flight=["b"], finished=["a"], failed=["a"], now=NOON)
    assert d.admit == () and d.final
    assert set(d.waiting) == {"c", "d"} and all(r.startswith(RA.REASON_FAILURES) for r in d.waiting.values())
    s1 = RA.Settings(max_in_flight=2, max_failures=1)
    assert RA.decide(s1, hosts, in_flight=["b"], finished=["a"], failed=["a"], now=NOON).admit == ("c",)
    assert RA.decide(s1, hosts, finished=["a", "b"], failed=["a", "b"], now=NOON).admit == ()


def test_capacity_aggregate_check():
    hosts = [H(n, vm_memory_mib=100, free_memory_mib=60) for n in "abcd"]
    s = RA.Settings(max_in_flight=4)
    d = RA.decide(s, hosts, now=NOON)
    assert d.admit == ("a",) and d.capacity_checked  # a: 100 <= 3*60; a+b: 200 > 2*60
    assert d.waiting["b"] == RA.REASON_CAPACITY
    # a failed host gives no capacity and its VMs still count
    d = RA.decide(RA.Settings(max_in_flight=4, max_failures=5), hosts, finished=["a"], failed=["a"], now=NOON)
    assert d.admit == ()
    assert d.final  # nothing in flight, nothing fits: the run cannot progress


def test_capacity_skipped_when_a_figure_is_missing_or_disabled():
    hosts = [H("a", vm_memory_mib=100, free_memory_mib=1), H("b", vm_memory_mib=100)]
    d = RA.decide(RA.Settings(max_in_flight=2), hosts, now=NOON)
    assert d.admit == ("a", "b") and not d.capacity_checked
    full = [H("a", vm_memory_mib=100, free_memory_mib=1), H("b", vm_memory_mib=100, free_memory_mib=1)]
    assert RA.decide(RA.Settings(max_in_flight=2, capacity_check=False), full, now=NOON).admit == ("a", "b")
    assert RA.decide(RA.Settings(max_in_flight=2), full, now=NOON).admit == ()


def test_window_closed_no_admission_and_final_when_nothing_in_flight():
    night = RA.parse_window("22:00-04:00")
    hosts = [H("a", window=night), H("b", window=night)]
    d = RA.decide(RA.Settings(max_in_flight=2), hosts, now=NOON)
    assert d.admit == () and d.final
    assert d.waiting["a"] == "outside its maintenance window (daily 22:00-04:00 UTC)"
    d = RA.decide(RA.Settings(max_in_flight=2), hosts, in_flight=["a"], now=NOON)
    assert d.admit == () and not d.final  # a finishes first
    assert RA.decide(RA.Settings(max_in_flight=2), hosts, now=NOON.replace(hour=23)).admit == ("a", "b")


@pytest.mark.parametrize(("spec", "inside", "outside"), [
    ("22:00-04:00", ["22:00", "23:59", "00:00", "03:59"], ["04:00", "12:00", "21:59"]),
    ("01:30-02:00", ["01:30", "01:59"], ["01:29", "02:00"]),
    ("00:00-24:00", ["00:00", "12:00", "23:59"], []),
    ("20:00-24:00", ["20:00", "23:59"], ["00:00", "19:59"]),
])
def test_daily_window(spec, inside, outside):
    window = RA.parse_window(spec)

    def at(hhmm):
        h, m = map(int, hhmm.split(":"))
        return NOON.replace(hour=h, minute=m)

    assert all(window.contains(at(t)) for t in inside)
    assert not any(window.contains(at(t)) for t in outside)


def test_daily_window_is_utc():
    window = RA.parse_window("10:00-11:00")
    cest = datetime.timezone(datetime.timedelta(hours=2))
    assert window.contains(datetime.datetime(2025, 6, 1, 12, 30, tzinfo=cest))  # 10:30 UTC
    assert not window.contains(datetime.datetime(2025, 6, 1, 10, 30, tzinfo=cest))


def test_absolute_window_forms():
    w = RA.parse_window({"start": "2025-06-01T22:00:00Z", "end": "2025-06-02T04:00:00+00:00"})
    assert w.contains(datetime.datetime(2025, 6, 1, 22, 0, tzinfo=UTC))
    assert not w.contains(datetime.datetime(2025, 6, 2, 4, 0, tzinfo=UTC))
    naive = RA.parse_window({"start": datetime.datetime(2025, 6, 1, 22), "end": "2025-06-02T04:00"})
    assert naive == w  # naive means UTC; YAML may hand over datetime objects
    both = RA.parse_window(["01:00-02:00", {"start": "2025-06-01T11:00:00Z", "end": "2025-06-01T13:00:00Z"}])
    assert both.contains(NOON) and both.contains(NOON.replace(day=5, hour=1)) and not both.contains(NOON.replace(day=5))
    assert RA.parse_window(None) is None and RA.parse_window("") is None and RA.parse_window([]) is None


@pytest.mark.parametrize("spec", [
    "22-04", "25:00-01:00", "10:60-11:00", "10:00-10:00", {"start": "2025-06-01T10:00:00Z"},
    {"start": "2025-06-01T10:00:00Z", "end": "2025-06-01T09:00:00Z"}, {"start": "tomorrow", "end": "later"},
    {"start": "2025-06-01T10:00:00Z", "end": "2025-06-01T11:00:00Z", "tz": "x"}, 42,
])
def test_invalid_windows_are_refused_with_a_hint(spec):
    with pytest.raises(RA.RollingConfigError) as err:
        RA.parse_window(spec)
    assert err.value.hint


@pytest.mark.parametrize("kw", [{"max_in_flight": 0}, {"max_in_flight": True}, {"max_in_flight": "2"},
                                {"max_failures": -1}])
def test_invalid_settings(kw):
    with pytest.raises(RA.RollingConfigError):
        RA.Settings(**kw)


# ------------------------------------------------------------------------------ reading the settings


def test_settings_default_when_no_host_sets_them():
    assert RA.read_settings({"a": {}, "b": {"other_var": 1}}) == RA.Settings()
    assert RA.read_settings({}) == RA.Settings()


def test_settings_read_from_every_host_of_the_play_and_converted():
    same = {"hvfleet_rolling_max_in_flight": "2", "hvfleet_rolling_failure_domain_key": " rack ",
            "hvfleet_rolling_order_key": "hvfleet_hypervisor.prio", "hvfleet_rolling_max_failures": 1,
            "hvfleet_rolling_capacity_check": "no"}
    settings = RA.read_settings({"a": dict(same), "b": dict(same, hvfleet_rolling_max_in_flight=2)})
    assert settings == RA.Settings(max_in_flight=2, max_failures=1, capacity_check=False,
                                   failure_domain_key="rack", order_key="hvfleet_hypervisor.prio")


def test_empty_or_none_setting_is_unset():
    values = {"hvfleet_rolling_failure_domain_key": "", "hvfleet_rolling_max_in_flight": None}
    assert RA.read_settings({"a": values, "b": {}}) == RA.Settings()


def test_unknown_setting_is_an_error_naming_it_and_the_fix():
    with pytest.raises(RA.RollingConfigError) as err:
        RA.read_settings({"a": {"hvfleet_rolling_max_inflight": 2}, "b": {"hvfleet_rolling_max_inflight": 2}})
    assert "unknown setting hvfleet_rolling_max_inflight (set for a, b)" in str(err.value)
    assert "did you mean hvfleet_rolling_max_in_flight?" in err.value.hint


def test_hosts_that_disagree_are_an_error_naming_the_setting_and_the_hosts():
    hosts = {f"h{i}": {"hvfleet_rolling_failure_domain_key": "rack"} for i in range(7)}
    hosts["z1"] = {"hvfleet_rolling_failure_domain_key": "zone"}
    hosts["z2"] = {}
    with pytest.raises(RA.RollingConfigError) as err:
        RA.read_settings(hosts)
    assert str(err.value).startswith(
        "hvfleet_rolling_failure_domain_key differs between the hosts of the play: "
        "'rack' on h0, h1, h2, h3, h4 and 2 more; 'zone' on z1; unset on z2.")
    assert "group_vars" in err.value.hint and "-e" in err.value.hint


@pytest.mark.parametrize(("name", "value", "message"), [
    ("hvfleet_rolling_max_in_flight", "two", "hvfleet_rolling_max_in_flight must be a whole number, got 'two'."),
    ("hvfleet_rolling_max_in_flight", 1.5, "hvfleet_rolling_max_in_flight must be a whole number, got 1.5."),
    ("hvfleet_rolling_max_in_flight", True, "hvfleet_rolling_max_in_flight must be a whole number, got True."),
    ("hvfleet_rolling_max_in_flight", "0", "hvfleet_rolling_max_in_flight must be an integer >= 1, got 0."),
    ("hvfleet_rolling_max_failures", "-1", "hvfleet_rolling_max_failures must be an integer >= 0, got -1."),
    ("hvfleet_rolling_capacity_check", "maybe", "hvfleet_rolling_capacity_check must be true or false, got 'maybe'."),
    ("hvfleet_rolling_failure_domain_key", ["rack"], "hvfleet_rolling_failure_domain_key must name a host variable"),
    ("hvfleet_rolling_order_key", "prio order", "hvfleet_rolling_order_key must name a host variable"),
])
def test_unreadable_setting_is_an_error_naming_it_and_the_fix(name, value, message):
    with pytest.raises(RA.RollingConfigError) as err:
        RA.read_settings({"a": {name: value}})
    assert str(err.value).startswith(message)
    assert err.value.hint


# ------------------------------------------------------------------------------ properties


@st.composite
def fleets(draw):
    count = draw(st.integers(1, 12))
    names = draw(st.lists(st.from_regex(r"[a-z]{1,3}[0-9]{0,2}", fullmatch=True), min_size=count, max_size=count,
                          unique=True))
    with_capacity = draw(st.booleans())
    hosts = []
    for name in names:
        hosts.append(RA.Host(
            name=name,
            domain=draw(st.one_of(st.none(), st.sampled_from(["r1", "r2", "r3", RA.UNDEFINED_DOMAIN]))),
            order=draw(st.one_of(st.none(), st.integers(0, 5), st.sampled_from(["a", "b"]))),
            vm_memory_mib=draw(st.integers(0, 100)) if with_capacity else None,
            free_memory_mib=draw(st.integers(0, 100)) if with_capacity else None,
            window=draw(st.sampled_from([None, RA.parse_window("22:00-04:00"), RA.parse_window("00:00-24:00")])),
        ))
    policy = RA.Settings(max_in_flight=draw(st.integers(1, 4)), max_failures=draw(st.integers(0, 2)),
                         capacity_check=draw(st.booleans()))
    return hosts, policy


def simulate(hosts, policy, now, rng):
    """Run a whole rolling play: admit, then finish one random in-flight host (ok or failed)."""
    by_name = {h.name: h for h in hosts}
    in_flight, finished, failed, admitted, decisions = [], set(), set(), [], []
    for _step in range(4 * len(hosts) + 4):
        decision = RA.decide(policy, hosts, in_flight, finished, failed, now)
        decisions.append((list(in_flight), set(finished), set(failed), decision))
        for name in decision.admit:
            in_flight.append(name)
            admitted.append(name)
            # invariants right after each admission
            assert len(in_flight) <= policy.max_in_flight
            domains = [by_name[h].domain for h in in_flight if by_name[h].domain is not None]
            assert len(domains) == len(set(domains))
            window = by_name[name].window
            assert window is None or window.contains(now)
            assert len(failed) <= policy.max_failures
            if policy.capacity_check and RA.capacity_known(hosts):
                assert RA.fits(hosts, set(in_flight) | failed)
        if not in_flight:
            break
        done = in_flight.pop(rng.randrange(len(in_flight)))
        finished.add(done)
        if rng.random() < 0.3:
            failed.add(done)
    return admitted, decisions


@settings(max_examples=300, deadline=None)
@given(fleets(), st.sampled_from([NOON, NOON.replace(hour=23)]), st.integers(0, 2**32))
def test_simulated_runs_respect_every_limit(fleet, now, seed):
    hosts, policy = fleet
    admitted, decisions = simulate(hosts, policy, now, random.Random(seed))
    assert len(admitted) == len(set(admitted))
    in_flight, finished, failed, last = decisions[-1]
    assert not in_flight  # the run always ends: every in-flight host finishes, then admission is final or done
    waiting = [h.name for h in hosts if h.name not in admitted]
    assert set(last.waiting) == set(waiting)
    assert not waiting or last.final
    # no admission after the threshold was passed
    for _in_flight, _finished, failed_then, decision in decisions:
        if len(failed_then) > policy.max_failures:
            assert decision.admit == () and decision.final


@settings(max_examples=200, deadline=None)
@given(fleets(), st.sampled_from([NOON, NOON.replace(hour=23)]), st.data())
def test_decision_is_deterministic_and_follows_order(fleet, now, data):
    hosts, policy = fleet
    started = data.draw(st.lists(st.sampled_from([h.name for h in hosts]), unique=True, max_size=len(hosts)))
    in_flight = started[: policy.max_in_flight]
    finished = started[policy.max_in_flight:]
    failed = [h for h in started if data.draw(st.booleans())]
    shuffled = data.draw(st.permutations(hosts))
    a = RA.decide(policy, hosts, in_flight, finished, failed, now)
    b = RA.decide(policy, shuffled, list(reversed(in_flight)), finished, failed, now)
    assert a == b
    assert [h.name for h in RA.order_hosts(shuffled)] == [h.name for h in RA.order_hosts(hosts)]
    order = [h.name for h in RA.order_hosts(hosts)]
    positions = [order.index(n) for n in a.admit]
    assert positions == sorted(positions)
    # a waiting host ahead of an admitted one waits for a reason that does not apply to the other
    for name in a.admit:
        for earlier in order[: order.index(name)]:
            if earlier in a.waiting:
                assert not a.waiting[earlier].startswith(RA.REASON_IN_FLIGHT)
                assert not a.waiting[earlier].startswith(RA.REASON_FAILURES)


@given(st.integers(0, 24 * 60 - 1), st.integers(0, 24 * 60), st.integers(0, 24 * 60 - 1))
def test_daily_window_matches_minute_arithmetic(start, end, minute):
    if start == end:
        return
    spec = f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
    window = RA.parse_window(spec)
    now = NOON.replace(hour=minute // 60, minute=minute % 60)
    expected = start <= minute < end if start < end else (minute >= start or minute < end)
    assert window.contains(now) is expected
