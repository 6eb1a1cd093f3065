"""Run the drain_host role's report tasks alone, as the role does after a drain: the tests of the report share this."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

HEAD = """
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
"""


def report_playbook(more_vars):
    """The play with the role's common variables and `more_vars` (YAML lines indented as role vars)."""
    return HEAD + more_vars


def run_play(playbook, cwd, tmp):
    """ansible-playbook `playbook` on localhost from `cwd`, with this checkout's collection; returns the process."""
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp / "tmp"))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
