"""The drain_host role writes its reports under reports/ of the directory ansible-playbook runs in, by default."""

import json

from report_play import REPO, report_playbook, run_play

PLAYBOOK = report_playbook("""        drain_host_outcome:
          state: drained
          message: "drain of hv1: 0 moved"
          host: hv1
          action: drain
          plan: []
          vms: []
          blockers: []
          summary: {moved: 0, failed: 0, blocked: 0, not_started: 0}
""")


def test_reports_go_to_the_working_directory_not_the_collection(tmp_path):
    work = tmp_path / "ops"  # where the operator runs ansible-playbook
    work.mkdir()
    plays = tmp_path / "project" / "plays"  # the playbook lives elsewhere (as in an installed collection)
    plays.mkdir(parents=True)
    (plays / "report.yml").write_text(PLAYBOOK)
    res = run_play(plays / "report.yml", work, tmp_path)
    print(res.stdout, res.stderr)
    assert res.returncode == 0
    written = sorted(p.name for p in (work / "reports").iterdir())
    assert len(written) == 2 and written[0].startswith("hv1-drain-") and {p[-4:] for p in written} == {"html", "json"}
    data = json.loads(next((work / "reports").glob("*.json")).read_text())
    assert data["target"] == "hv1" and data["result"]["state"] == "drained"
    assert not (tmp_path / "project" / "reports").exists()  # not next to the playbook's directory
    assert not (REPO / "roles" / "reports").exists() and not (REPO.parent / "reports").exists()
