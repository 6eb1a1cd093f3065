"""Malformed policies: every error names the file, the policy, the JSON path and what was expected."""

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy_problems as PP

GOOD = {"name": "web", "selector": {"domains": ["web-*"]}}


def problems_of(data):
    with pytest.raises(PP.PolicyError) as info:
        P.load_policies(data)
    return info.value, {p.path: p for p in info.value.problems}


def test_bad_enum_in_a_file_names_file_policy_path_and_choices(tmp_path):
    path = tmp_path / "group_vars" / "hypervisors.yml"
    path.parent.mkdir()
    path.write_text(
        "hvfleet_migration_policies:\n"
        "  - name: web\n    selector: {domains: ['web-*']}\n"
        "  - name: db\n    selector: {labels: {app: db}}\n"
        "  - name: db-postcopy\n    selector: {labels: {app: db, tier: gold}}\n"
        "    settings:\n      mode: postcopy-fast\n")
    with pytest.raises(PP.PolicyError) as info:
        P.load_policy_file(path)
    error = info.value
    text = str(error)
    assert str(path) in text
    assert "policy 'db-postcopy'" in text
    assert "$[2].settings.mode" in text
    assert "'precopy', 'postcopy', 'postcopy_after_precopy', 'auto'" in text
    assert "got 'postcopy-fast'" in text
    [problem] = error.problems
    assert (problem.path, problem.policy) == ("$[2].settings.mode", "policy 'db-postcopy'")
    assert problem.expected == "one of 'precopy', 'postcopy', 'postcopy_after_precopy', 'auto'"
    assert error.source == f"{path} (variable hvfleet_migration_policies)"
    assert isinstance(error, HvfleetError) and error.hint


def test_inventory_data_is_named_as_the_inventory_variable():
    error, found = problems_of([GOOD, {"name": "x", "selector": {"domains": ["*"]}, "settings": {"tls": "yes"}}])
    assert str(error).startswith("inventory variable hvfleet_migration_policies: 1 problem")
    assert found["$[1].settings.tls"].expected == "true or false"
    assert found["$[1].settings.tls"].policy == "policy 'x'"


def test_typo_in_a_field_name_is_caught_with_a_suggestion():
    _error, found = problems_of([dict(GOOD, settings={"max_downtime": 300})])
    problem = found["$[0].settings.max_downtime"]
    assert "unknown field 'max_downtime'" in problem.problem
    assert "did you mean 'max_downtime_ms'" in problem.problem
    assert "max_downtime_cap_ms" in problem.expected


def test_typo_in_the_selector_and_at_the_top_level():
    _error, found = problems_of([{"name": "a", "selectr": {"domains": ["*"]}},
                                 {"name": "b", "selector": {"domain": ["*"]}}])
    assert "did you mean 'selector'" in found["$[0].selectr"].problem
    assert "did you mean 'domains'" in found["$[1].selector.domain"].problem


def test_wrong_types_say_what_was_expected():
    _error, found = problems_of([dict(GOOD, settings={"bandwidth_mib": "100", "max_downtime_ms": 0,
                                                      "completion_timeout_per_gib_s": 0})])
    assert found["$[0].settings.bandwidth_mib"].expected == "an integer from 1 to 8796093022207"
    assert found["$[0].settings.bandwidth_mib"].problem == "got '100'"
    assert found["$[0].settings.max_downtime_ms"].expected == "an integer from 1 to 2000000"
    assert found["$[0].settings.completion_timeout_per_gib_s"].expected == "a number from 1 to 86400"


def test_label_values_must_be_strings_with_a_yaml_hint():
    _error, found = problems_of([{"name": "t", "selector": {"labels": {"tier": 1}}}])
    problem = found["$[0].selector.labels.tier"]
    assert problem.expected == "a string or a non-empty list of strings"
    assert "1 (a number)" in problem.problem


def test_scalar_where_a_list_is_expected():
    _error, found = problems_of([{"name": "t", "selector": {"domains": "web-*"}}])
    assert found["$[0].selector.domains"].expected == "a non-empty list of strings"


def test_a_policy_without_a_name_is_named_by_its_index():
    _error, found = problems_of([GOOD, {"selector": {"domains": ["x"]}}])
    problem = found["$[1].name"]
    assert problem.policy == "policy #1 (unnamed)"
    assert "required" in problem.problem


def test_not_a_list():
    error, found = problems_of({"name": "web"})
    assert "a list of policies" in found["$"].expected
    assert "got a mapping" in found["$"].problem
    assert "inventory variable" in str(error)


def test_all_problems_are_reported_at_once_in_path_order():
    data = [dict(GOOD, name=f"p{i}") for i in range(12)]
    data[2] = {"name": "p2", "selector": {"domains": ["x"]}, "settings": {"mode": "fast"}}
    data[10] = {"name": "p10", "selector": {"domains": ["x"]}, "settings": {"storage": "local"}}
    error, _found = problems_of(data)
    assert [p.path for p in error.problems] == ["$[2].settings.mode", "$[10].settings.storage"]
    assert "2 problems" in str(error)


def test_paths_quote_keys_that_are_not_identifiers():
    _error, found = problems_of([{"name": "k", "selector": {"labels": {"app.kubernetes.io/name": 5}}}])
    assert '$[0].selector.labels["app.kubernetes.io/name"]' in found


# ---- files ------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("- name: web\n  selector: {domains: [web-*]\n")
    with pytest.raises(PP.PolicyError) as info:
        P.load_policy_file(path)
    assert str(path) in str(info.value)
    assert "line" in str(info.value)


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yml"
    path.write_text("- name: web\n  default: true\n  settings:\n    mode: precopy\n    mode: postcopy\n")
    with pytest.raises(PP.PolicyError) as info:
        P.load_policy_file(path)
    assert "duplicate key 'mode'" in str(info.value)
    assert "line 4" in str(info.value)


def test_json_syntax_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"name": "web",}]')
    with pytest.raises(PP.PolicyError, match="not valid JSON"):
        P.load_policy_file(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(PP.PolicyError, match="cannot read"):
        P.load_policy_file(tmp_path / "nope.yml")
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    with pytest.raises(PP.PolicyError) as info:
        P.load_policy_file(empty)
    assert "an empty file" in str(info.value)


def test_mapping_without_the_variable_is_refused(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text("hvfleet_policies:\n  - name: web\n")
    with pytest.raises(PP.PolicyError) as info:
        P.load_policy_file(path)
    assert "hvfleet_migration_policies" in info.value.problems[0].expected


def test_missing_jsonschema_is_an_error_not_a_silent_pass(monkeypatch):
    monkeypatch.setattr(PP, "jsonschema", None)
    with pytest.raises(PP.PolicyError, match="jsonschema library is missing"):
        P.load_policies([GOOD])


# ---- semantic checks ------------------------------------------------------------------------


def test_duplicate_names():
    _error, found = problems_of([GOOD, dict(GOOD)])
    assert found["$[1].name"].problem == "the name 'web' is already used by $[0]"


def test_more_than_one_default():
    _error, found = problems_of([{"name": "a", "default": True}, GOOD, {"name": "b", "default": True}])
    assert "policy 'a' ($[0]) is already the default" in found["$[2].default"].problem


def test_default_with_a_selector_and_a_selectorless_policy():
    _error, found = problems_of([{"name": "d", "default": True, "selector": {"domains": ["*"]}}, {"name": "loose"}])
    assert found["$[0].selector"].expected == "no selector on the default policy"
    assert "match every VM" in found["$[1]"].problem


def test_postcopy_needs_allow_postcopy():
    _error, found = problems_of([
        dict(GOOD, name="m", settings={"mode": "postcopy", "allow_postcopy": False}),
        dict(GOOD, name="n", settings={"mode": "postcopy_after_precopy", "allow_postcopy": False}),
        dict(GOOD, name="t", settings={"on_timeout": "postcopy", "allow_postcopy": False}),
    ])
    assert "allow_postcopy is false" in found["$[0].settings.mode"].problem
    assert "$[1].settings.mode" in found
    assert found["$[2].settings.on_timeout"].policy == "policy 't'"


def test_cap_below_max_downtime_points_at_the_field_written():
    _error, found = problems_of([dict(GOOD, name="a", settings={"max_downtime_ms": 800, "max_downtime_cap_ms": 600}),
                                 dict(GOOD, name="b", settings={"max_downtime_ms": 3000})])
    assert found["$[0].settings.max_downtime_cap_ms"].expected == "max_downtime_cap_ms >= max_downtime_ms"
    assert "(default)" in found["$[1].settings.max_downtime_ms"].problem


def test_pin_and_avoid_overlap():
    _error, found = problems_of([dict(GOOD, settings={"destinations": {"pin": ["hv1", "rack2-*"],
                                                                       "avoid": ["hv*", "rack2-*", "hv9"]}})])
    assert "'hv*' excludes the pinned host 'hv1'" in found["$[0].settings.destinations.avoid[0]"].problem
    assert "$[0].settings.destinations.avoid[1]" in found
    assert "$[0].settings.destinations.avoid[2]" not in found  # hv9 is not pinned: no conflict


def test_compression_and_parallel_connections():
    _error, found = problems_of([
        dict(GOOD, name="z", settings={"compression": "zstd", "allow_postcopy": False}),
        dict(GOOD, name="x", settings={"compression": "xbzrle", "parallel_connections": 4, "allow_postcopy": False}),
        dict(GOOD, name="p", settings={"parallel_connections": 4}),
    ])
    assert "only with parallel" in found["$[0].settings.compression"].problem
    assert "does not work with parallel" in found["$[1].settings.compression"].problem
    assert "post-copy" in found["$[2].settings.parallel_connections"].problem


def test_memory_range_reversed():
    _error, found = problems_of([{"name": "m", "selector": {"memory_mib": {"min": 8192, "max": 1024}}}])
    assert found["$[0].selector.memory_mib"].expected == "min <= max"


def test_auto_converge_tuning_without_auto_converge():
    _error, found = problems_of([dict(GOOD, settings={"mode": "precopy", "auto_converge_initial": 30})])
    assert "$[0].settings.auto_converge_initial" in found
    # in auto mode the forecast may turn auto-converge on, so tuning it is meaningful
    P.load_policies([dict(GOOD, settings={"mode": "auto", "auto_converge_initial": 30})])


def test_a_consistent_rich_policy_passes():
    [policy] = P.load_policies([{
        "name": "db", "description": "databases", "priority": 5,
        "selector": {"domains": ["db-*"], "labels": {"app": ["pg", "mysql"]}, "memory_mib": {"min": 1024}},
        "settings": {"mode": "precopy", "allow_postcopy": False, "max_downtime_ms": 200, "max_downtime_cap_ms": 200,
                     "bandwidth_mib": 500, "auto_converge": True, "auto_converge_initial": 30,
                     "auto_converge_increment": 5, "compression": "zstd", "parallel_connections": 4,
                     "completion_timeout_per_gib_s": 300, "on_timeout": "suspend", "storage": "copy_all",
                     "drain_order": -1, "destinations": {"pin": ["hv-db-*"], "avoid": ["hv-db-3"]}, "tls": True},
    }])
    assert policy.settings["parallel_connections"] == 4
    assert policy.settings["postcopy_bandwidth_mib"] is None
