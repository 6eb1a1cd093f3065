"""The modules' documentation as ansible-doc shows it (doc fragments merged), checked for the collection's conventions.

Every module under plugins/modules is checked, none is skipped:

* every returned value of type dict or list has a `sample`; a dict has `contains`; a list has `elements`, and a
  list of dicts has `contains` (also nested inside `contains`);
* `requirements` name every third-party Python package (libvirt, jsonschema) that the module or any
  module_utils file it reaches imports;
* an option name means one thing: two modules that both document it give it the same type, elements and default
  (top-level options and suboptions alike, e.g. `destinations[].cordoned`); only options whose choices share no
  value (each module's own `state` vocabulary) may have different defaults.

ansible-test's validate-modules checks each module's docs against its own argument spec; these checks are
across the modules and about the return values, which validate-modules does not require.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from module_sources import MODULES, REPO, reached

# third-party import -> the words its requirement line must contain
REQUIREMENTS = {"libvirt": "libvirt-python", "jsonschema": "jsonschema"}


def ansible_doc(*modules):
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_NOCOLOR="1")
    command = [str(Path(sys.executable).with_name("ansible-doc")), "--json", "-t", "module"]
    res = subprocess.run(command + [f"hvfleet.drain.{m}" for m in modules], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300, check=False)
    if res.returncode != 0:
        return None, res.stderr.strip()
    return {name.split(".")[-1]: data for name, data in json.loads(res.stdout).items()}, None


@pytest.fixture(scope="module")
def all_docs():
    """{module: ansible-doc's JSON for it, or the error text when ansible-doc cannot read its docs}."""
    found, _error = ansible_doc(*MODULES)
    if found is not None:
        return found
    found = {}
    for module in MODULES:  # ansible-doc prints nothing when one of them is unreadable: one at a time
        one, error = ansible_doc(module)
        found[module] = one[module] if one else error
    return found


@pytest.fixture
def docs(all_docs, request):
    """The docs of the test's `module` (all of them for tests without one); fails on unreadable docs."""
    module = request.node.callspec.params.get("module") if hasattr(request.node, "callspec") else None
    wanted = [module] if module else MODULES
    broken = {m: all_docs[m] for m in wanted if isinstance(all_docs[m], str)}
    if broken:
        pytest.fail("ansible-doc cannot read: " + "; ".join(f"{m}: {e}" for m, e in broken.items()))
    return all_docs


def test_ansible_doc_reads_every_module(docs):
    assert sorted(docs) == MODULES
    for name, data in docs.items():
        assert data.get("doc", {}).get("module") == name, f"{name}: no DOCUMENTATION"
        assert data.get("return"), f"{name}: no RETURN"


def return_problems(values, where="", top=True):
    """What a RETURN mapping lacks, as "key: problem" lines."""
    problems = []
    for key, spec in (values or {}).items():
        path = f"{where}{key}"
        kind = spec.get("type")
        if kind in ("dict", "list") and top and "sample" not in spec:
            problems.append(f"{path}: a {kind} without a sample")
        if kind == "dict" and top and not spec.get("contains"):
            problems.append(f"{path}: a dict without contains (its keys)")
        if kind == "list":
            elements = spec.get("elements")
            if not elements:
                problems.append(f"{path}: a list without elements")
            elif elements == "dict" and not spec.get("contains"):
                problems.append(f"{path}: a list of dicts without contains (the keys of each)")
        if spec.get("contains"):
            problems += return_problems(spec["contains"], f"{path}.", top=False)
    return problems


@pytest.mark.parametrize("module", MODULES)
def test_dict_and_list_returns_have_contains_and_a_sample(docs, module):
    problems = return_problems(docs[module]["return"])
    assert not problems, f"{module} RETURN:\n" + "\n".join(problems)


def test_the_return_check_catches_what_it_should():
    bad = {"a": {"type": "dict", "sample": {}}, "b": {"type": "list", "elements": "dict", "sample": []},
           "c": {"type": "list", "contains": {"x": {"type": "str"}}},
           "d": {"type": "list", "elements": "dict", "sample": [], "contains": {"e": {"type": "list"}}}}
    problems = return_problems(bad)
    assert problems == ["a: a dict without contains (its keys)",
                        "b: a list of dicts without contains (the keys of each)",
                        "c: a list without a sample", "c: a list without elements", "d.e: a list without elements"]
    assert return_problems({"s": {"type": "list", "elements": "str", "sample": ["x"]},
                            "n": {"type": "dict", "sample": {}, "contains": {"m": {"type": "dict"}}}}) == []


# ---- requirements ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
def test_requirements_name_every_third_party_import(docs, module):
    _files, third_party = reached(module)
    requirements = " ".join(docs[module]["doc"].get("requirements") or []).lower()
    missing = [f"{name} (imported; requirements should name {REQUIREMENTS[name]})"
               for name in sorted(third_party & set(REQUIREMENTS)) if REQUIREMENTS[name] not in requirements]
    assert not missing, f"{module}: requirements {docs[module]['doc'].get('requirements')} miss " + ", ".join(missing)


def test_the_import_walk_follows_module_utils():
    files, third_party = reached("migration_preflight")
    names = {p.relative_to(REPO).as_posix() for p in files}
    assert "plugins/module_utils/planning/policy_problems.py" in names  # through policy.py
    assert {"libvirt", "jsonschema"} <= third_party


# ---- one name, one meaning -----------------------------------------------------------------------------------


def options(doc, prefix=""):
    """{option path: (type, elements, default as JSON, choices)} with suboptions as parent.sub."""
    found = {}
    for name, spec in (doc.get("options") or {}).items():
        default = spec.get("default")
        if spec.get("type") in ("int", "float") and isinstance(default, (int, float)):
            default = float(default)  # 1000 and 1000.0 are the same default
        found[f"{prefix}{name}"] = (spec.get("type", "str"), spec.get("elements"), json.dumps(default, sort_keys=True),
                                    frozenset(map(str, spec.get("choices") or ())))
        if spec.get("suboptions"):
            found.update(options({"options": spec["suboptions"]}, f"{prefix}{name}."))
    return found


def disagree(one, other):
    """Two documented meanings of an option name disagree: another type or elements, or another default for
    the same vocabulary (defaults from disjoint choices, such as each module's own `state` values, cannot agree)."""
    if one[:2] != other[:2]:
        return True
    disjoint = one[3] and other[3] and not one[3] & other[3]
    return one[2] != other[2] and not disjoint


def option_conflicts(docs_by_module):
    seen = {}
    for module, doc in sorted(docs_by_module.items()):
        for path, meaning in options(doc).items():
            seen.setdefault(path, {}).setdefault(meaning, []).append(module)
    conflicts = []
    for path, meanings in sorted(seen.items()):
        kinds = list(meanings)
        if any(disagree(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1:]):
            conflicts.append(f"{path}: " + "; ".join(f"{', '.join(mods)}: type {t}, elements {e}, default {d}"
                                                     for (t, e, d, _c), mods in meanings.items()))
    return conflicts


def test_an_option_name_has_one_type_and_default_across_modules(docs):
    conflicts = option_conflicts({name: data["doc"] for name, data in docs.items()})
    assert not conflicts, "options documented differently:\n" + "\n".join(conflicts)


def test_the_option_check_catches_what_it_should():
    a = {"timeout": {"type": "int", "default": 30}, "d": {"type": "list", "suboptions": {"cordoned": {"type": "bool"}}},
         "state": {"type": "str", "choices": ["on", "off"], "default": "on"}}
    b = {"timeout": {"type": "float", "default": 30.0},
         "d": {"type": "list", "suboptions": {"cordoned": {"type": "bool", "default": False}}},
         "state": {"type": "str", "choices": ["up", "down"]}}
    c = {"timeout": {"type": "int", "default": 30.0},
         "state": {"type": "str", "choices": ["on", "down"], "default": "down"}}
    docs = {"a": {"options": a}, "b": {"options": b}, "c": {"options": c}}
    conflicts = option_conflicts(docs)
    assert [c.split(":")[0] for c in conflicts] == ["d.cordoned", "state", "timeout"], conflicts
    assert "a: type bool, elements None, default null" in conflicts[0] and "b: type bool" in conflicts[0]
    assert conflicts[2].startswith("timeout: a, c: type int") and "b: type float" in conflicts[2]
    del docs["c"]  # a's and b's states share no value: their defaults cannot agree
    assert [c.split(":")[0] for c in option_conflicts(docs)] == ["d.cordoned", "timeout"]
