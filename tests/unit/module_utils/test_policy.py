"""Policy selection: selectors, precedence, reasons, defaults, and the one-policy-per-VM property."""

import copy
import fnmatch
import json
import os

import jsonschema
import pytest
import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import (
    Compression,
    Mode,
    OnTimeout,
    Storage,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy_problems as PP
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS, SCHEMA
from hypothesis import given, settings
from hypothesis import strategies as st

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_JSON = os.path.join(HERE, "..", "..", "..", "plugins", "module_utils", "planning", "policy_schema.json")

POLICIES = [
    {"name": "db-postcopy", "selector": {"labels": {"app": "db"}, "memory_mib": {"min": 2048}},
     "settings": {"mode": "postcopy"}},
    {"name": "db-any", "selector": {"labels": {"app": ["db", "cache"]}}, "settings": {"mode": "precopy"}},
    {"name": "web-glob", "selector": {"domains": ["web-*"]}},
    {"name": "web-glob-urgent", "selector": {"domains": ["web-*"]}, "priority": 10},
    {"name": "web-07", "selector": {"domains": ["web-07"]}},
    {"name": "big", "selector": {"memory_mib": {"min": 16384, "max": 65536}}, "settings": {"tls": True}},
    {"name": "fallback", "default": True, "settings": {"mode": "precopy", "max_downtime_ms": 300}},
]


@pytest.fixture(name="policies")
def fixture_policies():
    return P.load_policies(copy.deepcopy(POLICIES))


# ---- the shipped schema ---------------------------------------------------------------------


def test_schema_json_file_equals_the_python_dict():
    with open(SCHEMA_JSON, encoding="utf-8") as handle:
        assert json.load(handle) == json.loads(json.dumps(SCHEMA))


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_default_settings_are_the_careful_operators():
    assert set(DEFAULT_SETTINGS) == set(SCHEMA["$defs"]["settings"]["properties"])
    assert DEFAULT_SETTINGS["mode"] == "auto"
    assert DEFAULT_SETTINGS["allow_postcopy"] is True
    assert DEFAULT_SETTINGS["max_downtime_ms"] == 500
    assert DEFAULT_SETTINGS["max_downtime_cap_ms"] == 2000
    assert DEFAULT_SETTINGS["completion_timeout_per_gib_s"] == 150
    assert DEFAULT_SETTINGS["on_timeout"] == "abort"
    assert DEFAULT_SETTINGS["storage"] == "shared_only"
    assert DEFAULT_SETTINGS["tls"] is False
    assert DEFAULT_SETTINGS["bandwidth_mib"] is None
    assert DEFAULT_SETTINGS["destinations"] == {"pin": [], "avoid": []}


@pytest.mark.parametrize("key, words", [("mode", Mode), ("compression", Compression), ("on_timeout", OnTimeout),
                                        ("storage", Storage)])
def test_the_schema_speaks_the_one_vocabulary(key, words):
    """The choices a policy may name are the vocabulary's words, in its order, so they cannot drift apart."""
    prop = SCHEMA["$defs"]["settings"]["properties"][key]
    assert prop["enum"] == [word.value for word in words]
    assert prop["default"] in list(words) and isinstance(DEFAULT_SETTINGS[key], words)
    with open(SCHEMA_JSON, encoding="utf-8") as handle:
        assert json.load(handle)["$defs"]["settings"]["properties"][key]["enum"] == words.values()


def test_every_object_in_the_schema_forbids_unknown_keys():
    def objects(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)
        elif isinstance(node, list):
            for value in node:
                yield from objects(value)

    found = list(objects(SCHEMA))
    assert len(found) >= 5
    for node in found:
        assert "additionalProperties" in node, node.get("description", node)
        # labels are a free map of label names, but their values are constrained
        assert node["additionalProperties"] is False or "anyOf" in node["additionalProperties"]


# ---- selectors ------------------------------------------------------------------------------


def test_labels_and_memory_select(policies):
    match = P.select_policy(policies, "pg-1", {"app": "db"}, 4096)
    assert match.policy.name == "db-postcopy"
    assert match.specificity == 2
    assert match.reason.startswith("policy 'db-postcopy': labels app=db, memory 4096 MiB in [2048, ∞) (specificity 2)")


def test_memory_below_the_range_falls_to_the_less_specific_label_policy(policies):
    match = P.select_policy(policies, "pg-1", {"app": "db"}, 1024)
    assert match.policy.name == "db-any"
    assert match.settings["mode"] == "precopy"


def test_label_list_accepts_any_listed_value(policies):
    assert P.select_policy(policies, "c1", {"app": "cache"}, 512).policy.name == "db-any"
    assert P.select_policy(policies, "c1", {"app": "queue"}, 512).policy.name == "fallback"


def test_label_key_missing_does_not_match(policies):
    assert P.select_policy(policies, "c1", {"role": "db"}, 4096).policy.name == "fallback"


def test_memory_range_bounds_are_inclusive(policies):
    assert P.select_policy(policies, "vm", {}, 16384).policy.name == "big"
    assert P.select_policy(policies, "vm", {}, 65536).policy.name == "big"
    assert P.select_policy(policies, "vm", {}, 65537).policy.name == "fallback"
    assert P.select_policy(policies, "vm", {}, 16383).policy.name == "fallback"


def test_unknown_memory_never_matches_a_memory_selector(policies):
    assert P.select_policy(policies, "pg-1", {"app": "db"}, None).policy.name == "db-any"


def test_all_criteria_must_hold():
    policies = P.load_policies([{"name": "both", "selector": {"domains": ["db-*"], "labels": {"tier": "gold"}}}])
    assert P.select_policy(policies, "db-1", {"tier": "gold"}, 1).policy.name == "both"
    assert P.select_policy(policies, "db-1", {"tier": "silver"}, 1).policy.builtin
    assert P.select_policy(policies, "web-1", {"tier": "gold"}, 1).policy.builtin


def test_globs_are_case_sensitive():
    policies = P.load_policies([{"name": "web", "selector": {"domains": ["web-*"]}}])
    assert P.select_policy(policies, "WEB-1", {}, 1).policy.builtin


# ---- precedence ------------------------------------------------------------------------------


def test_exact_name_beats_a_glob_even_with_lower_priority(policies):
    match = P.select_policy(policies, "web-07", {}, 1024)
    assert match.policy.name == "web-07"
    assert match.specificity == 2
    assert "name 'web-07'" in match.reason
    assert "also matched 'web-glob-urgent' (specificity 1)" in match.reason


def test_priority_breaks_a_tie_in_specificity(policies):
    match = P.select_policy(policies, "web-01", {}, 1024)
    assert match.policy.name == "web-glob-urgent"
    assert match.reason == ("policy 'web-glob-urgent': name 'web-01' matches 'web-*' (specificity 1, priority 10); "
                            "also matched 'web-glob' (specificity 1, priority 0)")


def test_declaration_order_breaks_a_full_tie():
    policies = P.load_policies([
        {"name": "first", "selector": {"labels": {"a": "1"}}},
        {"name": "second", "selector": {"labels": {"b": "2"}}},
    ])
    match = P.select_policy(policies, "vm", {"a": "1", "b": "2"}, 1)
    assert match.policy.name == "first"
    assert "'second' (specificity 1, priority 0, declared later)" in match.reason


def test_more_label_keys_are_more_specific():
    policies = P.load_policies([
        {"name": "one", "selector": {"labels": {"app": "db"}}, "priority": 100},
        {"name": "two", "selector": {"labels": {"app": "db", "tier": "gold"}}},
    ])
    match = P.select_policy(policies, "vm", {"app": "db", "tier": "gold"}, 1)
    assert (match.policy.name, match.specificity) == ("two", 2)


def test_default_policy_catches_the_rest(policies):
    match = P.select_policy(policies, "lonely", {}, 1024)
    assert match.policy.name == "fallback"
    assert match.reason == "policy 'fallback': the default policy, no other policy matched"
    assert match.settings["max_downtime_ms"] == 300
    assert match.settings["max_downtime_cap_ms"] == 2000  # untouched keys keep their defaults


def test_default_is_never_preferred_over_a_match_even_if_declared_first():
    policies = P.load_policies([
        {"name": "catch-all", "default": True, "priority": 1000},
        {"name": "web", "selector": {"domains": ["*"]}},
    ])
    assert P.select_policy(policies, "anything", {}, 1).policy.name == "web"


def test_builtin_defaults_without_a_declared_default():
    for policies in ([], None, P.load_policies([{"name": "web", "selector": {"domains": ["web-*"]}}])):
        match = P.select_policy(policies, "db-1", {}, 1024)
        assert match.policy is P.BUILTIN_DEFAULT
        assert match.settings == DEFAULT_SETTINGS
        assert "built-in defaults" in match.reason


def test_select_accepts_raw_inventory_data_and_validates_it():
    assert P.select_policy(copy.deepcopy(POLICIES), "web-07", {}, 1).policy.name == "web-07"
    with pytest.raises(PP.PolicyError):
        P.select_policy([{"name": "x", "selector": {"domains": ["*"]}, "settings": {"mode": "fast"}}], "vm", {}, 1)


def test_settings_are_a_private_copy(policies):
    match = P.select_policy(policies, "lonely", {}, 1024)
    match.settings["destinations"]["pin"].append("hv9")
    match.settings["mode"] = "postcopy"
    again = P.select_policy(policies, "lonely", {}, 1024)
    assert again.settings["mode"] == "precopy"
    assert again.settings["destinations"]["pin"] == []
    assert DEFAULT_SETTINGS["destinations"]["pin"] == []


def test_declared_destinations_merge_with_defaults():
    policies = P.load_policies([{"name": "p", "default": True, "settings": {"destinations": {"avoid": ["hv3"]}}}])
    assert policies[0].settings["destinations"] == {"pin": [], "avoid": ["hv3"]}
    assert policies[0].declared == {"destinations": {"avoid": ["hv3"]}}


def test_as_dict_is_plain_data(policies):
    data = P.select_policy(policies, "pg-1", {"app": "db"}, 4096).as_dict()
    assert data["policy"] == "db-postcopy"
    assert data["settings"]["mode"] == "postcopy"
    json.dumps(data)


# ---- files ------------------------------------------------------------------------------------


def test_load_yaml_list(tmp_path):
    path = tmp_path / "policies.yml"
    path.write_text("- name: web\n  selector:\n    domains: ['web-*']\n  settings:\n    mode: precopy\n")
    [policy] = P.load_policy_file(path)
    assert (policy.name, policy.settings["mode"], policy.index) == ("web", "precopy", 0)


def test_load_group_vars_mapping(tmp_path):
    path = tmp_path / "all.yml"
    path.write_text("other_var: 1\nhvfleet_migration_policies:\n  - name: all\n    default: true\n")
    [policy] = P.load_policy_file(str(path))
    assert policy.default


def test_load_json(tmp_path):
    path = tmp_path / "policies.json"
    path.write_text(json.dumps(POLICIES))
    assert [p.name for p in P.load_policy_file(path)] == [p["name"] for p in POLICIES]


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    path = tmp_path / "policies.yml"
    path.write_text(
        "- name: base\n  default: true\n  settings: &s\n    mode: precopy\n    tls: true\n"
        "- name: web\n  selector: {domains: ['web-*']}\n  settings:\n    <<: *s\n    mode: postcopy\n")
    policies = P.load_policy_file(path)
    assert policies[1].settings["mode"] == "postcopy"
    assert policies[1].settings["tls"] is True


# ---- property: exactly one policy per VM --------------------------------------------------------

GLOBS = ["web-*", "db-*", "db-01", "*", "x?", "[dw]*"]
LABEL_KEYS = ["app", "tier"]
LABEL_VALUES = ["db", "web", "gold"]
NAMES = ["web-1", "db-01", "db-02", "x1", "other", "WEB-1"]
MEMORIES = [None, 0, 512, 2048, 4096, 65536]


@st.composite
def selectors(draw):
    selector = {}
    if draw(st.booleans()):
        selector["domains"] = draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3, unique=True))
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(LABEL_KEYS), min_size=1, max_size=2, unique=True))
        selector["labels"] = {
            k: draw(st.one_of(st.sampled_from(LABEL_VALUES),
                              st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True)))
            for k in keys}
    if draw(st.booleans()) or not selector:
        low = draw(st.one_of(st.none(), st.sampled_from([0, 1024, 2048])))
        high = draw(st.one_of(st.none(), st.sampled_from([2048, 8192])))
        if low is None and high is None:
            low = 1024
        selector["memory_mib"] = {k: v for k, v in (("min", low), ("max", high)) if v is not None}
    return selector


@st.composite
def policy_lists(draw):
    count = draw(st.integers(min_value=0, max_value=6))
    items = [{"name": f"p{i}", "selector": draw(selectors()), "priority": draw(st.integers(0, 2))}
             for i in range(count)]
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), {"name": "the-default", "default": True})
    return items


def oracle_specificity(selector, name, labels, memory):
    """An independent reading of the documented rule; None when the selector does not match."""
    score = 0
    if "domains" in selector:
        if name in selector["domains"] and not any(c in name for c in "*?["):
            score += 2
        elif any(fnmatch.fnmatchcase(name, g) for g in selector["domains"]):
            score += 1
        else:
            return None
    for key, want in selector.get("labels", {}).items():
        if labels.get(key) not in (want if isinstance(want, list) else [want]):
            return None
        score += 1
    if "memory_mib" in selector:
        rng = selector["memory_mib"]
        if memory is None or memory < rng.get("min", 0) or memory > rng.get("max", float("inf")):
            return None
        score += 1
    return score


@settings(max_examples=300, deadline=None)
@given(items=policy_lists(), name=st.sampled_from(NAMES),
       labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES)),
       memory=st.sampled_from(MEMORIES))
def test_every_vm_gets_exactly_one_policy_the_same_each_time(items, name, labels, memory):
    policies = P.load_policies(items)
    match = P.select_policy(policies, name, labels, memory)
    again = P.select_policy(policies, name, dict(reversed(list(labels.items()))), memory)
    assert (again.policy.name, again.reason, again.settings) == (match.policy.name, match.reason, match.settings)

    scored = [(oracle_specificity(p.selector, name, labels, memory), p) for p in policies if not p.default]
    matching = [(s, p) for s, p in scored if s is not None]
    if not matching:
        declared_default = [p for p in policies if p.default]
        expected = declared_default[0] if declared_default else P.BUILTIN_DEFAULT
        assert match.policy is expected
        return
    best = min(matching, key=lambda sp: (-sp[0], -sp[1].priority, sp[1].index))
    assert match.policy is best[1]
    assert match.specificity == best[0]
    assert match.reason.startswith(f"policy '{best[1].name}': ")


def test_the_documented_example_selects_as_documented():
    doc = os.path.join(HERE, "..", "..", "..", "docs", "POLICIES.md")
    with open(doc, encoding="utf-8") as handle:
        text = handle.read()
    example = yaml.safe_load(text.split("```yaml", 1)[1].split("```", 1)[0])
    policies = P.load_policies(example["hvfleet_migration_policies"])
    reason = P.select_policy(policies, "pg-1", {"app": "db"}, 4096).reason
    assert reason in text
    assert P.select_policy(policies, "mail-1", {}, 1024).reason in text
