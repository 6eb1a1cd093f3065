"""Does a lab guest still need `pti=on` (tests/lab/hvlab/image.py) under a given QEMU? Not a test.

Under QEMU 7.2's TCG, a guest that writes while a multi-pass pre-copy runs came out of the migration with
stale kernel pages and oopsed, unless it booted with `pti=on`. This moves such a guest (256 MiB, rewriting
64 MiB at 8 MiB/s, booted WITHOUT `pti=on`) back and forth between two hosts of one lab generation in
pre-copy over links shaped to 100 Mbit/s (several passes per migration), and counts the migrations after
which the guest restarted (new boot id: panic=-1 and oops=panic make an oops a reboot) or stopped beating.

Run as root from the repository root, holding the lab lock:
    flock /var/tmp/hvfleet-lab-use.lock .venv/bin/python benchmarks/tcg_pti_check.py --gen 2 --runs 10
The lab is left in its default shape when it ends.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / ".collections"), str(REPO / "tests" / "lab"), str(Path(__file__).resolve().parent)]

from hvlab import Lab, VMSpec  # noqa: E402
from hvlab.vm import boot_ids  # noqa: E402
from migration_bench import engine_move  # noqa: E402

PAIRS = {1: ("hv1", "hv2"), 2: ("hv2", "hv3")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--gen", type=int, choices=(1, 2), default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mbit", type=float, default=100)
    parser.add_argument("--pti", action="store_true", help="boot the guest with pti=on (the lab's default)")
    args = parser.parse_args()
    lab = Lab()
    a, b = PAIRS[args.gen]
    restarts = hangs = 0
    try:
        lab.up(hosts_count=3, gen2=PAIRS[2] if args.gen == 2 else ())
        for i in range(args.runs):
            vm = f"pti-g{args.gen}-{os.getpid()}-{i}"
            lab.vm_start(VMSpec(name=vm, memory=256, dirty_mb=64, dirty_rate=8, pti=args.pti), host=a)
            try:
                boot = lab.wait_heartbeat_advances(vm, beyond=12, timeout=60).boot_id  # its dirtier runs by now
                for host in (a, b):
                    lab.shape(host, args.mbit)
                try:
                    seconds, result = engine_move(lab, vm, a, b, mode="precopy", allow_postcopy=False,
                                                  stats_interval_s=0.5)
                finally:
                    for host in (a, b):
                        lab.unshape(host)
                try:
                    hb = lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + 10, timeout=30)
                    restarted = boot_ids(hb)[-1] != boot
                    hung = False
                except TimeoutError:
                    restarted, hung = False, True
                restarts += restarted
                hangs += hung
                print(f"  run {i + 1}: {result.outcome} in {seconds:.1f} s, {result.iterations} passes, downtime "
                      f"{result.downtime_ms} ms; guest {'RESTARTED' if restarted else 'HUNG' if hung else 'ok'}",
                      flush=True)
            finally:
                lab.vm_rm(vm)
    finally:
        lab.up(hosts_count=3)
    print(f"gen{args.gen} {a}<->{b}, pti={'on' if args.pti else 'off'}, {args.mbit:g} Mbit/s: "
          f"{restarts} restarted and {hangs} hung after {args.runs} multi-pass pre-copy migrations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
