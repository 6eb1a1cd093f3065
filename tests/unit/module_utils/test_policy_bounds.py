"""Every number a policy may hold is bounded, and whatever the bounds admit is safe downstream.

Why: a number the schema let through used to fail only in the middle of a drain, after the host
was cordoned (`completion_timeout_per_gib_s: 1e300` overflowed the deadline; 0.5 passed the schema
and the engine refused it). So the schema bounds every number, a value outside them is refused up
front with the policy, the key, the value and the range; and for any settings inside them the
forecast and the spec either work or raise the project's own HvfleetError, never a Python error.
"""

from __future__ import annotations

import copy
import math

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import ForecastVerdict
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy_problems as PP
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import forecast_for_settings
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import (
    DEFAULT_SETTINGS,
    MAX_MEMORY_MIB,
    SCHEMA,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import effective_mode, spec_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

MIB = 1024 ** 2
BASE = {"name": "edge", "selector": {"domains": ["web-*"]}}
SETTINGS = SCHEMA["$defs"]["settings"]["properties"]


def numeric_fields(node=None, path=()):
    """(path of keys inside one policy, its schema) for every integer or number a policy may hold."""
    node = SCHEMA["$defs"]["policy"] if node is None else node
    if "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if node.get("type") in ("integer", "number"):
        return [(path, node)]
    return [found for key, sub in node.get("properties", {}).items() for found in numeric_fields(sub, path + (key,))]


FIELDS = numeric_fields()
IDS = [".".join(path) for path, _prop in FIELDS]


def policy_with(path, value):
    """BASE with `value` at `path` (parents created)."""
    policy = copy.deepcopy(BASE)
    node = policy
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return policy


# ---- the bounds ------------------------------------------------------------------------------


def test_every_number_in_the_schema_has_a_finite_minimum_and_maximum():
    # the walk finds them all: priority, memory min/max, and the ten numeric settings
    assert {".".join(path) for path, _node in FIELDS} >= {
        "priority", "selector.memory_mib.min", "selector.memory_mib.max", "settings.max_downtime_ms",
        "settings.max_downtime_cap_ms", "settings.bandwidth_mib", "settings.postcopy_bandwidth_mib",
        "settings.auto_converge_initial", "settings.auto_converge_increment", "settings.parallel_connections",
        "settings.completion_timeout_per_gib_s", "settings.drain_order"}
    for path, prop in FIELDS:
        low, high = prop.get("minimum"), prop.get("maximum")
        assert isinstance(low, int) and isinstance(high, int), path
        assert low < high, path
        if "default" in prop:
            assert low <= prop["default"] <= high, path


@pytest.mark.parametrize("path, prop", FIELDS, ids=IDS)
def test_both_bounds_are_accepted(path, prop):
    for value in (prop["minimum"], prop["maximum"]):
        assert PP.schema_problems([policy_with(path, value)]) == []


def outside(prop):
    """Values just outside each bound, and absurd ones (what YAML's .inf or a typo gives)."""
    low, high = prop["minimum"], prop["maximum"]
    if prop["type"] == "integer":
        return [low - 1, high + 1, 10 * high + 7, -(2 ** 80), 2 ** 80]
    return [low / 2, high * 1.5, 1e300, float("inf"), float("-inf")]


@pytest.mark.parametrize("path, prop", FIELDS, ids=IDS)
def test_a_number_out_of_range_names_the_policy_the_key_the_value_and_the_range(path, prop):
    where = "$[0]." + ".".join(path)
    for value in outside(prop):
        with pytest.raises(PP.PolicyError) as info:
            P.load_policies([policy_with(path, value)])
        [problem] = info.value.problems
        text = str(info.value)
        kind = "an integer" if prop["type"] == "integer" else "a number"
        assert f"policy 'edge', {where}: got " in text
        assert PP._show(value) in problem.problem  # the value as written, e.g. 1e+300, Infinity
        assert problem.expected == f"{kind} from {prop['minimum']} to {prop['maximum']}"
        assert info.value.hint


def test_nan_passes_every_json_schema_bound_so_the_loader_refuses_it():
    policy = policy_with(("settings", "completion_timeout_per_gib_s"), float("nan"))
    assert PP.schema_problems([policy]) == []  # why the loader must check it itself
    with pytest.raises(PP.PolicyError) as info:
        P.load_policies([policy])
    [problem] = info.value.problems
    assert problem.path == "$[0].settings.completion_timeout_per_gib_s" and problem.policy == "policy 'edge'"
    assert "NaN" in problem.problem and problem.expected == "a number from 1 to 86400"


def test_the_bounds_of_the_reported_regressions():
    for value in (1e300, 0.5):  # overflowed the deadline after the cordon / refused by the engine after it
        with pytest.raises(PP.PolicyError, match=r"completion_timeout_per_gib_s: got .*from 1 to 86400"):
            P.load_policies([{"name": "p", "default": True, "settings": {"completion_timeout_per_gib_s": value}}])


# ---- whatever the bounds admit is safe downstream ------------------------------------------------


def strategy_for(prop):
    """Values the schema admits for one setting, its bounds (the extremes) drawn often."""
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    kind = prop.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":  # JSON Schema's integer also admits 300.0
        low, high = prop["minimum"], prop["maximum"]
        whole = st.integers(low, high)
        return st.one_of(st.sampled_from([low, high]), whole, whole.map(float))
    if kind == "number":
        low, high = prop["minimum"], prop["maximum"]
        return st.one_of(st.sampled_from([low, high, float(low), float(high)]), st.floats(low, high))
    if kind == "object":  # destinations: globs only, no numbers
        globs = st.lists(st.sampled_from(["hv*", "hv2", "rack1-*"]), min_size=1, max_size=2, unique=True)
        return st.fixed_dictionaries({}, optional={"pin": globs, "avoid": globs})
    raise AssertionError(f"no strategy for {prop}: extend strategy_for with the new kind of setting")


SETTINGS_STRATEGY = st.fixed_dictionaries({}, optional={key: strategy_for(prop) for key, prop in SETTINGS.items()})
# bytes and bytes/s: the extremes, every power of two between them (real sizes), and anything between
RAM = st.one_of(st.sampled_from([MIB, MAX_MEMORY_MIB * MIB]), st.integers(20, 46).map(lambda k: 2 ** k),
                st.integers(MIB, MAX_MEMORY_MIB * MIB))
RATE = st.one_of(st.sampled_from([0.0, 1.0, 1e12]), st.integers(10, 40).map(lambda k: float(2 ** k)),
                 st.floats(0.0, 1e12))  # idle .. 1 TB/s
LINK = st.one_of(st.sampled_from([1.0, 1.25e11]), st.integers(10, 36).map(lambda k: float(2 ** k)),
                 st.floats(1.0, 1.25e11))  # 1 B/s .. 1 Tbit/s
RATIO = st.one_of(st.just(1.0), st.floats(0.05, 1.0))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(declared=SETTINGS_STRATEGY, ram=RAM, dirty=RATE, link=LINK, ratio=RATIO)
@example(declared={"completion_timeout_per_gib_s": 86400, "bandwidth_mib": 8796093022207}, ram=MAX_MEMORY_MIB * MIB,
         dirty=1e12, link=1.0, ratio=1.0)
@example(declared={"max_downtime_ms": 2000000, "max_downtime_cap_ms": 2000000, "completion_timeout_per_gib_s": 1},
         ram=MIB, dirty=0.0, link=1.25e11, ratio=0.05)
def test_settings_the_schema_admits_forecast_and_spec_or_raise_hvfleet_error(declared, ram, dirty, link, ratio):
    assert PP.schema_problems([{"name": "p", "default": True, "settings": declared}]) == []  # the generator is right
    merged = dict(copy.deepcopy(DEFAULT_SETTINGS), **declared)
    try:
        forecast = forecast_for_settings(merged, ram, dirty, link, transferable_ratio=ratio,
                                         dirty_working_set=ratio * ram)
    except HvfleetError:
        forecast = None
    if forecast is not None:
        assert forecast.deadline_s is not None and math.isfinite(forecast.deadline_s)
        assert forecast.predicted_duration_s is None or math.isfinite(forecast.predicted_duration_s)
    for fc in {id(forecast): forecast, id(None): None}.values():
        try:
            mode, _converge, why = effective_mode(merged, fc)
            spec = spec_for(merged, fc, migrate_uri="tcp://10.0.0.2", bandwidth_mib=link / MIB)
        except HvfleetError as exc:
            assert exc.hint
            continue
        assert spec.mode == mode and why
        assert math.isfinite(spec.deadline_s(ram))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(declared=SETTINGS_STRATEGY, ram=RAM, dirty=RATE, link=LINK)
def test_settings_the_loader_accepts_give_the_engine_a_valid_spec(declared, ram, dirty, link):
    """Whatever the loader accepts, the engine accepts too: the only refusal left after the cordon is
    the forecast's own (no mode fits), never a setting the loader should have refused up front."""
    try:
        [policy] = P.load_policies([{"name": "p", "default": True, "settings": declared}])
    except PP.PolicyError:
        return
    try:
        forecast = forecast_for_settings(policy.settings, ram, dirty, link)
    except HvfleetError:
        forecast = None
    if forecast is not None and forecast.mode == ForecastVerdict.REFUSE:
        return
    spec = spec_for(policy.settings, forecast, migrate_uri="tcp://10.0.0.2")
    assert spec.completion_timeout_per_gib_s == policy.settings["completion_timeout_per_gib_s"]
