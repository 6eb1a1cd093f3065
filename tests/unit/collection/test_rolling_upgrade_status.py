"""The rolling_upgrade role's own checks, run for real on the controller: is a host already done (so that a rerun
leaves it alone), and does it need its reboot after the upgrade step.

One ansible-playbook run, one local "host" per case, each with its own state directory (given as
drain_host_state_dir, as inventory would), kernel directory and reboot flag. The collection is this checkout with
one module replaced: hypervisor_info, which needs a libvirtd, by a stand-in that reads the cordon from the state
directory as the real one does on a hypervisor. The upgrade step is a custom task file, so no package manager is
asked; the built-in step's decisions are covered by the filter tests (tests/unit/plugins/test_upgrade_filters.py).
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
RUNNING = platform.release()  # what the role reads as ansible_facts.kernel on this machine
NEWER = "999.0.0-1-amd64"

STUB = '''#!/usr/bin/python
"""Stand-in for hvfleet.drain.hypervisor_info: the cordon from <state_dir>/maintenance.json, no domains."""
import json
import os

from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec={"name": {}, "include_domains": {"type": "bool"}, "state_dir": {},
                                      "connect_timeout": {"type": "int"}}, supports_check_mode=True)
path = os.path.join(module.params["state_dir"], "maintenance.json")
cordoned = os.path.exists(path) and json.load(open(path)).get("state") == "cordoned"
module.exit_json(changed=False, hypervisor={"name": module.params["name"], "cordoned": cordoned}, domains=[])
'''

# case: (kernels installed, cordoned, marker state, what the pending hook says (None: no hook), reboot flag,
#        what the upgrade step says about its reboot (None: nothing))
CASES = {
    "done": ([RUNNING], False, "done", False, False, False),
    "new_kernel_and_flag": ([RUNNING, NEWER], False, "done", False, True, None),
    "cordoned": ([RUNNING], True, "done", False, False, None),
    "stopped_earlier": ([RUNNING], False, "started", False, False, None),
    "no_hook": ([RUNNING], False, None, None, False, None),
}

PLAYBOOK = [{
    "name": "Run the rolling_upgrade role's checks",
    "hosts": "all",
    "gather_facts": False,
    "tasks": [
        {"name": "Is the host already done", "ansible.builtin.include_role": {
            "name": "hvfleet.drain.rolling_upgrade", "tasks_from": "status"}},
        {"name": "The upgrade step says whether it needs a reboot", "ansible.builtin.set_fact": {
            "rolling_upgrade_reboot_needed": "{{ step_says }}"}, "when": "step_says is not none"},
        {"name": "Does it need its reboot after the upgrade step", "ansible.builtin.include_role": {
            "name": "hvfleet.drain.rolling_upgrade", "tasks_from": "kernel"},
         "vars": {"rolling_upgrade_upgraded": True}},
        {"name": "Write the answers", "ansible.builtin.copy": {
            "content": "{{ {'status': rolling_upgrade_status, 'reboot': rolling_upgrade_kernel} | to_json }}",
            "dest": "{{ answers }}/{{ inventory_hostname }}.json", "mode": "0644"}},
    ],
}]


def overlay(base):
    """A collections path holding this checkout with hypervisor_info replaced by the stand-in."""
    drain = base / "ansible_collections" / "hvfleet" / "drain"
    (drain / "plugins" / "modules").mkdir(parents=True)
    for entry in ("roles", "meta", "galaxy.yml"):
        (drain / entry).symlink_to(REPO / entry)
    for entry in (REPO / "plugins").iterdir():
        if entry.name != "modules":
            (drain / "plugins" / entry.name).symlink_to(entry)
    for entry in (REPO / "plugins" / "modules").glob("*.py"):
        if entry.name != "hypervisor_info.py":
            (drain / "plugins" / "modules" / entry.name).symlink_to(entry)
    (drain / "plugins" / "modules" / "hypervisor_info.py").write_text(STUB)
    return base


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    base = tmp_path_factory.mktemp("upgrade")
    hook = base / "pending.yml"
    hook.write_text(yaml.safe_dump([{"name": "Say whether the custom step has work",
                                     "ansible.builtin.set_fact": {"rolling_upgrade_pending": "{{ hook_says }}"}}]))
    step = base / "upgrade.yml"  # only its name matters: the checks ask the hook, not the step
    step.write_text("---\n[]\n")
    hosts = {}
    for name, (kernels, cordoned, marker, pending, flag, step_says) in CASES.items():
        state, boot = base / name / "state", base / name / "boot"
        state.mkdir(parents=True)
        boot.mkdir()
        for release in kernels:
            (boot / f"vmlinuz-{release}").write_text("")
        if cordoned:
            (state / "maintenance.json").write_text(json.dumps({"state": "cordoned", "reason": "test"}))
        if marker:
            record = {"state": marker, "reason": "CHG-1", "at": "2025-06-01T22:00:00Z"}
            (state / "rolling-upgrade.json").write_text(json.dumps(record))
        hosts[name] = {
            "drain_host_state_dir": str(state),
            "rolling_upgrade_kernel_dir": str(boot),
            "rolling_upgrade_reboot_flag": str(base / name / ("flag" if flag else "no-flag")),
            "rolling_upgrade_pending_tasks": str(hook) if pending is not None else "",
            "hook_says": pending,
            "step_says": step_says,
        }
        if flag:
            (base / name / "flag").write_text("*** System restart required ***\n")
    inventory = base / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "rolling_upgrade_upgrade_tasks": str(step), "answers": str(base / "answers")}}}))
    playbook = base / "checks.yml"
    playbook.write_text(yaml.safe_dump(PLAYBOOK))
    (base / "answers").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(overlay(base / "collections")), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORKS=str(len(CASES)), ANSIBLE_HOME=str(base / "home"),
               ANSIBLE_LOCAL_TEMP=str(base / "tmp"), ANSIBLE_RETRY_FILES_ENABLED="false")
    res = subprocess.run([Path(sys.executable).parent / "ansible-playbook", "-i", inventory, playbook], cwd=base,
                         env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return {name: json.loads((base / "answers" / f"{name}.json").read_text()) for name in CASES}


def test_a_host_in_service_with_nothing_to_do_is_left_alone(answers):
    assert answers["done"]["status"] == {
        "done": True, "reason": f"in service, nothing to upgrade; it runs {RUNNING}, the newest kernel installed"}


@pytest.mark.parametrize(("name", "reason"), [
    ("new_kernel_and_flag", f"it needs a reboot: kernel {NEWER} is installed but {RUNNING} runs; "
                            "the system asks for it (/var/run/reboot-required)"),
    ("cordoned", "it is cordoned"),
    ("stopped_earlier", "an earlier run started on it (CHG-1, 2025-06-01T22:00:00Z) and did not finish"),
    ("no_hook", "the upgrade step is a custom one without rolling_upgrade_pending_tasks: it always runs"),
])
def test_a_host_with_anything_left_is_not_skipped(answers, name, reason):
    status = answers[name]["status"]
    assert not status["done"]
    assert status["reason"].startswith(reason), status


def test_after_the_upgrade_step_the_host_reboots_only_when_needed(answers):
    # the step said it needs no reboot, and the newest kernel runs
    assert answers["done"]["reboot"]["needed"] is False
    # a newer kernel was installed: reboot
    assert answers["new_kernel_and_flag"]["reboot"]["needed"] is True
    # a custom step that does not say gets its reboot (the role cannot tell what it changed)
    assert answers["no_hook"]["reboot"]["needed"] is True
    assert answers["no_hook"]["reboot"]["reason"].startswith("the upgrade step is a custom one that does not say")
