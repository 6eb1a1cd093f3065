# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration policies: load them, then pick the one that applies to a VM.

Policies come from the inventory variable `hvfleet_migration_policies` (or a YAML/JSON
file holding that list, or a mapping with that key). They are checked (policy_problems.py)
before use; every problem is reported at once, so that nothing runs on a half-understood policy.

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
import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_problems import (
    INVENTORY_SOURCE,
    VARIABLE,
    WILDCARDS,
    PolicyError,
    PolicyProblem,
    kind_of,
    schema_problems,
    semantic_problems,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS, Settings

try:
    import yaml
except ImportError:  # reported when a YAML file is read
    yaml = None  # type: ignore[assignment]

LABEL_NAMESPACE = "https://hvfleet.github.io/drain/xmlns/1"
BUILTIN_NAME = "builtin-default"


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
        got = "an empty file" if document is None else kind_of(document)
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
        exact = [g for g in globs if not WILDCARDS & set(g) and g == domain_name]
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
