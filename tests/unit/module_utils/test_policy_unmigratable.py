"""The policy keys for VMs that cannot live-migrate (on_unmigratable, shutdown_timeout_s) and for a managed-save
image on a moving definition (managed_save): defaults, and a clear error for each bad value before anything runs."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy_problems as PP
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.unmigratable import (
    OnUnmigratable,
    expected_outage,
    on_unmigratable,
)


def one(settings):
    return [{"name": "odd", "selector": {"domains": ["odd-*"]}, "settings": settings}]


def problems_of(settings):
    with pytest.raises(PP.PolicyError) as info:
        P.load_policies(one(settings))
    return {p.path: p for p in info.value.problems}, str(info.value)


def test_defaults_block_with_a_two_minute_shutdown_and_refuse_managed_save():
    assert DEFAULT_SETTINGS["on_unmigratable"] == "block"
    assert DEFAULT_SETTINGS["shutdown_timeout_s"] == 120
    assert DEFAULT_SETTINGS["managed_save"] == "refuse"
    assert on_unmigratable(DEFAULT_SETTINGS) == OnUnmigratable.BLOCK
    assert expected_outage(DEFAULT_SETTINGS).describe().startswith("outage up to 130 s + the guest's boot")


def test_every_value_loads():
    for choice in ("block", "shutdown", "leave"):
        [policy] = P.load_policies(one({"on_unmigratable": choice}))
        assert policy.settings["on_unmigratable"] == choice
    [policy] = P.load_policies(one({"on_unmigratable": "shutdown", "shutdown_timeout_s": 600,
                                    "managed_save": "discard"}))
    assert policy.settings["shutdown_timeout_s"] == 600 and policy.settings["managed_save"] == "discard"
    assert expected_outage(policy.settings).bound_s == 610


def test_a_misspelt_value_names_the_field_and_suggests_the_word():
    found, text = problems_of({"on_unmigratable": "shutdwon"})
    problem = found["$[0].settings.on_unmigratable"]
    assert "did you mean 'shutdown'?" in problem.problem
    assert problem.expected == "one of 'block', 'shutdown', 'leave'"
    assert "policy 'odd'" in text
    found, _text = problems_of({"managed_save": "delete"})
    assert found["$[0].settings.managed_save"].expected == "one of 'refuse', 'discard'"


@pytest.mark.parametrize("value", [0, 9, 3601, 1e9, "120", True])
def test_a_shutdown_timeout_outside_its_range_is_refused_with_the_range(value):
    found, _text = problems_of({"on_unmigratable": "shutdown", "shutdown_timeout_s": value})
    problem = found["$[0].settings.shutdown_timeout_s"]
    assert "from 10 to 3600" in problem.expected


def test_a_shutdown_timeout_without_shutdown_is_a_contradiction():
    found, _text = problems_of({"shutdown_timeout_s": 300})
    problem = found["$[0].settings.shutdown_timeout_s"]
    assert "on_unmigratable is block" in problem.problem and "on_unmigratable: shutdown" in problem.expected
    found, _text = problems_of({"on_unmigratable": "leave", "shutdown_timeout_s": 300})
    assert "on_unmigratable is leave" in found["$[0].settings.shutdown_timeout_s"].problem
