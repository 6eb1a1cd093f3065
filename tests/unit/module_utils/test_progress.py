"""Following the drain's progress events from a cursor (module_utils/progress.py)."""

import json

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import PROGRESS_NAME, Journal
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.progress import follow, job_state, read_new


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def write_events(path, events):
    with open(path / PROGRESS_NAME, "w", encoding="utf-8") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def ev(run, seq, kind="note", at="2030-01-01T00:00:00.000+00:00", **fields):
    return {"run": run, "seq": seq, "event": kind, "at": at, "host": "hv1", **fields}


def test_reads_from_the_cursor_and_advances_it(tmp_path):
    write_events(tmp_path, [ev("r1", 1), ev("r1", 2)])
    events, cursor = read_new(tmp_path, {})
    assert [e["seq"] for e in events] == [1, 2]
    assert cursor["run"] == "r1" and cursor["seq"] == 2 and cursor["offset"] > 0
    with open(tmp_path / PROGRESS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(ev("r1", 3)) + "\n")
    events, cursor2 = read_new(tmp_path, cursor)
    assert [e["seq"] for e in events] == [3]
    assert cursor2["offset"] > cursor["offset"]
    assert read_new(tmp_path, cursor2)[0] == []


def test_a_new_run_that_refilled_the_file_past_the_offset_is_read_from_its_start(tmp_path):
    write_events(tmp_path, [ev("old", 1, message="x" * 10)])
    cursor = read_new(tmp_path, {})[1]
    # the next run empties the file and writes more than the old offset before the next poll
    write_events(tmp_path, [ev("new", 1, message="a" * 50), ev("new", 2, message="b" * 50)])
    events, cursor = read_new(tmp_path, {"offset": cursor["offset"], "run": "new", "seq": 0})
    assert [(e["run"], e["seq"]) for e in events] == [("new", 1), ("new", 2)]


def test_events_older_than_since_are_skipped_and_the_first_newer_run_is_followed(tmp_path):
    write_events(tmp_path, [ev("old", 1, at="2030-01-01T00:00:00.000+00:00"),
                            ev("old", 2, at="2030-01-01T00:00:01.000+00:00")])
    events, cursor = read_new(tmp_path, {}, since="2030-01-01T00:00:05.000+00:00")
    assert events == [] and cursor["run"] is None
    write_events(tmp_path, [ev("new", 1, at="2030-01-01T00:00:06.000+00:00")])
    events, cursor = read_new(tmp_path, cursor, since="2030-01-01T00:00:05.000+00:00")
    assert [(e["run"], e["seq"]) for e in events] == [("new", 1)] and cursor["run"] == "new"


def test_a_missing_file_yields_nothing(tmp_path):
    assert read_new(tmp_path, {})[0] == []


def test_job_state_reads_the_async_results_file(tmp_path):
    assert job_state(str(tmp_path), "123.1") == "missing"
    (tmp_path / "123.1").write_text(json.dumps({"started": True, "finished": False, "ansible_job_id": "123.1"}))
    assert job_state(str(tmp_path), "123.1") == "running"
    (tmp_path / "123.1").write_text("")
    assert job_state(str(tmp_path), "123.1") == "running"  # being written
    (tmp_path / "123.1").write_text(json.dumps({"changed": True, "state": "drained"}))
    assert job_state(str(tmp_path), "123.1") == "finished"


def test_follow_returns_at_once_when_a_vm_starts(tmp_path):
    clock = FakeClock()
    write_events(tmp_path, [ev("r", 1, "vm_started", vm="a")])
    out = follow(tmp_path, wait=30, job=lambda: "running", clock=clock, sleep=clock.sleep)
    assert [e["event"] for e in out["events"]] == ["vm_started"]
    assert out["finished"] is False and out["job"] == "running"
    assert clock.sleeps == []


def test_follow_batches_progress_samples_until_the_wait_is_over(tmp_path):
    clock = FakeClock()
    write_events(tmp_path, [ev("r", 1, "vm_progress", vm="a", percent=10)])
    out = follow(tmp_path, cursor={}, wait=3, job=lambda: "running", interval=0.5, clock=clock, sleep=clock.sleep)
    assert [e["seq"] for e in out["events"]] == [1]
    assert clock.now >= 3  # it waited for news other than samples
    assert out["finished"] is False


def test_follow_is_finished_when_the_job_ended_and_reads_everything_left(tmp_path):
    clock = FakeClock()
    write_events(tmp_path, [ev("r", 1, "vm_progress", vm="a"), ev("r", 2, "vm_finished", vm="a", ok=True),
                            ev("r", 3, "run_finished", state="drained")])
    out = follow(tmp_path, cursor={"offset": 0, "run": "r", "seq": 1}, wait=10, job=lambda: "finished",
                 clock=clock, sleep=clock.sleep)
    assert [e["seq"] for e in out["events"]] == [2, 3]
    assert out["finished"] is True and out["job"] == "finished"


def test_follow_without_a_job_is_finished_at_run_finished(tmp_path):
    clock = FakeClock()
    write_events(tmp_path, [ev("r", 1, "vm_progress", vm="a")])
    first = follow(tmp_path, wait=0, clock=clock, sleep=clock.sleep)
    assert first["finished"] is False
    with open(tmp_path / PROGRESS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(ev("r", 2, "run_finished", state="drained")) + "\n")
    second = follow(tmp_path, cursor={k: first[k] for k in ("offset", "run", "seq")}, wait=0, clock=clock,
                    sleep=clock.sleep)
    assert second["finished"] is True and [e["seq"] for e in second["events"]] == [2]


def test_follow_a_job_that_ended_without_any_event_is_finished(tmp_path):
    out = follow(tmp_path, wait=5, job=lambda: "missing")
    assert out["finished"] is True and out["events"] == [] and out["run"] is None


def test_follow_reads_what_the_journal_writes(tmp_path):
    """The real writer: a Journal's events, across a new run that empties the file."""
    journal = Journal(str(tmp_path), "hv1")
    journal.begin_run("drain")
    journal.event("run_started", vms=1)
    journal.event("vm_started", vm="a", destination="hv2", mode="precopy")
    first = follow(tmp_path, wait=0)
    assert [e["event"] for e in first["events"]] == ["run_started", "vm_started"]
    since = first["now"]
    journal.begin_run("restore")
    journal.event("run_started", vms=1)
    journal.event("vm_finished", vm="a", ok=True)
    second = follow(tmp_path, wait=0, since=since)
    expected = [("restore", "run_started"), ("restore", "vm_finished")]
    assert [(e["action"], e["event"]) for e in second["events"]] == expected


def test_mark_returns_no_events_and_a_since_that_skips_them(tmp_path):
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.progress import mark

    journal = Journal(str(tmp_path), "hv1")
    journal.begin_run("drain")
    journal.event("note", message="old")
    marked = mark(tmp_path)
    assert marked["events"] == []
    assert follow(tmp_path, since=marked["now"])["events"] == []
