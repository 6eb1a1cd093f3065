"""The ledger of hvfleet.drain.rolling_turn: the admission step, the file under its lock, and several processes
(and two runs) contending for turns through the real wait loop."""

import datetime
import json
import multiprocessing
import os
import time

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_admission as RA
from ansible_collections.hvfleet.drain.plugins.module_utils.fleet import rolling_ledger as RL

UTC = datetime.UTC
NOON = datetime.datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
ME = RL.Run(os.getpid(), RL.process_start(os.getpid()))
ROLLOUT = f"{ME.key}/play"


def H(name, **kw):
    return RA.Host(name=name, **kw)


def entry(host, state, rollout=ROLLOUT, run=ME, outcome=None, domain=None):
    return RL.Entry(rollout=rollout, host=host, run_pid=run.pid, run_start=run.start, state=state, since=0.0,
                    outcome=outcome, domain=domain)


def dead_run():
    """A Run whose process has exited (a crashed ansible-playbook)."""
    proc = multiprocessing.get_context("fork").Process(target=lambda: None)
    proc.start()
    start = RL.process_start(proc.pid)
    proc.join()
    return RL.Run(proc.pid, start)


# ------------------------------------------------------------------------------------ consider()


def test_admits_while_below_max_in_flight():
    data = RL.LedgerData([entry("a", RL.IN_FLIGHT), entry("b", RL.WAITING)])
    turn = RL.consider(data, ROLLOUT, "b", [H("a"), H("b"), H("c")], RA.Settings(max_in_flight=2), now=NOON)
    assert turn.admitted and turn.in_flight == ("a",)


def test_waits_at_max_in_flight_and_names_the_hosts_in_flight():
    data = RL.LedgerData([entry("a", RL.IN_FLIGHT), entry("b", RL.IN_FLIGHT), entry("c", RL.WAITING)])
    turn = RL.consider(data, ROLLOUT, "c", [H("a"), H("b"), H("c")], RA.Settings(max_in_flight=2), now=NOON)
    assert not turn.admitted and not turn.final
    assert turn.reason == "max in flight reached (2)"
    assert turn.waits_for == ("a", "b")


def test_one_host_per_failure_domain():
    hosts = [H("a", domain="r1"), H("b", domain="r1"), H("c", domain="r2")]
    data = RL.LedgerData([entry("a", RL.IN_FLIGHT), entry("b", RL.WAITING), entry("c", RL.WAITING)])
    settings = RA.Settings(max_in_flight=2, failure_domain_key="rack")
    b = RL.consider(data, ROLLOUT, "b", hosts, settings, now=NOON)
    assert not b.admitted and b.reason.startswith("failure domain busy (r1: a in flight)") and b.waits_for == ("a",)
    assert RL.consider(data, ROLLOUT, "c", hosts, settings, now=NOON).admitted


def test_a_host_waits_for_the_hosts_ahead_of_it_that_have_not_asked_yet():
    data = RL.LedgerData([entry("b", RL.WAITING)])
    hosts = [H("a"), H("b")]
    turn = RL.consider(data, ROLLOUT, "b", hosts, RA.Settings(), expected=["a"], now=NOON)
    assert not turn.admitted and turn.waits_for == ("a",) and "next in order: a" in turn.reason
    # once a is not expected any more (the action's arrival timeout), b goes
    assert RL.consider(data, ROLLOUT, "b", hosts, RA.Settings(), expected=[], now=NOON).admitted


def test_failures_beyond_the_budget_end_admission():
    data = RL.LedgerData([entry("a", RL.RELEASED, outcome=RL.FAILED), entry("b", RL.WAITING)])
    turn = RL.consider(data, ROLLOUT, "b", [H("a"), H("b")], RA.Settings(max_failures=0), now=NOON)
    assert not turn.admitted and turn.final
    assert turn.reason.startswith("admission stopped after failures (1 failed, threshold 0)")
    assert turn.waits_for == ("a",)
    ok = RL.LedgerData([entry("a", RL.RELEASED, outcome=RL.OK), entry("b", RL.WAITING)])
    assert RL.consider(ok, ROLLOUT, "b", [H("a"), H("b")], RA.Settings(max_failures=0), now=NOON).admitted


def test_a_closed_window_with_nothing_in_flight_is_final():
    window = RA.parse_window("22:00-04:00")
    data = RL.LedgerData([entry("a", RL.WAITING)])
    turn = RL.consider(data, ROLLOUT, "a", [H("a", window=window)], RA.Settings(), now=NOON)
    assert not turn.admitted and turn.final and turn.reason.startswith("outside its maintenance window")


def test_capacity():
    hosts = [H("a", vm_memory_mib=100, free_memory_mib=60), H("b", vm_memory_mib=100, free_memory_mib=60),
             H("c", vm_memory_mib=100, free_memory_mib=60)]
    data = RL.LedgerData([entry("a", RL.IN_FLIGHT), entry("b", RL.WAITING)])
    turn = RL.consider(data, ROLLOUT, "b", hosts, RA.Settings(max_in_flight=3), now=NOON)
    assert not turn.admitted and turn.reason == RA.REASON_CAPACITY


def test_turns_of_another_run_take_their_slot_and_their_failure_domain():
    other = RL.Run(1, RL.process_start(1))
    theirs = entry("x9", RL.IN_FLIGHT, rollout=f"{other.key}/p", run=other, domain="r1")
    hosts = [H("a", domain="r1"), H("b", domain="r2")]
    settings = RA.Settings(max_in_flight=2, failure_domain_key="rack")
    data = RL.LedgerData([theirs, entry("a", RL.WAITING), entry("b", RL.WAITING)])
    a = RL.consider(data, ROLLOUT, "a", hosts, settings, now=NOON)
    assert not a.admitted and a.waits_for == ("x9 (run pid 1)",)
    assert RL.consider(data, ROLLOUT, "b", hosts, settings, now=NOON).admitted
    one = RA.Settings(max_in_flight=1)
    b = RL.consider(data, ROLLOUT, "b", [H("a"), H("b")], one, now=NOON)
    assert not b.admitted and b.reason.startswith("max in flight reached (1)")


def test_a_host_in_flight_in_another_run_waits_for_it():
    other = RL.Run(1, RL.process_start(1))
    data = RL.LedgerData([entry("a", RL.IN_FLIGHT, rollout=f"{other.key}/p", run=other), entry("a", RL.WAITING)])
    turn = RL.consider(data, ROLLOUT, "a", [H("a")], RA.Settings(max_in_flight=5), now=NOON)
    assert not turn.admitted and "in flight in another run" in turn.reason


# ------------------------------------------------------------------------------------ the file


def test_entries_of_a_dead_run_count_as_released_and_are_pruned(tmp_path):
    gone = dead_run()
    assert not RL.run_alive(gone) and RL.run_alive(ME)
    assert not RL.run_alive(RL.Run(ME.pid, (ME.start or 0) + 1))  # same pid, another process
    ledger = RL.Ledger(str(tmp_path / "ledger.json"))
    with ledger.locked() as data:
        data.entries.append(entry("a", RL.IN_FLIGHT, rollout=f"{gone.key}/p", run=gone))
    req = RL.Request(ledger, ME, ROLLOUT, "a", [H("a")], RA.Settings())
    got = RL.wait_turn(req, timeout=5, poll_interval=0.01, arrival_timeout=0)
    assert got.turn.admitted
    stored = json.loads((tmp_path / "ledger.json").read_text())["entries"]
    assert [(e["host"], e["run_pid"], e["state"]) for e in stored] == [("a", ME.pid, RL.IN_FLIGHT)]


def test_unreadable_ledger_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(RL.LedgerError, match=f"cannot read the rolling ledger {path}") as caught, \
            RL.Ledger(str(path)).locked():
        pass
    assert "remove the file" in str(caught.value)


def test_writes_replace_the_file_whole_and_leave_no_temporary(tmp_path):
    ledger = RL.Ledger(str(tmp_path / "ledger.json"))
    for host in ("a", "b", "c"):
        with ledger.locked() as data:
            data.entries.append(entry(host, RL.WAITING))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json", "ledger.json.lock"]
    assert [e["host"] for e in json.loads((tmp_path / "ledger.json").read_text())["entries"]] == ["a", "b", "c"]


def test_a_timeout_names_whom_it_waited_for_and_drops_the_entry(tmp_path):
    other = RL.Run(1, RL.process_start(1))
    ledger = RL.Ledger(str(tmp_path / "ledger.json"))
    with ledger.locked() as data:
        data.entries.append(entry("x", RL.IN_FLIGHT, rollout=f"{other.key}/p", run=other))
    clock = iter(range(1000))  # seconds, one per look
    said = []
    req = RL.Request(ledger, ME, ROLLOUT, "a", [H("a")], RA.Settings())
    got = RL.wait_turn(req, timeout=5, poll_interval=1, arrival_timeout=0, say=said.append,
                       clock=lambda: float(next(clock)), sleep=lambda s: None)
    assert got.timed_out and not got.turn.admitted and got.turn.waits_for == ("x (run pid 1)",)
    assert len(said) == 1  # said once, not at every look
    with ledger.locked() as data:
        assert data.find(ROLLOUT, "a") is None


def test_give_back_records_the_outcome_and_only_for_a_held_turn(tmp_path):
    ledger = RL.Ledger(str(tmp_path / "ledger.json"))
    assert not RL.give_back(ledger, ROLLOUT, "a", "ok")
    req = RL.Request(ledger, ME, ROLLOUT, "a", [H("a")], RA.Settings())
    assert RL.wait_turn(req, timeout=5, poll_interval=0.01, arrival_timeout=0).turn.admitted
    assert RL.wait_turn(req, timeout=5, poll_interval=0.01, arrival_timeout=0).already
    assert RL.give_back(ledger, ROLLOUT, "a", "failed")
    assert not RL.give_back(ledger, ROLLOUT, "a", "failed")
    with ledger.locked() as data:
        assert data.find(ROLLOUT, "a").outcome == RL.FAILED
    with pytest.raises(RA.RollingConfigError, match="outcome must be ok or failed"):
        RL.give_back(ledger, ROLLOUT, "a", "maybe")


# ------------------------------------------------------------------------------------ processes contending

RACKS = {f"h{i:02d}": f"r{i % 3}" for i in range(9)}  # 9 hosts, 3 racks


def _host_process(path, run, rollout, host, hosts, settings, hold):
    """One host of a rolling play: wait for the turn, look at the ledger while holding it, give it back."""
    ledger = RL.Ledger(path)
    req = RL.Request(ledger, run, rollout, host, hosts, settings, batch=tuple(h.name for h in hosts))
    got = RL.wait_turn(req, timeout=60, poll_interval=0.01, arrival_timeout=5)
    if not got.turn.admitted:
        os._exit(3)
    with ledger.locked() as data:
        held = [e for e in data.entries if e.state == RL.IN_FLIGHT]
    with open(path + f".{host}.seen", "w", encoding="utf-8") as stream:
        json.dump([[e.host, e.domain, e.rollout] for e in held], stream)
    time.sleep(hold)  # the host's maintenance
    RL.give_back(ledger, rollout, host, "ok")
    os._exit(0)


def _contend(tmp_path, groups, hold=0.05):
    """groups: [(run, rollout, hosts, settings)]; every host of every group in its own process, all at once."""
    path = str(tmp_path / "ledger.json")
    ctx = multiprocessing.get_context("fork")
    procs = []
    for run, rollout, hosts, settings in groups:
        for host in hosts:
            procs.append(ctx.Process(target=_host_process, args=(path, run, rollout, host.name, hosts, settings, hold)))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    return {p.name.split(".")[-2]: json.loads(p.read_text()) for p in tmp_path.glob("ledger.json.*.seen")}


def test_processes_contending_never_exceed_max_in_flight_nor_share_a_rack(tmp_path):
    hosts = [H(name, domain=rack) for name, rack in RACKS.items()]
    seen = _contend(tmp_path, [(ME, ROLLOUT, hosts, RA.Settings(max_in_flight=2, failure_domain_key="rack"))])
    assert sorted(seen) == sorted(RACKS)  # every host got its turn
    for host, held in seen.items():
        assert host in [h for h, _d, _r in held]
        assert len(held) <= 2, (host, held)
        domains = [d for _h, d, _r in held]
        assert len(domains) == len(set(domains)), (host, held)
    assert max(len(held) for held in seen.values()) == 2  # the limit is used, not just respected


def test_two_runs_on_one_ledger_share_one_limit(tmp_path):
    keeper = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    keeper.start()  # stands for a second ansible-playbook process: alive while the test runs
    try:
        other = RL.Run(keeper.pid, RL.process_start(keeper.pid))
        settings = RA.Settings(max_in_flight=2)
        first = [H(f"a{i}") for i in range(4)]
        second = [H(f"b{i}") for i in range(4)]
        seen = _contend(tmp_path, [(ME, ROLLOUT, first, settings), (other, f"{other.key}/play", second, settings)])
    finally:
        keeper.kill()
        keeper.join()
    assert sorted(seen) == sorted(h.name for h in first + second)
    assert max(len(held) for held in seen.values()) <= 2  # each run alone would allow 2, so 4 together
