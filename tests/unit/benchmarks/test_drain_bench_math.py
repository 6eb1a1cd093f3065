# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The pure parts of the drain benchmark (benchmarks/drain_report.py): bound, medians, table, SVG."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import drain_report as dr  # noqa: E402

MIB = 2**20


def vm(name, ram_mib, downtime=None, pause=None, sent=None, ok=True, **kw):
    return dict(name=name, kind="idle", ram_bytes=ram_mib * MIB, ok=ok, downtime_ms=downtime, guest_pause_ms=pause,
                bytes_sent=sent, **kw)


def run(contender, makespan, vms, link_bps=25e6, **kw):
    return dict(contender=contender, makespan_s=makespan, link_bps=link_bps, vms=vms, **kw)


def test_physical_bound_is_all_ram_once_over_the_link():
    assert dr.physical_bound_s([256 * MIB, 256 * MIB], 25e6) == pytest.approx(512 * MIB / 25e6)
    assert dr.physical_bound_s([], 1e6) == 0
    with pytest.raises(ValueError):
        dr.physical_bound_s([MIB], 0)


def test_median_ignores_missing_figures():
    assert dr.median([3, None, 1, 2]) == 2
    assert dr.median([None, None]) is None
    assert dr.median([1, 2]) == 1.5


def test_figures_of_one_run():
    vms = [vm("a", 256, downtime=100, pause=150, sent=300 * MIB),
           vm("b", 256, downtime=None, pause=1200, sent=None, suspended=True),
           vm("c", 512, downtime=300, pause=None, sent=600 * MIB, ok=False),
           vm("d", 0, pause=9000, rebooted=True), vm("e", 0, pause=30000, hung=True, ok=False)]
    row = dr.figures(run("x", 100.0, vms, forecast_s=60.0, forecast_basis_s=80.0))
    bound = 1024 * MIB / 25e6
    assert row["bound_s"] == pytest.approx(bound) and row["bound_ratio"] == pytest.approx(100.0 / bound)
    assert row["downtime_max_ms"] == 300 and row["downtime_median_ms"] == 200 and row["downtime_known"] == 2
    assert row["pause_max_ms"] == 1200 and row["pause_median_ms"] == 675  # a reboot or a hang is no pause
    assert row["sent_ratio"] == pytest.approx(900 / 768)  # only VMs with a figure count
    assert (row["failed"], row["paused_long"], row["suspended"], row["rebooted"], row["hung"]) == (2, 1, 1, 1, 1)
    assert row["forecast_error"] == pytest.approx(60 / 80 - 1)  # against the migrations' span, not the makespan


def test_aggregate_takes_medians_per_contender_in_first_seen_order():
    runs = [run("virsh", 10.0, [vm("a", 256, downtime=100)]), run("hv", 5.0, [vm("a", 256, downtime=50)]),
            run("virsh", 30.0, [vm("a", 256, downtime=300)]), run("hv", 7.0, [vm("a", 256, downtime=70)]),
            run("virsh", 20.0, [vm("a", 256, downtime=200)])]
    rows = dr.aggregate(runs)
    assert [r["contender"] for r in rows] == ["virsh", "hv"]
    assert rows[0]["runs"] == 3 and rows[0]["makespan_s"] == 20.0 and rows[0]["downtime_max_ms"] == 200
    assert rows[1]["runs"] == 2 and rows[1]["makespan_s"] == 6.0 and rows[1]["forecast_s"] is None


def test_table_and_svg_render():
    rows = dr.aggregate([run("virsh-loop", 80.0, [vm("a", 256, downtime=100, pause=140)]),
                         run("hvfleet", 50.0, [vm("a", 256, pause=None)], forecast_s=45.0)])
    text = dr.render_table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("contender") and "makespan s" in lines[0] and len(lines) == 3
    assert "80.0" in lines[1] and "-" in lines[2]  # a missing figure is a dash
    md = dr.render_table(rows, markdown=True)
    assert md.splitlines()[1].startswith("|---|") and md.count("\n") == 3
    svg = dr.render_svg(rows, bound_s=21.5)
    root = ET.fromstring(svg)  # well-formed
    assert root.tag.endswith("svg")
    assert "virsh-loop" in svg and "hvfleet" in svg and "physical bound 21.5 s" in svg
    assert len(svg) < 10_000


def test_svg_escapes_names():
    svg = dr.render_svg([{"contender": "a<b&c", "makespan_s": 1.0, "pause_max_ms": 5}])
    ET.fromstring(svg)
    assert "a&lt;b&amp;c" in svg
