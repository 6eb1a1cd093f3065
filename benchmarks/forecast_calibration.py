"""Calibrate the forecast's fixed costs on the lab: one idle guest at a time, engine code path; not a test.

Each guest (idle, several sizes) is moved ping-pong hv1 <-> hv2 by the engine (as the domain_migration
module does it) with hv1's and hv2's links shaped (or not). Per move it prints the engine's duration, the
bytes sent and what libvirt's completed-job statistics say of QEMU's own time, so that

    duration = fixed set-up + RAM x per-GiB cost + bytes sent / link rate

can be fitted (docs/BENCHMARKS.md, "The forecast's constants"). Run as root, each invocation under the
lab lock:

    flock /var/tmp/hvfleet-lab-use.lock .venv/bin/python benchmarks/forecast_calibration.py \
        --sizes 256,1024 --mbit 300 --runs 3 --json benchmarks/results/forecast-calibration.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / ".collections"), str(REPO / "tests" / "lab"), str(Path(__file__).resolve().parent)]

from drain_bench import completed_stats  # noqa: E402
from hvlab import Lab, VMSpec  # noqa: E402
from migration_bench import engine_move  # noqa: E402

MIB = 2**20


def fit(rows):
    """Least squares of duration - bytes/rate = a + b x GiB of RAM over the rows."""
    xs = [r["ram_mib"] / 1024 for r in rows]
    ys = [r["duration_s"] - r["bytes_sent"] / r["rate_bps"] for r in rows]
    if len(set(xs)) < 2:
        return {"fixed_s": round(statistics.median(ys), 3), "per_gib_s": None}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return {"fixed_s": round(my - b * mx, 3), "per_gib_s": round(b, 3)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="256,1024", help="guest RAM sizes, MiB")
    parser.add_argument("--mbit", type=float, default=300, help="shape hv1 and hv2 to this (0: unshaped)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    lab = Lab()
    lab.up(hosts_count=3)
    rows = []
    hosts = ("hv1", "hv2")
    try:
        if args.mbit:
            for h in hosts:
                lab.shape(h, args.mbit)
        for size in (int(s) for s in args.sizes.split(",")):
            name = f"fccal{os.getpid() % 1000}-{size}"
            lab.vm_start(VMSpec(name=name, memory=size), host="hv1")
            lab.wait_heartbeat_advances(name, beyond=5, timeout=120)
            try:
                for i in range(args.runs * 2):
                    src, dst = hosts[i % 2], hosts[(i + 1) % 2]
                    wall, res = engine_move(lab, name, src, dst)
                    st = completed_stats(lab, dst, name)
                    rate = args.mbit * 1e6 / 8 if args.mbit else float(st.get("memory_bps") or 0) or 1e12
                    row = {"ram_mib": size, "mbit": args.mbit, "wall_s": round(wall, 3),
                           "duration_s": res.duration_s, "bytes_sent": res.bytes_sent or st.get("data_processed"),
                           "qemu_elapsed_s": (st.get("time_elapsed") or 0) / 1000,
                           "setup_ms": st.get("setup_time"), "downtime_ms": st.get("downtime"), "rate_bps": rate}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    time.sleep(1)
            finally:
                lab.vm_rm(name)
    finally:
        if args.mbit:
            for h in hosts:
                lab.unshape(h)
    shaped = [r for r in rows if r["mbit"]]
    result = {"rows": rows, "fit": fit(shaped) if shaped else None}
    print("fit (duration - bytes / link = fixed + per_gib x RAM):", result["fit"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
