"""drain_progress with follow: true on a real ansible-playbook run, without the lab.

A stand-in for host_drain (a script appending a Journal's progress events over a few seconds) runs as an
async job; hvfleet.drain.drain_progress follows it with `follow: true` as the drain_host role does. Checks
that each event is printed once, live, with no retry lines (the callback plugin enabled in ansible.cfg
prints nothing more), and that Ctrl-C (SIGINT to ansible-playbook's process group, as a terminal sends it)
tells the operator the drain continues, with the commands to stop or follow it, while the drain goes on.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ansible_collections.hvfleet.drain.plugins.action.drain_progress import (
    fresh_events,
    interrupt_message,
    playbook_command,
)

REPO = Path(__file__).resolve().parents[3]

WRITER = r'''
import sys, time
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.journal import Journal
journal = Journal(sys.argv[1], "hv1")
step = float(sys.argv[2])
journal.begin_run("drain")
journal.event("run_started", vms=2, blocked=0, forecast_total_s=6, max_parallel=1, resumed=False)
for vm in ("alpha", "beta"):
    journal.event("vm_started", vm=vm, destination="hv2", mode="precopy", policy="default",
                  predicted_duration_s=1.0, predicted_downtime_ms=20)
    for pct in (20, 40, 60, 80, 95):
        time.sleep(step)  # a migration taking its time (simulated), not synchronisation
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
      ansible.builtin.command: "{{ ansible_python_interpreter }} {{ writer }} {{ state_dir }} {{ step }}"
      environment:
        PYTHONPATH: "{{ coll_path }}"
      async: 120
      poll: 0
      register: job
    - name: Follow the progress
      hvfleet.drain.drain_progress:
        state_dir: "{{ state_dir }}"
        job_id: "{{ job.ansible_job_id }}"
        since: "{{ before.now }}"
        wait: 1
        follow: true
        follow_timeout: 120
      register: progress
    - name: Show what the task returned
      ansible.builtin.debug:
        msg: "RETURNED {{ progress.events | map(attribute='event') | join(',') }} printed={{ progress.printed }}"
"""


def start(tmp_path, step):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "drain-progress.jsonl").write_text(json.dumps(
        {"seq": 1, "at": "2000-01-01T00:00:00.000+00:00", "t": 0, "run": "old", "host": "hv1", "action": "drain",
         "event": "note", "message": "STALE EVENT"}) + "\n")
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_ASYNC_DIR=str(tmp_path / "async"))
    playbook = os.environ.get("HVFLEET_ANSIBLE_PLAYBOOK") or str(Path(sys.executable).parent / "ansible-playbook")
    argv = [playbook, "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"state_dir={state_dir}",
            "-e", f"writer={tmp_path / 'writer.py'}", "-e", f"coll_path={REPO / '.collections'}",
            "-e", f"step={step}", str(tmp_path / "play.yml")]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return proc, state_dir


def test_follow_prints_each_event_once_live_without_retry_lines(tmp_path):
    proc, _state_dir = start(tmp_path, 0.6)
    t0 = time.monotonic()
    lines = []
    with proc:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
        rc = proc.wait(timeout=120)
    out = "\n".join(text for _t, text in lines)
    print(out)
    assert rc == 0
    assert "RETRYING" not in out
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
    assert len(shown) == len(set(shown))  # nothing printed twice (the enabled callback prints nothing more)
    assert any("% of pass 1" in text for text in shown)  # progress samples came through
    when = {text: t for t, text in lines}
    t_start = next(t for text, t in when.items() if "alpha -> hv2: started" in text)
    t_end = next(t for text, t in when.items() if "drain drained" in text)
    assert t_end - t_start > 1.0  # printed while the job ran, not all at the end
    assert "RETURNED run_started,vm_started,vm_finished,vm_started,vm_finished,run_finished" in out
    assert "printed=True" in out


def read_events(state_dir):
    path = state_dir / "drain-progress.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_ctrl_c_says_the_drain_continues_and_how_to_stop_it(tmp_path):
    proc, state_dir = start(tmp_path, 1.0)
    deadline = time.monotonic() + 60
    while not any(e.get("event") == "vm_started" for e in read_events(state_dir)):
        assert time.monotonic() < deadline, "the stand-in drain did not start"
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out = proc.communicate(timeout=60)[0]
    print(out)
    assert proc.returncode != 0
    assert "CONTINUES on localhost (async job j" in out
    assert "To stop it:" in out and "-e target=localhost -e drain_host_state=cancelled" in out
    assert "-e drain_host_state=followed" in out
    assert out.count("CONTINUES") == 1
    # and the drain really went on: its run finished after the controller had gone
    deadline = time.monotonic() + 60
    while not any(e.get("event") == "run_finished" for e in read_events(state_dir)):
        assert time.monotonic() < deadline, "the stand-in drain stopped with the controller"
        time.sleep(0.2)
    assert [e["vm"] for e in read_events(state_dir) if e.get("event") == "vm_finished"] == ["alpha", "beta"]


def test_playbook_command_adds_target_and_state():
    argv = ["/nowhere/bin/ansible-playbook", "playbooks/drain-host.yml", "-e", "target=hv1", "-e", "x=a b"]
    cmd = playbook_command(argv, "hv1", "cancelled")
    assert cmd == ("/nowhere/bin/ansible-playbook playbooks/drain-host.yml -e target=hv1 -e 'x=a b' "
                   "-e drain_host_state=cancelled")
    cmd = playbook_command(["ansible-playbook", "p.yml", "--limit", "hv1"], "hv1", "followed")
    assert cmd.endswith("p.yml --limit hv1 -e target=hv1 -e drain_host_state=followed")
    assert playbook_command(["/usr/bin/ansible", "hv1"], "hv1", "cancelled") is None


def test_interrupt_message_names_host_job_and_commands():
    text = interrupt_message("hv1", "restore", "/var/lib/hvfleet", "j42", ["ansible-playbook", "p.yml"])
    assert "The restore CONTINUES on hv1 (async job j42)" in text
    assert "ansible-playbook p.yml -e target=hv1 -e drain_host_state=cancelled" in text
    assert "/var/lib/hvfleet/drain-progress.jsonl" in text


@pytest.mark.parametrize("seen_before", [set(), {("hv1", "r1", 1)}])
def test_fresh_events_never_twice(seen_before):
    seen = set(seen_before)
    events = [{"host": "hv1", "run": "r1", "seq": 1}, {"host": "hv1", "run": "r1", "seq": 2}]
    first = fresh_events(events, seen)
    assert [e["seq"] for e in first] == ([2] if seen_before else [1, 2])
    assert fresh_events(events, seen) == []


FOLLOW_ONLY = """
- name: Follow whatever runs
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Follow the progress
      hvfleet.drain.drain_progress:
        state_dir: "{{ state_dir }}"
        wait: 0.5
        follow: true
        follow_timeout: 60
"""


def test_following_when_nothing_runs_ends_at_once(tmp_path):
    (tmp_path / "play.yml").write_text(FOLLOW_ONLY)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"state_dir={tmp_path / 'state'}",
            str(tmp_path / "play.yml")]
    res = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    print(res.stdout, res.stderr)
    assert res.returncode == 0
    assert "No drain or restore is running on localhost." in res.stdout
