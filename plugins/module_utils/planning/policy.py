# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration policies: load and check them, then pick the one that applies to a VM.

Policies come from the inventory variable `hvfleet_migration_policies` (or a YAML/JSON
file holding that list, or a mapping with that key). They are checked against the shipped
JSON Schema and then for what a schema cannot say; every problem is reported at once, each
naming the file, the policy, the JSON path of the bad field and what was expected, so that
nothing runs on a half-understood policy.

Precedence (which policy a VM gets) is explicit:

1. Among the policies whose selector matches the VM (all of its criteria hold), the most
   specific wins. Specificity counts matched criteria: each label key counts 1, the domain
   name counts 1 when it matched a glob and 2 when it matched an exact name (no `*?[`), a
   memory range counts 1.
2. Equal specificity: the higher `priority` wins.
3. Still equal: the policy declared first wins.
4. No selector matched: the policy with `default: true`; without one, the built-in
   defaults (`BUILTIN_DEFAULT`).

The result says why, e.g. "policy 'db-postcopy': labels app=db, memory 4096 MiB in
[2048, ∞) (specificity 2)".
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import fnmatch
import json
import math
import os
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

try:
    import yaml
except ImportError:  # reported when a YAML file is read
    yaml = None  # type: ignore[assignment]

VARIABLE = "hvfleet_migration_policies"
INVENTORY_SOURCE = f"inventory variable {VARIABLE}"
LABEL_NAMESPACE = "https://hvfleet.github.io/drain/xmlns/1"
BUILTIN_NAME = "builtin-default"
_WILDCARDS = frozenset("*?[")
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


@dataclasses.dataclass(frozen=True)
class Policy:
    """A checked policy; `settings` has every default applied, `declared` is what was written."""

    name: str
    index: int
    selector: dict[str, Any]
    priority: int
    default: bool
    settings: Settings
    declared: Settings
    description: str = ""

    @property
    def builtin(self) -> bool:
        return self.index < 0


@dataclasses.dataclass(frozen=True)
class PolicyMatch:
    """The policy one VM gets, its effective settings, and a human line saying why."""

    policy: Policy
    settings: Settings
    reason: str
    specificity: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "reason": self.reason,
            "specificity": self.specificity,
            "settings": copy.deepcopy(self.settings),
        }


BUILTIN_DEFAULT = Policy(
    name=BUILTIN_NAME,
    index=-1,
    selector={},
    priority=0,
    default=True,
    settings=copy.deepcopy(DEFAULT_SETTINGS),
    declared={},
    description="Used when no policy matches and none is declared default.",
)


# ---- loading --------------------------------------------------------------------------------


def load_policies(data: Any, source: str = INVENTORY_SOURCE) -> list[Policy]:
    """Check a policy list given as Python data (e.g. the inventory variable); return Policy objects.

    `data` is whatever the inventory holds: anything but a list of valid policies is a PolicyError.
    """
    if data is None:
        return []
    problems = schema_problems(data)
    if not problems:
        problems = semantic_problems(data)
    if problems:
        raise PolicyError(source, problems)
    return [_build(index, item) for index, item in enumerate(data)]


def load_policy_file(file: str | os.PathLike[str]) -> list[Policy]:
    """Read a YAML or JSON file (a list of policies, or a mapping holding VARIABLE) and check it."""
    path = os.fspath(file)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path, message=f"cannot read the policy file: {exc}",
                          hint="give the path of a readable YAML or JSON file.") from exc
    document = _parse(path, text)
    source = path
    if isinstance(document, dict) and VARIABLE in document:
        document = document[VARIABLE]
        source = f"{path} (variable {VARIABLE})"
    elif not isinstance(document, list):
        got = "an empty file" if document is None else _kind(document)
        raise PolicyError(path, [PolicyProblem("$", "", f"got {got}",
                                               f"a list of policies, or a mapping with the key {VARIABLE}")])
    return load_policies(document, source)


def _parse(path: str, text: str) -> Any:
    if path.endswith(".json"):
        try:
            return json.loads(text)
        except ValueError as exc:
            raise PolicyError(path, message=f"not valid JSON: {exc}", hint="fix the JSON syntax.") from exc
    if yaml is None:
        raise PolicyError(path, message="cannot read YAML: the PyYAML library is missing",
                          hint="install PyYAML where this runs, or give the policies as JSON.")
    try:
        return yaml.load(text, Loader=_strict_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyError(path, message=f"not valid YAML: {exc}",
                          hint="fix the YAML syntax at the line shown.") from exc


_LOADER: list[type[yaml.SafeLoader]] = []


def _strict_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader that refuses duplicate keys: a repeated `mode:` must not silently win."""
    if _LOADER:
        return _LOADER[0]

    class StrictLoader(yaml.SafeLoader):  # pylint: disable=too-many-ancestors
        pass

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # unhashable key: construct_mapping reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"duplicate key {key!r} (first on line {first + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        loader.flatten_mapping(node)
        return loader.construct_mapping(node, deep=True)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    _LOADER.append(StrictLoader)
    return StrictLoader


def _build(index: int, item: dict[str, Any]) -> Policy:
    declared = item.get("settings") or {}
    settings = copy.deepcopy(DEFAULT_SETTINGS)
    for key, value in declared.items():
        if key == "destinations":
            settings[key].update(copy.deepcopy(value))
        else:
            settings[key] = copy.deepcopy(value)
    return Policy(
        name=item["name"],
        index=index,
        selector=copy.deepcopy(item.get("selector") or {}),
        priority=item.get("priority", 0),
        default=item.get("default", False),
        settings=settings,
        declared=copy.deepcopy(declared),
        description=item.get("description", ""),
    )


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


def _kind(value: object) -> str:
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
        return f"{_kind(value)} of {len(value)} item{'s' if len(value) != 1 else ''}"
    text = json.dumps(value) if isinstance(value, (bool, int, float, type(None))) else repr(str(value))
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_kind(value)})" if not isinstance(value, str) else text


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
            f"mode {mode} / on_timeout {settings['on_timeout']} may use", "no parallel_connections, or "
            "allow_postcopy: false (mode precopy or auto)")
    for field in ("auto_converge_initial", "auto_converge_increment"):
        if field in declared and mode != Mode.AUTO and not settings["auto_converge"]:
            add(["settings", field], f"{field} is set but auto_converge is off", "auto_converge: true "
                "(or mode auto, which may turn it on), or no " + field)
    destinations = settings.get("destinations") or {}
    pins = destinations.get("pin") or []
    for k, avoid in enumerate(destinations.get("avoid") or []):
        clash = [p for p in pins if p == avoid or (not _WILDCARDS & set(p) and fnmatch.fnmatchcase(p, avoid))]
        if clash:
            add(["settings", "destinations", "avoid", k], f"'{avoid}' excludes the pinned host '{clash[0]}'",
                "pin and avoid naming different hosts")


# ---- selection --------------------------------------------------------------------------------


def select_policy(policies: Sequence[Policy] | Sequence[dict[str, Any]] | None, domain_name: str,
                  labels: Mapping[Any, Any] | None = None, memory_mib: int | None = None) -> PolicyMatch:
    """The one policy for a VM (see the module docstring for precedence), with defaults applied.

    `policies` are load_policies() results, or the raw list, which is checked first.
    """
    if policies and not isinstance(policies[0], Policy):
        policies = load_policies(policies)
    checked = cast("Sequence[Policy]", policies or ())
    shown = {str(k): str(v) for k, v in (labels or {}).items()}
    matches: list[tuple[int, Policy, list[str]]] = []
    for policy in checked:
        if policy.default:
            continue
        found = _match(policy.selector, domain_name, shown, memory_mib)
        if found is not None:
            specificity, criteria = found
            matches.append((specificity, policy, criteria))
    if matches:
        matches.sort(key=lambda m: (-m[0], -m[1].priority, m[1].index))
        specificity, winner, criteria = matches[0]
        return PolicyMatch(winner, copy.deepcopy(winner.settings),
                           _reason(winner, specificity, criteria, matches[1:]), specificity)
    default = next((p for p in checked if p.default), None)
    if default is not None:
        return PolicyMatch(default, copy.deepcopy(default.settings),
                           f"policy '{default.name}': the default policy, no other policy matched", 0)
    return PolicyMatch(BUILTIN_DEFAULT, copy.deepcopy(BUILTIN_DEFAULT.settings),
                       f"policy '{BUILTIN_NAME}': no policy matched and none is declared default, "
                       "built-in defaults apply", 0)


def _match(selector: Mapping[str, Any], domain_name: str, labels: Mapping[str, str],
           memory_mib: int | None) -> tuple[int, list[str]] | None:
    """(specificity, [criteria in words]) when every criterion holds, else None."""
    specificity = 0
    criteria = []
    globs = selector.get("domains")
    if globs:
        exact = [g for g in globs if not _WILDCARDS & set(g) and g == domain_name]
        if exact:
            specificity += 2
            criteria.append(f"name '{domain_name}'")
        else:
            hit = next((g for g in globs if fnmatch.fnmatchcase(domain_name, g)), None)
            if hit is None:
                return None
            specificity += 1
            criteria.append(f"name '{domain_name}' matches '{hit}'")
    wanted = selector.get("labels")
    if wanted:
        shown = []
        for key in sorted(wanted):
            accepted = wanted[key] if isinstance(wanted[key], list) else [wanted[key]]
            if key not in labels or labels[key] not in accepted:
                return None
            shown.append(f"{key}={labels[key]}")
        specificity += len(wanted)
        criteria.append("labels " + ", ".join(shown))
    memory = selector.get("memory_mib")
    if memory:
        low, high = memory.get("min"), memory.get("max")
        if memory_mib is None or (low is not None and memory_mib < low) or (high is not None and memory_mib > high):
            return None
        specificity += 1
        upper = f"{high}]" if high is not None else "∞)"
        criteria.append(f"memory {memory_mib} MiB in [{low if low is not None else 0}, {upper}")
    return specificity, criteria


def _reason(winner: Policy, specificity: int, criteria: list[str], others: list[tuple[int, Policy, list[str]]]) -> str:
    tied = any(s == specificity for s, _p, _c in others)
    head = f"specificity {specificity}" + (f", priority {winner.priority}" if tied else "")
    text = f"policy '{winner.name}': {', '.join(criteria)} ({head})"
    if others:
        shown = []
        for s, policy, _c in others[:3]:
            extra = f", priority {policy.priority}" if s == specificity else ""
            later = ", declared later" if s == specificity and policy.priority == winner.priority else ""
            shown.append(f"'{policy.name}' (specificity {s}{extra}{later})")
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        text += "; also matched " + ", ".join(shown) + more
    return text
