"""The README demo's drain, repeated: its forecast (plan and run) against what it took, per VM too; not a test.

Each run, under the lab lock: demo1..demo4 are removed and started fresh on hv1 (`lab.py up --guests 4`,
the demo's start state), hv1 must hold nothing else (the drain moves everything on it), then
`playbooks/drain-host.yml -e target=hv1 --check` (the plan) and the drain itself, as `scripts/demo` runs
them; the figures come from the drain's JSON report in reports/. `--link-mbit N` declares hv1's, hv2's
and hv3's migration link (`-e hvfleet_link_mbit=N`); without it the drain knows the link the lab's
inventory declares (inventories/lab/group_vars/all.yml). The demo VMs are left drained on hv2/hv3 and
hv1 cordoned, as after the demo (bring them home with `playbooks/undrain-host.yml -e target=hv1`).

    .venv/bin/python benchmarks/demo_forecast.py --runs 3 --json benchmarks/results/forecast-demo.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(Path(__file__).resolve().parent)]

import forecast_report  # noqa: E402

LOCK = "/var/tmp/hvfleet-lab-use.lock"
PY = str(REPO / ".venv" / "bin" / "python")
PLAYBOOK = str(REPO / ".venv" / "bin" / "ansible-playbook")
DEMOS = ("demo1", "demo2", "demo3", "demo4")


def sh(argv, **kw):
    env = dict(os.environ, PATH=f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False, **kw)


def one_run(extra):
    """Inside the lock: fresh demo guests, the plan, the drain; returns the report's figures."""
    for vm in DEMOS:
        sh([PY, "tests/lab/lab.py", "vm-rm", vm])
    up = sh([PY, "tests/lab/lab.py", "up", "--hosts", "3", "--guests", "4"])
    if up.returncode:
        raise SystemExit(f"lab up failed: {up.stderr[-500:]}")
    listed = sh(["virsh", "-c", "qemu+tcp://10.254.0.11/system", "list", "--all", "--name"]).stdout.split()
    others = sorted(set(listed) - set(DEMOS))
    if others:
        return {"skipped": f"hv1 holds other domains: {', '.join(others)}"}
    time.sleep(15)  # the dirtying guests start writing a few seconds after boot
    plan = sh([PLAYBOOK, "playbooks/drain-host.yml", "-e", "target=hv1", "--check", *extra])
    planned = re.search(r"sharing the\s+link: ([0-9.]+) s", plan.stdout)
    before = set(Path(REPO / "reports").glob("hv1-drain-*.json"))
    run = sh([PLAYBOOK, "playbooks/drain-host.yml", "-e", "target=hv1", "-e", '{"drain_host_reason": "forecast check"}',
              *extra])
    new = sorted(set(Path(REPO / "reports").glob("hv1-drain-*.json")) - before)
    if run.returncode or not new:
        return {"failed": run.stdout[-2000:]}
    result = json.loads(new[-1].read_text())["result"]
    actual = result["actual"]
    vms = [{"vm": v["vm"], "mode": v.get("mode_used"), "predicted_s": v.get("predicted_duration_s"),
            "actual_s": v.get("duration_s"), "error_pct": v.get("forecast_error_pct"),
            "within": v.get("forecast_within_goal"), "predicted_pause_ms": v.get("predicted_downtime_ms"),
            "downtime_ms": v.get("downtime_ms")} for v in result["vms"]]
    return {"plan_total_s": float(planned.group(1)) if planned else None, "forecast_s": actual.get("forecast_total_s"),
            "actual_s": actual.get("total_s"), "error_pct": actual.get("forecast_error_pct"),
            "within": actual.get("forecast_within_goal"), "report": new[-1].name, "vms": vms}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--link-mbit", type=float, help="declare the lab hosts' migration link (hvfleet_link_mbit)")
    parser.add_argument("--json")
    args = parser.parse_args()
    extra = ["-e", f"hvfleet_link_mbit={args.link_mbit:g}"] if args.link_mbit else []
    runs = []
    for number in range(1, args.runs + 1):
        with open(LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                run = one_run(extra)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        run.update(run=number, link_mbit=args.link_mbit)
        runs.append(run)
        if "forecast_s" in run:
            print(f"run {number}: plan {run['plan_total_s']} s, forecast {run['forecast_s']} s, "
                  f"took {run['actual_s']} s "
                  f"({run['error_pct']:+.0f} %, {'within' if run['within'] else 'outside'} 20 % / 2 s)", flush=True)
            for vm in run["vms"]:
                print(f"    {vm['vm']}: predicted {vm['predicted_s']} s, took {vm['actual_s']} s "
                      f"({vm['error_pct']} %), pause predicted {vm['predicted_pause_ms']} ms, "
                      f"libvirt {vm['downtime_ms']} ms", flush=True)
        else:
            print(f"run {number}: {run}", flush=True)
    ok = [r for r in runs if "within" in r]
    print(f"{sum(1 for r in ok if r['within'])} of {len(ok)} drains within 20 % / 2 s "
          f"(goal: {forecast_report.GOAL_RATIO:.0%} or {forecast_report.GOAL_ABS_S:g} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
