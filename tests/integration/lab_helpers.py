"""Helpers the lab tests share: run Ansible from the project venv, follow guests' heartbeats, poll.

Not a test module; the lab tests import it (their folder is on sys.path under pytest's prepend mode).
"""

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BINDIR = Path(sys.executable).parent


def ansible(*args, check=True, env=None, timeout=900):
    """Run an ansible command (`ansible`, `ansible-playbook`, ...) from the project venv against the lab
    inventory; prints its output, asserts success unless check=False, returns the CompletedProcess."""
    full_env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), **(env or {}))
    res = subprocess.run([str(BINDIR / args[0]), *args[1:]], cwd=REPO, env=full_env,
                         capture_output=True, text=True, timeout=timeout, check=False)
    print(res.stdout, res.stderr, sep="", end="")
    if check:
        assert res.returncode == 0, f"{' '.join(args)} failed ({res.returncode})"
    return res


@contextlib.contextmanager
def timed(label):
    """Print how long the block took as a LAB-TIMING line (figures are printed, never asserted)."""
    t0 = time.monotonic()
    yield
    print(f"\nLAB-TIMING {label}: {time.monotonic() - t0:.1f}s")


def ansible_env(**extra):
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", PYTHONUNBUFFERED="1",
                **extra)


def playbook_argv(playbook, *args):
    path = Path(playbook) if Path(playbook).is_absolute() else REPO / "playbooks" / playbook
    return [str(BINDIR / "ansible-playbook"), str(path), *args]


def run_playbook(playbook, *args, timeout=900):
    """Run a playbook, timing every output line as it arrives; returns (rc, [(seconds, line)])."""
    t0 = time.monotonic()
    lines = []
    with subprocess.Popen(playbook_argv(playbook, *args), cwd=REPO, env=ansible_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
        rc = proc.wait(timeout=timeout)
    print("\n".join(f"{t:7.2f} {text}" for t, text in lines))
    return rc, lines


def text_of(lines):
    return "\n".join(text for _t, text in lines)


def first_line_at(lines, pattern):
    """When the first output line matching `pattern` arrived (seconds since the start)."""
    for t, text in lines:
        if re.search(pattern, text):
            return t
    raise AssertionError(f"no output line matches {pattern!r}")


def printed_report(lines):
    """The JSON report whose path the drain_host role printed, loaded."""
    found = re.search(r"JSON: (\S+\.json)", text_of(lines))
    assert found, "the run printed no report path"
    return json.loads(Path(found.group(1)).read_text())


def wait_for(predicate, timeout, what, interval=0.5):
    """Poll `predicate` until it returns something true, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def heartbeats(lab, names):
    """Each guest's heartbeat once it has booted: the baseline to compare with."""
    return {n: lab.wait_heartbeat_advances(n, timeout=120) for n in names}


def assert_unbroken(lab, before):
    """Every guest is still in the boot it was in (no reboot, no second copy) and its heartbeat goes on."""
    for name, hb in before.items():
        after = lab.wait_heartbeat_advances(name, beyond=hb.last_n, timeout=60)
        if after.boot_id != hb.boot_id:
            text = lab.console_path(name).read_text(errors="replace").splitlines()
            first_new = next(i for i, line in enumerate(text) if after.boot_id in line)
            print(f"console of {name} around the restart:\n" + "\n".join(text[max(0, first_new - 60):first_new + 2]))
        assert after.boot_id == hb.boot_id, f"{name} rebooted"


def booted(lab, vm):
    """Wait until the guest prints heartbeats; returns the heartbeat seen."""
    return lab.wait_heartbeat_advances(vm, beyond=1, timeout=60)


def assert_only_on(lab, vm, host, before):
    """`vm` is defined and running on `host` alone, with the boot id of `before`, and still beating."""
    from hvlab.vm import boot_ids

    assert lab.locate(vm) == {host: "running"}, f"{vm} should run on {host} alone: {lab.locate(vm)}"
    hb = lab.wait_heartbeat_advances(vm, beyond=lab.heartbeat(vm).last_n + 2, timeout=30)
    assert boot_ids(hb) == [before.boot_id], f"{vm} rebooted: boot ids {boot_ids(hb)}"
    assert hb.last_n > before.last_n


HOST_STATE_DIR = "/var/lib/hvfleet"  # the collection's state directory on the lab hosts


LEDGER_SECRETS = ("/var/lib/hvfleet/ledger", "/var/lib/hvfleet/ledger.lock")  # drain/ledger_store.py's usage ids


def ledger_of(lab, host):
    """The capacity ledger kept in `host`'s libvirtd (drain/ledger_store.py), as JSON; None when there is none."""
    found = lab.exec(host, ["virsh", "secret-list"], check=False).stdout
    for line in found.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "volume" and parts[2] == LEDGER_SECRETS[0]:
            value = lab.exec(host, ["virsh", "secret-get-value", parts[0]], check=False).stdout.strip()
            return json.loads(base64.b64decode(value)) if value else None
    return None


def clear_ledgers(lab, hosts=None):
    """Remove the capacity ledger and its lock from the hosts' libvirtd (a cordon a test left would refuse VMs)."""
    for host in hosts or lab.hosts():
        found = lab.exec(host, ["virsh", "secret-list"], check=False).stdout
        for line in found.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] == "volume" and parts[2] in LEDGER_SECRETS:
                lab.exec(host, ["virsh", "secret-undefine", parts[0]], check=False)


def reset_hosts(lab):
    """Remove what drains, maintenance and the lab's fake upgrade left in every host's state directory, and the
    capacity ledgers in their libvirtd."""
    d = HOST_STATE_DIR
    clear_ledgers(lab)
    for host in lab.hosts():
        lab.exec(host, ["sh", "-c", f"rm -f {d}/drain-journal*.json {d}/drain-progress.jsonl {d}/maintenance.json "
                                    f"{d}/lab-upgrade.json"], check=False)
