"""Following, interrupting and cancelling a drain on the lab, with the operator's commands.

Ctrl-C on `ansible-playbook playbooks/drain-host.yml` (SIGINT to its process group, as a terminal sends
it) says that the drain continues on hv1 and how to stop or follow it; the drain does go on and ends
with every VM moved; `-e drain_host_state=followed` follows it to its end. A drain of a slow, dirtying
guest cancelled from a second run (`-e drain_host_state=cancelled`) starts no new migration, the running
pre-copy is aborted, every VM runs on exactly one host and the journal says who cancelled; with
`drain_host_cancel_running=finish` the running migration ends on its destination instead.
"""

import json
import os
import signal
import subprocess
import threading
import time

import pytest
from lab_helpers import HOST_STATE_DIR, REPO, ansible_env, playbook_argv, run_playbook, text_of, wait_for

pytestmark = pytest.mark.lab


def journal(lab):
    res = lab.exec("hv1", ["cat", f"{HOST_STATE_DIR}/drain-journal.json"], check=False)
    return json.loads(res.stdout) if res.returncode == 0 and res.stdout.strip() else None


def vms_in(lab, state):
    j = journal(lab)
    return sorted(n for n, v in (j or {}).get("vms", {}).items() if v.get("state") == state)


def lock_free(lab):
    """No process holds hv1's drain lock (flock -n succeeds)."""
    res = lab.exec("hv1", ["flock", "-n", f"{HOST_STATE_DIR}/drain.lock", "true"], check=False)
    return res.returncode == 0


class Controller:
    """ansible-playbook in its own process group, its output collected as it comes."""

    def __init__(self, *args):
        self.lines = []
        self.proc = subprocess.Popen(playbook_argv("drain-host.yml", *args), cwd=REPO, env=ansible_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self):
        return "\n".join(self.lines)

    def wait(self, timeout):
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(10)
        print("\n".join(self.lines))
        return rc

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


def test_ctrl_c_leaves_the_drain_running_and_says_how_to_stop_or_follow_it(clean_lab, make_vm, tmp_path):
    lab = clean_lab
    lab.shape("hv1", 200)  # slow enough that the drain is still running when Ctrl-C comes
    names = [make_vm("hv1", memory=384) for _i in range(3)]
    controller = Controller("-e", "target=hv1", "-e", f"drain_host_report_dir={tmp_path}",
                            "-e", "drain_host_poll_wait=2", "-e", "drain_host_max_parallel=1")
    try:
        wait_for(lambda: vms_in(lab, "migrating"), 300, "a migration to run")
        wait_for(lambda: ": started, " in controller.text(), 60, "the start to be printed")
        assert "RETRYING" not in controller.text()
        os.killpg(controller.proc.pid, signal.SIGINT)  # Ctrl-C
        rc = controller.wait(60)
    finally:
        controller.kill()
    out = controller.text()
    assert rc != 0
    assert "The drain CONTINUES on hv1" in out, out
    stop = next(line for line in out.splitlines() if "To stop it:" in line)
    follow = next(line for line in out.splitlines() if "To follow it:" in line)
    assert "drain-host.yml -e target=hv1 " in stop and stop.endswith(" -e drain_host_state=cancelled")
    assert "drain-host.yml -e target=hv1 " in follow and follow.endswith(" -e drain_host_state=followed")
    assert not lock_free(lab), "the drain stopped with the controller"

    # following it again prints the rest of its run, to its end
    rc, lines = run_playbook("drain-host.yml", "-e", "target=hv1", "-e", "drain_host_state=followed",
                             "-e", "drain_host_poll_wait=2")
    assert rc == 0
    assert "hv1" in text_of(lines) and " drain drained: 3 moved, 0 failed" in text_of(lines)
    wait_for(lambda: lock_free(lab), 60, "the drain to let go of its lock")
    assert journal(lab)["state"] == "drained"
    for name in names:
        assert lab.running_on(name) in (["hv2"], ["hv3"]), name


def test_a_drain_cancelled_from_a_second_run_starts_nothing_new(clean_lab, make_vm, tmp_path):
    lab = clean_lab
    lab.shape("hv1", 100)
    # a guest that keeps dirtying memory, copied over a slow link: its pre-copy runs a while
    slow = make_vm("hv1", memory=512, dirty_mb=128, dirty_rate=4)
    others = [make_vm("hv1", memory=256) for _i in range(2)]
    every = [slow, *others]
    controller = Controller("-e", "target=hv1", "-e", f"drain_host_report_dir={tmp_path}",
                            "-e", "drain_host_poll_wait=2", "-e", "drain_host_max_parallel=1",
                            "-e", "drain_host_progress_interval=2",
                            "-e", json.dumps({"drain_host_policies": [
                                {"name": "precopy-only", "default": True,
                                 "settings": {"mode": "precopy", "allow_postcopy": False}}]}))
    try:
        running = wait_for(lambda: vms_in(lab, "migrating"), 300, "a migration to run")
        t0 = time.monotonic()
        rc, lines = run_playbook("drain-host.yml", "-e", "target=hv1", "-e", "drain_host_state=cancelled",
                                 "-e", json.dumps({"drain_host_reason": "lab: change withdrawn"}))
        print(f"LAB-TIMING cancel returned after {time.monotonic() - t0:.1f}s")
        drain_rc = controller.wait(120)
    finally:
        controller.kill()
    out = text_of(lines)
    assert rc == 0, out
    assert "cancelled by " in out and "(lab: change withdrawn)" in out
    assert drain_rc != 0
    assert "did not complete (cancelled)" in controller.text()
    j = journal(lab)
    run = j["runs"][-1]
    assert run["cancel"]["reason"] == "lab: change withdrawn" and run["cancel"]["mode"] == "abort"
    assert j["state"] == "interrupted" and run["state"] == "interrupted"
    started = {n: v.get("started") for n, v in j["vms"].items() if v.get("attempts")}
    print(f"running when the cancel was sent: {running}; started in all: {started}; "
          f"requested at {run['cancel']['requested']}")
    assert all(at < run["cancel"]["requested"] for at in started.values()), "a migration started after the cancel"
    assert len(started) < len(every), "every migration had started: the cancel stopped nothing"
    assert not vms_in(lab, "migrating")
    for name in every:
        where = lab.locate(name)
        assert list(where.values()) == ["running"], f"{name}: {where}"
    assert lock_free(lab)
    res = lab.exec("hv1", ["test", "-e", f"{HOST_STATE_DIR}/cancel.json"], check=False)
    assert res.returncode != 0, "the honoured request was left behind"


def test_a_cancel_with_finish_lets_the_running_migration_end(clean_lab, make_vm, tmp_path):
    lab = clean_lab
    lab.shape("hv1", 100)
    names = [make_vm("hv1", memory=256) for _i in range(3)]
    controller = Controller("-e", "target=hv1", "-e", f"drain_host_report_dir={tmp_path}",
                            "-e", "drain_host_poll_wait=2", "-e", "drain_host_max_parallel=1")
    try:
        running = wait_for(lambda: vms_in(lab, "migrating"), 300, "a migration to run")
        rc, lines = run_playbook("drain-host.yml", "-e", "target=hv1", "-e", "drain_host_state=cancelled",
                                 "-e", "drain_host_cancel_running=finish")
        drain_rc = controller.wait(120)
    finally:
        controller.kill()
    assert rc == 0 and "running migrations left to finish" in text_of(lines)
    assert drain_rc != 0 and "did not complete (cancelled)" in controller.text()
    j = journal(lab)
    assert j["runs"][-1]["cancel"]["mode"] == "finish"
    started = {n: v["started"] for n, v in j["vms"].items() if v.get("attempts")}
    assert all(at < j["runs"][-1]["cancel"]["requested"] for at in started.values())
    print(f"running when the cancel was sent: {running}; started in all: {sorted(started)}")
    for name in names:
        if name in started:  # it was left to finish: it moved
            assert j["vms"][name]["state"] == "moved" and lab.running_on(name) in (["hv2"], ["hv3"]), name
        else:
            assert lab.running_on(name) == ["hv1"], name
    assert len(started) < len(names)
