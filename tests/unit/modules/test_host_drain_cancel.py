"""host_drain state=cancelled as Ansible runs the module, and the running drain's side of a cancel request."""

import os
import signal

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import cancel
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock
from test_preflight_modules import run_module


def run_host_drain(tmp_path, **args):
    return run_module("host_drain", tmp_path, **args)


def test_nothing_running_is_ok_and_unchanged_without_destinations(tmp_path):
    out = run_host_drain(tmp_path, state="cancelled", state_dir=str(tmp_path / "state"))
    assert not out.get("failed") and out["changed"] is False
    assert "nothing to cancel" in out["message"]
    assert out["cancel"]["cancelled"] is False


def test_drained_still_needs_destinations(tmp_path):
    out = run_host_drain(tmp_path, state="drained", state_dir=str(tmp_path / "state"))
    assert out["failed"] and "destinations" in out["msg"]


class FakeContext:
    def __init__(self):
        self.calls = []

    def cancel(self, abort_running=True):
        self.calls.append(("ctx", abort_running))


class FakeDrainer:
    def __init__(self):
        self.ctx = FakeContext()

    def cancel(self):
        self.ctx.calls.append(("drainer", True))


@pytest.mark.usefixtures("saved_handlers")
@pytest.mark.parametrize("mode, expected", [("finish", ("ctx", False)), ("abort", ("drainer", True))])
def test_a_request_for_this_run_is_done_as_asked_and_recorded(tmp_path, mode, expected):
    pytest.importorskip("libvirt")
    from ansible_collections.hvfleet.drain.plugins.modules.host_drain import HostDrainModule

    drainer, honoured = FakeDrainer(), []
    HostDrainModule._trap_signals(drainer, str(tmp_path), honoured.append)  # pylint: disable=protected-access
    with DrainLock(str(tmp_path), "hv1"):
        started = DrainLock(str(tmp_path)).holder()["started"]
        request = cancel.CancelRequest(pid=os.getpid(), holder_started=started, by="carol@ctl", mode=mode)
        cancel.write_request(str(tmp_path), request)
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert drainer.ctx.calls == [expected]
    assert honoured == [request]


@pytest.mark.usefixtures("saved_handlers")
def test_a_stale_request_is_a_plain_kill(tmp_path):
    pytest.importorskip("libvirt")
    from ansible_collections.hvfleet.drain.plugins.modules.host_drain import HostDrainModule

    drainer, honoured = FakeDrainer(), []
    HostDrainModule._trap_signals(drainer, str(tmp_path), honoured.append)  # pylint: disable=protected-access
    cancel.write_request(str(tmp_path), cancel.CancelRequest(pid=os.getpid(), holder_started="2000-01-01",
                                                             by="old@ctl", mode="finish"))
    with DrainLock(str(tmp_path), "hv1"):
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert drainer.ctx.calls == [("drainer", True)]  # aborted as any SIGTERM does, and nobody is named
    assert honoured == []
