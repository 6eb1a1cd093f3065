"""The operator's commands on the lab, for real: playbooks/drain-host.yml and playbooks/undrain-host.yml.

hv1 holds an idle, a moderately dirty, a hot and a local-disk VM. The plan in check mode (nothing
changes), the drain with live progress (the callback prints each VM while it runs), the right mode per
VM, heartbeats unbroken, the JSON + HTML report, the blocked VM failing the task with its reason while
nothing is lost, a second run that changes nothing, undrain bringing the VMs home; then an interrupted
drain that resumes, and a concurrent drain that is refused.
"""

import json
import os
import re
import signal
import subprocess
import time

import pytest
from lab_helpers import (
    REPO,
    ansible_env,
    assert_unbroken,
    clear_ledgers,
    first_line_at,
    heartbeats,
    playbook_argv,
    printed_report,
    run_playbook,
    text_of,
    wait_for,
)

pytestmark = pytest.mark.lab

STATE = "/var/lib/hvfleet"


def read_host_file(lab, path):
    res = lab.exec("hv1", ["cat", path], check=False)
    return res.stdout if res.returncode == 0 else None


def journal(lab):
    text = read_host_file(lab, f"{STATE}/drain-journal.json")
    return json.loads(text) if text else None


def cordon_state(lab):
    text = read_host_file(lab, f"{STATE}/maintenance.json")
    return json.loads(text)["state"] if text else "active"


def lock_holder(lab):
    try:
        return json.loads(read_host_file(lab, f"{STATE}/drain.lock") or "")["pid"]
    except (ValueError, KeyError):
        return None


def reset_hv1(lab):
    """No cordon, journal, progress or lock left on hv1 by an earlier test, no demo guests (a README demo
    run before the tests leaves them); links unshaped."""
    for name in (n for host_vms in lab.domains().values() for n in host_vms if n.startswith("demo")):
        lab.vm_rm(name)
    lab.exec("hv1", ["sh", "-c", f"rm -f {STATE}/drain-journal*.json {STATE}/drain-progress.jsonl "
                                 f"{STATE}/maintenance.json"], check=False)
    clear_ledgers(lab, ["hv1"])
    for host in lab.hosts():
        lab.unshape(host)


@pytest.fixture
def clean_hv1(lab):
    reset_hv1(lab)
    yield lab
    reset_hv1(lab)


def test_drain_and_undrain_hv1(clean_hv1, make_vm, tmp_path):
    # pylint: disable=too-many-locals,too-many-statements
    lab = clean_hv1
    # 400 Mbit/s out of hv1, and the inventory says so: the hot VM dirties ~4x faster than the link
    lab.shape("hv1", 400)
    idle = make_vm("hv1", memory=256)
    dirty = make_vm("hv1", memory=384, dirty_mb=64, dirty_rate=4)
    hot = make_vm("hv1", memory=512, dirty_mb=384, dirty_rate=200)
    local = make_vm("hv1", memory=256, disk="local")
    movable, every = [idle, dirty, hot], [idle, dirty, hot, local]
    hb = heartbeats(lab, every)
    reports = tmp_path / "reports"
    common = ["-e", "target=hv1", "-e", f"drain_host_report_dir={reports}", "-e", "hvfleet_link_mbit=400",
              "-e", "drain_host_progress_interval=2", "-e", "drain_host_poll_wait=5"]

    # check mode: the plan with a mode per VM and the blocker, nothing changes, a plan report is written
    rc, lines = run_playbook("drain-host.yml", "--check", "--diff", *common)
    out = text_of(lines)
    assert rc == 0
    assert "Plan for draining hv1: 3 VM(s) to move, 1 blocked" in out
    plan = printed_report(lines)["result"]
    modes = {p["vm"]: p["mode"] for p in plan["plan"]}
    assert modes == {idle: "precopy", dirty: "precopy", hot: "postcopy"}, plan["plan"]
    assert [b["vm"] for b in plan["blockers"]] == [local]
    for name in every:
        assert lab.running_on(name) == ["hv1"]
    assert cordon_state(lab) == "active" and journal(lab) is None

    # the drain: live progress, every movable VM moves with the planned mode, the local-disk VM fails the task
    rc, lines = run_playbook("drain-host.yml", *common, "-e", "drain_host_reason=lab playbook test")
    out = text_of(lines)
    assert rc != 0
    assert re.search(rf"did not complete \(failed\):.*{local}", out), "the failure names the blocked VM"
    for name in movable:
        assert re.search(rf"{name} -> hv[23]: started, ", out), name
        # libvirt reports no downtime after a post-copy
        assert re.search(rf"{name} -> hv[23]: moved in [0-9.]+ s(, downtime [0-9]+ ms)?, [0-9.]+ MiB sent", out), name
    # live: the first VM was printed as started well before the drain ended, all before the result was collected
    started_at = first_line_at(lines, r"-> hv[23]: started, ")
    finished_at = first_line_at(lines, r"hv1 [0-9:]+ drain failed: 3 moved")
    collected_at = first_line_at(lines, r"TASK \[hvfleet\.drain\.drain_host : Collect the result")
    assert started_at < finished_at - 2 and finished_at <= collected_at
    report = printed_report(lines)
    used = {r["vm"]: r["mode_used"] for r in report["result"]["vms"]}
    print("DRAIN-FIGURES", json.dumps({r["vm"]: [r["mode_used"], r["duration_s"], r["downtime_ms"], r["bytes_sent"]]
                                       for r in report["result"]["vms"]}))
    assert used == {idle: "precopy", dirty: "precopy", hot: "postcopy"}
    page = (reports / (re.search(r"Report: \S+/(\S+\.html)", out).group(1))).read_text()
    assert "<svg" in page and all(name in page for name in movable)
    for name in movable:
        assert lab.running_on(name) in (["hv2"], ["hv3"]), name
    assert lab.running_on(local) == ["hv1"]
    assert_unbroken(lab, hb)
    assert cordon_state(lab) == "cordoned"
    assert journal(lab)["vms"][local]["state"] == "blocked"

    # the operator moves the blocked VM away (here: removes it): the next run completes, the one after is a no-op
    lab.vm_rm(local)
    rc, lines = run_playbook("drain-host.yml", *common)
    assert rc == 0 and printed_report(lines)["result"]["state"] == "drained"
    rc, lines = run_playbook("drain-host.yml", *common)
    assert rc == 0
    assert re.search(r"hv1\s+: ok=\d+\s+changed=0 ", text_of(lines))
    assert not printed_report(lines)["result"]["changed"]

    # undrain: every VM comes home, heartbeats unbroken, hv1 uncordoned
    hb = heartbeats(lab, movable)
    rc, lines = run_playbook("undrain-host.yml", "-e", "target=hv1", "-e", f"restore_host_report_dir={reports}")
    out = text_of(lines)
    assert rc == 0
    for name in movable:
        assert re.search(rf"{name} -> hv1: came home in ", out), name
        assert lab.running_on(name) == ["hv1"]
    assert_unbroken(lab, hb)
    assert cordon_state(lab) == "active" and journal(lab) is None
    assert list(reports.glob("hv1-restore-*.html"))


def test_interrupted_drain_resumes_and_a_concurrent_one_is_refused(clean_hv1, make_vm, tmp_path):
    lab = clean_hv1
    # slow enough to interrupt mid-drain; idle guests (a dirtying guest is not what this is about)
    lab.shape("hv1", 200)
    names = [make_vm("hv1", memory=384) for _i in range(4)]
    hb = heartbeats(lab, names)
    common = ["-e", "target=hv1", "-e", f"drain_host_report_dir={tmp_path}", "-e", "drain_host_poll_wait=2"]
    with subprocess.Popen(playbook_argv("drain-host.yml", *common, "-e", "drain_host_max_parallel=1"), cwd=REPO,
                          env=ansible_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as controller:
        try:
            def one_moved():
                j = journal(lab)
                return j and any(v.get("state") == "moved" for v in j["vms"].values())

            wait_for(one_moved, 300, "the first VM to move")
            pid = wait_for(lambda: lock_holder(lab), 30, "the drain's lock holder")
            # a second drain of the same host is refused, naming the running one, and changes nothing
            rc, lines = run_playbook("drain-host.yml", *common)
            assert rc != 0
            assert re.search(rf"Another drain .*pid {pid}", text_of(lines))
            # the drain dies on the host (a crash) and so does the controller
            os.kill(pid, signal.SIGKILL)
            controller.send_signal(signal.SIGKILL)
        finally:
            if controller.poll() is None:
                controller.kill()
    before = journal(lab)
    moved_before = sorted(n for n, v in before["vms"].items() if v["state"] == "moved")
    print(f"\nkilled pid {pid}: moved {moved_before}, "
          f"in flight {sorted(n for n, v in before['vms'].items() if v['state'] == 'migrating')}")
    assert moved_before and len(moved_before) < len(names)

    lab.unshape("hv1")
    t0 = time.monotonic()
    rc, lines = run_playbook("drain-host.yml", *common)
    print(f"LAB-TIMING resumed drain: {time.monotonic() - t0:.1f}s")
    result = printed_report(lines)["result"]
    assert rc == 0 and result["state"] == "drained" and result["resumed"], result.get("message")
    after = journal(lab)
    for name in moved_before:  # never migrated again
        assert after["vms"][name]["attempts"] == 1, after["vms"][name]
    assert all(v["state"] == "moved" for v in after["vms"].values())
    for name in names:
        assert lab.running_on(name) in (["hv2"], ["hv3"])
    assert_unbroken(lab, hb)
    rc, lines = run_playbook("undrain-host.yml", "-e", "target=hv1", "-e", f"restore_host_report_dir={tmp_path}")
    assert rc == 0 and all(lab.running_on(n) == ["hv1"] for n in names)
