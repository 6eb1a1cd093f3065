"""hvfleet.drain.rolling_turn end to end: real ansible-playbook runs on many local hosts under ansible-core's free
strategy, each host taking its turn (tests/unit/strategy/fixtures/playbook_turn.yml).

The recorder callback (tests/unit/strategy/fixtures/callback_plugins/rolling_recorder.py) writes structured
records - task starts and results with controller timestamps, the action's results, the recap - so nothing here
reads ansible-core's text layout. A host is in flight from the start of its first work task to the end of its
last one; that interval lies inside its turn (acquired before, released after), so an overlap seen here is a
real overlap of turns. The scenarios run concurrently (one ansible-playbook each).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FIXTURES = Path(__file__).resolve().parents[1] / "strategy" / "fixtures"
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
INVENTORY = yaml.safe_load((FIXTURES / "inventory.yml").read_text())
WORK = {"Do the work (an include, so in-flight tracking covers included tasks)", "Work for a host-dependent time",
        "Fail on chosen hosts"}

SCENARIOS = {
    # name: (limit, settings, ledger) - runs that name the same ledger share it
    "fleet": ("fleet", {"hvfleet_rolling_max_in_flight": 3, "hvfleet_rolling_failure_domain_key": "rack",
                        "hvfleet_rolling_order_key": "prio"}, "fleet"),
    "inventory": ("invset", {}, "inventory"),  # max 2 and the rack key from the inventory's group vars
    "failure": ("failset", {"hvfleet_rolling_max_in_flight": 2}, "failure"),
    "capacity": ("capset", {"hvfleet_rolling_max_in_flight": 3}, "capacity"),
    "typo": ("typoset", {}, "typo"),
    "unreadable": ("unreadableset", {}, "unreadable"),
    # two runs on one ledger, each allowing two in flight: together never more than two
    "shared_a": ("a01,a02,a03,a04", {"hvfleet_rolling_max_in_flight": 2}, "shared"),
    "shared_b": ("a05,a06,a07,a08", {"hvfleet_rolling_max_in_flight": 2}, "shared"),
    "few_forks": ("invset", {}, "few_forks"),  # run with -f 2 for its 4 hosts
}
EXTRA_ARGS = {"few_forks": ["--forks", "2"]}


def group_hosts(group):
    return INVENTORY["all"]["children"][group]["hosts"]


class Run:
    def __init__(self, rc, output, records):
        self.rc, self.output, self.records = rc, output, records

    def intervals(self):
        """host -> (first work start, last work end), monotonic seconds."""
        found = {}
        for r in self.records:
            if r.get("task") in WORK:
                start, end = found.get(r["host"], (None, None))
                if r["event"] == "start":
                    start = r["mono"] if start is None else min(start, r["mono"])
                else:
                    end = r["mono"] if end is None else max(end, r["mono"])
                found[r["host"]] = (start, end)
        return {h: iv for h, iv in found.items() if None not in iv}

    def turns(self, event):
        """host -> record of the turn task's result (event ok or failed)."""
        return {r["host"]: r for r in self.records if r.get("task") == "Wait for the turn" and r["event"] == event}

    def summary(self):
        return next(r["summary"] for r in self.records if r["event"] == "stats")


def max_overlap(intervals):
    events = sorted([(iv[0], 1, h) for h, iv in intervals.items()] + [(iv[1], 0, h) for h, iv in intervals.items()])
    open_hosts, worst = set(), 0
    for _time, kind, host in events:
        if kind == 0:
            open_hosts.discard(host)
        else:
            open_hosts.add(host)
            worst = max(worst, len(open_hosts))
    return worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("rolling_turn")
    procs = {}
    for name, (limit, settings, ledger) in SCENARIOS.items():
        record = base / f"{name}.jsonl"
        record.touch()
        env = dict(os.environ, ANSIBLE_CONFIG=str(FIXTURES / "ansible.cfg"), ANSIBLE_HOME=str(base / "ansible-home"),
                   ANSIBLE_LOCAL_TEMP=str(base / "tmp"), ANSIBLE_NOCOLOR="1", HVFLEET_ROLLING_RECORD=str(record))
        extra = {**settings, "turn_ledger": str(base / f"{ledger}.json")}
        cmd = [str(ANSIBLE_PLAYBOOK), str(FIXTURES / "playbook_turn.yml"), "--limit", limit, "-e", json.dumps(extra),
               *EXTRA_ARGS.get(name, [])]
        procs[name] = (subprocess.Popen(cmd, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True), record)
    results = {}
    for name, (proc, record) in procs.items():
        output = proc.communicate(timeout=180)[0]
        records = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        results[name] = Run(proc.returncode, output, records)
    return results


def test_no_deprecation_warning_under_a_stock_strategy(runs):
    assert "deprecat" not in runs["fleet"].output.lower(), runs["fleet"].output


def test_fleet_every_host_within_max_in_flight_and_one_per_rack(runs):
    run = runs["fleet"]
    assert run.rc == 0, run.output
    hosts = group_hosts("fleet")
    intervals = run.intervals()
    assert set(intervals) == set(hosts)
    assert max_overlap(intervals) <= 3
    for rack in {v["rack"] for v in hosts.values()}:
        assert max_overlap({h: iv for h, iv in intervals.items() if hosts[h]["rack"] == rack}) == 1, rack
    for host, turn in run.turns("ok").items():  # what the action saw when it admitted each host
        racks = [hosts[h]["rack"] for h in turn["in_flight"]]
        assert host in turn["in_flight"] and len(racks) <= 3 and len(racks) == len(set(racks)), turn


def test_first_wave_follows_the_order_key(runs):
    """The first three to start are the first hosts by prio with distinct racks (not the first names)."""
    intervals = runs["fleet"].intervals()
    assert set(sorted(intervals, key=lambda h: intervals[h][0])[:3]) == {"a12", "a11", "a09"}


def test_inventory_rack_key_with_two_in_flight_never_admits_two_of_one_rack(runs):
    run = runs["inventory"]
    assert run.rc == 0, run.output
    hosts = group_hosts("invset")
    intervals = run.intervals()
    assert set(intervals) == set(hosts)
    assert max_overlap(intervals) == 2, run.output  # the inventory's 2, not the default 1
    for rack in ("r1", "r2"):
        assert max_overlap({h: iv for h, iv in intervals.items() if hosts[h]["rack"] == rack}) == 1
    for turn in run.turns("ok").values():
        racks = [hosts[h]["rack"] for h in turn["in_flight"]]
        assert len(racks) == len(set(racks)) <= 2, turn


def test_a_failure_stops_admission(runs):
    run = runs["failure"]
    assert run.rc == 2, run.output
    assert set(run.intervals()) == {"f01", "f02"}  # f01 failed while f02 held the other turn
    refused = run.turns("failed")
    assert set(refused) == {"f03", "f04", "f05"}
    assert all("not admitted: admission stopped after failures (1 failed, threshold 0)" in r["msg"]
               for r in refused.values()), refused
    summary = run.summary()
    assert summary["f02"]["failures"] == 0 and summary["f01"]["failures"] == 1


def test_capacity_admits_one_at_a_time_and_refuses_what_fits_nowhere(runs):
    run = runs["capacity"]
    intervals = run.intervals()
    assert set(intervals) == {"c01", "c02", "c03", "c04"}, run.output
    assert max_overlap(intervals) == 1
    assert "remaining hosts cannot absorb its VMs" in run.turns("failed")["c05"]["msg"]


@pytest.mark.parametrize(("scenario", "message"), [
    ("typo", "hvfleet.drain.rolling_turn: unknown setting hvfleet_rolling_max_inflight (set for t01). "
             "Fix: did you mean hvfleet_rolling_max_in_flight?"),
    ("unreadable", "hvfleet.drain.rolling_turn: hvfleet_rolling_max_in_flight must be a whole number, got 'two'. "
                   "Fix: write it as a number"),
])
def test_a_wrong_setting_fails_the_turn_naming_it(runs, scenario, message):
    run = runs[scenario]
    assert run.rc != 0
    (turn,) = run.turns("failed").values()
    assert message in turn["msg"], turn
    assert run.intervals() == {}


def test_two_runs_on_one_ledger_share_one_limit(runs):
    a, b = runs["shared_a"], runs["shared_b"]
    assert a.rc == 0 and b.rc == 0, a.output + b.output
    together = {**a.intervals(), **b.intervals()}
    assert len(together) == 8
    assert max_overlap(together) <= 2, together


def test_fewer_forks_than_hosts_is_refused_naming_the_fix(runs):
    """A waiting host holds its worker: with 2 forks for 4 hosts the hosts would starve the one in flight."""
    run = runs["few_forks"]
    assert run.rc != 0
    refused = run.turns("failed")
    assert refused, run.output
    assert all("forks=2 is below the 4 hosts of the play" in r["msg"] and "-f 4" in r["msg"]
               for r in refused.values()), refused
    assert run.intervals() == {}
