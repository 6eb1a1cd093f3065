"""host_drain's window_end as Ansible runs the module: a window already closed refuses the run before anything
changes, a malformed time is named, and the end is handed to the drain as its start deadline."""

import time

import pytest
from test_preflight_modules import run_module

pytest.importorskip("libvirt")


def run_host_drain(tmp_path, **args):
    return run_module("host_drain", tmp_path, **args)


def test_a_window_that_already_ended_refuses_before_anything_changes(tmp_path):
    state = tmp_path / "state"
    out = run_host_drain(tmp_path, source={"name": "hv1", "uri": "test:///default"}, state_dir=str(state),
                         destinations=[{"name": "hv2", "uri": "test:///default"}], window_end="2020-01-01T00:00:00Z")
    assert out["failed"] and not out["changed"]
    assert "The maintenance window ended at 2020-01-01T00:00:00Z: nothing was started and nothing changed" in out["msg"]
    assert not state.exists()  # no cordon, no journal, no lock


def test_a_malformed_window_end_is_named(tmp_path):
    out = run_host_drain(tmp_path, source={"name": "hv1", "uri": "test:///default"}, state_dir=str(tmp_path / "s"),
                         destinations=[{"name": "hv2", "uri": "test:///default"}], window_end="tonight")
    assert out["failed"] and "window_end 'tonight' is not an ISO 8601 date-time" in out["msg"]


def test_the_window_end_becomes_the_drain_start_deadline():
    from ansible_collections.hvfleet.drain.plugins.modules import host_drain

    class Module:
        check_mode = False
        params = {k: v.get("default") for k, v in host_drain.ARGUMENT_SPEC.items()}

    Module.params.update(source={"name": "hv1"}, destinations=[{"name": "hv2", "uri": "test:///default"}], by="t")
    Module.params["window_end"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 600))  # naive: UTC
    drainer = host_drain.HostDrainModule(Module()).drainer()
    assert 590 < drainer.config.start_deadline - time.monotonic() <= 600
    Module.params["window_end"] = None
    assert host_drain.HostDrainModule(Module()).drainer().config.start_deadline is None
