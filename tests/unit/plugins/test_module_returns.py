"""RETURN says what the modules really return: the modules run as Ansible runs them (a script with an args file),
on libvirt's test driver, and every key of their results is held against RETURN, nested `contains` included.

Where a value is a dict or a list of dicts with `contains`, its keys must be exactly the documented ones; only the
progress events document the keys every event has (the rest depend on the event's kind, listed in the text).
"""

import importlib
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import Journal
from module_sources import REPO

pytest.importorskip("libvirt")

DATA = REPO / "tests" / "unit" / "module_utils" / "data"
SRC = f"test://{DATA / 'testdriver_src.xml'}"  # defines db1 (running)
DST = f"test://{DATA / 'testdriver_dst.xml'}"  # empty
ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "diff", "warnings", "deprecations", "exception"}
# dicts keyed by names (VMs, destinations): `contains` documents each value
KEYED = {("migration_preflight", "vms")}
# lists whose elements carry more keys than documented in `contains` (the description lists them by kind)
OPEN = {("drain_progress", "events")}


def run_module(module, tmp_path, check_mode=False, **args):
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=False)
    argfile = tmp_path / f"args-{module}.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections"))
    res = subprocess.run([sys.executable, "-m", f"ansible_collections.hvfleet.drain.plugins.modules.{module}",
                          str(argfile)], capture_output=True, text=True, env=env, timeout=120, check=False)
    return json.loads(res.stdout[res.stdout.index("{"):])


def documented(module):
    return yaml.safe_load(importlib.import_module(f"ansible_collections.hvfleet.drain.plugins.modules.{module}").RETURN)


def undocumented(module, result):
    """Lines naming each returned key RETURN does not describe, and each documented nested key that is missing."""
    docs = documented(module)
    problems = [f"{key}: returned, not in RETURN" for key in sorted(set(result) - ANSIBLE_KEYS - set(docs))]
    for key, spec in docs.items():
        if key in result:
            problems += nested(module, key, spec, result[key])
    return problems


def nested(module, path, spec, value):
    contains = spec.get("contains")
    if not contains or value is None:
        return []
    top = path.split(".")[0]
    if spec.get("type") == "list":
        values = value
    elif (module, top) in KEYED and path == top:
        values = list(value.values())
    else:
        values = [value]
    problems = []
    for item in values:
        if not isinstance(item, dict):
            problems.append(f"{path}: {item!r} is not a mapping")
            continue
        extra = set(item) - set(contains)
        if extra and (module, path) not in OPEN:
            problems.append(f"{path}: returns {sorted(extra)}, not in contains")
        missing = set(contains) - set(item)
        if missing:
            problems.append(f"{path}: contains documents {sorted(missing)}, not returned")
        for key, sub in contains.items():
            if key in item:
                problems += nested(module, f"{path}.{key}", sub, item[key])
    return problems


def test_domain_migration_in_check_mode(tmp_path):
    res = run_module("domain_migration", tmp_path, check_mode=True, uri=SRC, dest_uri=DST, name="db1",
                     migration_address="10.0.0.2", bandwidth_mib=100)
    assert res["outcome"] == "would_migrate", res
    assert res["plan"]["params"] == {"migrate_uri": "tcp://10.0.0.2", "bandwidth": 100}, res
    assert undocumented("domain_migration", res) == []


def test_domain_migration_that_fails_returns_its_whole_result(tmp_path):
    """The test driver refuses peer-to-peer migration: the VM stays, with every field of the result."""
    res = run_module("domain_migration", tmp_path, uri=SRC, dest_uri=DST, name="db1", migration_address="10.0.0.2")
    assert res["failed"] and res["outcome"] == "stayed" and res["steps"] and res["spec"], res
    assert undocumented("domain_migration", res) == []


def test_domain_migration_old_option_names_still_work_and_warn(tmp_path):
    res = run_module("domain_migration", tmp_path, check_mode=True, uri=SRC, dest_uri=DST, name="db1",
                     migrate_address="10.0.0.3", bandwidth=50, postcopy_bandwidth=20)
    assert res["plan"]["params"] == {"migrate_uri": "tcp://10.0.0.3", "bandwidth": 50}, res
    warned = " ".join(str(d) for d in res.get("deprecations", []))
    for alias in ("migrate_address", "bandwidth", "postcopy_bandwidth"):
        assert f"Alias '{alias}' is deprecated" in warned, warned
    assert "'version': '1.0.0'" in warned and "hvfleet.drain" in warned


def test_migration_preflight(tmp_path):
    res = run_module("migration_preflight", tmp_path, uri="test:///default", name="src", dirty_rates={"test": 5},
                     destinations=[{"name": "self", "uri": "test:///default", "migration_address": "127.0.0.1",
                                    "cordoned": False}])
    assert not res.get("failed"), res
    assert res["results"][0]["forecast"]["mode"] == "precopy" and res["vms"]["test"]["blocked"]["self"]
    assert undocumented("migration_preflight", res) == []


def test_host_maintenance(tmp_path):
    """In check mode: the same result, without the host's libvirt (the test driver keeps no secrets)."""
    res = run_module("host_maintenance", tmp_path, check_mode=True, state="cordoned", reason="CHG-1", by="alice",
                     state_dir=str(tmp_path))
    assert res["changed"] and res["maintenance"]["state"] == "cordoned" and res["before"]["state"] == "active"
    assert undocumented("host_maintenance", res) == []


def test_drain_progress_with_an_event_the_journal_wrote(tmp_path):
    journal = Journal(str(tmp_path), "hv1")
    journal.begin_run("drain")
    journal.event("note", message="hv1 cordoned")
    res = run_module("drain_progress", tmp_path, state_dir=str(tmp_path))
    assert [e["event"] for e in res["events"]] == ["note"], res
    assert undocumented("drain_progress", res) == []


def test_the_check_finds_undocumented_and_missing_keys():
    res = {"changed": False, "maintenance": {"state": "active", "reason": None, "by": None, "extra": 1},
           "before": {"state": "active", "reason": None, "by": None, "since": None}, "message": "", "new": 1}
    assert undocumented("host_maintenance", res) == [
        "new: returned, not in RETURN", "maintenance: returns ['extra'], not in contains",
        "maintenance: contains documents ['since'], not returned"]
