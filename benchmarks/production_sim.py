# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A calibrated simulation of drains at production size: hvfleet vs a `virsh migrate` loop vs Nova's defaults.

Nothing here migrates anything: it is arithmetic over the pre-copy round model of the drain forecast
(plugins/module_utils/planning/forecast.py), calibrated on the lab's measurements
(benchmarks/results/*.json), applied to production-shaped hosts: 20-60 VMs of 4-64 GiB on
10-25 Gbit/s links, with three dirty-rate mixes. Figures are labelled "simulated" wherever they
are printed. Run:

    .venv/bin/python benchmarks/production_sim.py --markdown --svg docs/production-sim.svg \\
        --json benchmarks/results/production-sim.json

Assumptions (each one also in docs/BENCHMARKS.md):

Guests and links (the "truth" every contender runs against)
  A1 A guest's first pre-copy pass sends its touched memory (`touched` x RAM; never-written pages
     cost almost nothing, as measured on the lab); every later pass sends what the guest dirtied
     during the previous one: dirty rate x pass time, at most its dirty working set (`wss`).
     That is forecast.simulate_precopy's model; `precopy_rounds` below is the same arithmetic with a
     max downtime that may change with time (Nova's steps), and a unit test holds the two equal.
  A2 The dirty rate and working set are constant during the drain.
  A3 A migration stream sends at its share of the link x LINK_EFFICIENCY (calibrated: a lone
     pre-copy on the lab's saturated shaped link). Per-stream CPU limits (one QEMU migration thread
     without multifd) are not modelled: a stream is assumed to fill its share even at 25 Gbit/s.
  A4 Links are full duplex and the destinations' links are as fast as the source's. Storage is
     shared: no disk is copied. Every contender finds room on the destinations (placement is not
     compared): VMs go to the destinations round-robin, largest first.
  A5 The switch-over of a converged pre-copy pauses the guest for what is left / bandwidth + 20 ms
     (the model's device-state figure; lab idle guest: 19 ms). A forced pause (virsh --timeout-suspend,
     Nova force_complete without post-copy) pauses it for everything still dirty / bandwidth.
  A6 A post-copy pauses the guest for the switch (200 ms, the model's figure) plus the page-fault
     stall right after it, modelled as POSTCOPY_STALL_BYTES queued ahead of the faulting pages at the
     migration's bandwidth (calibrated: the lab's worst heartbeat gaps). At 10-25 Gbit/s this is an
     extrapolation from a 200-300 Mbit/s TCG lab, not a measurement.
  A7 Set-up per migration is the model's 0.3 s (the lab measured ~0.9 s per `virsh migrate` under
     TCG, process start included; at production sizes, minutes per VM, the difference is < 1 %).

hvfleet (the product's own planning)
  H1 The drain core with its defaults: built-in policy (mode auto, max downtime 500 ms, cap 2000 ms,
     150 s/GiB, at least 60 s, on_timeout abort, post-copy allowed), max_parallel 2, max_outbound 2,
     max_inbound 1, three destinations, the source link shared by what runs.
  H2 Decisions come from the product: vm_plan.plan_vm chooses each VM's mode on the bandwidth it gets
     when it starts, inside drain_forecast.simulate_drain and scheduler.Scheduler (longest first),
     exactly as drain/planner.py does. What hvfleet can measure is what the planner gets: RAM, the
     dirty rate (assumed measured exactly), and the QEMU process's resident size (touched memory +
     48 MiB); it does not know the dirty working set, so its forecast assumes the touched memory.
  H3 Outcomes come from the truth (A1-A6) for the mode and auto-converge it chose: forecast.forecast
     with that mode and the true working set. A pre-copy that misses its deadline is aborted (the VM
     stays: not moved); a VM the forecast refuses is not started (not moved).

virsh loop
  V1 `virsh migrate --live --p2p --persistent --undefinesource --timeout 300 --timeout-suspend VM DEST`
     for one VM after another: pre-copy only, libvirt's defaults (max downtime 300 ms, no bandwidth
     limit, no auto-converge, no post-copy). `--timeout` is what makes a VM that out-dirties the link
     end at all (without it the loop never finishes); after 300 s (the lab's 30 s x 10) virsh pauses
     the guest and the copy completes: a forced pause.

Nova defaults ([libvirt] options of nova-compute)
  N1 max_concurrent_live_migrations 1 (one after another); live_migration_bandwidth 0 (no limit);
     live_migration_permit_post_copy false; live_migration_permit_auto_converge false.
  N2 Max downtime in steps: live_migration_downtime 500 ms, live_migration_downtime_steps 10,
     live_migration_downtime_delay 75 s per GiB: from 50 ms, +45 ms every 75 s x GiB (data GiB =
     RAM, at least 2).
  N3 live_migration_completion_timeout 800 s per GiB (at least 2 GiB), then
     live_migration_timeout_action abort: the migration is cancelled, the VM stays (not moved).
  N4 Nova's own overhead (API, scheduler, RPC, port binding; seconds per VM) is not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / ".collections")]

from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.drain_forecast import simulate_drain  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import (  # noqa: E402
    DEFAULT_PARAMS,
    GIB,
    MIB,
    REFUSE,
    Forecast,
    forecast,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host, VmInfo  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import (  # noqa: E402
    DEFAULT_SETTINGS,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precopy import switch_point  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.scheduler import Migration  # noqa: E402
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.vm_plan import (  # noqa: E402
    lane_bandwidth,
    plan_vm,
)

RESULTS = REPO / "benchmarks" / "results"
KVM_OVERHEAD_MIB = DEFAULT_PARAMS.qemu_overhead_mib_kvm
TCG_OVERHEAD_MIB = 130.0  # lab: an idle 256 MiB guest's QEMU held 222 MiB and sent 92 MiB
CONTENDERS = ("virsh-loop", "nova-defaults", "hvfleet")


# ---- calibration --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Calibration:
    link_efficiency: float = 0.93  # A3
    postcopy_stall_bytes: float = 35e6  # A6
    sources: str = "defaults"


def calibrate(results: Path = RESULTS) -> Calibration:
    """A3 and A6 from the lab's raw data (drain-bench-*.json, postcopy-generations-200mbit.json).

    Efficiency: bytes/s of the hot guest's lone pre-copy (virsh loop and Nova-like: ~37-45 s on a
    saturated link, pause included) over the shaped link rate. Stall: the median worst heartbeat
    gap of the hot guest's lone post-copy at 200 Mbit/s (generation 1) minus the 200 ms switch, times
    the bandwidth it had."""
    rates, used = [], []
    for path in sorted(results.glob("drain-bench-*mbit.json")):
        data = json.loads(path.read_text())
        used.append(path.name)
        for run in data["runs"]:
            if run["contender"] == "hvfleet":
                continue
            for vm in run["vms"]:
                if vm["kind"] == "hot" and vm.get("bytes_sent") and vm.get("duration_s"):
                    rates.append(vm["bytes_sent"] / vm["duration_s"] / run["link_bps"])
    efficiency = statistics.median(rates) if rates else Calibration.link_efficiency
    stall = Calibration.postcopy_stall_bytes
    gens = results / "postcopy-generations-200mbit.json"
    if gens.exists():
        gaps = [r["worst_gap_ms"] for r in json.loads(gens.read_text())["1"] if r.get("worst_gap_ms")]
        if gaps:
            used.append(gens.name)
            stall = (statistics.median(gaps) - DEFAULT_PARAMS.postcopy_switchover_ms) / 1000 * 200e6 / 8 * efficiency
    return Calibration(round(efficiency, 3), round(stall, -5), ", ".join(used) or "defaults")


# ---- the guests ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Guest:
    name: str
    ram: float  # bytes
    touched: float  # fraction of RAM the guest ever wrote (what pass 1 sends)
    dirty: float  # bytes/s
    wss: float  # dirty working set, bytes
    overhead_mib: float = KVM_OVERHEAD_MIB  # QEMU's own resident memory (hvfleet reads resident = touched + this)

    @property
    def resident_mib(self) -> int:
        return int(self.touched * self.ram / MIB + self.overhead_mib)


KINDS: dict[str, dict[str, Any]] = {
    # RAM GiB choices, touched fraction range, dirty MiB/s range, working set as a fraction of RAM
    "idle": {"ram": (4, 8, 8, 16), "touched": (0.25, 0.5), "dirty": (1, 10), "wss": (0.02, 0.05)},
    "app": {"ram": (8, 16, 16, 32), "touched": (0.5, 0.8), "dirty": (20, 80), "wss": (0.05, 0.15)},
    "db": {"ram": (32, 64, 64), "touched": (0.85, 0.95), "dirty": (150, 400), "wss": (0.15, 0.3)},
    "hot": {"ram": (16, 32), "touched": (0.85, 0.95), "dirty": None, "wss": (0.4, 0.6)},  # dirty: x link
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    link_gbit: float
    mix: tuple[tuple[str, int], ...]
    hot_dirty_x_link: tuple[float, float] = (1.3, 2.0)
    seed: int = 1


SCENARIOS = (
    Scenario("idle", "mostly idle: 40 idle + 8 app VMs, 10 Gbit/s", 10, (("idle", 40), ("app", 8))),
    Scenario("db", "database-heavy: 8 DB + 16 app VMs, 25 Gbit/s", 25, (("db", 8), ("app", 16))),
    Scenario("db10", "database-heavy on 10 Gbit/s: 8 DB + 16 app VMs", 10, (("db", 8), ("app", 16))),
    Scenario("hot", "3 VMs out-dirty the link: 3 hot + 12 app + 15 idle, 10 Gbit/s", 10,
             (("hot", 3), ("app", 12), ("idle", 15))),
)


def guests_of(scenario: Scenario) -> list[Guest]:
    rng = random.Random(scenario.seed)
    link = scenario.link_gbit * 1e9 / 8
    out = []
    for kind, count in scenario.mix:
        spec = KINDS[kind]
        for i in range(count):
            ram = rng.choice(spec["ram"]) * GIB
            dirty = (rng.uniform(*scenario.hot_dirty_x_link) * link if spec["dirty"] is None
                     else rng.uniform(*spec["dirty"]) * MIB)
            out.append(Guest(f"{kind}{i + 1:02d}", ram, rng.uniform(*spec["touched"]), dirty,
                             rng.uniform(*spec["wss"]) * ram))
    return out


# ---- one migration: the pre-copy round model with a max downtime that may change with time ----


@dataclasses.dataclass(frozen=True)
class Rounds:
    converged: bool
    elapsed_s: float
    sent: float
    left: float  # still dirty when it stopped (what a forced pause must send)
    pause_ms: Optional[float]
    passes: int


def precopy_rounds(g: Guest, bw: float, deadline_s: float, limit_ms: Callable[[float], float],
                   next_change: Callable[[float], float] = lambda _t: math.inf) -> Rounds:
    """forecast.simulate_precopy's arithmetic (no auto-converge, no ladder) with the max downtime
    `limit_ms(t)` in force at the end of each pass (t: seconds since the migration started);
    `next_change(t)`: when that limit changes next (for the fast-forward of a steady state)."""
    params = DEFAULT_PARAMS
    ram = float(g.ram)
    wss = min(g.wss, ram)
    elapsed, sent, to_send, i = params.setup_s, 0.0, ram * g.touched, 0
    while True:
        i += 1
        t = to_send / bw
        if elapsed + t > deadline_s:  # cut inside this pass
            dt = max(0.0, deadline_s - elapsed)
            left = min(to_send - bw * dt + min(g.dirty * dt, wss), ram)
            return Rounds(False, max(elapsed, deadline_s), sent + bw * dt, left, None, i)
        elapsed += t
        sent += to_send
        dirtied = min(g.dirty * t, wss)
        if dirtied <= bw * limit_ms(elapsed) / 1000.0:
            at, pending = switch_point(to_send, bw, g.dirty, wss, bw * limit_ms(elapsed) / 1000.0,
                                       params.first_check_s if i == 1 else 0.0)  # QEMU switches mid-pass
            pause = pending / bw
            switch = elapsed - t + at
            if switch + pause <= deadline_s:
                return Rounds(True, switch + pause, sent - to_send + bw * at + pending, pending,
                              pause * 1000.0 + params.precopy_switchover_ms, i)
            return Rounds(False, deadline_s, sent + bw * (deadline_s - elapsed), dirtied, None, i)
        if i >= params.escalate_after_passes and min(g.dirty * dirtied / bw, wss) == dirtied:
            # steady: each pass resends the same set; nothing changes before the limit does
            pass_s = dirtied / bw
            until = next_change(elapsed)
            if until >= deadline_s:  # as simulate_precopy: the link stays busy up to the deadline
                span = max(0.0, deadline_s - elapsed)
                return Rounds(False, deadline_s, sent + bw * span, dirtied, None,
                              i + 1 + (int(span // pass_s) if pass_s > 0 else 0))
            passes = int((until - elapsed) // pass_s) if pass_s > 0 else 0
            if passes > 1:  # skip whole passes up to the next change of the limit
                elapsed += (passes - 1) * pass_s
                sent += (passes - 1) * dirtied
                i += passes - 1
        to_send = dirtied


@dataclasses.dataclass
class Move:
    vm: str
    start_s: float
    end_s: float
    moved: bool
    mode: str
    pause_ms: Optional[float]
    sent: float
    forced_pause: bool = False
    auto_converge: bool = False


def virsh_move(g: Guest, bw: float, start: float, timeout_s: float = 300.0) -> Move:
    """V1: pre-copy at 300 ms; at --timeout the guest is paused and the rest is copied."""
    run = precopy_rounds(g, bw, timeout_s, lambda _t: 300.0)
    if run.converged:
        return Move(g.name, start, start + run.elapsed_s, True, "precopy", run.pause_ms, run.sent)
    pause = run.left / bw
    return Move(g.name, start, start + run.elapsed_s + pause, True, "precopy", pause * 1000.0 +
                DEFAULT_PARAMS.precopy_switchover_ms, run.sent + run.left, forced_pause=True)


@dataclasses.dataclass(frozen=True)
class NovaConfig:
    completion_timeout_per_gib: float = 800.0
    downtime_ms: float = 500.0
    downtime_steps: int = 10
    downtime_delay_per_gib: float = 75.0
    min_gib: float = 2.0
    timeout_action: str = "abort"  # or force_complete (a pause: post-copy is not permitted)


def nova_move(g: Guest, bw: float, start: float, cfg: NovaConfig = NovaConfig()) -> Move:
    """N1-N3: pre-copy, the downtime steps, the completion timeout and its action."""
    data_gib = max(cfg.min_gib, g.ram / GIB)
    delay = max(3, int(cfg.downtime_delay_per_gib * data_gib))  # Nova: int(delay x GiB); its minimum is 3 s
    base = cfg.downtime_ms / cfg.downtime_steps
    offset = (cfg.downtime_ms - base) / cfg.downtime_steps

    def limit(t: float) -> float:
        return float(int(base + offset * min(cfg.downtime_steps, int(t // delay))))

    def next_change(t: float) -> float:
        step = int(t // delay)
        return math.inf if step >= cfg.downtime_steps else (step + 1) * delay

    timeout = cfg.completion_timeout_per_gib * data_gib
    run = precopy_rounds(g, bw, timeout, limit, next_change)
    if run.converged:
        return Move(g.name, start, start + run.elapsed_s, True, "precopy", run.pause_ms, run.sent)
    if cfg.timeout_action == "force_complete":
        pause = run.left / bw
        return Move(g.name, start, start + run.elapsed_s + pause, True, "precopy",
                    pause * 1000.0 + DEFAULT_PARAMS.precopy_switchover_ms, run.sent + run.left, forced_pause=True)
    return Move(g.name, start, start + run.elapsed_s, False, "precopy (aborted)", None, run.sent)


def sequential(guests: Sequence[Guest], link_bps: float, cal: Calibration, one: Callable[..., Move]) -> list[Move]:
    """One migration after another at the whole link (virsh loop, Nova's max_concurrent 1)."""
    now, out = 0.0, []
    for g in sorted(guests, key=lambda x: -x.ram):
        move = one(g, link_bps * cal.link_efficiency, now)
        out.append(move)
        now = move.end_s
    return out


# ---- hvfleet: the product's planning decides, the round model (with the true working set) plays it ----


def _host(name: str, mbit: float) -> Host:
    return Host(name, f"qemu+tls://{name}/system", migration_address=f"10.0.0.{len(name)}", link_mbit=mbit)


def hvfleet_drain(guests: Sequence[Guest], link_bps: float, cal: Calibration, *, destinations: int = 3,
                  config: Optional[DrainConfig] = None, domain_type: str = "kvm") -> tuple[list[Move], float]:
    """H1-H3; returns (moves, hvfleet's own forecast of the makespan from what it can measure)."""
    config = config or DrainConfig()
    mbit = link_bps * cal.link_efficiency * 8 / 1e6
    source = _host("src", mbit)
    dests = [_host(f"dst{i + 1}", mbit) for i in range(destinations)]
    settings = dict(DEFAULT_SETTINGS)
    facts = SimpleNamespace(domain_type=domain_type)
    by_name = {g.name: g for g in guests}
    where = {g.name: dests[i % destinations] for i, g in enumerate(sorted(guests, key=lambda x: -x.ram))}
    info = {g.name: VmInfo(g.name, int(g.ram / MIB), 4, True, True, dirty_rate_bps=g.dirty, facts=facts,
                           resident_mib=g.resident_mib) for g in guests}
    lanes = config.lanes(len(guests), destinations)

    def decide(name: str, bw: float) -> Any:
        return plan_vm(info[name], settings, "builtin-default", "no policy matched", source, where[name],
                       placement_reason="round-robin", bandwidth_bps=bw)

    first = {n: decide(n, lane_bandwidth(source, where[n], lanes, default_link_mbit=mbit,
                                         max_inbound=config.max_inbound, budget_bps=config.budget_bps))
             for n in by_name}
    moves = [Migration(n, source.name, where[n].name, d.item.rank_s if d.item else None, 0) for n, d in first.items()]
    chosen: dict[str, Any] = {}

    def planned(name: str, bw: float) -> Optional[Forecast]:  # what hvfleet forecasts
        d = decide(name, bw)
        refused = Forecast(REFUSE, False, "", None, None, None, 0, False)
        return d.forecast if d.item is not None else (d.forecast or refused)

    def truth(name: str, bw: float) -> Optional[Forecast]:  # what happens, for the mode it chose
        d = decide(name, bw)
        chosen[name] = (d, bw)
        if d.item is None:
            return Forecast(REFUSE, False, "refused", None, None, None, 0, False)
        g = by_name[name]
        return forecast(g.ram, g.dirty, bw, mode=d.item.mode, auto_converge=d.item.auto_converge,
                        allow_postcopy=settings["allow_postcopy"], max_downtime_ms=settings["max_downtime_ms"],
                        max_downtime_cap_ms=settings["max_downtime_cap_ms"],
                        completion_timeout_per_gib_s=settings["completion_timeout_per_gib_s"],
                        on_timeout=settings["on_timeout"], transferable_ratio=g.touched, dirty_working_set=g.wss)

    common = {"destination_bps": {d.name: d.link_bps() for d in dests}, "budget_bps": config.budget_bps}
    plan = simulate_drain(moves, config.limits(), source.link_bps(), planned, **common)
    forecast_total = max((s.end_s for s in plan if s.end_s is not None), default=0.0)
    out = []
    for slot in simulate_drain(moves, config.limits(), source.link_bps(), truth, **common):
        fc, d = slot.forecast, chosen[slot.vm][0]
        if fc is None or fc.mode == REFUSE or slot.end_s is None:
            out.append(Move(slot.vm, slot.start_s, slot.start_s, False, "refused", None, 0.0))
            continue
        if not fc.completes:
            out.append(Move(slot.vm, slot.start_s, slot.end_s, False, f"{fc.mode} (aborted)", None,
                            float(fc.predicted_bytes or 0)))
            continue
        pause = fc.predicted_downtime_ms  # post-copy: the switch plus the page-fault stall (A6, the forecast's)
        out.append(Move(slot.vm, slot.start_s, slot.end_s, True, str(fc.mode), pause, float(fc.predicted_bytes or 0),
                        auto_converge=bool(d.item.auto_converge)))
    return out, forecast_total


# ---- figures ------------------------------------------------------------------------------------


def summarize(contender: str, guests: Sequence[Guest], moves: Sequence[Move], forecast_s: Optional[float] = None
              ) -> dict[str, Any]:
    ram = sum(g.ram for g in guests)
    makespan = max((m.end_s for m in moves), default=0.0)
    pauses = [m.pause_ms for m in moves if m.moved and m.pause_ms is not None]
    modes: dict[str, int] = {}
    for m in moves:
        key = m.mode + (" + auto-converge" if m.auto_converge else "")
        modes[key] = modes.get(key, 0) + 1
    return {"contender": contender, "vms": len(guests), "ram_gib": round(ram / GIB, 1),
            "makespan_s": round(makespan, 1), "worst_pause_ms": round(max(pauses), 1) if pauses else None,
            "median_pause_ms": round(statistics.median(pauses), 1) if pauses else None,
            "sent_tib": round(sum(m.sent for m in moves) / 2**40, 3),
            "sent_ratio": round(sum(m.sent for m in moves) / ram, 3) if ram else None,
            "forced_pause": sum(1 for m in moves if m.forced_pause), "not_moved": sum(1 for m in moves if not m.moved),
            "pause_over_2s": sum(1 for p in pauses if p > 2000), "modes": modes,
            "forecast_s": round(forecast_s, 1) if forecast_s is not None else None,
            "moves": [dataclasses.asdict(m) for m in moves]}


def run_scenario(scenario: Scenario, cal: Calibration) -> list[dict[str, Any]]:
    guests = guests_of(scenario)
    link = scenario.link_gbit * 1e9 / 8
    hv, predicted = hvfleet_drain(guests, link, cal)
    rows = [summarize("virsh-loop", guests, sequential(guests, link, cal, virsh_move)),
            summarize("nova-defaults", guests, sequential(guests, link, cal, nova_move)),
            summarize("hvfleet", guests, hv, predicted)]
    for row in rows:
        row.update(scenario=scenario.name, title=scenario.title, link_gbit=scenario.link_gbit,
                   bound_s=round(sum(g.ram * g.touched for g in guests) / (link * cal.link_efficiency), 1))
    return rows


# the lab's Nova-like contender: force_complete, Nova's times scaled down 10x, no 2 GiB floor; it also had
# auto-converge permitted, which is not modelled here (its throttle had reached 30 % at the 30 s force-pause)
NOVA_LAB = NovaConfig(completion_timeout_per_gib=80, downtime_delay_per_gib=7.5, min_gib=0,
                      timeout_action="force_complete")


def lab_check(cal: Calibration) -> list[dict[str, Any]]:
    """The same models on the lab's drain scenario, beside the lab's medians (drain-bench-*.json)."""
    out = []
    for path in sorted(RESULTS.glob("drain-bench-*mbit.json")):
        data = json.loads(path.read_text())
        link = data["meta"]["mbit"] * 1e6 / 8
        guests = []
        for spec in data["meta"]["guests"]:
            ram = spec["memory"] * MIB
            resident = {"idle": 222, "moderate": 258, "hot": 393}[spec["kind"]] * MIB  # lab: QEMU's resident size
            guests.append(Guest(spec["name"], ram, (resident - TCG_OVERHEAD_MIB * MIB) / ram,
                                spec.get("dirty_rate", 0) * MIB, spec.get("dirty_mb", 0) * MIB,
                                overhead_mib=TCG_OVERHEAD_MIB))
        sims = {"virsh-loop": sequential(guests, link, cal, lambda g, bw, t: virsh_move(g, bw, t, timeout_s=30)),
                "nova-like": sequential(guests, link, cal, lambda g, bw, t: nova_move(g, bw, t, NOVA_LAB)),
                "hvfleet": hvfleet_drain(guests, link, cal, destinations=2, domain_type="qemu")[0]}
        measured = {s["contender"]: s for s in data["summary"]}
        for name, moves in sims.items():
            sim = summarize(name, guests, moves)
            lab = measured.get(name, {})
            out.append({"mbit": data["meta"]["mbit"], "contender": name,
                        "lab_makespan_s": lab.get("makespan_s"), "sim_makespan_s": sim["makespan_s"],
                        "lab_pause_max_ms": lab.get("pause_max_ms"), "sim_pause_max_ms": sim["worst_pause_ms"],
                        "lab_sent_ratio": round(lab["sent_ratio"], 2) if lab.get("sent_ratio") else None,
                        "sim_sent_ratio": round(sim["sent_ratio"], 2), "sim_modes": sim["modes"]})
    return out


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else str(value)


def markdown(rows: Sequence[dict[str, Any]], check: Sequence[dict[str, Any]], cal: Calibration) -> str:
    lines = [f"Calibration: link efficiency {cal.link_efficiency}, post-copy stall "
             f"{cal.postcopy_stall_bytes / 1e6:.0f} MB ({cal.sources}).", "",
             "| scenario | contender | makespan (simulated) | x bound | worst pause | median pause | sent | sent / RAM "
             "| forced pause | not moved | pause > 2 s | modes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        modes = ", ".join(f"{k} {v}" for k, v in sorted(r["modes"].items()))
        lines.append(f"| {r['scenario']} ({r['vms']} VMs, {r['ram_gib']:.0f} GiB, {r['link_gbit']:g} Gbit/s) "
                     f"| {r['contender']} | {_fmt(r['makespan_s'] / 60, 1)} min | {r['makespan_s'] / r['bound_s']:.2f} "
                     f"| {_fmt(r['worst_pause_ms'] and r['worst_pause_ms'] / 1000, 2)} s "
                     f"| {_fmt(r['median_pause_ms'])} ms | {r['sent_tib']:.2f} TiB | {r['sent_ratio']:.2f} "
                     f"| {r['forced_pause']} | {r['not_moved']} | {r['pause_over_2s']} | {modes} |")
    hv = [r for r in rows if r["contender"] == "hvfleet"]
    lines += ["", "hvfleet's own forecast (from what it can measure) against the simulated outcome: " + "; ".join(
        f"{r['scenario']} {_fmt(r['forecast_s'] and r['forecast_s'] / 60, 1)} vs {_fmt(r['makespan_s'] / 60, 1)} min"
        for r in hv) + ".",
        "", "Check on the lab scenario (4 guests, 1152 MiB; lab medians of 3 runs vs the same models):", "",
        "| link | contender | makespan lab / sim s | worst pause lab / sim ms | sent/RAM lab / sim | sim modes |",
        "|---|---|---|---|---|---|"]
    for c in check:
        modes = ", ".join(f"{k} {v}" for k, v in sorted(c["sim_modes"].items()))
        lines.append(f"| {c['mbit']:g} Mbit/s | {c['contender']} | {_fmt(c['lab_makespan_s'], 1)} / "
                     f"{_fmt(c['sim_makespan_s'], 1)} | {_fmt(c['lab_pause_max_ms'])} / {_fmt(c['sim_pause_max_ms'])} "
                     f"| {_fmt(c['lab_sent_ratio'], 2)} / {_fmt(c['sim_sent_ratio'], 2)} | {modes} |")
    return "\n".join(lines) + "\n"


COLOURS = {"virsh-loop": "#8c8c8c", "nova-defaults": "#d08c30", "hvfleet": "#3070b0"}


def render_svg(rows: Sequence[dict[str, Any]]) -> str:
    """Grouped bars per scenario: makespan (minutes) and worst guest pause (seconds), log-free, labelled."""
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    panels = (("makespan_s", "makespan (min)", 1 / 60), ("worst_pause_ms", "worst guest pause (s)", 1 / 1000))
    width, left, plot_w, bar_h, gap = 820, 200, 520, 16, 10
    group_h = len(CONTENDERS) * bar_h + gap
    panel_h = len(scenarios) * group_h + 40
    height = 70 + len(panels) * panel_h + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">Drains at production size - '
             'CALIBRATED SIMULATION, not measured</text>']
    x = left
    for name in CONTENDERS:
        parts.append(f'<rect x="{x}" y="34" width="12" height="12" fill="{COLOURS[name]}"/>'
                     f'<text x="{x + 16}" y="45">{html.escape(name)}</text>')
        x += 140
    y = 80
    for key, label, scale in panels:
        values = sorted((r.get(key) or 0) * scale for r in rows)
        top = min(values[-1], 5 * values[len(values) // 2] or values[-1]) * 1.15 or 1.0  # an outlier goes off scale
        parts.append(f'<text x="10" y="{y - 8}" font-weight="bold">{html.escape(label)}</text>')
        for s in scenarios:
            first = next(r for r in rows if r["scenario"] == s)
            title = first["title"].split(":")[0].replace(" on 10 Gbit/s", "") + f", {first['link_gbit']:g} Gbit/s"
            parts.append(f'<text x="{left - 8}" y="{y + group_h / 2}" text-anchor="end">{html.escape(title)}</text>')
            for i, name in enumerate(CONTENDERS):
                row = next((r for r in rows if r["scenario"] == s and r["contender"] == name), None)
                if row is None:
                    continue
                raw = row.get(key)
                value = (raw or 0) * scale
                w = plot_w * min(value, top) / top
                by = y + i * bar_h
                parts.append(f'<rect x="{left}" y="{by}" width="{w:.1f}" height="{bar_h - 3}" '
                             f'fill="{COLOURS[name]}"/>')
                digits = 1 if value >= 10 else 2
                text = "-" if raw is None else f"{value:,.{digits}f}" + (" (off scale)" if value > top else "")
                if key == "makespan_s" and row["not_moved"]:
                    text += f" ({row['not_moved']} not moved)"
                if key == "worst_pause_ms" and row["forced_pause"]:
                    text += f" ({row['forced_pause']} forced pause)"
                parts.append(f'<text x="{left + w + 4:.1f}" y="{by + bar_h - 5}">{html.escape(text)}</text>')
            y += group_h
        y += 40
    parts.append(f'<text x="10" y="{height - 10}" font-size="10">benchmarks/production_sim.py; assumptions in its '
                 'docstring and docs/BENCHMARKS.md</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--json", type=Path, help="write every figure (and every VM's move) here")
    ap.add_argument("--svg", type=Path, help="write the plot here")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = ap.parse_args(argv)
    cal = calibrate()
    rows = [r for s in SCENARIOS for r in run_scenario(s, cal)]
    check = lab_check(cal)
    if args.markdown:
        print(markdown(rows, check, cal), end="")
    else:
        for r in rows:
            print(f"{r['scenario']:5} {r['contender']:14} makespan {r['makespan_s'] / 60:7.1f} min  worst pause "
                  f"{_fmt(r['worst_pause_ms'])} ms  sent {r['sent_ratio']:.2f} x RAM  forced {r['forced_pause']}  "
                  f"not moved {r['not_moved']}  {r['modes']}")
    if args.json:
        args.json.write_text(json.dumps({"calibration": dataclasses.asdict(cal), "scenarios": [
            dataclasses.asdict(s) for s in SCENARIOS], "rows": rows, "lab_check": check}, indent=1) + "\n")
    if args.svg:
        args.svg.write_text(render_svg(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
