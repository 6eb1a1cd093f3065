"""hvfleet.drain.rolling end to end: real ansible-playbook runs on many local hosts.

A callback (fixtures/callback_plugins/rolling_recorder.py) records, with controller timestamps,
when each host starts and ends each task; a host is in flight from its first task start to its
last task end. The recorded interval lies inside the strategy's own in-flight interval
(admission happens before the first task starts, and the host is only seen finished after its
last result was processed and reported), so an overlap seen here is a real overlap.

The scenarios run concurrently (one ansible-playbook each) to keep the module under ~30 s.
"""

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
ROOT = HERE.parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"  # the ansible-core of this interpreter (tox.ini)
INVENTORY = yaml.safe_load((FIXTURES / "inventory.yml").read_text())
WINDOW_SECONDS = 5  # the mid-run closure scenario's window closes this long after the play starts
ROLLING_PLAY = "Roll through the target hosts"  # the play run by the strategy in both playbooks
# What a host that does not fail runs in fixtures/playbook.yml: an include, its two tasks, a handler.
PLAY_TASKS = ["Do the work (an include, so in-flight tracking covers included tasks)",
              "Work for a host-dependent time", "Fail on chosen hosts", "Report done"]
START_LATENCY = 2.0  # admission -> first task start recorded (a worker fork), tolerance for the window check

SCENARIOS = {
    # name: (playbook, target group, settings)
    "fleet": ("playbook.yml", "fleet", {
        "hvfleet_rolling_max_in_flight": 3,
        "hvfleet_rolling_failure_domain_key": "rack",
        "hvfleet_rolling_order_key": "prio",
    }),
    "failure": ("playbook.yml", "failset", {"hvfleet_rolling_max_in_flight": 2}),
    "threshold": ("playbook.yml", "failset2", {"hvfleet_rolling_max_in_flight": 1, "hvfleet_rolling_max_failures": 1}),
    "capacity": ("playbook_capacity.yml", "capset", {"hvfleet_rolling_max_in_flight": 3}),
    "window_closed": ("playbook.yml", "winset", {
        "hvfleet_rolling_max_in_flight": 2,
        "hvfleet_maintenance_window": {"start": "2000-01-01T00:00:00Z", "end": "2000-01-01T04:00:00Z"},
    }),
    # The window end is templated when the strategy reads it, as the play starts (not at launch:
    # ansible-playbook's own start-up time under load must not eat the window).
    "window_closes": ("playbook.yml", "winset", {
        "hvfleet_rolling_max_in_flight": 2,
        "hvfleet_maintenance_window": {
            "start": "2000-01-01T00:00:00Z",
            "end": "{{ '%Y-%m-%dT%H:%M:%S+00:00' | strftime(now(utc=True).timestamp() + "
                   f"{WINDOW_SECONDS}, utc=True) }}}}",
        },
    }),
    # settings from inventory group vars (invset), then play vars over them, then settings refused
    "inventory": ("playbook.yml", "invset", {}),
    "play_vars": ("playbook_play_vars.yml", "invset", {}),
    "typo": ("playbook.yml", "typoset", {}),
    "unreadable": ("playbook.yml", "unreadableset", {}),
    "disagree": ("playbook.yml", "disagreeset", {}),
}


def group_hosts(group):
    return INVENTORY["all"]["children"][group]["hosts"]


class Run:
    def __init__(self, rc, output, records, settings, stats):
        self.rc = rc
        self.output = output
        self.records = records
        self.settings = settings
        self.stats = stats  # the recorder's recap record: per-host summary and custom stats

    def starts(self):
        """host -> first task start (monotonic)."""
        found = {}
        for r in self.records:
            if r["event"] == "start":
                found.setdefault(r["host"], r["mono"])
        return found

    def intervals(self):
        """host -> (first start, last end) in monotonic seconds, for hosts that started."""
        starts = self.starts()
        ends = {}
        for r in self.records:
            if r["event"] != "start":
                ends[r["host"]] = max(ends.get(r["host"], r["mono"]), r["mono"])
        return {h: (s, ends[h]) for h, s in starts.items()}

    def custom(self, name, default=None):
        """A custom stat of the run (the strategy's structured record), from the recorder's recap."""
        return self.stats.get("custom", {}).get("_run", {}).get(name, default)

    def not_done(self):
        """host -> reason, from the strategy's custom stat hvfleet_rolling_not_done."""
        return {item["host"]: item["reason"] for item in self.custom("hvfleet_rolling_not_done", [])}

    def admissions(self):
        """[(host, [in flight after admission])], in order, from the custom stat hvfleet_rolling_admissions."""
        return [(item["host"], item["in_flight"]) for item in self.custom("hvfleet_rolling_admissions", [])]

    def settings_read(self):
        return self.custom("hvfleet_rolling_settings", {})


def max_overlap(intervals):
    """Largest number of intervals (host -> (start, end)) open at one instant; ends sort before starts."""
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
    base = tmp_path_factory.mktemp("rolling")
    procs = {}
    for name, (playbook, target, settings) in SCENARIOS.items():
        record = base / f"{name}.jsonl"
        record.touch()
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(FIXTURES / "ansible.cfg"),
            ANSIBLE_HOME=str(base / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(base / "tmp"),
            ANSIBLE_DEPRECATION_WARNINGS="false",
            ANSIBLE_NOCOLOR="1",
            HVFLEET_ROLLING_RECORD=str(record),
        )
        cmd = [str(ANSIBLE_PLAYBOOK), str(FIXTURES / playbook), "--limit", target, "-e", json.dumps(settings)]
        procs[name] = (subprocess.Popen(cmd, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True), record, settings)
    results = {}
    for name, (proc, record, settings) in procs.items():
        output = proc.communicate(timeout=120)[0]
        records = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
        stats = next((r for r in records if r["event"] == "stats"), {})
        records = [r for r in records if r["play"] == ROLLING_PLAY]
        results[name] = Run(proc.returncode, output, records, settings, stats)
    return results


def order_of(group, key):
    hosts = group_hosts(group)
    return sorted(hosts, key=lambda h: (hosts[h][key], h))


# ------------------------------------------------------------------------------------------ fleet


def test_fleet_completes_every_host(runs):
    run = runs["fleet"]
    assert run.rc == 0, run.output
    assert set(run.intervals()) == set(group_hosts("fleet"))
    assert run.not_done() == {}


def test_never_more_than_max_in_flight(runs):
    run = runs["fleet"]
    assert max_overlap(run.intervals()) <= 3, run.output
    # and the limit is actually used: 3 hosts of 3 racks start before any finishes
    assert max_overlap(run.intervals()) == 3


def test_never_two_in_one_failure_domain(runs):
    run = runs["fleet"]
    hosts = group_hosts("fleet")
    intervals = run.intervals()
    for rack in {v["rack"] for v in hosts.values()}:
        members = {h: iv for h, iv in intervals.items() if hosts[h]["rack"] == rack}
        assert max_overlap(members) == 1, (rack, members)


def test_first_wave_follows_the_order_key(runs):
    """The three first starts are the first hosts by prio with distinct racks (not the first names)."""
    run = runs["fleet"]
    hosts = group_hosts("fleet")
    expected, racks = [], set()
    for host in order_of("fleet", "prio"):
        if hosts[host]["rack"] not in racks:
            expected.append(host)
            racks.add(hosts[host]["rack"])
        if len(expected) == 3:
            break
    assert expected == ["a12", "a11", "a09"]  # the fixture's intent, so the check below means something
    starts = run.starts()
    first_three = sorted(starts, key=starts.get)[:3]
    assert set(first_three) == set(expected)
    assert run.admissions()[0][0] == "a12"


def test_admissions_skip_only_hosts_whose_domain_is_busy(runs):
    """Each admitted host is the first waiting host by order whose rack is free."""
    run = runs["fleet"]
    hosts = group_hosts("fleet")
    order = order_of("fleet", "prio")
    admitted = []
    admissions = run.admissions()
    admitted_hosts = [admission[0] for admission in admissions]
    assert admitted_hosts and sorted(admitted_hosts) == sorted(order)
    for host, in_flight in admissions:
        assert host in in_flight and len(in_flight) <= 3
        busy = {hosts[h]["rack"] for h in in_flight if h != host}
        assert hosts[host]["rack"] not in busy
        for earlier in order[: order.index(host)]:
            if earlier not in admitted:
                assert hosts[earlier]["rack"] in busy, f"{earlier} was free to go before {host}"
        admitted.append(host)


def test_next_host_starts_before_the_slowest_of_the_first_wave_ends(runs):
    """Not batch-based: a fourth host starts while the slow a09 (first wave) still runs."""
    run = runs["fleet"]
    intervals = run.intervals()
    by_start = sorted(intervals, key=lambda h: intervals[h][0])
    first_wave, fourth = by_start[:3], by_start[3]
    assert "a09" in first_wave
    assert intervals[fourth][0] < max(intervals[h][1] for h in first_wave)


# ---------------------------------------------------------------------------------------- failures


def test_failure_stops_admission_in_flight_host_finishes(runs):
    run = runs["failure"]
    assert run.rc == 2, run.output
    intervals = run.intervals()
    assert set(intervals) == {"f01", "f02"}, run.output  # f01 failed while f02 held the other slot
    assert any(r["host"] == "f01" and r["event"] == "failed" for r in run.records)
    # f02 (in flight at the failure) ran its whole play: both tasks ended after f01 failed
    f01_failed = next(r["mono"] for r in run.records if r["host"] == "f01" and r["event"] == "failed")
    f02_events = [r for r in run.records if r["host"] == "f02" and r["event"] != "start"]
    assert [r["task"] for r in f02_events] == PLAY_TASKS
    assert f02_events[-1]["mono"] > f01_failed
    not_done = run.not_done()
    assert set(not_done) == {"f03", "f04", "f05"}
    assert all("admission stopped after failures" in reason for reason in not_done.values())
    assert run.stats["summary"]["f03"]["ok"] == 0 and run.stats["summary"]["f03"]["skipped"] == 1


def test_failure_threshold_tolerates_max_failures(runs):
    run = runs["threshold"]
    assert run.rc == 2, run.output
    intervals = run.intervals()
    assert set(intervals) == {"g01", "g02"}  # one failure tolerated, the second one stops admission
    assert intervals["g02"][0] > intervals["g01"][1]  # one at a time
    assert set(run.not_done()) == {"g03", "g04"}


# ---------------------------------------------------------------------------------------- capacity


def test_capacity_limits_hosts_out_of_service(runs):
    """N=3, but the others can absorb only one host's VMs at a time; c05 fits nowhere."""
    run = runs["capacity"]
    assert run.rc == 2, run.output
    intervals = run.intervals()
    assert set(intervals) == {"c01", "c02", "c03", "c04"}
    assert max_overlap(intervals) == 1
    not_done = run.not_done()
    assert set(not_done) == {"c05"}
    assert "cannot absorb" in not_done["c05"]


# ------------------------------------------------------------------------------------------ window


def test_closed_window_admits_nobody(runs):
    run = runs["window_closed"]
    assert run.rc == 2, run.output
    assert run.starts() == {}
    not_done = run.not_done()
    assert set(not_done) == set(group_hosts("winset"))
    assert all("outside its maintenance window" in reason for reason in not_done.values())


def test_window_closing_mid_run(runs):
    run = runs["window_closes"]
    assert run.rc == 2, run.output
    intervals = run.intervals()
    not_done = run.not_done()
    assert intervals, "nothing started within the window (controller too slow?)\n" + run.output
    assert not_done, "every host was admitted: the window was not enforced\n" + run.output
    assert set(intervals) | set(not_done) == set(group_hosts("winset"))
    assert not set(intervals) & set(not_done)
    assert all("outside its maintenance window" in reason for reason in not_done.values())
    assert max_overlap(intervals) <= 2
    # hosts in flight finished their whole play, handler included
    for host in intervals:
        assert [r["task"] for r in run.records if r["host"] == host and r["event"] != "start"] == PLAY_TASKS
    # each host's window end, templated to the second as the play started: the latest listed one
    # plus a second bounds them all
    ends = [re.search(r" to (\S+)\)$", reason).group(1) for reason in not_done.values()]
    window_end = max(datetime.datetime.fromisoformat(end).timestamp() for end in ends) + 1
    first_start = {}
    for r in run.records:
        if r["event"] == "start":
            first_start.setdefault(r["host"], r["wall"])
    late = {h: wall - window_end for h, wall in first_start.items() if wall > window_end + START_LATENCY}
    assert not late, f"hosts started after the window closed: {late}"


# ------------------------------------------------------------------------------ settings from inventory


def test_settings_come_from_inventory_group_vars(runs):
    """invset's group vars: two in flight, one per rack (no -e, no play vars)."""
    run = runs["inventory"]
    assert run.rc == 0, run.output
    assert run.settings_read()["max_in_flight"] == 2 and run.settings_read()["failure_domain_key"] == "rack"
    hosts = group_hosts("invset")
    intervals = run.intervals()
    assert set(intervals) == set(hosts)
    assert max_overlap(intervals) == 2, run.output  # the default would be 1
    for rack in ("r1", "r2"):
        assert max_overlap({h: iv for h, iv in intervals.items() if hosts[h]["rack"] == rack}) == 1
    # in name order i01 and i02 share r1: the domain key made i03 start with i01 instead
    assert [admission[0] for admission in run.admissions()[:2]] == ["i01", "i03"]


def test_play_vars_win_over_inventory(runs):
    run = runs["play_vars"]
    assert run.rc == 0, run.output
    assert run.settings_read()["max_in_flight"] == 1  # the play's vars
    assert run.settings_read()["failure_domain_key"] == "rack"  # still from inventory
    intervals = run.intervals()
    assert set(intervals) == set(group_hosts("invset"))
    assert max_overlap(intervals) == 1


@pytest.mark.parametrize(("scenario", "message"), [
    ("typo", "hvfleet.drain.rolling: unknown setting hvfleet_rolling_max_inflight (set for t01). "
             "Fix: did you mean hvfleet_rolling_max_in_flight?"),
    ("unreadable", "hvfleet.drain.rolling: hvfleet_rolling_max_in_flight must be a whole number, got 'two'. "
                   "Fix: write it as a number"),
    ("disagree", "hvfleet.drain.rolling: hvfleet_rolling_failure_domain_key differs between the hosts of the play: "
                 "'rack' on d01; 'zone' on d02. Fix: it is one setting for the whole play"),
])
def test_a_wrong_setting_stops_the_play_before_any_host_starts(runs, scenario, message):
    run = runs[scenario]
    assert run.rc != 0, run.output
    assert message in " ".join(run.output.split()), run.output
    assert run.records == [], "a host started although the settings were refused"
