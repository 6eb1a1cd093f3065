"""The live-progress pipeline end to end on the controller, without the lab.

A stand-in for host_drain (a script appending a Journal's progress events over a few seconds) runs as an
async job; hvfleet.drain.drain_progress follows it in an until loop exactly as the drain_host role does,
and the hvfleet.drain.drain_progress callback prints the events. Checks that each event is printed once,
in order, while the job runs, and that the events of an earlier run are not.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

WRITER = r'''
import sys, time
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import Journal
journal = Journal(sys.argv[1], "hv1")
journal.begin_run("drain")
journal.event("run_started", vms=2, blocked=0, forecast_total_s=6, max_parallel=1, resumed=False)
for vm in ("alpha", "beta"):
    journal.event("vm_started", vm=vm, destination="hv2", mode="precopy", policy="default",
                  predicted_duration_s=1.0, predicted_downtime_ms=20)
    for pct in (20, 40, 60, 80, 95):
        time.sleep(0.6)  # a migration taking its time (simulated), not synchronisation
        journal.event("vm_progress", vm=vm, destination="hv2", phase="precopy", percent=pct, eta_s=1,
                      iteration=1, remaining_bytes=1048576, bandwidth_bps=1048576, elapsed_s=1)
    journal.event("vm_finished", vm=vm, destination="hv2", ok=True, state="moved", outcome="moved",
                  mode="precopy", duration_s=3.0, downtime_ms=15, bytes_sent=10485760, message="ok", recovery=None)
journal.event("run_finished", state="drained", moved=2, failed=0, blocked=0, not_started=0, duration_s=6.0,
              forecast_total_s=6, message="done")
'''

PLAYBOOK = """
- name: Follow a stand-in drain
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Note where the events stand
      hvfleet.drain.drain_progress:
        state_dir: "{{ state_dir }}"
        mark: true
      register: before
    - name: Start the stand-in drain in the background
      ansible.builtin.command: "{{ ansible_python_interpreter }} {{ writer }} {{ state_dir }}"
      environment:
        PYTHONPATH: "{{ collections }}"
      async: 120
      poll: 0
      register: job
    - name: Follow the progress
      hvfleet.drain.drain_progress:
        state_dir: "{{ state_dir }}"
        job_id: "{{ job.ansible_job_id }}"
        since: "{{ before.now }}"
        wait: 1
      register: progress
      until: progress.finished
      retries: 200
      delay: 0
    - name: Collect
      ansible.builtin.async_status:
        jid: "{{ job.ansible_job_id }}"
      register: done
      until: done is finished
      retries: 20
      delay: 1
"""


def test_progress_is_printed_live_once_and_in_order(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    # a finished earlier run left its events behind
    (state_dir / "drain-progress.jsonl").write_text(json.dumps(
        {"seq": 1, "at": "2000-01-01T00:00:00.000+00:00", "t": 0, "run": "old", "host": "hv1", "action": "drain",
         "event": "note", "message": "STALE EVENT"}) + "\n")
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_ASYNC_DIR=str(tmp_path / "async"),
               ANSIBLE_CALLBACKS_ENABLED="hvfleet.drain.drain_progress")  # a hand-written until loop needs it
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"state_dir={state_dir}",
            "-e", f"writer={tmp_path / 'writer.py'}", "-e", f"collections={REPO / '.collections'}",
            str(tmp_path / "play.yml")]
    t0 = time.monotonic()
    lines = []
    with subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
        rc = proc.wait(timeout=120)
    out = "\n".join(text for _t, text in lines)
    print(out)
    assert rc == 0
    assert "STALE EVENT" not in out
    shown = [text.strip() for _t, text in lines if text.startswith("  hv1 ")]
    kinds = []
    for text in shown:
        if "drain started" in text:
            kinds.append("run_started")
        elif ": started, " in text:
            kinds.append("start " + text.split()[2])
        elif ": moved in " in text:
            kinds.append("end " + text.split()[2])
        elif "drain drained" in text:
            kinds.append("run_finished")
    assert kinds == ["run_started", "start alpha", "end alpha", "start beta", "end beta", "run_finished"]
    assert len(shown) == len(set(shown))  # nothing printed twice
    assert any("% of pass 1" in text for text in shown)  # progress samples came through
    # printed while the job ran: alpha started clearly before the run finished
    when = {text: t for t, text in lines}
    t_start = next(t for text, t in when.items() if "alpha -> hv2: started" in text)
    t_end = next(t for text, t in when.items() if "drain drained" in text)
    assert t_end - t_start > 1.0
