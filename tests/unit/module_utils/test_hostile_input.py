"""Malformed and hostile input (issue 7, "Bad input"): every bad value gets the collection's own clear
error (an HvfleetError with a hint, or Ansible's own argument error) - never a TypeError / KeyError /
ValueError traceback - and changes nothing: no cordon, no journal, no VM moved.

Covered: the policy loader (data and files, fuzzed), the argument handling of host_drain and
domain_migration (fuzzed through Ansible's ArgumentSpecValidator and on into the core they call),
VM and host names with shell metacharacters, a destination named twice, a hand-edited or garbled
reviewed plan (plan_from), unknown VMs and hosts, wrong libvirt and migration URIs, and secrets: a
URI with a password or a no_log value never reaches a result, a report, the journal or the events.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import threading
from types import SimpleNamespace

import pytest
import test_migration as tm  # the engine's fakes (same directory; prepend import mode)
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.hvfleet.drain.plugins.filter.report import plan_lines, report_rows, timeline_svg
from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection, redact
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import (
    DomainNotFound,
    HvfleetError,
    MigrationFailed,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig, DrainError
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.migration import Migration
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MigrationSpec, migrate_uri_for
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import policy_problems as PP
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import MAX_MEMORY_MIB
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_spec import spec_for
from ansible_collections.hvfleet.drain.plugins.modules import domain_migration, host_drain
from drain_fakes import FakeBackend, World, hosts, vm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# an exception in one of the drain's threads (progress, workers) must fail the test, not just warn
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

HOSTILE_NAMES = ["x; rm -rf /", "$(touch /tmp/hvfleet-pwned)", "`id`", "a b", "-rf", "vm'\"", "a|b&&c>d", "ü-vm",
                 "--postcopy-resume", "*", "../../etc/passwd", "vm\nrm -rf /"]
SECRET = "s3cr3t-Pa55"

# JSON-like values, including what YAML gives (non-string keys, NaN, infinities, huge integers)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(HOSTILE_NAMES))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3), st.sampled_from(
        ["name", "selector", "settings", "default", "priority", "domains", "labels", "memory_mib", "mode",
         "bandwidth_mib", "completion_timeout_per_gib_s", "destinations", "pin", "avoid", "min", "max"])),
        inner, max_size=4)), max_leaves=12)

GOOD_POLICY = {"name": "web", "selector": {"domains": ["web-*"], "labels": {"tier": "gold"}},
               "settings": {"mode": "postcopy", "max_downtime_ms": 300, "bandwidth_mib": 100,
                            "completion_timeout_per_gib_s": 60, "destinations": {"pin": ["hv2"]}}}


def snapshot(value):
    """A comparable picture of `value` (NaN-safe): to show the loader changed nothing in its input."""
    return repr(value)


def mutate(policy, path, new):
    """A deep copy of `policy` with the value at `path` (keys) replaced by `new`."""
    out = json.loads(json.dumps(policy))
    node = out
    for key in path[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[path[-1]] = new
    return out


POLICY_PATHS = [("name",), ("selector",), ("selector", "domains"), ("selector", "labels"),
                ("selector", "labels", "tier"), ("selector", "memory_mib"), ("settings",), ("settings", "mode"),
                ("settings", "max_downtime_ms"), ("settings", "bandwidth_mib"),
                ("settings", "completion_timeout_per_gib_s"), ("settings", "destinations"),
                ("settings", "destinations", "pin"), ("priority",), ("default",), ("settings", "on_timeout")]


def assert_policies_usable_or_refused(data):
    """load_policies accepts (and the policy then makes a spec or a clear error) or raises PolicyError."""
    before = snapshot(data)
    try:
        policies = P.load_policies(data)
    except PP.PolicyError as exc:
        assert exc.problems or exc.message and exc.hint
        assert "Traceback" not in str(exc)
        assert snapshot(data) == before, "the loader must not change its input"
        return None
    assert snapshot(data) == before
    for name, labels, memory in (("web-1", {"tier": "gold"}, 512), ("x; rm -rf /", {}, None)):
        match = P.select_policy(policies, name, labels, memory)
        try:
            spec = spec_for(match.settings, None, migrate_uri="tcp://10.0.0.2")
        except HvfleetError:
            continue
        assert math.isfinite(spec.deadline_s(2**30)) and math.isfinite(spec.deadline_s(MAX_MEMORY_MIB * 2**20))
    return policies


# ---- the policy loader ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=values)
def test_any_data_as_policies_is_loaded_or_refused_clearly(data):
    assert_policies_usable_or_refused(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(POLICY_PATHS), new=values)
def test_a_good_policy_with_one_field_made_hostile_is_loaded_or_refused_clearly(path, new):
    assert_policies_usable_or_refused([mutate(GOOD_POLICY, path, new)])


@pytest.mark.parametrize("field, value", [
    ("completion_timeout_per_gib_s", float("nan")), ("completion_timeout_per_gib_s", float("inf")),
    ("bandwidth_mib", 2**80), ("postcopy_bandwidth_mib", 2**80)])
def test_numbers_that_once_passed_the_schema_are_refused_by_the_loader(field, value):
    """Regression: NaN / infinity (YAML .nan / .inf) and huge bandwidths passed the schema and crashed
    later (ValueError / OverflowError building the spec, or an overflow in libvirt). The schema's bounds
    catch all but NaN, which passes every JSON Schema bound: the loader checks that itself."""
    with pytest.raises(PP.PolicyError) as info:
        P.load_policies([{"name": "d", "default": True, "settings": {field: value}}])
    assert f"$[0].settings.{field}" in str(info.value)


def test_a_label_name_that_is_not_a_string_is_refused():
    """Regression: YAML `labels: {1: x, app: y}` passed the schema; sorting the keys then raised TypeError."""
    with pytest.raises(PP.PolicyError) as info:
        P.load_policies([{"name": "p", "selector": {"labels": {1: "x", "app": "y"}}}])
    assert "$[0].selector.labels" in str(info.value) and "not a string" in str(info.value)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.sampled_from([
    "- name: a\n  default: true\n  settings: {mode: auto, mode: precopy}\n",  # a duplicate key
    "a: &x [*x]\n", "!!python/object/apply:os.system ['touch /tmp/hvfleet-pwned']\n",
    "- name: a\n  default: true\n  settings: {completion_timeout_per_gib_s: .nan}\n",
    "hvfleet_migration_policies: 5\n", "[1, 2", "\x00\x01", "- {name: a, selector: {labels: {1: x}}}\n"])),
    suffix=st.sampled_from([".yml", ".json"]))
def test_any_policy_file_is_loaded_or_refused_clearly(tmp_path, text, suffix):
    path = tmp_path / f"policies{suffix}"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        P.load_policy_file(path)
    except PP.PolicyError as exc:
        assert str(path) in str(exc)
    assert not os.path.exists("/tmp/hvfleet-pwned"), "YAML must never run code"


# ---- the migration spec and URIs --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["bandwidth_mib", "postcopy_bandwidth_mib", "max_downtime_ms", "max_downtime_cap_ms",
                              "parallel_connections", "stall_iterations", "completion_timeout_s",
                              "completion_timeout_per_gib_s", "completion_timeout_min_s", "stats_interval_s",
                              "postcopy_recovery_timeout_s", "migrate_uri", "mode", "on_timeout", "compression",
                              "copy_storage", "tls_destination"]),
       value=scalars)
def test_any_spec_value_gives_a_usable_spec_or_invalid_spec(field, value):
    """Regression: NaN passed every numeric check (NaN < 1 is False), text raised TypeError, a migrate_uri
    with an unclosed IPv6 bracket raised ValueError."""
    kwargs = {field: value}
    if field == "tls_destination":
        kwargs["tls"] = True
    try:
        spec = MigrationSpec(**kwargs)
    except HvfleetError as exc:
        assert exc.hint
        return
    assert math.isfinite(spec.deadline_s(2**30)) and 0.05 <= spec.stats_interval_s <= 60
    spec.flags()
    spec.params()


@settings(max_examples=300, deadline=None)
@given(uri=st.one_of(st.text(max_size=40), st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(
    ["qemu", "qemu+tcp", "qemu+tls", "qemu+ssh", "tcp", "http", ""]), st.sampled_from(
    ["", "h", "[::1", "[::1]", "u:p@h", "h:99999", "h:x", "x; rm -rf /", "$(id)"]), st.sampled_from(
    ["/system", "/session", "", "/system?no_tty=0", "/x"]))))
def test_wrong_libvirt_uris_get_a_connection_error_naming_the_uri(uri):
    """Regression: 'qemu+tcp://[::1/system' raised ValueError from urlsplit."""
    try:
        connection.effective_uri(uri)
    except connection.LibvirtConnectionError as exc:
        assert exc.hint and (not uri or uri in exc.message)


@pytest.mark.parametrize("address", ["tcp://10.0.0.2", "qemu+tcp://h/system", "[::1", 5, "x; rm -rf /"])
def test_wrong_migration_addresses(address):
    try:
        uri = migrate_uri_for(address) if isinstance(address, str) else None
        MigrationSpec(migrate_uri=uri if uri is not None else address)
    except HvfleetError as exc:
        assert exc.hint
    else:  # a name with metacharacters is just a (bad) host name: it is data, never run
        assert isinstance(address, str) and "://" not in address


# ---- the drain: hosts, names, reviewed plans ---------------------------------------------------


def fleet(*names, on="hv1"):
    world = World(["hv1", "hv2", "hv3"])
    for name in names:
        world.place(on, name, vm())
    return world


def drainer(tmp_path, world, source=None, destinations=None, **config):
    src, dests = hosts()
    config.setdefault("progress_interval_s", 0.05)
    backend = FakeBackend(world)
    d = Drainer(backend, source or src, dests if destinations is None else destinations, DrainConfig(**config),
                state_dir=tmp_path)
    return d, backend


def assert_nothing_changed(tmp_path, world, backend, names, on="hv1"):
    assert not backend.cordoned and True not in backend.cordon_calls, "the host must not be cordoned"
    assert not backend.calls, "nothing may be migrated"
    assert sorted(world.hosts[on]) == sorted(names)
    assert not os.path.exists(tmp_path / jr.JOURNAL_NAME), "no journal may be written"


def test_vm_names_with_shell_metacharacters_are_just_data(tmp_path):
    world = fleet(*HOSTILE_NAMES)
    d, backend = drainer(tmp_path, world)
    result = d.drain()
    assert result.state == jr.DRAINED and not result.failed, result.message
    assert sorted(n for h in ("hv2", "hv3") for n in world.hosts[h]) == sorted(HOSTILE_NAMES)
    assert sorted(c[0] for c in backend.calls) == sorted(HOSTILE_NAMES), "each name reaches libvirt verbatim"
    journal = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert sorted(journal["vms"]) == sorted(HOSTILE_NAMES)
    assert not os.path.exists("/tmp/hvfleet-pwned")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_postcopy_recovery_command_quotes_names_and_uris(name):
    """Regression: the `virsh ... --postcopy-resume NAME DEST` line an operator pastes into a shell put the
    name in unquoted - a VM named `x; rm -rf /` made it a destructive command."""
    src_host, dst_host = tm.Host(), tm.Host()
    dom = tm.Dom(name, src_host)
    dom.samples = tm.hot_series(3)

    def end():
        dom.st = (tm.rc.PAUSED, tm.rc.PAUSED_POSTCOPY_FAILED)
        tm.Dom(name, dst_host, state=(tm.rc.RUNNING, tm.rc.RUNNING_POSTCOPY))
        raise tm.LibvirtFail("internal error: client socket is closed")

    dom.on_end = end
    dom.on_resume = [refuse_resume] * 50
    clock = tm.Clock()
    spec = MigrationSpec(mode="postcopy", postcopy_recovery_timeout_s=10, migrate_uri="tcp://10.254.0.12", **tm.FAST)
    with pytest.raises(MigrationFailed) as info:
        tm.run(src_host, dst_host, spec, clock, name=name)
    command = info.value.result.recovery.split("on the source host: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:3] == ["virsh", "-c", tm.SRC_URI]
    assert argv[-2:] == [name, tm.DST_URI], argv


def test_unknown_vm_is_a_clear_error_and_nothing_is_touched():
    src_host, dst_host = tm.Host(), tm.Host()
    dom = tm.Dom("web-1", src_host)
    with pytest.raises(DomainNotFound) as info:
        Migration(src_host, dst_host, "x; rm -rf /", tm.DST_URI, MigrationSpec(**tm.FAST),
                  source_uri=tm.SRC_URI).run()
    assert "'x; rm -rf /'" in info.value.message and "web-1" in info.value.message and info.value.hint
    assert dom.calls == [] and dom.st == (tm.rc.RUNNING, tm.rc.RUNNING_BOOTED)


def test_a_destination_named_twice_is_refused_before_anything_changes(tmp_path):
    world = fleet("a", "b")
    src, dests = hosts()
    with pytest.raises(DrainError, match="listed twice"):
        Drainer(FakeBackend(world), src, [dests[0], dests[1], dests[0]], DrainConfig(), state_dir=tmp_path)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("timeout", [1e300, 1e308, 0.5])
def test_a_completion_timeout_out_of_range_is_refused_before_anything_changes(tmp_path, timeout):
    """Regression (repro r4_huge_timeout): 1e300 s/GiB passed the schema, and math.ceil(inf) raised
    OverflowError with the host already cordoned and the journal written; 0.5 s/GiB passed it too and
    the engine refused every VM, also after the cordon. Now the Drainer is never built."""
    world = fleet("web1")
    policies = [{"name": "p", "default": True, "settings": {"completion_timeout_per_gib_s": timeout}}]
    with pytest.raises(PP.PolicyError) as info:
        drainer(tmp_path, world, policies=policies)
    assert "policy 'p', $[0].settings.completion_timeout_per_gib_s: got " in str(info.value)
    assert "a number from 1 to 86400" in str(info.value)
    assert not os.listdir(tmp_path) and sorted(world.hosts["hv1"]) == ["web1"]


def test_host_drain_module_refuses_a_duplicate_destination_with_one_message(tmp_path):
    result = run_host_drain(tmp_path, {"destinations": [{"name": "hv2", "uri": "fake://hv2"},
                                                        {"name": "hv2", "uri": "fake://hv2b"}]})
    assert result["failed"] and "listed twice" in result["msg"] and not result["changed"]


@pytest.mark.parametrize("dest", [
    {"migration_address": "tcp://10.0.0.2"}, {"migration_address": "qemu+tls://hv2/system"},
    {"link_mbit": float("nan")}, {"link_mbit": -1.0}, {"link_mbit": 0}, {"name": ""}, {"name": None},
    {"uri": ""}, {"uri": None}])
def test_a_bad_host_description_is_refused_before_anything_changes(tmp_path, dest):
    """Regression: a migration_address given as a URI was only noticed while planning - after the
    source had been cordoned and the journal started; NaN link speeds crashed the forecast."""
    world = fleet("a", "b")
    src, dests = hosts()
    bad = Host(**{"name": "hv2", "uri": World.uri("hv2"), "migration_address": "10.0.0.2", **dest})
    backend = FakeBackend(world)
    with pytest.raises(HvfleetError) as info:
        Drainer(backend, src, [bad, dests[1]], DrainConfig(), state_dir=tmp_path).drain()
    assert info.value.hint
    assert_nothing_changed(tmp_path, world, backend, ["a", "b"])


def reviewed_plan_of(tmp_path, world):
    d, _backend = drainer(tmp_path, world)
    plan = d.drain(plan_only=True).to_dict()
    return {"host": "hv1", "action": "drain", "plan": plan["plan"], "blockers": plan["blockers"]}


GARBLED = [
    "not a plan", [], {"plan": "x"}, {"host": "hv1"}, {"host": "hv7", "plan": []},
    {"host": "hv1", "plan": [None]}, {"host": "hv1", "plan": [{"destination": "hv2"}]},
    {"host": "hv1", "plan": [{"vm": ["a"], "destination": "hv2"}]},
    {"host": "hv1", "plan": [{"vm": "a"}]}, {"host": "hv1", "plan": [{"vm": "a", "destination": 5}]},
    {"host": "hv1", "plan": [{"vm": "a", "destination": "hv9"}]},
    {"host": "hv1", "plan": [{"vm": "a", "destination": "hv2"}, {"vm": "a", "destination": "hv3"}]},
]


@pytest.mark.parametrize("reviewed", GARBLED)
def test_a_garbled_reviewed_plan_is_refused_before_anything_changes(tmp_path, reviewed):
    """Regression: a plan item without `destination` raised KeyError, an unhashable `vm` TypeError - after
    the host had been cordoned and the journal started."""
    world = fleet("a", "b")
    d, backend = drainer(tmp_path, world)
    with pytest.raises(DrainError) as info:
        d.drain(reviewed_plan=reviewed)
    assert info.value.hint and "plan" in info.value.message
    assert_nothing_changed(tmp_path, world, backend, ["a", "b"])


def test_a_hand_edited_destination_in_the_reviewed_plan_is_honoured(tmp_path):
    world = fleet("a", "b")
    reviewed = reviewed_plan_of(tmp_path / "plan", world)
    for item in reviewed["plan"]:
        item["destination"] = "hv3"  # the operator sends both to hv3
    d, _backend = drainer(tmp_path, world)
    result = d.drain(reviewed_plan=reviewed)
    assert result.state == jr.DRAINED and sorted(world.hosts["hv3"]) == ["a", "b"]


def test_a_reviewed_plan_that_no_longer_matches_is_refused_and_the_host_left_as_found(tmp_path):
    """A VM appeared since the plan was reviewed: refused, and the cordon this run set is taken back."""
    world = fleet("a", "b")
    reviewed = reviewed_plan_of(tmp_path / "plan", world)
    world.place("hv1", "c", vm())
    d, backend = drainer(tmp_path, world)
    with pytest.raises(DrainError, match="'c' is on hv1 but not in the reviewed plan"):
        d.drain(reviewed_plan=reviewed)
    assert not backend.cordoned and not backend.calls
    assert sorted(world.hosts["hv1"]) == ["a", "b", "c"]


def test_a_garbled_plan_file_is_a_clear_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"host": "hv1", "plan": [')
    module = SimpleNamespace(params={"plan_from": str(path)}, check_mode=False)
    with pytest.raises(HvfleetError) as info:
        host_drain.HostDrainModule(module).reviewed_plan()
    assert str(path) in info.value.message and info.value.hint


def test_unknown_destination_host_is_a_blocker_not_a_crash(tmp_path):
    world = fleet("a")
    src, dests = hosts()
    d, backend = drainer(tmp_path, world, destinations=[Host("hv9", "fake://hv9"), dests[0]])
    backend.unreachable.add("hv9")
    result = d.drain()
    assert result.state == jr.DRAINED and world.hosts["hv2"].keys() == {"a"}
    assert any(b["kind"] == "destination_unreachable" and "hv9" in b["message"] for b in result.blockers)


# ---- module arguments (fuzzed through Ansible's validator, then into the core) ----------------


def ansible_validate(argument_spec, params):
    """Ansible's own argument check; None when Ansible itself refuses the arguments.

    ansible-core 2.19's int conversion raises OverflowError for an infinite float (YAML `.inf`) instead
    of returning an argument error: that happens in Ansible before our code runs, so it counts as
    Ansible refusing the value here (recorded in docs/SECURITY.md)."""
    try:
        checked = ArgumentSpecValidator(argument_spec).validate(params)
    except OverflowError:
        return None
    return None if checked.error_messages else checked.validated_parameters


class FuzzBackend(FakeBackend):
    """The fake fleet; any URI that is not one of its hosts fails to connect, as libvirt's would
    (LibvirtBackend raises LibvirtConnectionError, an HvfleetError)."""

    def connect(self, uri):
        if not isinstance(uri, str) or not uri.startswith("fake://") or uri[len("fake://"):] not in self.world.hosts:
            raise HvfleetError(f"Cannot connect to {uri!r}.", "check the URI.")
        return super().connect(uri)


def run_host_drain(tmp_path, params, world=None):
    """Validate like AnsibleModule, build the drain like the module, run it against a fake fleet."""
    full = {"destinations": [{"name": "hv2", "uri": "fake://hv2"}, {"name": "hv3", "uri": "fake://hv3"}],
            "source": {"name": "hv1", "uri": "fake://hv1"}, "state_dir": str(tmp_path), "by": "t@c",
            "measure_dirty_rate": False, "progress_interval": 0.05, **params}
    validated = ansible_validate(host_drain.ARGUMENT_SPEC, full)
    if validated is None:
        return {"failed": True, "msg": "Ansible refused the arguments", "changed": False, "ansible": True}
    world = world or fleet("a", "b")
    module = SimpleNamespace(params=validated, check_mode=False)
    box = {}

    def go():
        mod = host_drain.HostDrainModule(module)
        try:
            d = mod.drainer()
            d.backend = FuzzBackend(world)
            box["backend"] = d.backend
            outcome = d.drain(reviewed_plan=mod.reviewed_plan())
            box["result"] = {"failed": outcome.failed, "msg": outcome.message, "changed": outcome.changed}
        except HvfleetError as exc:  # what the module turns into fail_json(msg=str(exc))
            box["result"] = {"failed": True, "msg": str(exc), "changed": False, "error": exc}

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), f"the drain hung on {params}"
    assert "result" in box, f"an unexpected exception escaped for {params}"  # printed by the thread
    box["result"]["backend"] = box.get("backend")
    box["result"]["world"] = world
    return box["result"]


host_entry = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["hv2", "hv3", "hv1"]), scalars),
                                    "uri": st.one_of(st.sampled_from(["fake://hv2", "fake://hv3"]), scalars)},
                                   optional={"migration_address": scalars, "link_mbit": scalars,
                                             "cordoned": scalars, "facts": values})
drain_params = st.fixed_dictionaries({}, optional={
    "destinations": st.lists(host_entry, max_size=3), "policies": values, "max_parallel": scalars,
    "max_outbound": scalars, "max_inbound": scalars, "bandwidth_mib": scalars, "max_failures": scalars,
    "memory_headroom_mib": scalars, "memory_headroom_fraction": scalars, "vcpu_overcommit": scalars,
    "anti_affinity_labels": values, "default_link_mbit": scalars, "orphan_wait": scalars,
    "progress_interval": st.one_of(st.floats(0.01, 1), scalars), "plan_from": values, "state": scalars,
    "reason": scalars, "connect_timeout": scalars})


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(params=drain_params)
def test_host_drain_arguments_fuzzed(tmp_path_factory, params):
    tmp_path = tmp_path_factory.mktemp("drain")
    result = run_host_drain(tmp_path, params)
    if result.get("ansible"):
        return  # Ansible's own "argument X is of type ..." message
    backend, world = result["backend"], result["world"]
    if result["failed"] and "error" in result:
        assert result["error"].hint, result["msg"]
        if backend is not None:  # refused: nothing changed
            assert not backend.calls and sorted(world.hosts["hv1"]) == ["a", "b"], result["msg"]
    every = sorted(n for vms in world.hosts.values() for n in vms)
    assert every == ["a", "b"], "no VM lost or duplicated"


dm_params = st.fixed_dictionaries({"name": st.one_of(st.sampled_from(HOSTILE_NAMES), scalars),
                                   "dest_uri": st.one_of(st.sampled_from(["qemu+tcp://10.0.0.2/system"]), scalars)},
                                  optional={k: scalars for k in (
                                      "uri", "migrate_address", "mode", "allow_postcopy", "bandwidth",
                                      "postcopy_bandwidth", "max_downtime", "max_downtime_cap", "auto_converge",
                                      "auto_converge_initial", "auto_converge_increment", "compression",
                                      "parallel_connections", "tls", "tls_destination", "copy_storage",
                                      "completion_timeout", "completion_timeout_per_gib", "completion_timeout_min",
                                      "on_timeout", "stall_iterations", "persist", "undefine_source",
                                      "stats_interval", "postcopy_recovery_timeout", "connect_timeout")})


@settings(max_examples=300, deadline=None)
@given(params=dm_params)
def test_domain_migration_arguments_fuzzed(params):
    validated = ansible_validate(domain_migration.ARGUMENT_SPEC, params)
    if validated is None:
        return
    module = SimpleNamespace(params=validated, check_mode=False)
    try:
        spec = domain_migration.DomainMigrationModule(module).spec()
    except HvfleetError as exc:
        assert exc.hint
        return
    assert math.isfinite(spec.deadline_s(2**30))


# ---- secrets ------------------------------------------------------------------------------------


def test_a_uri_password_never_reaches_the_journal_or_the_events(tmp_path):
    world = fleet("a", "b")
    src = Host("hv1", "fake://hv1", peer_uri=f"qemu+tls://admin:{SECRET}@hv1/system", migration_address="10.0.0.1")
    _s, dests = hosts()
    dests = [Host(d.name, d.uri, peer_uri=f"qemu+tcp://root:{SECRET}@{d.name}/system",
                  migration_address=d.migration_address) for d in dests]
    d = Drainer(FakeBackend(world), src, dests, DrainConfig(progress_interval_s=0.05), state_dir=tmp_path)
    result = d.drain()
    assert result.state == jr.DRAINED
    for name in os.listdir(tmp_path):
        text = (tmp_path / name).read_text(errors="replace")
        assert SECRET not in text, f"{name} holds the password"
    journal = (tmp_path / jr.JOURNAL_NAME).read_text()
    assert f"admin:{redact.MASK}@hv1" in journal, "the URI stays recognisable, its password masked"


def test_module_results_mask_uri_passwords_and_no_log_values(capsys):
    """Through AnsibleModule itself: the password of a URI and auth_password never appear in the result."""
    from ansible.module_utils.testing import patch_module_args

    args = {"name": "x; rm -rf /", "uri": f"qemu+tcp://admin:{SECRET}@127.0.0.1:1/system",
            "dest_uri": f"qemu+tcp://admin:{SECRET}@127.0.0.1:2/system", "auth_username": "admin",
            "auth_password": "hunter2-no-log", "connect_timeout": 2}
    with patch_module_args(args), pytest.raises(SystemExit):
        domain_migration.main()
    out = capsys.readouterr().out
    result = json.loads(out)
    assert result.get("failed") and result["msg"], result
    assert SECRET not in out and "hunter2-no-log" not in out, out
    # the report filters only ever see such masked results; show they add nothing of their own
    rows = report_rows({"action": "drain", "host": "hv1", "vms": [{"vm": "a", "message": result["msg"]}]})
    assert SECRET not in json.dumps(rows)


def test_scrub_masks_every_uri_password_and_keeps_the_rest():
    text = (f"cannot reach qemu+tcp://root:{SECRET}@hv2/system; try virsh -c 'qemu+tls://u:{SECRET}@h/system' "
            "or mail admin@example.com, see qemu+ssh://root@hv3/system")
    out = redact.scrub({"msg": text, "list": [text], 5: None})
    assert SECRET not in json.dumps(out)
    assert "qemu+tcp://root:***@hv2/system" in out["msg"] and "admin@example.com" in out["msg"]
    assert "qemu+ssh://root@hv3/system" in out["msg"]
    assert redact.uri_passwords({"a": [f"qemu+tcp://u:{SECRET}@h/system"]}) == {SECRET}


@settings(max_examples=200, deadline=None)
@given(user=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=8),
       password=st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789!$%&()*+,;=~-._", min_size=4, max_size=16),
       host=st.sampled_from(["hv2", "10.0.0.2", "[fd00::2]", "hv2.example.com:16514"]))
def test_scrub_hides_any_password_in_a_libvirt_uri(user, password, host):
    uri = f"qemu+tls://{user}:{password}@{host}/system"
    assert redact.scrub_text(f"error at {uri}: refused") == f"error at qemu+tls://{user}:***@{host}/system: refused"
    assert redact.uri_passwords(uri) == {password}


def test_report_filters_handle_hostile_names_as_text():
    result = {"action": "drain", "host": "hv1", "state": "failed",
              "plan": [{"vm": n, "destination": "hv2", "mode": "precopy", "predicted_duration_s": 1.0}
                       for n in HOSTILE_NAMES],
              "vms": [{"vm": n, "ok": True, "duration_s": 1.0, "started": "2026-01-01T00:00:00+00:00",
                       "finished": "2026-01-01T00:00:01+00:00", "destination": "hv2"} for n in HOSTILE_NAMES],
              "blockers": [{"vm": "<script>alert(1)</script>", "message": "<b>x</b>", "kind": "unplaced"}]}
    svg = timeline_svg(result)
    assert "<script>" not in svg
    assert len(report_rows(result)) == len(HOSTILE_NAMES) + 1
    assert plan_lines(result)


def refuse_resume():
    raise tm.LibvirtFail("No route to host")
