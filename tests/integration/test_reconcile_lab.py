"""playbooks/reconcile.yml on the lab: the maintenance state declared in inventory is what the fleet converges to.

The declaration lives in a small inventory overlay written by the test next to the generated lab inventory
(`-i inventories/lab/hosts.yml -i overlay.json`), as a GitOps repository would hold it.
"""

import datetime
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


def reconcile(tmp_path, hosts=None, group=None, *args):
    """Run playbooks/reconcile.yml with the declarations `hosts` ({host: vars}) and `group` (hypervisors vars)."""
    overlay = tmp_path / f"overlay-{time.monotonic_ns()}.json"
    overlay.write_text(json.dumps({"all": {"children": {"hypervisors": {
        "vars": group or {}, "hosts": hosts or {}}}}}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    argv = [str(Path(sys.executable).parent / "ansible-playbook"),
            "-i", str(REPO / "inventories" / "lab" / "hosts.yml"), "-i", str(overlay),
            str(REPO / "playbooks" / "reconcile.yml"),
            "-e", f"drain_host_report_dir={tmp_path / 'reports'}", "-e", "drain_host_poll_wait=2", *args]
    t0 = time.monotonic()
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    print(res.stdout, res.stderr, sep="", end="")
    print(f"LAB-TIMING reconcile.yml {' '.join(args)}: {time.monotonic() - t0:.1f}s")
    return res.returncode, res.stdout + res.stderr


def flat(out):
    """The output with every run of whitespace made one space (the YAML callback wraps long messages)."""
    return re.sub(r"\s+", " ", out)


def maintenance(lab, host):
    res = lab.exec(host, ["cat", f"{STATE}/maintenance.json"], check=False)
    return json.loads(res.stdout) if res.returncode == 0 else {"state": "active"}


def journal_exists(lab, host):
    return lab.exec(host, ["test", "-e", f"{STATE}/drain-journal.json"], check=False).returncode == 0


def recap_changed(out):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(hv\d+)\s+: ok=\d+\s+changed=(\d+)", out, re.M)}


ACTIVE = {"hvfleet_maintenance": {"state": "active"}}
REASON = "CHG-4711 lab reconcile"
DRAINED = {"hvfleet_maintenance": {"state": "drained", "reason": REASON}}


def test_reconcile_drains_and_restores_what_inventory_declares_and_a_second_run_changes_nothing(
        clean_lab, make_vm, tmp_path):
    lab = clean_lab
    guests = [make_vm("hv1", memory=256), make_vm("hv1", memory=256)]
    first = {name: lab.wait_heartbeat_advances(name, beyond=1, timeout=120) for name in guests}

    # the merge request: --check --diff shows the plan, nothing changes
    rc, out = reconcile(tmp_path, {"hv1": DRAINED}, ACTIVE, "--check", "--diff")
    assert rc == 0
    assert re.search(r"hv1: active -> drained \(reason: CHG-4711 lab reconcile; window: no window \(always open\)\): "
                     r"drain", flat(out))
    planned = re.search(r"Plan for draining hv1: (\d+) VM\(s\) to move, 0 blocked", flat(out))
    assert planned and int(planned.group(1)) >= 2  # ours, and whatever else another test left on hv1
    for name in guests:
        assert re.search(rf"- {name} -> hv[23]: ", out), name
        assert re.search(rf"^-\s+{name}: hv1$", out, re.M) and re.search(rf"^\+\s+{name}: hv[23]$", out, re.M), name
    assert "hv2: active -> active (reason: none given; window: no window (always open)): nothing to do" in flat(out)
    assert recap_changed(out) == {"hv1": 1, "hv2": 0, "hv3": 0}
    assert all(lab.running_on(name) == ["hv1"] for name in guests)
    assert maintenance(lab, "hv1")["state"] == "active" and not journal_exists(lab, "hv1")

    # the merge: hv1 is drained and stays cordoned with the declared reason
    rc, out = reconcile(tmp_path, {"hv1": DRAINED}, ACTIVE)
    assert rc == 0
    for name in guests:
        assert lab.running_on(name)[0] in ("hv2", "hv3"), name
    state = maintenance(lab, "hv1")
    assert state["state"] == "cordoned" and state["reason"] == "CHG-4711 lab reconcile"

    # nothing left to do: a second run changes nothing
    rc, out = reconcile(tmp_path, {"hv1": DRAINED}, ACTIVE)
    assert rc == 0
    assert recap_changed(out) == {"hv1": 0, "hv2": 0, "hv3": 0}
    assert f"hv1: cordoned -> drained (reason: {REASON}; window: no window (always open)): nothing to do" in flat(out)

    # declared active again: the VMs come home and hv1 is uncordoned
    rc, out = reconcile(tmp_path, {}, ACTIVE)
    assert rc == 0
    assert "hv1: cordoned -> active (reason: none given; window: no window (always open)): bring its" in flat(out)
    assert all(lab.running_on(name) == ["hv1"] for name in guests)
    assert maintenance(lab, "hv1")["state"] == "active" and not journal_exists(lab, "hv1")  # journal archived

    for name in guests:
        before = lab.heartbeat(name)
        after = lab.wait_heartbeat_advances(name, beyond=before.last_n + 2, timeout=60)
        assert boot_ids(after) == [first[name].boot_id], f"{name} restarted"


def test_reconcile_refuses_work_outside_the_window_or_that_does_not_fit_it(clean_lab, make_vm, tmp_path):
    lab = clean_lab
    guest = make_vm("hv1", memory=256)
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017
    opens = now + datetime.timedelta(hours=2)
    closed_daily = f"{opens:%H}:00-{(opens + datetime.timedelta(hours=1)):%H}:00"

    # a window declared for the group, closed now: the drain is refused, nothing changes
    rc, out = reconcile(tmp_path, {"hv1": DRAINED}, {**ACTIVE, "hvfleet_maintenance_window": closed_daily})
    assert rc != 0
    assert re.search(rf"Refused: hv1 is declared drained, but the work would start outside its maintenance window "
                     rf"\(daily {closed_daily} UTC; now [^,]*, next open {opens:%Y-%m-%dT%H}:00:00Z\)", flat(out))
    assert "Nothing was changed on it." in flat(out)
    assert lab.running_on(guest) == ["hv1"]
    assert maintenance(lab, "hv1")["state"] == "active" and not journal_exists(lab, "hv1")

    # the same in check mode: the plan says it would be refused, the check itself passes
    rc, out = reconcile(tmp_path, {"hv1": DRAINED}, {**ACTIVE, "hvfleet_maintenance_window": closed_daily}, "--check")
    assert rc == 0
    assert "WOULD BE REFUSED if applied now: the work would start outside its maintenance window" in flat(out)

    # the host's own window has two seconds left at the time the windows are evaluated at (reconcile_now): the drain
    # of its guest is forecast to take longer, so it is refused up front. The link is declared at 100 Mbit/s: an idle
    # guest's ~100 MiB in use would fit two seconds on the lab's unshaped default link, and at 100 Mbit/s its dirty
    # rate (read as at least 2 MiB/s) still lets pre-copy converge, so the VM is planned, not refused by its forecast
    short = {**DRAINED["hvfleet_maintenance"],
             "window": {"start": "2030-01-01T00:00:00Z", "end": "2030-01-01T00:00:02Z"}}
    rc, out = reconcile(tmp_path, {"hv1": {"hvfleet_maintenance": short}},
                        {**ACTIVE, "hvfleet_maintenance_window": closed_daily},
                        "-e", "reconcile_now=2030-01-01T00:00:00Z", "-e", "hvfleet_link_mbit=100")
    assert rc != 0
    match = re.search(r"Refused: hv1 is declared drained, but the drain forecast \(([0-9.]+) s\) does not fit the "
                      r"2\.0 s left in its maintenance window \(.*?closes 2030-01-01T00:00:02Z\)", flat(out))
    assert match and float(match.group(1)) > 2.0
    assert lab.running_on(guest) == ["hv1"]
    assert maintenance(lab, "hv1")["state"] == "active" and not journal_exists(lab, "hv1")
