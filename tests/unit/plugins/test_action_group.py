"""The action group hvfleet.drain.libvirt: one module_defaults entry sets the libvirt connection options of every
module that opens libvirt connections.

The group is checked against the code (its members are exactly the modules that reach common/connection.py, and
each takes the shared connection options), and resolved by a real ansible-playbook run on localhost: with
`module_defaults: {group/hvfleet.drain.libvirt: ...}` each member, given no connection option of its own, fails
naming the URI and rejecting the connect_timeout that came from the group's defaults. No hypervisor is needed:
the URI points at a closed port.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible_collections.hvfleet.drain.plugins.module_utils.common.connection_spec import CONNECTION_OPTIONS
from module_sources import MODULES, REPO, opens_libvirt_connections

GROUP = "libvirt"
GROUP_URI = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1: refused at once
TASK_URI = "qemu+tcp://127.0.0.1:3/system"
SECRET = "sasl-pw-7c1e"  # noqa: S105  (a made-up password: it must not show in any result)


def members():
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text(encoding="utf-8"))
    return runtime.get("action_groups", {}).get(GROUP) or []


MEMBERS = members()


def test_the_group_is_the_modules_that_open_libvirt_connections():
    assert sorted(MEMBERS) == sorted(m for m in MODULES if opens_libvirt_connections(m))
    assert {"domain_migration", "migration_preflight", "hypervisor_info", "host_drain"} <= set(MEMBERS)


@pytest.mark.parametrize("module", MEMBERS)
def test_every_member_takes_the_shared_connection_options(module):
    spec = importlib.import_module(f"ansible_collections.hvfleet.drain.plugins.modules.{module}").ARGUMENT_SPEC
    different = {name: spec.get(name) for name, wanted in CONNECTION_OPTIONS.items() if spec.get(name) != wanted}
    assert not different, f"{module} should take {CONNECTION_OPTIONS} as they are; it has {different}"


# minimal arguments of each member, without any connection option
ARGS = {
    "domain_migration": {"name": "vm1", "dest_uri": "qemu+tcp://127.0.0.1:2/system"},
    "migration_preflight": {"destinations": []},
    "hypervisor_info": {},
    "host_drain": {"destinations": [], "state_dir": "{{ out }}/state"},
    "host_maintenance": {"state": "cordoned", "state_dir": "{{ out }}/state"},
}
OUTSIDE = "drain_progress"  # opens no libvirt connection: not in the group


def playbook(out):
    """Play 1: the group's uri and connect_timeout. Play 2: a connect_timeout every member must refuse, and SASL
    credentials, which every member must accept (the password as an extra variable, as from a vault: Ansible shows
    the playbook's text around a failed task). A module outside the group runs under both."""
    plays = []
    for play, defaults in (("uri", {"uri": GROUP_URI, "connect_timeout": 5}),
                           ("timeout", {"connect_timeout": 0, "auth_username": "drainer",
                                        "auth_password": "{{ sasl_password }}"})):
        tasks = [{"name": f"{module} with the group's defaults", f"hvfleet.drain.{module}": ARGS.get(module, {}),
                  "register": f"r_{module}", "ignore_errors": True, "check_mode": module == "host_drain"}
                 for module in MEMBERS]
        if play == "uri":
            tasks.append({"name": "task arguments win over the group's", "register": "r_task_uri",
                          "hvfleet.drain.hypervisor_info": {"uri": TASK_URI}, "ignore_errors": True})
        tasks.append({"name": "a module outside the group", "register": f"r_{OUTSIDE}", "ignore_errors": True,
                      f"hvfleet.drain.{OUTSIDE}": {"mark": True, "state_dir": "{{ out }}/state"}})
        names = [f"r_{m}" for m in MEMBERS] + [f"r_{OUTSIDE}"] + (["r_task_uri"] if play == "uri" else [])
        content = "{{ {" + ", ".join(f"'{n[2:]}': {n}" for n in names) + "} | to_json }}"
        keep = {"content": content, "dest": f"{{{{ out }}}}/{play}.json"}
        tasks.append({"name": "keep the results", "ansible.builtin.copy": keep})
        plays.append({"name": play, "hosts": "localhost", "gather_facts": False, "connection": "local",
                      "vars": {"out": str(out)}, "module_defaults": {f"group/hvfleet.drain.{GROUP}": defaults},
                      "tasks": tasks})
    return plays


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("group")
    (out / "state").mkdir()
    book = out / "playbook.yml"
    book.write_text(yaml.safe_dump(playbook(out), sort_keys=False), encoding="utf-8")
    # run outside the checkout: Ansible's defaults, not the repository's ansible.cfg (its inventory and callbacks)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_LOCALHOST_WARNING="0")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", str(book),
               "-e", f"ansible_python_interpreter={sys.executable}", "-e", f"sasl_password={SECRET}"]
    run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = {play: json.loads((out / f"{play}.json").read_text(encoding="utf-8")) for play in ("uri", "timeout")}
    found["output"] = run.stdout + run.stderr
    return found


@pytest.mark.parametrize("module", MEMBERS)
def test_the_group_defaults_reach_every_member(results, module):
    by_uri, by_timeout = results["uri"][module], results["timeout"][module]
    assert by_uri.get("failed") and GROUP_URI in by_uri["msg"], by_uri.get("msg")
    # refusing connect_timeout=0 comes after Ansible accepted every argument, the group's auth_username and
    # auth_password too (an option a member does not take fails the task with "Unsupported parameters" instead)
    assert by_timeout.get("failed") and "connect_timeout=0" in by_timeout["msg"], by_timeout.get("msg")


def test_task_arguments_win_over_the_group_defaults(results):
    res = results["uri"]["task_uri"]
    assert res.get("failed") and TASK_URI in res["msg"] and GROUP_URI not in res["msg"], res.get("msg")


def test_a_module_outside_the_group_is_not_given_its_options(results):
    assert OUTSIDE not in MEMBERS
    for play in ("uri", "timeout"):
        res = results[play][OUTSIDE]
        assert not res.get("failed"), res.get("msg")
        assert res["events"] == [] and res["now"]


def test_the_sasl_password_from_the_group_is_never_shown(results):
    assert SECRET not in json.dumps(results["timeout"]) and SECRET not in results["output"]
