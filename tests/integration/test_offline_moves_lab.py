"""Shut-off VMs drained and restored on the lab, one of each shape a definition move carries.

On an empty lab host: a VM with a snapshot, one with a managed-save image under `managed_save: discard`,
one with a managed-save image under the default (refuse), one with autostart, and a UEFI guest with a
vTPM (OVMF + swtpm) whose NVRAM holds marker bytes. The drain moves every definition but the refused
one, which stays with its saved state and is named with the reason; the restore brings them home.
After each step every VM is defined on exactly one host, and what it carries is where the VM is:
snapshot metadata, autostart, the NVRAM bytes, the TPM state; the UEFI guest then starts at home.
"""

import hashlib
import json
import os
import re
import time

import pytest
from lab_helpers import clear_ledgers, printed_report, run_playbook, text_of, wait_for

pytestmark = pytest.mark.lab

STATE = "/var/lib/hvfleet"
NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"
MARKER = b"HVFLEET-OFFLINE-MOVE-MARKER-7f3a"
MARKER_AT = 0x70000  # inside the 540672-byte OVMF_VARS_4M store
SNAPSHOT_REDEFINE, SNAPSHOT_CURRENT = 1, 2
UNDEFINE_EVERYTHING = 1 | 2 | 4 | 32  # managed save, snapshot metadata, NVRAM, TPM state


def domain_xml(name, efi=False):
    firmware = ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
                "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/>") if efi else ""
    tpm = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>" if efi else ""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='{'q35' if efi else 'pc'}'>hvm</type>{firmware}</os>"
            f"<features><acpi/></features><devices>{tpm}</devices></domain>")


def host_file(lab, host, path):
    """The bytes of `path` on a lab host (its private /var/lib/libvirt), or None."""
    res = lab.exec(host, ["sh", "-c", f"test -f {path} && base64 -w0 {path}"], check=False)
    if res.returncode != 0:
        return None
    import base64

    return base64.b64decode(res.stdout.strip())


def defined_on(lab, name):
    """Every host with a definition of `name` (running or not)."""
    return sorted(host for host in lab.hosts() if name in lab.domains().get(host, {}))


def one_host(lab, name):
    where = defined_on(lab, name)
    assert len(where) == 1, f"{name} must be defined on exactly one host: {where}"
    return where[0]


def empty_host(lab):
    """A lab host with no domain at all: draining it moves only this test's VMs."""
    doms = lab.domains()
    for host in lab.hosts():
        if not doms.get(host):
            return host
    pytest.fail(f"no lab host is empty, so a drain would move other tests' VMs: {doms}")


def reset(lab, host):
    lab.exec(host, ["sh", "-c", f"rm -f {STATE}/drain-journal*.json {STATE}/drain-progress.jsonl "
                                f"{STATE}/maintenance.json"], check=False)
    clear_ledgers(lab, [host])


@pytest.fixture
def offline_vms(lab):
    made = []
    yield made
    for host in lab.hosts():
        conn = lab.connect(host)
        try:
            for name in made:
                try:
                    dom = conn.lookupByName(name)
                except Exception:  # pylint: disable=broad-except
                    continue
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(UNDEFINE_EVERYTHING)
        finally:
            conn.close()
        lab.exec(host, ["sh", "-c", " ".join(f"rm -f {NVRAM_DIR}/{n}_VARS.fd;" for n in made)], check=False)


def test_shut_off_shapes_drain_and_restore(lab, offline_vms, tmp_path):
    # pylint: disable=too-many-locals,too-many-statements
    home = empty_host(lab)
    reset(lab, home)
    tag = f"offl{os.getpid() % 1000}"
    snap, discard, refuse, auto, efi = (f"{tag}-{kind}" for kind in ("snap", "msdiscard", "msrefuse", "auto", "efi"))
    offline_vms.extend([snap, discard, refuse, auto, efi])
    conn = lab.connect(home)
    try:
        for name in (snap, discard, refuse, auto):
            conn.defineXML(domain_xml(name))
        dom = conn.lookupByName(snap)
        snapshot = (f"<domainsnapshot><name>before-upgrade</name><state>shutoff</state><creationTime>"
                    f"{int(time.time())}</creationTime><memory snapshot='no'/>{dom.XMLDesc(2)}</domainsnapshot>")
        dom.snapshotCreateXML(snapshot, SNAPSHOT_REDEFINE | SNAPSHOT_CURRENT)
        for name in (discard, refuse):  # a saved memory state: started, then managed-saved
            saved = conn.lookupByName(name)
            saved.create()
            saved.managedSave(0)
            assert saved.hasManagedSaveImage(0) and not saved.isActive()
        conn.lookupByName(auto).setAutostart(1)
        uefi = conn.defineXML(domain_xml(efi, efi=True))
        uefi.create()  # OVMF makes its NVRAM from the template, swtpm its TPM state
        uefi.destroy()
        uuid = uefi.UUIDString()
    finally:
        conn.close()
    nvram = f"{NVRAM_DIR}/{efi}_VARS.fd"
    tpm_state = f"/var/lib/libvirt/swtpm/{uuid}/tpm2/tpm2-00.permall"
    lab.exec(home, ["sh", "-c", f"printf '{MARKER.decode()}' | dd of={nvram} bs=1 seek={MARKER_AT} conv=notrunc"])
    nvram_bytes, tpm_bytes = host_file(lab, home, nvram), host_file(lab, home, tpm_state)
    assert nvram_bytes[MARKER_AT:MARKER_AT + len(MARKER)] == MARKER and tpm_bytes, "the lab guest's state exists"

    policies = {"hvfleet_migration_policies": [
        {"name": "discard-saved-state", "selector": {"domains": [discard]}, "settings": {"managed_save": "discard"}},
        {"name": "everything-else", "default": True, "settings": {"mode": "auto"}}]}
    common = ["-e", f"target={home}", "-e", json.dumps(policies), "-e", f"drain_host_report_dir={tmp_path}"]
    moved = [snap, discard, auto, efi]
    try:
        # the drain: four definitions move; the managed-save image under `refuse` blocks its VM, named with why
        rc, lines = run_playbook("drain-host.yml", *common)
        result = printed_report(lines)["result"]
        assert rc != 0 and re.search(rf"did not complete.*{refuse}", text_of(lines)), "the blocked VM fails the task"
        rows = {r["vm"]: r for r in result["vms"]}
        for name in moved:
            assert rows[name]["outcome"] == "moved" and rows[name]["mode_used"] == "definition", rows[name]
        [blocker] = [b for b in result["blockers"] if b["vm"] == refuse]
        assert "managed-save image" in json.dumps(blocker), blocker
        assert refuse not in rows, "refused at plan time: never attempted"
        where = {name: one_host(lab, name) for name in moved}
        assert all(host != home for host in where.values()), where
        assert defined_on(lab, refuse) == [home]
        check_shapes(lab, where, snap, discard, refuse, auto, efi, nvram, tpm_state, nvram_bytes, tpm_bytes, home)
        assert host_file(lab, home, nvram) is None, "the source's stale NVRAM copy is removed"
        assert host_file(lab, home, tpm_state) is None, "the source's stale TPM state is removed"

        # the restore: every definition comes home, the same things with it
        rc, lines = run_playbook("undrain-host.yml", "-e", f"target={home}", "-e", json.dumps(policies),
                                 "-e", f"restore_host_report_dir={tmp_path}")
        result = printed_report(lines)["result"]
        assert rc == 0, text_of(lines)[-3000:]
        rows = {r["vm"]: r for r in result["vms"]}
        for name in moved:
            assert rows[name]["outcome"] == "moved" and rows[name]["ok"], rows[name]
            assert one_host(lab, name) == home
        check_shapes(lab, {n: home for n in moved}, snap, discard, refuse, auto, efi, nvram, tpm_state,
                     nvram_bytes, tpm_bytes, home)
        for host in set(where.values()):
            assert host_file(lab, host, nvram) is None and host_file(lab, host, tpm_state) is None
            gone = lab.exec(host, ["test", "-e", f"/var/lib/libvirt/swtpm/{uuid}"], check=False)
            assert gone.returncode != 0, f"no empty TPM state directory is left on {host}"

        # the UEFI guest starts at home with the state that went round
        conn = lab.connect(home)
        try:
            dom = conn.lookupByName(efi)
            dom.create()
            wait_for(lambda: dom.state()[0] == 1, 30, f"{efi} running on {home}")
            dom.destroy()
        finally:
            conn.close()
    finally:
        reset(lab, home)


def check_shapes(lab, where, snap, discard, refuse, auto, efi, nvram, tpm_state, nvram_bytes, tpm_bytes, home):
    # pylint: disable=too-many-arguments
    """What each VM carries is on the host that holds it, and nowhere else."""
    conns = {host: lab.connect(host) for host in set(where.values()) | {home}}
    try:
        snap_dom = conns[where[snap]].lookupByName(snap)
        assert [s.getName() for s in snap_dom.listAllSnapshots(0)] == ["before-upgrade"]
        assert snap_dom.snapshotCurrent(0).getName() == "before-upgrade"
        assert not conns[where[discard]].lookupByName(discard).hasManagedSaveImage(0), "discarded by policy"
        assert conns[home].lookupByName(refuse).hasManagedSaveImage(0), "the refused VM keeps its saved state"
        assert conns[where[auto]].lookupByName(auto).autostart() == 1, "autostart follows the VM"
        assert conns[where[efi]].lookupByName(efi).autostart() == 0
    finally:
        for conn in conns.values():
            conn.close()
    got = host_file(lab, where[efi], nvram)
    assert got is not None and got[MARKER_AT:MARKER_AT + len(MARKER)] == MARKER, "the NVRAM's marker bytes"
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(nvram_bytes).hexdigest()
    assert host_file(lab, where[efi], tpm_state) == tpm_bytes, "the vTPM state, byte for byte"


class _SourceRefusingUndefine:
    """A real lab connection whose domains refuse the undefine: the last step of a definition move fails
    after the destination holds the NVRAM, TPM state, definition, snapshot and autostart."""

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, attr):
        return getattr(self._conn, attr)

    def lookupByName(self, name):  # noqa: N802 - libvirt's name
        import libvirt

        dom = self._conn.lookupByName(name)

        class Dom:
            def __getattr__(self, attr):
                return getattr(dom, attr)

            def undefineFlags(self, flags=0):  # noqa: N802
                raise libvirt.libvirtError("injected: the source refuses its undefine")

        return Dom()


def test_a_move_failing_at_its_last_step_takes_everything_back_on_real_libvirt(lab, offline_vms):
    from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
    from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend

    src_host = empty_host(lab)
    dst_host = next(h for h in lab.hosts() if h != src_host)
    name = f"offl{os.getpid() % 1000}-rollback"
    offline_vms.append(name)
    src, dst = lab.connect(src_host), lab.connect(dst_host)
    try:
        dom = src.defineXML(domain_xml(name, efi=True))
        dom.create()
        dom.destroy()
        dom.snapshotCreateXML(f"<domainsnapshot><name>s1</name><state>shutoff</state><creationTime>"
                              f"{int(time.time())}</creationTime><memory snapshot='no'/>{dom.XMLDesc(2)}"
                              "</domainsnapshot>", SNAPSHOT_REDEFINE | SNAPSHOT_CURRENT)
        dom.setAutostart(1)
        nvram, state_dir = f"{NVRAM_DIR}/{name}_VARS.fd", f"/var/lib/libvirt/swtpm/{dom.UUIDString()}"
        lab.exec(src_host, ["sh", "-c", f"printf '{MARKER.decode()}' | dd of={nvram} bs=1 seek={MARKER_AT} "
                                        "conv=notrunc"])
        before = host_file(lab, src_host, nvram), host_file(lab, src_host, f"{state_dir}/tpm2/tpm2-00.permall")
        with pytest.raises(HvfleetError) as failed:
            LibvirtBackend().move_definition(_SourceRefusingUndefine(src), dst, name, {})
        assert "injected" in failed.value.message and "only, as before" in failed.value.message
        assert defined_on(lab, name) == [src_host], "defined on exactly one host"
        assert host_file(lab, dst_host, nvram) is None, "the copied NVRAM is removed again"
        assert lab.exec(dst_host, ["test", "-e", state_dir], check=False).returncode != 0, "and the TPM state dir"
        after = host_file(lab, src_host, nvram), host_file(lab, src_host, f"{state_dir}/tpm2/tpm2-00.permall")
        assert after == before and after[0][MARKER_AT:MARKER_AT + len(MARKER)] == MARKER, "the source keeps both"
        kept = src.lookupByName(name)
        assert [s.getName() for s in kept.listAllSnapshots(0)] == ["s1"] and kept.autostart() == 1
        assert "hvfleet-state" not in " ".join(p.name() for c in (src, dst) for p in c.listAllStoragePools(0))

        moved = LibvirtBackend().move_definition(src, dst, name, {})  # the cause gone: it moves whole
        assert defined_on(lab, name) == [dst_host] and moved.snapshots == 1 and moved.autostart
        assert host_file(lab, dst_host, nvram) == before[0]
        assert host_file(lab, dst_host, f"{state_dir}/tpm2/tpm2-00.permall") == before[1]
        assert host_file(lab, src_host, nvram) is None
        assert lab.exec(src_host, ["test", "-e", state_dir], check=False).returncode != 0
    finally:
        src.close()
        dst.close()
