"""host_drain's RETURN documents every key its result carries, at every level that has a fixed shape.

The result is DrainResult.to_dict() (what the module returns, plus the few keys the module adds itself). Drains
and a restore run over the fake fleet (drain_fakes.py) with every kind of move - live, definition, cold, a VM left
by its policy, a failure, a blocked VM - and each result is held against RETURN parsed as YAML: a key the code
returns that RETURN does not describe fails here, and so does a documented key that no run returns (a key removed
from the code but not from the document).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainResult
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.result import Step
from ansible_collections.hvfleet.drain.plugins.modules import host_drain
from drain_fakes import FakeBackend, fleet, make, vm

MIB = 1024 * 1024
SHMEM = ("shared-memory device 'hvf' (ivshmem-plain)",)
POLICIES = [{"name": "cold", "selector": {"labels": {"cold": "1"}}, "settings": {"on_unmigratable": "shutdown"}},
            {"name": "leave", "selector": {"labels": {"leave": "1"}}, "settings": {"on_unmigratable": "leave"}},
            {"name": "copy", "selector": {"labels": {"copy": "1"}}, "settings": {"storage": "copy_all"}}]
ANSIBLE_KEYS = {"changed", "failed", "msg", "invocation", "diff", "warnings", "deprecations", "exception"}
# dicts whose keys are names (destinations, policy settings, labels): no fixed shape to document key by key
OPEN = {"plan.settings", "plan.labels", "blockers.reasons", "cancel.holder", "cancel.request", "cancel.journal"}
# documented keys the fake fleet never produces, and why that is not a gap in the check
NOT_FROM_THE_FAKES = {
    "lock_holder": "check mode while another drain holds the lock",
    "recoverable": "a VM found in two places or none (test_reconcile.py)",
    "cancel": "added by the module for state=cancelled or a cancel request",
    "plan_file": "added by the module",
    "metrics_file": "added by the module",
    "vms.steps.t": "the engine's Step (checked against its dataclass below)",
    "vms.steps.action": "the engine's Step", "vms.steps.reason": "the engine's Step",
    "vms.steps.error": "the engine's Step",
    "reconciled.destination": "a resumed run's VM that had a destination",
    "plan.forecast.disk_bytes": "the fake VMs hold no local disk bytes (test_forecast_disk.py)",
}


def documented():
    return yaml.safe_load(host_drain.RETURN)


def module_keys():
    """The top-level keys host_drain's own code adds to the drain's result (result["..."] = ...)."""
    source = Path(host_drain.__file__).read_text(encoding="utf-8").split('\nRETURN = r"""', 1)[1].split('"""', 1)[1]
    return set(re.findall(r'result\["(\w+)"\] =', source)) | {"cancel", "journal_path"}


def problems(doc, value, path=""):
    """(what is wrong, the documented paths seen) for `value` against the RETURN entries `doc`."""
    bad, seen = [], set()
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, dict):
            continue
        for key in sorted(set(item) - set(doc) - (ANSIBLE_KEYS if not path else set())):
            bad.append(f"{path}{key}: returned, not documented")
        for key, spec in doc.items():
            if key not in item:
                continue
            seen.add(path + key)
            sub = (spec or {}).get("contains")
            if sub and f"{path}{key}" not in OPEN and item[key] is not None:
                more_bad, more_seen = problems(sub, item[key], f"{path}{key}.")
                bad += more_bad
                seen |= more_seen
    return bad, seen


def all_paths(doc, path=""):
    out = set()
    for key, spec in doc.items():
        out.add(path + key)
        sub = (spec or {}).get("contains")
        if sub and path + key not in OPEN:
            out |= all_paths(sub, f"{path}{key}.")
    return out


def drained(tmp_path, world, backend, plan_only=False):
    drainer, _backend, _events = make(tmp_path, world, backend, max_failures=5, policies=POLICIES)
    return drainer.drain(plan_only=plan_only).to_dict()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{name: result} of a plan, a drain that fails, a drain that ends not_empty, and a restore after each."""
    out = {}
    mixed = fleet(idle=vm(), hot=vm(dirty=80 * MIB), off=vm(active=False), disk=vm(local_disk=True),
                  copied=vm(local_disk=True, labels={"copy": "1"}), flaky=vm(),
                  shmem=vm(devices=SHMEM, labels={"cold": "1"}), kept=vm(devices=SHMEM, labels={"leave": "1"}))
    backend = FakeBackend(mixed)
    backend.fail["flaky"] = "stayed"
    tmp = tmp_path_factory.mktemp("mixed")
    out["plan"] = drained(tmp, mixed, backend, plan_only=True)
    out["failed"] = drained(tmp, mixed, backend)
    out["failed_restore"] = make(tmp, mixed, backend, policies=POLICIES)[0].restore().to_dict()
    left = fleet(idle=vm(), shmem=vm(devices=SHMEM, labels={"cold": "1"}),
                 kept=vm(devices=SHMEM, labels={"leave": "1"}))
    tmp = tmp_path_factory.mktemp("left")
    backend = FakeBackend(left)
    out["not_empty"] = drained(tmp, left, backend)
    out["not_empty_restore"] = make(tmp, left, backend, policies=POLICIES)[0].restore().to_dict()
    return out


def test_the_runs_cover_the_end_states_and_kinds_of_move(results):
    assert results["failed"]["state"] == "failed" and results["not_empty"]["state"] == "not_empty"
    assert results["failed_restore"]["state"] == "restored" == results["not_empty_restore"]["state"]
    kinds = {row["kind"] for row in results["failed"]["vms"]}
    assert kinds == {"live", "definition", "cold"} and results["failed"]["left"] and results["failed"]["blockers"]


def test_every_returned_key_is_documented(results):
    doc = documented()
    for name, result in results.items():
        bad = sorted(set(problems(doc, result)[0]))  # a list's rows repeat the same key
        assert not bad, f"{name}: {bad}"


def test_every_documented_key_is_returned_by_some_run(results):
    doc = documented()
    seen = set()
    for result in results.values():
        seen |= problems(doc, result)[1]
    seen |= module_keys()
    unseen = all_paths(doc) - seen
    missing = sorted(p for p in unseen if not any(p == k or p.startswith(k + ".") for k in NOT_FROM_THE_FAKES))
    assert not missing, f"documented in RETURN, returned by no run: {missing}"


def test_the_result_dataclass_and_the_module_keys_are_all_documented():
    """The same from the code alone: every DrainResult field, and every key the module adds, is in RETURN."""
    doc = documented()
    fields = {f.name for f in dataclasses.fields(DrainResult)}
    assert not (fields | module_keys()) - set(doc) - ANSIBLE_KEYS


def test_steps_document_the_engines_step():
    steps = documented()["vms"]["contains"]["steps"]["contains"]
    assert set(steps) == {f.name for f in dataclasses.fields(Step)}


def test_the_check_catches_an_undocumented_key():
    doc = documented()
    result = {"state": "drained", "vms": [{"vm": "a", "colour": "red"}], "brand_new": 1}
    assert problems(doc, result)[0] == ["brand_new: returned, not documented", "vms.colour: returned, not documented"]


def test_return_samples_use_the_documented_keys():
    """A sample of a list or dict with `contains` shows only keys that `contains` documents."""
    bad = []
    for key, spec in documented().items():
        sub, sample = spec.get("contains"), spec.get("sample")
        if sub and sample is not None and key not in OPEN:
            bad += problems(sub, sample, f"{key}.")[0]
    assert not bad
