"""The drain_progress action plugin carries the cursor from one until-attempt to the next."""

from ansible_collections.hvfleet.drain.plugins.action.drain_progress import continued_args, registered_name

ARGS = {"job_id": "j1", "since": "2030-01-01T00:00:00.000+00:00", "wait": 15}
PREVIOUS = {"job_id": "j1", "since": ARGS["since"], "offset": 420, "run": "r1", "seq": 7, "finished": False,
            "progress_path": "/var/lib/hvfleet/drain-progress.jsonl", "events": []}


def test_the_previous_attempt_of_the_same_job_gives_the_cursor():
    args = continued_args(ARGS, PREVIOUS)
    assert (args["offset"], args["run"], args["seq"]) == (420, "r1", 7)
    assert args["wait"] == 15


def test_a_result_of_another_job_is_ignored():
    assert "offset" not in continued_args(ARGS, dict(PREVIOUS, job_id="j0"))
    assert "offset" not in continued_args(ARGS, dict(PREVIOUS, since="2029-01-01T00:00:00.000+00:00"))


def test_a_finished_or_foreign_result_is_ignored():
    assert "offset" not in continued_args(ARGS, dict(PREVIOUS, finished=True))
    assert "offset" not in continued_args(ARGS, {"offset": 3})  # not a drain_progress result
    assert "offset" not in continued_args(ARGS, None)


def test_without_job_or_since_nothing_tells_runs_apart():
    assert "offset" not in continued_args({"wait": 1}, dict(PREVIOUS, job_id=None, since=None))


def test_the_registered_variable_is_found_as_a_name_or_as_a_register_projection():
    assert registered_name("progress") == "progress"
    assert registered_name({"progress": "_task.polymorphic_result"}) == "progress"  # ansible-core 2.21
    assert registered_name(None) is None and registered_name("") is None
