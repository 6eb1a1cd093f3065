"""The drain journal (atomic, resumable record) and the drain lock."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import journal as jr
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.lock import LOCK_NAME, DrainLock, DrainLocked


def test_new_journal_is_empty_and_not_written(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1")
    assert not j.exists and j.vms() == {}
    assert not (tmp_path / jr.JOURNAL_NAME).exists()


def test_every_change_is_on_disk_with_history(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1")
    j.begin_run("drain", reason="kernel update", by="alice@ctl", source_uri="qemu:///system")
    j.put_vm("web", {"kind": "live", "destination": "hv2", "mode": "precopy"})
    j.update_vm("web", jr.MIGRATING)
    on_disk = json.loads((tmp_path / jr.JOURNAL_NAME).read_text())
    assert on_disk["state"] == jr.DRAINING and on_disk["reason"] == "kernel update"
    assert on_disk["vms"]["web"]["state"] == jr.MIGRATING and on_disk["vms"]["web"]["attempts"] == 1
    j.update_vm("web", jr.MOVED, result={"ok": True})
    again = jr.Journal.load(tmp_path, "hv1")
    entry = again.vm("web")
    assert [h["state"] for h in entry["history"]] == ["planned", "migrating", "moved"]
    assert entry["origin"] == "hv1" and entry["finished"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp." in p]


def test_replanning_keeps_the_origin(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1")
    j.put_vm("web", {"destination": "hv2", "origin": "hv0"})
    j.put_vm("web", {"destination": "hv3", "origin": "hv1"})
    assert j.vm("web")["origin"] == "hv0" and j.vm("web")["destination"] == "hv3"


def test_unknown_state_and_corrupt_file_are_refused(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1")
    j.put_vm("a", {})
    with pytest.raises(jr.JournalError):
        j.update_vm("a", "teleported")
    (tmp_path / jr.JOURNAL_NAME).write_text("{not json")
    with pytest.raises(jr.JournalError) as info:
        jr.Journal.load(tmp_path, "hv1")
    assert "move it aside" in str(info.value)


def test_in_memory_journal_writes_nothing(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1", persist=False)
    j.begin_run("drain")
    j.put_vm("a", {})
    j.event("note", message="x")
    assert os.listdir(tmp_path) == []


def test_events_are_appended_and_read_incrementally(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1")
    j.begin_run("drain")
    j.event("vm_started", vm="a", destination="hv2")
    events, offset = jr.read_events(tmp_path)
    assert [(e["seq"], e["event"], e["vm"], e["host"], e["action"]) for e in events] == [
        (1, "vm_started", "a", "hv1", "drain")]
    j.event("vm_finished", vm="a", ok=True)
    more, offset2 = jr.read_events(tmp_path, offset)
    assert [e["event"] for e in more] == ["vm_finished"] and offset2 > offset
    j.begin_run("restore")  # a new run empties the file; a poller past its end starts over
    j.event("run_started", vms=1)
    fresh, _offset = jr.read_events(tmp_path, offset2)
    assert [e["event"] for e in fresh] == ["run_started"] and fresh[0]["action"] == "restore"


def test_archive_moves_the_cycle_aside(tmp_path):
    j = jr.Journal.load(tmp_path, "hv1")
    j.begin_run("drain")
    target = j.archive()
    assert target and os.path.exists(target) and not (tmp_path / jr.JOURNAL_NAME).exists()


def _hold(path, ready, release):
    lock = DrainLock(path, "hv1", "drain", "bob@ctl")
    lock.acquire()
    ready.set()
    release.wait(10)


def _hold_and_die(path, ready):
    DrainLock(path, "hv1", "drain", "bob@ctl").acquire()
    ready.set()
    time.sleep(0.2)
    os._exit(1)  # no release: the kernel drops the flock


def test_second_holder_is_refused_with_the_holder_named(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    proc.start()
    try:
        assert ready.wait(10)
        with pytest.raises(DrainLocked) as info:
            DrainLock(tmp_path, "hv1").acquire()
        assert f"pid {proc.pid}" in str(info.value) and "bob@ctl" in str(info.value)
        assert info.value.holder["pid"] == proc.pid
        assert DrainLock(tmp_path, "hv1").is_locked_elsewhere()["by"] == "bob@ctl"
    finally:
        release.set()
        proc.join(10)
    with DrainLock(tmp_path, "hv1") as lock:
        assert lock.held


def test_a_crashed_holder_never_leaves_the_lock_stuck(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_and_die, args=(str(tmp_path), ready))
    proc.start()
    assert ready.wait(10)
    proc.join(10)
    assert DrainLock(tmp_path, "hv1").is_locked_elsewhere() is None
    with DrainLock(tmp_path, "hv1", by="alice") as lock:
        assert lock.holder()["by"] == "alice"
    assert (tmp_path / LOCK_NAME).read_text() == ""


def test_probe_creates_nothing(tmp_path):
    assert DrainLock(tmp_path / "nothing", "hv1").is_locked_elsewhere() is None
    assert not (tmp_path / "nothing").exists()
