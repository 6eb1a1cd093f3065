# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The production-size drain simulation (benchmarks/production_sim.py): its round model and its invariants."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.forecast import GIB, MIB, simulate_precopy

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import production_sim as ps  # noqa: E402

CAL = ps.Calibration(link_efficiency=0.9, postcopy_stall_bytes=30e6, sources="test")
LINK = 1e9 / 8  # 1 Gbit/s: a tiny scenario


def guest(name, ram_gib, dirty_mib, wss_gib, touched=1.0):
    return ps.Guest(name, ram_gib * GIB, touched, dirty_mib * MIB, wss_gib * GIB)


TINY = [guest("idle", 2, 1, 0.1), guest("app", 4, 20, 0.5, touched=0.6), guest("db", 8, 60, 2),
        guest("hot", 4, 200, 2)]  # hot: 200 MiB/s against 107 MiB/s of link


@pytest.mark.parametrize(("ram", "dirty", "wss", "touched", "limit", "deadline"), [
    (4, 20, 0.5, 1.0, 300, 600),  # converges in a few passes
    (8, 60, 2, 0.7, 500, 1200),  # converges later
    (4, 200, 2, 1.0, 300, 600),  # out-dirties the link: steady until the deadline (fast-forward)
    (16, 100, 16, 1.0, 50, 90),  # cut inside a pass by the deadline
])
def test_the_round_model_is_the_forecasts_with_a_constant_limit(ram, dirty, wss, touched, limit, deadline):
    g = guest("x", ram, dirty, wss, touched)
    bw = 110e6
    mine = ps.precopy_rounds(g, bw, deadline, lambda _t: float(limit))
    theirs = simulate_precopy(g.ram, g.dirty, bw, deadline, limit, transferable_ratio=touched, dirty_working_set=g.wss)
    assert mine.converged == theirs.converged
    assert mine.elapsed_s == pytest.approx(theirs.elapsed_s, rel=1e-9)
    assert mine.sent == pytest.approx(theirs.bytes_sent, rel=1e-9)
    assert mine.left == pytest.approx(theirs.remaining_bytes, rel=1e-9)
    assert (mine.pause_ms is None) == (theirs.pause_ms is None)
    if mine.pause_ms is not None:
        assert mine.pause_ms == pytest.approx(theirs.pause_ms, rel=1e-9)


def test_novas_downtime_steps_and_timeout(monkeypatch):
    g = guest("hot", 4, 200, 2)
    move = ps.nova_move(g, 110e6, 0.0)
    assert not move.moved and move.mode == "precopy (aborted)" and move.end_s == pytest.approx(800 * 4)
    forced = ps.nova_move(g, 110e6, 0.0, ps.NovaConfig(timeout_action="force_complete"))
    assert forced.moved and forced.forced_pause and forced.pause_ms > 10_000
    # the steps: 50 ms, then +45 ms every 75 s x GiB, up to 500 ms
    seen = []
    original = ps.precopy_rounds

    def record(g_, bw, deadline, limit, next_change):
        seen.extend(limit(t) for t in (0, 299, 300, 301, 600, 2999, 3000, 10**6))
        assert next_change(0) == 300 and next_change(2999) == 3000 and next_change(3000) == float("inf")
        return original(g_, bw, deadline, limit, next_change)

    monkeypatch.setattr(ps, "precopy_rounds", record)
    ps.nova_move(g, 110e6, 0.0)
    assert seen == [50, 50, 95, 95, 140, 455, 500, 500]


def check_invariants(moves, guests, concurrency):
    by_vm = {m.vm: m for m in moves}
    assert sorted(by_vm) == sorted(g.name for g in guests) and len(moves) == len(guests)  # every VM, once
    makespan = max(m.end_s for m in moves)
    assert makespan >= max(m.end_s - m.start_s for m in moves)
    for m in moves:
        assert m.end_s >= m.start_s >= 0
        g = next(x for x in guests if x.name == m.vm)
        if m.moved and m.mode.startswith("precopy"):
            assert m.sent >= g.ram * g.touched * (1 - 1e-9)  # pre-copy sends all touched memory at least once
            assert m.pause_ms is not None and m.pause_ms > 0
    events = sorted([(m.start_s, 1) for m in moves] + [(m.end_s, -1) for m in moves], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _t, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= concurrency
    return makespan


def test_a_tiny_drain_keeps_the_invariants_for_every_contender():
    link_eff = LINK * CAL.link_efficiency
    bound = sum(g.ram * g.touched for g in TINY) / link_eff
    virsh = ps.sequential(TINY, LINK, CAL, ps.virsh_move)
    nova = ps.sequential(TINY, LINK, CAL, ps.nova_move)
    hv, predicted = ps.hvfleet_drain(TINY, LINK, CAL)
    for moves, lanes in ((virsh, 1), (nova, 1), (hv, 2)):
        makespan = check_invariants(moves, TINY, lanes)
        assert makespan >= bound * (1 - 1e-9)  # no contender beats every touched byte once over the link
    assert all(m.moved for m in virsh)  # --timeout-suspend always ends with the VM moved
    assert [m.vm for m in virsh if m.forced_pause] == ["hot"]
    assert [m.vm for m in nova if not m.moved] == ["hot"] and not any(m.forced_pause for m in nova)
    assert {m.vm: m.mode for m in hv}["hot"] == "postcopy" and all(m.moved for m in hv)
    # db: hvfleet cannot measure its working set and takes its touched memory (8 GiB at 60 MiB/s on half the
    # link): pre-copy is not forecast to converge, so it goes by post-copy too
    assert {m.vm: m.mode for m in hv} == {"hot": "postcopy", "db": "postcopy", "app": "precopy", "idle": "precopy"}
    assert predicted > 0
    rows = [ps.summarize("virsh-loop", TINY, virsh), ps.summarize("nova-defaults", TINY, nova),
            ps.summarize("hvfleet", TINY, hv, predicted)]
    assert [r["forced_pause"] for r in rows] == [1, 0, 0] and [r["not_moved"] for r in rows] == [0, 1, 0]
    virsh_hot = next(m for m in virsh if m.vm == "hot")
    assert rows[0]["worst_pause_ms"] == pytest.approx(virsh_hot.pause_ms, abs=0.1)


def test_a_refused_vm_is_not_moved_and_takes_no_time(monkeypatch):
    # post-copy not allowed and no way to converge: the forecast refuses the VM, the drain does not start it
    monkeypatch.setattr(ps, "DEFAULT_SETTINGS", dict(ps.DEFAULT_SETTINGS, allow_postcopy=False))
    moves, _predicted = ps.hvfleet_drain([guest("hot", 4, 2000, 4)], LINK, CAL)
    (move,) = moves
    assert not move.moved and move.mode == "refused" and move.end_s == move.start_s and move.sent == 0


def test_the_scenarios_are_production_shaped_and_reproducible():
    for scenario in ps.SCENARIOS:
        guests = ps.guests_of(scenario)
        assert 20 <= len(guests) <= 60 and 10 <= scenario.link_gbit <= 25
        assert all(4 * GIB <= g.ram <= 64 * GIB and 0 < g.touched <= 1 and g.wss <= g.ram for g in guests)
        assert ps.guests_of(scenario) == guests
    hot = ps.guests_of(next(s for s in ps.SCENARIOS if s.name == "hot"))
    link = 10e9 / 8
    assert sum(1 for g in hot if g.dirty > link) == 3


def test_calibration_from_the_lab_data():
    cal = ps.calibrate()
    assert 0.85 < cal.link_efficiency < 1.0
    assert 10e6 < cal.postcopy_stall_bytes < 100e6
    assert "drain-bench-300mbit.json" in cal.sources


def test_table_and_plot():
    rows = []
    for name, moves in (("virsh-loop", ps.sequential(TINY, LINK, CAL, ps.virsh_move)),
                        ("hvfleet", ps.hvfleet_drain(TINY, LINK, CAL)[0])):
        row = ps.summarize(name, TINY, moves)
        row.update(scenario="tiny", title="tiny: 4 VMs", link_gbit=1, bound_s=10.0)
        rows.append(row)
    text = ps.markdown(rows, [], CAL)
    assert "| tiny (4 VMs" in text and "virsh-loop" in text and "hvfleet" in text
    svg = ps.render_svg(rows)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "SIMULATION" in svg and svg.count("<rect") >= 1 + len(ps.CONTENDERS) + 2 * len(rows)
