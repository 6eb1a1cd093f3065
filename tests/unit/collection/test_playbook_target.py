"""drain-host.yml and undrain-host.yml take their one host from -e target or --limit, and never exit 0 having
done nothing.

The playbooks run for real against an inventory whose hypervisors have a connection plugin that does not
exist: a task that reaches a hypervisor fails with "connection plugin ... was not found" naming it, and
nothing goes on the network. So a refused request shows that message for no host, and an accepted one shows
it for exactly the selected host, in the play that does the work.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
CONTACT = "the connection plugin 'hvfleet_no_such_connection' was not found"
INVENTORY = {"all": {"children": {"hypervisors": {
    "vars": {"ansible_connection": "hvfleet_no_such_connection"},
    "hosts": {name: {"hvfleet_libvirt_uri": "test:///default"} for name in ("hv1", "hv2", "hv3")},
}}}}
CHECK_TASK = "Require exactly one inventory host, from -e target or --limit"
WORK_PLAY = {"drain-host.yml": "Drain the hypervisor", "undrain-host.yml": "Bring the VMs home"}
REFUSED = {
    # name: (playbook, arguments, what the message says)
    "nothing given": ("drain-host.yml", [], "No hypervisor given. Give the one hypervisor to drain: "
                      "-e target=HOST or --limit HOST (hosts in this inventory: hv1, hv2, hv3)."),
    "limit of two": ("drain-host.yml", ["--limit", "hv1,hv2"], "--limit hv1,hv2 selects 2 hosts (hv1, hv2)."),
    "limit of a group": ("drain-host.yml", ["--limit", "hypervisors"],
                         "--limit hypervisors selects 3 hosts (hv1, hv2, hv3)."),
    "unknown target": ("drain-host.yml", ["-e", "target=hv9"], "-e target=hv9 is not a host of this inventory."),
    "target outside the limit": ("drain-host.yml", ["-e", "target=hv1", "--limit", "hv2"],
                                 "-e target=hv1 is outside --limit hv2."),
    "tags do not skip the check": ("drain-host.yml", ["--limit", "hv1,hv2", "--tags", "report"],
                                   "--limit hv1,hv2 selects 2 hosts"),
    "undrain, nothing given": ("undrain-host.yml", [], "No hypervisor given. Give the one hypervisor to bring "
                               "the VMs back to: -e target=HOST or --limit HOST"),
    "undrain, limit of a group": ("undrain-host.yml", ["--limit", "hypervisors"],
                                  "--limit hypervisors selects 3 hosts (hv1, hv2, hv3)."),
}
ACCEPTED = {
    # name: (playbook, arguments, the host the work play runs on)
    "drain by limit": ("drain-host.yml", ["--limit", "hv2"], "hv2"),
    "drain by target": ("drain-host.yml", ["-e", "target=hv3"], "hv3"),
    "drain by target inside the limit": ("drain-host.yml", ["-e", "target=hv1", "--limit", "hv1"], "hv1"),
    "undrain by limit": ("undrain-host.yml", ["--limit", "hv1"], "hv1"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case at once (one ansible-playbook each): name -> (exit code, output)."""
    base = tmp_path_factory.mktemp("target")
    inventory = base / "hosts.yml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_LOCAL_TEMP=str(base / "tmp"),
               ANSIBLE_HOME=str(base / "home"))
    procs = {}
    for name, (playbook, args, _expected) in {**REFUSED, **ACCEPTED}.items():
        argv = [BIN / "ansible-playbook", "-i", inventory, REPO / "playbooks" / playbook, *args]
        procs[name] = subprocess.Popen(argv, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
    return {name: (proc.wait(timeout=120), proc.communicate()[0]) for name, proc in procs.items()}


@pytest.mark.parametrize("name", REFUSED)
def test_a_request_without_exactly_one_host_fails_before_any_host_is_contacted(runs, name):
    _playbook, _args, message = REFUSED[name]
    rc, out = runs[name]
    assert rc != 0, out
    assert message in " ".join(out.split()), out
    assert CONTACT not in out, out  # no host was reached
    assert re.findall(r"^TASK \[(.*?)\]", out, re.M) == [CHECK_TASK], out  # nothing ran after the check


@pytest.mark.parametrize("name", ACCEPTED)
def test_the_work_play_runs_on_the_one_selected_host(runs, name):
    playbook, _args, host = ACCEPTED[name]
    rc, out = runs[name]
    assert rc != 0, out  # the test inventory's hypervisors cannot be reached
    work = out[out.index(f"PLAY [{WORK_PLAY[playbook]}]"):]
    contacted = re.findall(rf"fatal: \[(\S+)\]: FAILED! => .*{re.escape(CONTACT)}", work)
    assert contacted == [host], out
    assert CONTACT not in out[: out.index(f"PLAY [{WORK_PLAY[playbook]}]")], out  # the check reached no host
