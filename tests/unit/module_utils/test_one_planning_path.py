"""migration_preflight and a check-mode drain plan a VM with the same function (vm_plan.plan_vm), so they
choose the same mode for it: with the same link, dirty rate and memory in use, over a range of guests (the
guest of 2 GiB with 600 MiB in use is where a preflight that ignored the memory in use chose post-copy)."""

from __future__ import annotations

import types

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.facts import DomainFacts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host, VmInfo
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy import load_policies, select_policy
from ansible_collections.hvfleet.drain.plugins.modules.migration_preflight import (
    ARGUMENT_SPEC,
    MigrationPreflightModule,
)
from drain_fakes import FakeBackend, World, vm

MIB = 1024 * 1024
POLICIES = [{"name": "auto", "default": True, "settings": {"mode": "auto", "completion_timeout_per_gib_s": 60}}]


def preflight_module(default_link_mbit):
    params = {name: spec.get("default") for name, spec in ARGUMENT_SPEC.items()}
    params.update(name="hv1", uri="fake://hv1", default_link_mbit=default_link_mbit)
    return MigrationPreflightModule(types.SimpleNamespace(params=params))


@pytest.mark.parametrize("memory, dirty_mib, resident", [
    (512, 0, 200), (1024, 5, 700), (384, 100, 392), (4096, 60, 4000), (2048, 400, 2100), (2048, 30, 600)])
def test_the_preflight_and_the_drain_choose_the_same_mode(tmp_path, memory, dirty_mib, resident):
    world = World(["hv1", "hv2"])
    world.place("hv1", "g", vm(memory=memory, dirty=dirty_mib * MIB, resident=resident))
    source = Host("hv1", World.uri("hv1"), link_mbit=300)
    dest = Host("hv2", World.uri("hv2"), link_mbit=300)
    drainer = Drainer(FakeBackend(world), source, [dest], DrainConfig(policies=POLICIES, max_parallel=1),
                      state_dir=tmp_path)
    plan = drainer.drain(plan_only=True)
    drained = {p["vm"]: p["mode"] for p in plan.plan}.get("g")

    facts = DomainFacts(name="g", state="running", persistent=True, memory_mib=memory, vcpus=1, domain_type="kvm")
    info = VmInfo("g", memory, 1, True, True, "running", {}, dirty_mib * MIB, facts=facts, resident_mib=resident)
    match = select_policy(load_policies(POLICIES), "g", {}, memory)
    prediction, mode = preflight_module(300).forecast(info, match, {"name": "hv2", "uri": "fake://hv2"}, None)
    assert mode == drained, (prediction, plan.blockers)
    if drained is None:  # refused by both
        assert any(b["vm"] == "g" for b in plan.blockers) and prediction["mode"] is None
