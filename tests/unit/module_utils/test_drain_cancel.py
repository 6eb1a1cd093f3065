"""drain/cancel.py: a cancel request reaches the process that really holds the drain lock, and only that one."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import cancel
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import Journal
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock, flock_owners

REPO = Path(__file__).resolve().parents[3]

# A stand-in drain: holds the lock; on SIGTERM reads the request addressed to it, writes what it saw, ends
# (or, with "stubborn", ignores the signal).
HOLDER = textwrap.dedent('''
    import json, signal, sys, time
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain import cancel
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import DrainLock
    state_dir, mode = sys.argv[1], sys.argv[2]
    seen = []
    def handler(signum, frame):
        request = cancel.request_for(state_dir)
        seen.append(request.to_dict() if request else None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else handler)
    with DrainLock(state_dir, "hv1", "drain", "ops@ctl"):
        print("locked", flush=True)
        while not seen:
            time.sleep(0.05)
    with open(state_dir + "/seen.json", "w") as handle:
        json.dump(seen[0], handle)
''')


def start_holder(tmp_path, mode="normal"):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections"))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path), mode], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_flock_owners_reads_proc_locks_lines():
    text = ("1: FLOCK  ADVISORY  WRITE 4242 fe:00:1532344 0 EOF\n"
            "1: -> FLOCK  ADVISORY  WRITE 4343 fe:00:1532344 0 EOF\n"  # waiting, not holding
            "2: POSIX  ADVISORY  WRITE 99 fe:00:1532344 0 0\n"
            "3: FLOCK  ADVISORY  WRITE 77 fe:01:1532344 0 EOF\n")
    assert flock_owners(text, 0xFE, 0, 1532344) == {4242}


def test_a_free_lock_means_nothing_to_cancel(tmp_path):
    DrainLock(str(tmp_path)).acquire().release()  # a lock file left by an ended run
    out = cancel.cancel_running(str(tmp_path), by="ops@ctl", send=pytest.fail)
    assert out["changed"] is False and out["cancelled"] is False
    assert "nothing to cancel" in out["message"]
    assert not (tmp_path / "cancel.json").exists()


def test_the_holder_gets_the_request_and_the_canceller_waits_for_its_end(tmp_path):
    proc = start_holder(tmp_path)
    try:
        out = cancel.cancel_running(str(tmp_path), by="alice@ctl", mode="finish", reason="CHG-9 abandoned", wait_s=30)
    finally:
        proc.wait(timeout=30)
    assert out["cancelled"] and out["changed"]
    assert out["holder"]["pid"] == proc.pid
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["pid"] == proc.pid and seen["by"] == "alice@ctl" and seen["mode"] == "finish"
    assert seen["reason"] == "CHG-9 abandoned" and seen["holder_started"] == out["holder"]["started"]
    assert "cancelled by alice@ctl (CHG-9 abandoned)" in out["message"]


def test_a_request_for_an_earlier_holder_is_not_honoured(tmp_path):
    stale = cancel.CancelRequest(pid=os.getpid(), holder_started="2000-01-01T00:00:00+00:00", by="old@ctl")
    cancel.write_request(str(tmp_path), stale)
    with DrainLock(str(tmp_path), "hv1"):  # this process holds the lock now, since a later start time
        assert cancel.request_for(str(tmp_path)) is None
        holder = DrainLock(str(tmp_path)).holder()
        fresh = cancel.CancelRequest(pid=os.getpid(), holder_started=holder["started"], by="new@ctl")
        cancel.write_request(str(tmp_path), fresh)
        assert cancel.request_for(str(tmp_path)) == fresh
        assert cancel.request_for(str(tmp_path), pid=os.getpid() + 1) is None  # another process: not for it


def test_a_holder_that_does_not_stop_in_time_fails_clearly(tmp_path):
    proc = start_holder(tmp_path, "stubborn")
    try:
        with pytest.raises(cancel.CancelError) as err:
            cancel.cancel_running(str(tmp_path), by="ops@ctl", wait_s=1.0)
        assert f"pid {proc.pid}" in err.value.message and "still runs after 1 s" in err.value.message
        assert "cancel_timeout" in err.value.hint
        assert cancel.read_request(str(tmp_path)).pid == proc.pid  # the request stays in force
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_lock_file_naming_another_pid_than_the_holder_is_refused(tmp_path):
    proc = start_holder(tmp_path, "stubborn")
    try:
        lock = DrainLock(str(tmp_path))
        data = lock.holder()
        Path(lock.path).write_text(json.dumps(dict(data, pid=1)))  # the file lies about its holder
        with pytest.raises(cancel.CancelError) as err:
            cancel.verified_holder(lock, settle_s=0.3)
        assert f"held by pid {proc.pid}" in err.value.message and "nothing was cancelled" in err.value.message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_check_mode_sends_nothing(tmp_path):
    proc = start_holder(tmp_path, "stubborn")
    try:
        out = cancel.cancel_running(str(tmp_path), by="ops@ctl", check_only=True, send=pytest.fail)
        assert out["changed"] and not out["cancelled"] and out["holder"]["pid"] == proc.pid
        assert not (tmp_path / "cancel.json").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def test_the_request_goes_into_this_process_run_record_only(tmp_path):
    journal = Journal(str(tmp_path), "hv1")
    request = cancel.CancelRequest(pid=os.getpid(), holder_started="x", by="bob@ctl", reason="why")
    assert not cancel.record(journal, request)  # no run yet
    journal.begin_run("drain")
    assert cancel.record(journal, request)
    journal.end_run("interrupted", {"message": "m"})
    view = cancel.journal_view(str(tmp_path))
    assert view["state"] == "interrupted"
    assert view["run"]["cancel"]["by"] == "bob@ctl" and view["run"]["summary"] == {"message": "m"}


@pytest.mark.parametrize("data", [None, {}, {"pid": "1", "holder_started": "x", "mode": "abort"},
                                  {"pid": 1, "holder_started": "", "mode": "abort"},
                                  {"pid": 1, "holder_started": "x", "mode": "later"}])
def test_malformed_requests_are_none(data):
    assert cancel.CancelRequest.from_dict(data) is None


def test_an_unknown_mode_is_refused_before_anything(tmp_path):
    with pytest.raises(cancel.CancelError) as err:
        cancel.cancel_running(str(tmp_path), by="x", mode="later", send=pytest.fail)
    assert "abort" in err.value.hint


def test_process_running_sees_an_ended_child():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while proc.poll() is None:  # ended but not reaped: a zombie until poll() reaps it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not cancel.process_running(proc.pid)
    assert cancel.process_running(os.getpid())
