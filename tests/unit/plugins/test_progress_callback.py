"""The drain_progress callback: progress events -> one line each, on a fake display."""

import pytest
from ansible_collections.hvfleet.drain.plugins.callback.drain_progress import (
    TONE_COLORS,
    CallbackModule,
    collapse,
    fmt_duration,
    render_event,
)


class FakeDisplay:
    verbosity = 0

    def __init__(self):
        self.lines = []

    def display(self, msg, color=None, **_kwargs):
        self.lines.append((msg, color))

    def __getattr__(self, name):  # verbose, warning, ... are not used by this callback
        return lambda *a, **k: None


class FakeHost:
    def get_name(self):
        return "hv1"


class FakeResult:
    def __init__(self, data):
        self.result = data
        self.host = FakeHost()


def ev(seq, kind, run="r1", t=1.0, **fields):
    return {"seq": seq, "t": t, "run": run, "host": "hv1", "action": "drain", "event": kind, **fields}


def poll(*events):
    return FakeResult({"events": list(events), "offset": 10, "run": "r1", "finished": False,
                       "progress_path": "/var/lib/hvfleet/drain-progress.jsonl"})


@pytest.fixture
def callback():
    display = FakeDisplay()
    return CallbackModule(display=display), display


def texts(display):
    return [line for line, _color in display.lines]


def test_vm_started_names_destination_mode_and_why(callback):
    cb, display = callback
    started = ev(1, "vm_started", t=3.2, vm="web1", destination="hv2", mode="precopy",
                 mode_reason="dirty rate 2 MiB/s converges", policy="default", predicted_duration_s=12.4,
                 predicted_downtime_ms=40, bandwidth_mib=500)
    cb.v2_runner_retry(poll(started))
    (line,) = texts(display)
    assert "hv1 0:03 web1 -> hv2: started, precopy (dirty rate 2 MiB/s converges)" in line
    assert "policy default" in line and "predicted 12.4 s, downtime 40 ms" in line and "500 MiB/s" in line


def test_progress_shows_percentage_and_eta(callback):
    cb, display = callback
    sample = ev(2, "vm_progress", t=65, vm="db1", destination="hv3", phase="precopy", percent=42.4, eta_s=75,
                iteration=3, remaining_bytes=300 * 1024 * 1024, bandwidth_bps=100 * 1024 * 1024, elapsed_s=60)
    cb.v2_runner_retry(poll(sample))
    (line,) = texts(display)
    assert line.strip().startswith("hv1 1:05 db1 -> hv3: 42% of pass 3, ETA 1 min 15 s")
    assert "300.0 MiB left" in line and "100.0 MiB/s" in line


def test_finished_shows_seconds_downtime_and_mib_and_failure_shows_reason(callback):
    cb, display = callback
    cb.v2_runner_on_ok(poll(
        ev(3, "vm_finished", vm="web1", destination="hv2", ok=True, state="moved", outcome="moved", mode="precopy",
           duration_s=14.23, downtime_ms=48.0, bytes_sent=int(312.5 * 1024 * 1024)),
        ev(4, "vm_finished", vm="db1", destination="hv3", ok=False, state="stayed", outcome="stayed",
           mode="precopy", message="did not converge in 120 s", recovery=None)))
    ok, failed = display.lines
    assert "web1 -> hv2: moved in 14.2 s, downtime 48 ms, 312.5 MiB sent (precopy)" in ok[0]
    assert "db1 -> hv3: FAILED (stayed): did not converge in 120 s" in failed[0]
    assert ok[1] != failed[1]  # success and failure are told apart by colour too


def test_run_lines(callback):
    cb, display = callback
    begin = ev(1, "run_started", vms=4, blocked=1, forecast_total_s=80, max_parallel=2, resumed=True)
    end = ev(9, "run_finished", state="drained", moved=4, failed=0, blocked=0, not_started=0, duration_s=63.0,
             forecast_total_s=80)
    cb.v2_runner_retry(poll(begin))
    cb.v2_runner_on_ok(poll(end))
    started, finished = texts(display)
    assert "drain started: 4 VM(s) to move, 1 blocked, forecast 1 min 20 s, up to 2 at once" in started
    assert "resuming" in started
    assert "drain drained: 4 moved, 0 failed, 0 blocked, 0 not started in 1 min 03 s (forecast 1 min 20 s)" in finished


def test_events_are_printed_once_even_when_delivered_again(callback):
    cb, display = callback
    first = ev(1, "note", message="cordoned hv1")
    cb.v2_runner_retry(poll(first))
    cb.v2_runner_on_ok(poll(first, ev(2, "note", message="second")))
    assert texts(display) == ["  hv1 0:01 cordoned hv1", "  hv1 0:01 second"]


def test_a_new_run_starts_its_own_sequence(callback):
    cb, display = callback
    cb.v2_runner_retry(poll(ev(1, "note", message="drain")))
    cb.v2_runner_retry(poll(ev(1, "note", run="r2", message="restore")))
    assert len(display.lines) == 2


def test_other_results_are_ignored(callback):
    cb, display = callback
    cb.v2_runner_on_ok(FakeResult({"changed": True, "msg": "hello", "events": [ev(1, "note", message="x")]}))
    cb.v2_runner_on_failed(FakeResult({"failed": True, "msg": "boom"}))
    assert display.lines == []


def test_only_the_latest_sample_of_a_vm_in_one_batch_is_shown():
    batch = [ev(1, "vm_progress", vm="a", percent=10), ev(2, "vm_progress", vm="b", percent=50),
             ev(3, "vm_progress", vm="a", percent=30), ev(4, "vm_finished", vm="b", ok=True)]
    assert [e["seq"] for e in collapse(batch)] == [3, 4]


def test_unknown_events_are_not_rendered():
    assert render_event({"event": "something_new"}) is None


@pytest.mark.parametrize("seconds, text", [(0.25, "250 ms"), (12.34, "12.3 s"), (125, "2 min 05 s"),
                                           (7380, "2 h 03 min"), (None, "?")])
def test_durations(seconds, text):
    assert fmt_duration(seconds) == text


def test_a_not_empty_drain_ends_with_a_warning_naming_what_was_left(callback):
    """Not a success (the host still runs VMs and must not be rebooted) and not a failure, nor an unknown state."""
    cb, display = callback
    message = ("drain of hv1: 2 moved, 0 failed, 0 blocked, 0 not started; hv1 is NOT empty: left on it by policy "
               "(on_unmigratable: leave): gpu1 (cannot live-migrate)")
    cb.v2_runner_on_ok(poll(ev(9, "run_finished", state="not_empty", moved=2, failed=0, blocked=0, not_started=0,
                               duration_s=20.0, forecast_total_s=18.0, message=message, left=1)))
    ((line, color),) = display.lines
    assert "drain not_empty: 2 moved, 0 failed" in line
    first, second = line.splitlines()
    assert "hv1 is NOT empty: 1 VM(s) left on it by policy (on_unmigratable: leave), do not reboot it" in first
    assert second == f"    {message}"  # the closing message names the VMs left, why and the fix
    assert color == TONE_COLORS["warn"] != TONE_COLORS["ok"]


def test_a_drained_run_is_still_ok_and_a_failed_one_an_error():
    end = ev(9, "run_finished", state="drained", moved=1, failed=0, blocked=0, not_started=0, duration_s=1.0)
    assert render_event(end)[1] == "ok"
    assert render_event(dict(end, state="failed", failed=1))[1] == "error"


def test_a_cold_move_is_told_step_by_step():
    started = render_event(ev(1, "vm_started", vm="gpu2", destination="hv2", mode="cold", policy="gpu",
                              mode_reason="it uses host PCI device 0000:3b:00.0", predicted_duration_s=130.0,
                              predicted_downtime_ms=130000.0, auto_converge=False))
    assert started == ("hv1 0:01 gpu2 -> hv2: moving cold (shut down, moved, started there), policy gpu: it uses "
                       "host PCI device 0000:3b:00.0", "start")
    bound = render_event(ev(1, "vm_started", vm="gpu2", destination="hv2", mode="cold", predicted_downtime_ms=130000.0))
    assert bound[0].endswith("moving cold (shut down, moved, started there): outage up to 2 min 10 s plus its boot")
    step = render_event(ev(2, "vm_cold_step", vm="gpu2", step_host="hv2", step="started", elapsed_s=4.2,
                           message="running on hv2"))
    assert step == ("hv1 0:01 gpu2: cold move, started on hv2: running on hv2", "info")
    timed_out = render_event(ev(3, "vm_cold_step", vm="gpu2", step_host="hv1", step="shutdown_timed_out", message="x"))
    assert timed_out[1] == "warn"
    done = render_event(ev(4, "vm_finished", vm="gpu2", destination="hv2", ok=True, state="moved", outcome="moved",
                           mode="cold", duration_s=9.5, downtime_ms=9000.0, bytes_sent=0))
    assert done == ("hv1 0:01 gpu2 -> hv2: moved cold in 9.5 s, outage 9.0 s (its boot on top)", "ok")
