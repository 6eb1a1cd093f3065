"""The drain_host role writes its reports under reports/ of the directory ansible-playbook runs in, by default."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PLAYBOOK = """
- name: Write a drain report as the drain_host role does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write the report
      ansible.builtin.include_role:
        name: hvfleet.drain.drain_host
        tasks_from: report.yml
      vars:
        drain_host_target: hv1
        drain_host_action: drain
        drain_host_dest_list: [{name: hv2}]
        drain_host_outcome:
          state: drained
          message: "drain of hv1: 0 moved"
          host: hv1
          action: drain
          plan: []
          vms: []
          blockers: []
          summary: {moved: 0, failed: 0, blocked: 0, not_started: 0}
"""


def test_reports_go_to_the_working_directory_not_the_collection(tmp_path):
    work = tmp_path / "ops"  # where the operator runs ansible-playbook
    work.mkdir()
    plays = tmp_path / "project" / "plays"  # the playbook lives elsewhere (as in an installed collection)
    plays.mkdir(parents=True)
    (plays / "report.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", str(plays / "report.yml")]
    res = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False)
    print(res.stdout, res.stderr)
    assert res.returncode == 0
    written = sorted(p.name for p in (work / "reports").iterdir())
    assert len(written) == 2 and written[0].startswith("hv1-drain-") and {p[-4:] for p in written} == {"html", "json"}
    data = json.loads(next((work / "reports").glob("*.json")).read_text())
    assert data["target"] == "hv1" and data["result"]["state"] == "drained"
    assert not (tmp_path / "project" / "reports").exists()  # not next to the playbook's directory
    assert not (REPO / "roles" / "reports").exists() and not (REPO.parent / "reports").exists()
