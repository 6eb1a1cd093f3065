"""Two drains at once on the lab, as two operators would start them: the capacity ledger each host keeps in its
libvirtd (drain/ledger.py) keeps them from overcommitting a destination, and from sending VMs to a host that is
draining itself. Every VM stays defined on exactly one host and keeps beating through it all.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
from lab_helpers import HOST_STATE_DIR as STATE
from lab_helpers import REPO, ansible_env, assert_unbroken, heartbeats, ledger_of, playbook_argv, wait_for

pytestmark = pytest.mark.lab


def start_drain(target, **extra):
    settings = {"drain_host_measure_dirty_rate": False, "drain_host_max_parallel": 1, **extra}
    argv = playbook_argv("drain-host.yml", "-e", f"target={target}", "-e", json.dumps(settings))
    return subprocess.Popen(argv, cwd=REPO, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc, timeout=600):
    out = proc.communicate(timeout=timeout)[0]
    print(out)
    found = re.search(r"JSON: (\S+\.json)", out)
    assert found, "the drain printed no report path"
    return proc.returncode, json.loads(Path(found.group(1)).read_text())["result"]


def only_on(lab, vm):
    where = lab.locate(vm)
    assert len(where) == 1 and list(where.values()) == ["running"], f"{vm} is not running on exactly one host: {where}"
    return next(iter(where))


def moves(report):
    return [(v.get("vm"), v.get("destination")) for v in report.get("vms", []) if v.get("ok")]


def test_two_drains_onto_one_destination_with_room_for_one_set_never_overcommit_it(clean_lab, make_vm):
    lab = clean_lab
    ours = {host: [make_vm(host), make_vm(host)] for host in ("hv1", "hv2")}
    vms = ours["hv1"] + ours["hv2"]
    before = heartbeats(lab, vms)
    # hv3's 2 CPUs at an overcommit of 1.0: room for two 1-vCPU guests - one drain's set, not both
    first = start_drain("hv1", drain_host_destinations=["hv3"], drain_host_vcpu_overcommit=1.0)
    second = start_drain("hv2", drain_host_destinations=["hv3"], drain_host_vcpu_overcommit=1.0,
                         drain_host_metrics_dir=STATE)
    reports = [finish(first)[1], finish(second)[1]]
    on_hv3 = sorted(lab.domains().get("hv3", []))
    assert len(on_hv3) == 2, f"hv3 holds {on_hv3}: its two vCPUs are overcommitted or left unused"
    for vm in vms:
        host = only_on(lab, vm)
        assert host == "hv3" or vm in ours[host], f"{vm} ended on {host}"
    refused = [b for r in reports for b in r.get("blockers", []) if b.get("vm") in vms]
    assert sorted(b["vm"] for b in refused) == sorted(set(vms) - set(on_hv3)), refused
    assert all("vCPU" in b["message"] and "hv3" in b["message"] for b in refused), refused
    assert_unbroken(lab, before)
    ledger = ledger_of(lab, "hv3")
    assert ledger is not None and ledger["claims"] == [], ledger  # every claim given back
    # hv2's drain left its figures for node_exporter's textfile collector (docs/METRICS.md)
    prom = lab.exec("hv2", ["cat", f"{STATE}/hvfleet_drain_drain.prom"]).stdout
    state = reports[1]["state"]
    assert f'hvfleet_drain_last_run_state{{host="hv2",action="drain",outcome="{state}"}} 1' in prom, prom
    ok_lines = [line for line in prom.splitlines() if line.startswith("hvfleet_drain_migration_ok{")]
    for vm in set(ours["hv2"]) & set(on_hv3):
        assert any(f'vm="{vm}"' in line and line.endswith(" 1") for line in ok_lines), prom


def test_draining_two_hosts_at_once_never_sends_a_vm_from_one_to_the_other(clean_lab, make_vm):
    lab = clean_lab
    a = [make_vm("hv1"), make_vm("hv1")]
    b = [make_vm("hv2"), make_vm("hv2"), make_vm("hv2")]
    before = heartbeats(lab, a + b)
    lab.shape("hv2", 100)  # hv2's drain runs long enough for hv1's to start beside it
    try:
        drain_b = start_drain("hv2")
        wait_for(lambda: ((ledger_of(lab, "hv2") or {}).get("cordon") or {}).get("cordoned"), 120,
                 "hv2's drain to cordon hv2 in its ledger")
        drain_a = start_drain("hv1")
        _rc_a, report_a = finish(drain_a)
        _rc_b, report_b = finish(drain_b)
    finally:
        lab.unshape("hv2")
    assert not [m for m in moves(report_a) if m[1] == "hv2"], moves(report_a)
    left = lab.domains()
    assert not left.get("hv1") and not left.get("hv2"), left
    for vm in a + b:
        assert only_on(lab, vm) == "hv3"
    # a VM of hv2 that reached hv1 before hv1's cordon was waited for by hv1's drain and moved on to hv3
    for vm, dest in moves(report_b):
        assert dest != "hv1" or vm in [m[0] for m in moves(report_a)], (moves(report_a), moves(report_b))
    assert_unbroken(lab, before)
