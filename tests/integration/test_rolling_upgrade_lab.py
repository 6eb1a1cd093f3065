"""playbooks/rolling_kernel_upgrade.yml on the lab: every host drained, "upgraded", "rebooted", checked, uncordoned
and given its VMs back, one at a time, while every guest keeps running. The hosts run under ansible-core's free
strategy and take their turns with hvfleet.drain.rolling_turn (a ledger in the test's temporary directory).

A lab host cannot reboot (it is a set of namespaces); the reboot step is pointed at a task file that restarts the
host's libvirtd with the lab's command line, after noting (with virsh, independently of the role's own check)
which domains ran on it right then. The upgrade step is a task file that leaves a marker and notes the same.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hvlab.vm import boot_ids
from lab_helpers import HOST_STATE_DIR as STATE

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "integration" / "playbooks" / "tasks"


def run_playbook(*args):
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    argv = [str(Path(sys.executable).parent / "ansible-playbook"),
            str(REPO / "playbooks" / "rolling_kernel_upgrade.yml"), *args]
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    print(res.stdout, res.stderr, sep="", end="")
    return res.returncode, res.stdout + res.stderr, time.monotonic() - t0


def libvirtd_pids(lab):
    return {host: rec["libvirtd"]["pid"] for host, rec in lab.status()["hosts"].items()}


def cordoned(lab, host):
    res = lab.exec(host, ["cat", f"{STATE}/maintenance.json"], check=False)
    return res.returncode == 0 and json.loads(res.stdout).get("state") == "cordoned"


def events_of(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def counters(hb):
    return [int(re.search(r" n=(\d+)", line).group(1)) for line in hb.lines]


def common_args(tmp_path, events, upgrade="lab_upgrade.yml"):
    return ["-e", f"lab_events_log={events}", "-e", f"hvlab_cli={REPO / 'tests' / 'lab' / 'lab.py'}",
            "-e", f"rolling_upgrade_upgrade_tasks={TASKS / upgrade}",
            "-e", f"rolling_upgrade_reboot_tasks={TASKS / 'lab_reboot.yml'}",
            "-e", "rolling_upgrade_health_delay=1", "-e", "rolling_upgrade_reason=lab rolling upgrade",
            "-e", f"drain_host_report_dir={tmp_path / 'reports'}",
            "-e", f"restore_host_report_dir={tmp_path / 'reports'}",
            "-e", "drain_host_poll_wait=2", "-e", "restore_host_poll_wait=2",
            "-e", "drain_host_measure_dirty_rate=false", "-e", "drain_host_memory_headroom_mib=256",
            "-e", "restore_host_memory_headroom_mib=256",
            "-e", "drain_host_report=false", "-e", "restore_host_report=false",
            "-e", f"rolling_upgrade_turn_ledger={tmp_path / 'ledger.json'}"]


def test_rolling_kernel_upgrade_of_every_lab_host_keeps_every_guest_running(clean_lab, make_vm, tmp_path):
    # pylint: disable=too-many-locals
    lab = clean_lab
    print("lab domains before:", lab.domains())
    guests = {host: make_vm(host, memory=256) for host in lab.hosts()}
    first = {name: lab.wait_heartbeat_advances(name, beyond=1, timeout=120) for name in guests.values()}
    pids_before = libvirtd_pids(lab)
    events = tmp_path / "events.jsonl"
    t_start = time.time()

    rc, out, seconds = run_playbook(*common_args(tmp_path, events), "-e", "hvfleet_rolling_max_in_flight=1")
    print(f"LAB-TIMING rolling_kernel_upgrade.yml (3 hosts, 1 guest each): {seconds:.1f}s")
    assert rc == 0
    assert "deprecat" not in out.lower()  # a stock strategy: no deprecation warning
    for host in lab.hosts():
        assert re.search(rf"{host}\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=0", out), host

    # one host at a time, in name order, every one upgraded and then "rebooted" exactly once, each time empty
    log = events_of(events)
    print("events:", json.dumps(log, indent=1))
    steps = [(e["host"], e["step"]) for e in log]
    assert steps == [(h, s) for h in lab.hosts() for s in ("upgrade", "reboot")]
    for event in log:
        assert event["domains"] == [], f"{event['host']} ran {event['domains']} at its {event['step']}"
        assert event["t"] > t_start
    admitted = [m.group(1) for m in re.finditer(r"hvfleet\.drain\.rolling_turn: admitting (\S+)", out)]
    assert admitted == lab.hosts()
    for prev, nxt in zip(lab.hosts(), lab.hosts()[1:], strict=False):  # the next one only once this one finished
        assert out.index(f"hvfleet.drain.rolling_turn: {prev} finished") < out.index(f"admitting {nxt} ")
    # the ledger: every host's turn given back, ok
    turns = json.loads((tmp_path / "ledger.json").read_text())["entries"]
    assert sorted((t["host"], t["state"], t["outcome"]) for t in turns) == [
        (host, "released", "ok") for host in lab.hosts()]
    for host in lab.hosts():
        marker = json.loads(lab.exec(host, ["cat", f"{STATE}/lab-upgrade.json"]).stdout)
        assert marker["host"] == host and marker["upgraded_at"] > t_start

    # every libvirtd was restarted (new pid), every host is back in service with its guest
    pids_after = libvirtd_pids(lab)
    for host in lab.hosts():
        assert pids_after[host] != pids_before[host], f"libvirtd of {host} was not restarted"
        assert not cordoned(lab, host), f"{host} is still cordoned"
    for host, name in guests.items():
        assert lab.running_on(name) == [host], f"{name} is not back on {host}"

    # every guest ran through it all: same boot, counter never reset nor jumped
    for name in guests.values():
        before = lab.heartbeat(name)
        after = lab.wait_heartbeat_advances(name, beyond=before.last_n + 2, timeout=60)
        assert boot_ids(after) == [first[name].boot_id], f"{name} rebooted"
        seen = counters(after)
        gaps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
        assert min(gaps) >= 1 and max(gaps) <= 3, f"{name} heartbeat broke: gaps {sorted(set(gaps))}"


def test_the_upgrade_refuses_to_reboot_a_host_that_runs_a_vm(clean_lab, tmp_path):
    lab = clean_lab
    rogue = f"rogue{os.getpid() % 1000}"
    events = tmp_path / "events.jsonl"
    pids_before = libvirtd_pids(lab)
    try:
        rc, out, seconds = run_playbook(*common_args(tmp_path, events, upgrade="lab_upgrade_starts_vm.yml"),
                                        "-e", f"lab_rogue_vm={rogue}", "--limit", "hv1")
        print(f"LAB-TIMING rolling upgrade refused (hv1): {seconds:.1f}s")
        assert rc != 0
        assert f"Refusing to reboot hv1: it still runs {rogue} (running)" in out
        assert events_of(events) == []  # the reboot step never ran
        assert libvirtd_pids(lab)["hv1"] == pids_before["hv1"]
        assert lab.running_on(rogue) == ["hv1"]
        assert cordoned(lab, "hv1")  # left out of service
        assert not re.search(r"TASK \[hvfleet\.drain\.host_maintenance|Uncordon the host", out)
    finally:
        lab.vm_rm(rogue)


@pytest.fixture
def mixed_lab(clean_lab):
    """hv3 on the lab's Debian 13 root (libvirt 11, QEMU 10), hv1 and hv2 on the machine's stack; back after."""
    clean_lab.up(hosts_count=3, gen2=("hv3",))
    yield clean_lab
    clean_lab.up(hosts_count=3)


def journalled_destinations(lab, host, vm):
    """Where the drain journals on `host` (current and archived) say `vm` went."""
    found = lab.exec(host, ["sh", "-c", f"cat {STATE}/drain-journal*.json"], check=False).stdout
    decoder, seen, at = json.JSONDecoder(), [], 0
    while at < len(found):
        if found[at].isspace():
            at += 1
            continue
        doc, at = decoder.raw_decode(found, at)
        entry = doc.get("vms", {}).get(vm)
        if entry and entry.get("destination"):
            seen.append(entry["destination"])
    return seen


def test_rolling_upgrade_of_the_old_hosts_of_a_mixed_fleet_moves_their_guests_to_the_new_one_and_back(
        mixed_lab, make_vm, tmp_path):
    lab = mixed_lab
    old = ["hv1", "hv2"]
    guests = {host: make_vm(host, memory=256) for host in old}
    first = {name: lab.wait_heartbeat_advances(name, beyond=1, timeout=120) for name in guests.values()}
    events = tmp_path / "events.jsonl"
    rc, out, seconds = run_playbook(*common_args(tmp_path, events), "-e", "rolling_upgrade_hosts=hv1:hv2",
                                    "-e", json.dumps({"drain_host_destinations": ["hv3"]}))
    print(f"LAB-TIMING rolling upgrade of hv1, hv2 onto hv3 (Debian 13): {seconds:.1f}s")
    assert rc == 0
    assert [(e["host"], e["step"]) for e in events_of(events)] == [(h, s) for h in old for s in ("upgrade", "reboot")]
    for event in events_of(events):
        assert event["domains"] == [], f"{event['host']} ran {event['domains']} at its {event['step']}"
    for host, name in guests.items():
        assert "hv3" in journalled_destinations(lab, host, name), f"{name} did not go to the Debian 13 host"
        assert lab.running_on(name) == [host], f"{name} is not back on {host}"
        after = lab.wait_heartbeat_advances(name, beyond=lab.heartbeat(name).last_n + 2, timeout=60)
        assert boot_ids(after) == [first[name].boot_id], f"{name} rebooted"
    assert not lab.domains().get("hv3"), "a guest stayed on the Debian 13 host"
