"""The drain_host role's HTML report: the timeline's planned slots beside the actual runs, the per-VM
forecast error and goal, and a host left not empty (on_unmigratable: leave) said plainly."""

import json
import re

from report_play import report_playbook, run_play

PLAYBOOK = report_playbook("""        drain_host_reason: ""
        drain_host_report_dir: "{{ playbook_dir }}/reports"
        drain_host_outcome: "{{ lookup('ansible.builtin.file', playbook_dir ~ '/result.json') | from_json }}"
""")

RESULT = {
    "state": "not_empty", "host": "hv1", "action": "drain",
    "message": "drain of hv1: 1 moved, 0 failed, 0 blocked, 0 not started, 1 left on hv1; hv1 is NOT empty",
    "plan": [{"vm": "web", "kind": "live", "destination": "hv2", "mode": "precopy", "predicted_duration_s": 8.0,
              "predicted_start_s": 2.0, "predicted_end_s": 12.0}],
    "vms": [{"vm": "web", "kind": "live", "destination": "hv2", "mode": "precopy", "state": "moved", "ok": True,
             "outcome": "moved", "duration_s": 12.0, "downtime_ms": 40.0, "predicted_duration_s": 10.0,
             "predicted_start_s": 2.0, "predicted_end_s": 12.0, "forecast_error_s": -2.0,
             "forecast_error_pct": -16.7, "forecast_within_goal": True, "started": "2030-01-01T10:00:00+00:00",
             "finished": "2030-01-01T10:00:12+00:00"}],
    "blockers": [], "left": [{"vm": "odd", "why": "cannot live-migrate (ivshmem-plain)",
                              "fix": "shut 'odd' down for the maintenance"}],
    "forecast": {"total_s": 12.0, "concurrency": 1, "left": ["odd"]},
    "actual": {"total_s": 12.5, "forecast_error_s": -0.5, "forecast_error_pct": -4.0, "forecast_within_goal": True,
               "vms_within_goal": 1, "vms_checked": 1},
    "summary": {"moved": 1, "failed": 0, "blocked": 0, "not_started": 0, "left": 1},
    "verified_empty": False, "leftovers": ["odd"],
}


def test_the_report_shows_the_slots_the_forecast_error_and_the_vms_left(tmp_path):
    (tmp_path / "report.yml").write_text(PLAYBOOK)
    (tmp_path / "result.json").write_text(json.dumps(RESULT))
    res = run_play(tmp_path / "report.yml", tmp_path, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    page = next((tmp_path / "reports").glob("*.html")).read_text()
    assert '<span class="state not_empty">not_empty</span>' in page
    assert "<b>hv1 is NOT empty:</b>" in page and "odd still run on it" in page
    assert "1 moved, 0 failed," in page and "1 left on the host" in page
    assert '<h2 id="left">Left on the host</h2>' in page
    assert re.search(r"<td>odd</td><td>cannot live-migrate \(ivshmem-plain\)</td><td>shut &#39;odd&#39; down", page)
    # the web row: planned 2-12 s, ran 0-12 s, 2 s (16.7 %) under, within the goal
    assert "<td class=\"n\">2.0&ndash;12.0</td>" in page and "<td class=\"n\">0.0&ndash;12.0</td>" in page
    assert "-2.0 s (-16.7 %)</td>" in page and "<td>yes</td>" in page
    assert "1 of 1 within the goal" in page and "forecast off by\n  -0.5 s (-4.0 %)" in page
    assert 'class="label predicted"' in page and ">plan 2.0-12.0 s<" in page and ">ran 0.0-12.0 s, 40 ms down<" in page
    assert ">left on the host by its policy (on_unmigratable: leave), not moved<" in page
