"""host_drain state=cancelled as Ansible runs the module, and the running drain's side of a cancel request."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import cancel
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock

REPO = Path(__file__).resolve().parents[3]
COLLECTIONS = REPO / ".collections"


def run_host_drain(tmp_path, check=False, **args):
    args = dict(args, _ansible_check_mode=check, _ansible_diff=False)
    argfile = tmp_path / "args.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=str(COLLECTIONS))
    res = subprocess.run([sys.executable, "-m", "ansible_collections.hvfleet.drain.plugins.modules.host_drain",
                          str(argfile)], capture_output=True, text=True, env=env, timeout=120, check=False)
    return json.loads(res.stdout[res.stdout.index("{"):])


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


@pytest.fixture
def saved_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


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
