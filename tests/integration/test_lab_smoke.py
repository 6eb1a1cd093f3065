"""Lab smoke test: the lab comes up from nothing, Ansible reaches every host over SSH, a guest on
shared NBD storage live-migrates between hosts (over TCP and over TLS) without restarting, and
`down` leaves nothing behind.

The tests run in file order and share one lab (module fixture); each asserts something that
could fail. Timings are printed, not asserted.
"""

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lab"))

pytestmark = pytest.mark.lab

if os.geteuid() != 0:
    pytest.skip("the lab needs root (namespaces, libvirtd)", allow_module_level=True)

libvirt = pytest.importorskip("libvirt")

from hvlab import Lab, VMSpec  # noqa: E402
from hvlab.faults import qemu_pid  # noqa: E402
from hvlab.hosts import host_uuid  # noqa: E402
from hvlab.vm import boot_ids  # noqa: E402

LAB_PY = REPO / "tests" / "lab" / "lab.py"
HOSTS = ["hv1", "hv2", "hv3"]
GUESTS = 4
VM = "smoke1"
MIGRATE = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


def lab_cli(*args, timeout=300):
    res = subprocess.run(
        [sys.executable, str(LAB_PY), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    print(res.stdout, res.stderr, sep="", end="")
    assert res.returncode == 0, f"lab.py {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_links():
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "hvlab" in line]


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    lab_cli("down")
    assert not [n for n in netns_names() if n.startswith("hvlab-")], "a lab still exists after down"
    t0 = time.monotonic()
    lab_cli("up", "--hosts", str(len(HOSTS)), "--guests", str(GUESTS))
    print(f"\nLAB-TIMING up from nothing, {len(HOSTS)} hosts + {GUESTS} guests: {time.monotonic() - t0:.1f}s")
    yield lab
    lab_cli("down")  # no-op when test_down_leaves_nothing already ran


def test_up_builds_distinct_hosts(lab):
    status = lab.status()
    assert sorted(status["hosts"]) == HOSTS
    for host, h in status["hosts"].items():
        assert h["holder"]["alive"] and h["libvirtd"]["alive"] and h["sshd"]["alive"], (host, h)
    assert status["storage"]["qsd"]["alive"]
    uuids, names = set(), set()
    for host in HOSTS:
        conn = lab.connect(host)
        try:
            names.add(conn.getHostname())
            caps = conn.getCapabilities()
            uuids.add(caps.split("<uuid>")[1].split("</uuid>")[0])
        finally:
            conn.close()
        assert lab.exec(host, ["hostname"]).stdout.strip() == host
        assert lab.exec(host, ["ip", "-4", "-o", "addr", "show", "eth0"]).stdout.count(lab.addr(host)) == 1
    assert names == set(HOSTS)
    assert len(uuids) == len(HOSTS)
    demos = {f"demo{i}" for i in range(1, GUESTS + 1)}
    assert demos <= set(status["vms"])
    assert all(status["vms"][d] == {"hv1": "running"} for d in demos)


def test_up_again_reuses_the_healthy_lab(lab):
    before = json.loads((lab.root / "state.json").read_text())
    t0 = time.monotonic()
    lab_cli("up", "--hosts", str(len(HOSTS)), "--guests", str(GUESTS))
    print(f"\nLAB-TIMING up again (warm, reused): {time.monotonic() - t0:.1f}s")
    after = json.loads((lab.root / "state.json").read_text())
    for host in HOSTS:
        for key in ("holder", "libvirtd", "sshd"):
            assert after["hosts"][host][key] == before["hosts"][host][key], (host, key)
    assert after["storage"]["qsd"] == before["storage"]["qsd"]


def test_a_second_checkout_reusing_the_lab_gets_its_own_inventory(lab, tmp_path):
    """A fresh clone running the tests on a lab started from another checkout found no inventory
    of its own (every Ansible-driven lab test failed); `up` now writes one for each checkout."""
    first = Path(json.loads((lab.root / "state.json").read_text())["inventory"])
    other = tmp_path / "clone" / "inventories" / "lab" / "hosts.yml"
    lab.up(hosts_count=len(HOSTS), guests=GUESTS, inventory_path=other)
    assert other.read_text() == first.read_text()
    assert {str(first), str(other)} <= set(json.loads((lab.root / "state.json").read_text())["inventories"])


HOST_RESULT = re.compile(r"^(\S+) \| ([A-Z!]+) => ", re.M)


def _ansible(*args):
    """Run ad-hoc ansible (from this Python's venv) on the lab inventory: {host: (status, result)}."""
    ansible = Path(sys.executable).with_name("ansible")
    assert ansible.exists(), f"ansible is not installed next to {sys.executable}"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_CALLBACK_RESULT_FORMAT": "json"}
    inv = str(REPO / "inventories" / "lab" / "hosts.yml")
    res = subprocess.run(
        [str(ansible), "-i", inv, "hypervisors", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=180,
        check=False,
    )
    print(res.stdout, res.stderr)
    assert res.returncode == 0, res.stdout + res.stderr
    decoder = json.JSONDecoder()
    out = res.stdout
    return {m.group(1): (m.group(2), decoder.raw_decode(out, m.end())[0]) for m in HOST_RESULT.finditer(out)}


def test_ansible_reaches_every_host_over_ssh(lab):
    results = _ansible("-m", "ping")
    assert sorted(results) == HOSTS
    for host, (status, r) in results.items():
        assert status == "SUCCESS" and r.get("ping") == "pong", (host, status, r)
    # each SSH session lands in its own host: its UTS namespace and its private /etc/libvirt
    for path, expect in (
        ("/proc/sys/kernel/hostname", lambda h: h),
        ("/etc/libvirt/libvirtd.conf", lambda h: f'host_uuid = "{host_uuid(h)}"'),
    ):
        results = _ansible("-m", "ansible.builtin.slurp", "-a", f"src={path}")
        for host in HOSTS:
            status, r = results[host]
            assert status == "SUCCESS", (host, r)
            assert expect(host) in base64.b64decode(r["content"]).decode(), (host, path)


def _migrate(lab, src_conn, name, dst, tls=False):
    params = {libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{lab.addr(dst)}"}
    flags = MIGRATE | (libvirt.VIR_MIGRATE_TLS if tls else 0)
    dest_uri = f"qemu+tls://{lab.addr(dst)}/system" if tls else lab.uri(dst)
    dom = src_conn.lookupByName(name)
    t0 = time.monotonic()
    dom.migrateToURI3(dest_uri, params, flags)
    return time.monotonic() - t0


def test_live_migration_on_shared_nbd_storage_keeps_the_guest_alive(lab):
    lab.vm_start(VMSpec(VM, disk="nbd"), host="hv1")
    assert lab.running_on(VM) == ["hv1"]
    first = lab.wait_heartbeat_advances(VM, beyond=1, timeout=120)
    src = lab.connect("hv1")
    try:
        xml = src.lookupByName(VM).XMLDesc()
        assert "protocol='nbd'" in xml and "type='qemu'" in xml
        seconds = _migrate(lab, src, VM, "hv2")
    finally:
        src.close()
    print(f"\nLAB-TIMING live migration hv1 -> hv2 (TCP, NBD disk): {seconds:.2f}s")
    assert lab.locate(VM) == {"hv2": "running"}  # running on hv2, gone from hv1 (undefined)
    before = lab.heartbeat(VM)
    after = lab.wait_heartbeat_advances(VM, beyond=before.last_n + 2, timeout=60)
    assert after.boot_id == first.boot_id
    assert boot_ids(after) == [first.boot_id]  # never restarted
    counters = [int(line.split(" n=")[1].split()[0]) for line in after.lines]
    assert counters == sorted(counters), "heartbeat counter went backwards"


def test_tls_connection_and_encrypted_migration(lab):
    assert lab.running_on(VM) == ["hv2"]
    conn = lab.connect("hv2", via="tls")
    try:
        assert conn.getURI().startswith("qemu+tls://10.254.0.12/")
        assert conn.getHostname() == "hv2"
        before = lab.heartbeat(VM)
        seconds = _migrate(lab, conn, VM, "hv3", tls=True)
    finally:
        conn.close()
    print(f"\nLAB-TIMING live migration hv2 -> hv3 (TLS stream): {seconds:.2f}s")
    assert lab.locate(VM) == {"hv3": "running"}
    after = lab.wait_heartbeat_advances(VM, beyond=before.last_n + 2, timeout=60)
    assert boot_ids(after) == [before.boot_id]


def test_down_leaves_nothing(lab):
    state = json.loads((lab.root / "state.json").read_text())
    procs = [state["storage"]["holder"], state["storage"]["qsd"]]
    for host in HOSTS:
        procs += [state["hosts"][host][k] for k in ("holder", "libvirtd", "sshd")]
    qemus = [
        pid
        for host in HOSTS
        for vm in [VM] + [f"demo{i}" for i in range(1, GUESTS + 1)]
        if (pid := qemu_pid(lab, host, vm))
    ]
    assert len(qemus) == GUESTS + 1
    created_dirs = state["created_dirs"]
    inventory = Path(state["inventory"])
    assert inventory.exists()
    inventories = [Path(p) for p in state["inventories"]]
    assert len(inventories) >= 2  # this checkout's and the one the test above added

    lab_cli("down")

    assert not [n for n in netns_names() if n.startswith("hvlab-")]
    assert lab_links() == []
    alive = [p for p in procs if Path(f"/proc/{p['pid']}").exists() and _start(p["pid"]) == p["start"]]
    assert alive == []
    assert [pid for pid in qemus if _start(pid) is not None] == []
    with open("/proc/self/mountinfo") as f:
        assert [line for line in f if str(lab.root) in line or "hvlab" in line] == []
    assert not (lab.root / "state.json").exists()
    assert not (lab.root / "hosts").exists()
    assert not inventory.exists()
    assert [p for p in inventories if p.exists()] == []
    assert [d for d in created_dirs if os.path.exists(d)] == []
    lab_cli("down")  # idempotent


def _start(pid):
    """Start time of a live (non-zombie) process, None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in "ZX" else int(fields[19])
