# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is wrong with a list of migration policies, every problem at once.

Policies are checked against the shipped JSON Schema and then for what a schema cannot say;
each problem names the policy, the JSON path of the bad field and what was expected, so that
nothing runs on a half-understood policy. Apart from loading and selection (policy.py) because
explaining a problem well is most of the code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Compression, Mode, OnTimeout
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import (
    DEFAULT_SETTINGS,
    SCHEMA,
    Settings,
)

try:
    import jsonschema
except ImportError:  # reported when validation is attempted, not at import
    jsonschema = None  # type: ignore[assignment]

VARIABLE = "hvfleet_migration_policies"
INVENTORY_SOURCE = f"inventory variable {VARIABLE}"
WILDCARDS = frozenset("*?[")
POSTCOPY_MODES = (Mode.POSTCOPY, Mode.POSTCOPY_AFTER_PRECOPY)  # the modes that always use post-copy


@dataclasses.dataclass(frozen=True)
class PolicyProblem:
    """One bad field: where it is, which policy, what is wrong, and what was expected."""

    path: str
    policy: str
    problem: str
    expected: str

    def __str__(self) -> str:
        where = f"{self.policy}, {self.path}" if self.policy else self.path
        return f"{where}: {self.problem}; expected {self.expected}"


class PolicyError(HvfleetError):
    """The policies cannot be used as written; nothing must run. Names the source and each problem."""

    def __init__(self, source: str, problems: Iterable[PolicyProblem] = (), message: str | None = None,
                 hint: str | None = None) -> None:
        self.source = source
        self.problems = list(problems)
        if message is None:
            count = len(self.problems)
            lines = [f"{source}: {count} problem{'s' if count != 1 else ''} in the migration policies:"]
            lines.extend(f"  - {p}" for p in self.problems)
            message = "\n".join(lines)
        else:
            message = f"{source}: {message}"
        super().__init__(message, hint or "correct the policies named above; nothing was migrated.")


# ---- schema problems --------------------------------------------------------------------------


def schema_problems(data: Any) -> list[PolicyProblem]:
    """Every JSON Schema violation in `data`, as PolicyProblems sorted by path."""
    if jsonschema is None:
        raise PolicyError(INVENTORY_SOURCE, message="cannot check the policies: the jsonschema library is missing",
                          hint="install jsonschema (see the collection's requirements.txt) where this runs.")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems: list[PolicyProblem] = []
    for error in validator.iter_errors(data):
        problems.extend(_explain(error, data))
    problems.sort(key=lambda p: (_natural(p.path), p.problem))
    return problems


def _natural(path: str) -> list[tuple[int, int, str]]:
    """Sort key that puts $[2] before $[10]."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path)]


def json_path(parts: Iterable[object]) -> str:
    """`$[2].settings.mode` from a sequence of keys and indexes."""
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier():
            text += f".{part}"
        else:
            text += f"[{json.dumps(str(part))}]"
    return text


def _policy_label(data: Any, parts: Sequence[object]) -> str:
    if not parts or not isinstance(parts[0], int):
        return ""
    index = parts[0]
    item = data[index] if isinstance(data, list) and 0 <= index < len(data) else None
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and name:
        return f"policy '{name}'"
    return f"policy #{index} (unnamed)"


def _explain(error: jsonschema.ValidationError, data: Any) -> list[PolicyProblem]:
    parts = list(error.absolute_path)
    policy = _policy_label(data, parts)
    # a validator run fills these in (the stubs allow "unset" for errors built by hand)
    schema = cast("Mapping[str, Any]", error.schema)
    kind = cast(str, error.validator)
    value: Any = error.validator_value
    instance: Any = error.instance
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        problems = []
        for key in sorted((k for k in instance if k not in allowed), key=str):
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(PolicyProblem(json_path(parts + [key]), policy, f"unknown field '{key}'{hint}",
                                          "one of the fields " + ", ".join(allowed)))
        return problems
    if kind == "required":
        return [PolicyProblem(json_path(parts + [key]), policy, f"the required field '{key}' is missing",
                              _describe(schema.get("properties", {}).get(key, {})))
                for key in value if key not in instance]
    path = json_path(parts)
    got = f"got {_show(instance)}"
    if kind == "enum":
        close = difflib.get_close_matches(str(instance), [str(v) for v in value], n=1)
        if close:
            got += f" (did you mean '{close[0]}'?)"
        return [PolicyProblem(path, policy, got, _describe(schema))]
    if kind == "type":
        if "string" in _types(value) and isinstance(instance, (bool, int, float)):
            got += " (quote it in YAML to make it a string)"
        return [PolicyProblem(path, policy, got, _describe(schema))]
    if kind == "anyOf":
        return [PolicyProblem(path, policy, got, " or ".join(_describe(s) for s in value))]
    if kind in ("minimum", "maximum"):
        # the whole range, not just the bound that was crossed: the operator sees what would do
        return [PolicyProblem(path, policy, got, _describe(schema))]
    if kind == "propertyNames":
        return [PolicyProblem(path, policy, "a label name is empty", "non-empty label names")]
    expected = {
        "minItems": f"at least {value} item{'s' if value != 1 else ''}",
        "minProperties": f"at least {value} field{'s' if value != 1 else ''}",
        "minLength": "a non-empty string",
        "uniqueItems": "no repeated items",
    }.get(kind, error.message)
    return [PolicyProblem(path, policy, got, expected)]


def _types(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def kind_of(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "null" if value is None else type(value).__name__


def _show(value: object) -> str:
    """A short rendering of a bad value: the value itself when small, its kind otherwise."""
    if isinstance(value, (dict, list)):
        return f"{kind_of(value)} of {len(value)} item{'s' if len(value) != 1 else ''}"
    text = json.dumps(value) if isinstance(value, (bool, int, float, type(None))) else repr(str(value))
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind_of(value)})" if not isinstance(value, str) else text


_TYPE_WORDS = {
    "string": ("a string", "strings"),
    "integer": ("an integer", "integers"),
    "number": ("a number", "numbers"),
    "boolean": ("true or false", "booleans"),
    "object": ("a mapping", "mappings"),
    "array": ("a list", "lists"),
    "null": ("null", "nulls"),
}


def _describe(schema: Mapping[str, Any], plural: bool = False) -> str:
    """What a (sub)schema accepts, in words: "one of 'a', 'b'", "a list of strings", ...."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return {"policy": "policies (mappings with a name)" if plural else "a policy (a mapping with a name)",
                "selector": "a selector mapping (domains, labels, memory_mib)",
                "settings": "a settings mapping"}.get(name, name)
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(_describe(s, plural) for s in schema["anyOf"])
    types = _types(schema.get("type", []))
    if not types:
        return "a value"
    words = [_TYPE_WORDS.get(t, (t, t))[1 if plural else 0] for t in types]
    text = " or ".join(words)
    if "array" in types and "items" in schema:
        if schema.get("minItems") and not plural:
            text = "a non-empty list"
        text += " of " + _describe(schema["items"], plural=True)
    if "minimum" in schema:  # every number of the schema has both bounds (a unit test sees to it)
        text += f" from {schema['minimum']} to {schema['maximum']}"
    if schema.get("minLength") and "string" in types and not plural:
        text = "a non-empty string"
    return text


# ---- semantic problems ------------------------------------------------------------------------


def semantic_problems(data: list[dict[str, Any]]) -> list[PolicyProblem]:
    """What the schema cannot express: uniqueness, one default, contradictory settings."""
    problems: list[PolicyProblem] = []
    names: dict[str, int] = {}
    default_at: int | None = None
    for index, item in enumerate(data):
        label = f"policy '{item['name']}'"

        def add(parts: Iterable[object], problem: str, expected: str, _index: int = index, _label: str = label) -> None:
            problems.append(PolicyProblem(json_path([_index] + list(parts)), _label, problem, expected))

        name = item["name"]
        if name in names:
            add(["name"], f"the name '{name}' is already used by {json_path([names[name]])}", "a unique name")
        else:
            names[name] = index
        selector = item.get("selector")
        if item.get("default"):
            if default_at is not None:
                add(["default"], f"policy '{data[default_at]['name']}' ({json_path([default_at])}) is already "
                    "the default", "at most one policy with default: true")
            else:
                default_at = index
            if selector:
                add(["selector"], "the default policy catches VMs no other policy matches; a selector would "
                    "narrow it", "no selector on the default policy")
        elif not selector:
            add([], "no selector and not the default, so it would match every VM",
                "a selector, or default: true for the catch-all")
        for key in ((selector or {}).get("labels") or {}):
            if not isinstance(key, str):
                add(["selector", "labels"], f"the label name {key!r} is not a string",
                    "label names as strings (quote them in YAML)")
        memory = (selector or {}).get("memory_mib") or {}
        if "min" in memory and "max" in memory and memory["min"] > memory["max"]:
            add(["selector", "memory_mib"], f"min {memory['min']} is above max {memory['max']}", "min <= max")
        _settings_problems(item.get("settings") or {}, add)
    return problems


def _settings_problems(declared: Settings, add: Callable[[list[object], str, str], None]) -> None:
    settings = copy.deepcopy(DEFAULT_SETTINGS)
    settings.update(declared)
    mode = settings["mode"]
    allow = settings["allow_postcopy"]
    if not allow and mode in POSTCOPY_MODES:
        add(["settings", "mode"], f"mode {mode} uses post-copy but allow_postcopy is false",
            "mode precopy or auto while allow_postcopy is false (or allow_postcopy: true)")
    if not allow and settings["on_timeout"] == OnTimeout.POSTCOPY:
        add(["settings", "on_timeout"], "on_timeout postcopy but allow_postcopy is false",
            "on_timeout abort or suspend while allow_postcopy is false (or allow_postcopy: true)")
    if settings["max_downtime_cap_ms"] < settings["max_downtime_ms"]:
        field = "max_downtime_cap_ms" if "max_downtime_cap_ms" in declared else "max_downtime_ms"
        cap_note = "" if "max_downtime_cap_ms" in declared else " (default)"
        add(["settings", field], f"max_downtime_cap_ms {settings['max_downtime_cap_ms']}{cap_note} is below "
            f"max_downtime_ms {settings['max_downtime_ms']}", "max_downtime_cap_ms >= max_downtime_ms")
    props = SCHEMA["$defs"]["settings"]["properties"]
    for field, value in declared.items():
        if isinstance(value, float) and math.isnan(value):  # YAML .nan: NaN passes every JSON Schema bound
            add(["settings", field], "got NaN (.nan in YAML)", _describe(props[field]))
    parallel = settings["parallel_connections"]
    if settings["compression"] == Compression.ZSTD and not parallel:
        add(["settings", "compression"], "zstd compression works only with parallel migration",
            "parallel_connections set (e.g. 4), or compression xbzrle / none")
    if settings["compression"] == Compression.XBZRLE and parallel:
        add(["settings", "compression"], "xbzrle compression does not work with parallel migration",
            "compression zstd or none with parallel_connections, or no parallel_connections")
    may_postcopy = allow and (mode in POSTCOPY_MODES or mode == Mode.AUTO
                              or settings["on_timeout"] == OnTimeout.POSTCOPY)
    if parallel and may_postcopy:
        add(["settings", "parallel_connections"], f"parallel migration cannot be combined with post-copy, which "
            f"mode {mode} / on_timeout {settings['on_timeout']} may use (QEMU refuses it, 10.0 included: "
            "'Postcopy is not yet compatible with multifd')", "no parallel_connections, or "
            "allow_postcopy: false (mode precopy or auto)")
    for field in ("auto_converge_initial", "auto_converge_increment"):
        if field in declared and mode != Mode.AUTO and not settings["auto_converge"]:
            add(["settings", field], f"{field} is set but auto_converge is off", "auto_converge: true "
                "(or mode auto, which may turn it on), or no " + field)
    if "shutdown_timeout_s" in declared and settings["on_unmigratable"] != "shutdown":
        add(["settings", "shutdown_timeout_s"], f"shutdown_timeout_s is set but on_unmigratable is "
            f"{settings['on_unmigratable']}, which never shuts a VM down", "on_unmigratable: shutdown, or no "
            "shutdown_timeout_s")
    destinations = settings.get("destinations") or {}
    pins = destinations.get("pin") or []
    for k, avoid in enumerate(destinations.get("avoid") or []):
        clash = [p for p in pins if p == avoid or (not WILDCARDS & set(p) and fnmatch.fnmatchcase(p, avoid))]
        if clash:
            add(["settings", "destinations", "avoid", k], f"'{avoid}' excludes the pinned host '{clash[0]}'",
                "pin and avoid naming different hosts")
