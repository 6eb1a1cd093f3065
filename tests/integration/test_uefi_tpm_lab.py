"""UEFI and vTPM guests on the lab: a drain keeps their firmware NVRAM and their TPM state.

The guest boots the lab kernel through OVMF with an NVRAM file of its own and has an emulated TPM 2.0
(swtpm). On its first boot it writes a token (its boot id) into an EFI variable and a TPM NV index; a
later boot keeps what it finds, and after each heartbeat the guest prints what the firmware and the TPM
of the host it runs on hold now (hvlab.vm.parse_states). Lost state shows as another token.

Live: the drain moves the running guest; it is defined on exactly one host, in the same boot, and reads
its token from the destination's firmware and TPM; the destination's NVRAM file holds the variable, and
after a power cycle there the guest still finds both. Offline: the guest is shut off, the drain moves its
definition, and started on the destination it finds both tokens its first boot wrote on the source. Both
for UEFI with a CRB TPM and for a TPM (TIS) behind SeaBIOS. Last, a UEFI VM that comes home with the
undrain, running or shut off, boots with its own NVRAM, not the older file its live move away left at home.
"""

import itertools
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hvlab import VMSpec
from hvlab.hosts import PRIVATE_DIRS
from hvlab.vm import OVMF_VARS, parse_states
from lab_helpers import assert_only_on, printed_report, run_playbook, text_of, timed, wait_for

pytestmark = pytest.mark.lab

_serial = itertools.count(1)
EFI_VAR_NAME = "HvlabState".encode("utf-16-le")  # the variable's name as the firmware stores it
MACHINE_SWTPM_LOGS = Path("/var/log/swtpm/libvirt/qemu")


def token_of(boot_id):
    """What a first boot writes into the EFI variable and the TPM (guest/hvguest.c)."""
    return boot_id.replace("-", "")


def states(lab, vm):
    return parse_states(lab.console_path(vm).read_text(errors="replace"), vm)


def state_after(lab, vm, boot, beyond=0, timeout=60):
    """The first state line of boot `boot` printed after heartbeat `beyond`."""
    def found():
        return next((s for s in states(lab, vm) if s.boot_id == boot and s.n > beyond), None)

    return wait_for(found, timeout, f"{vm} to report its state (boot {boot}, after heartbeat {beyond})")


def state_of_new_boot(lab, vm, old_boots, timeout=120):
    """The first state line of a boot not in `old_boots` (the guest was started again)."""
    def found():
        return next((s for s in states(lab, vm) if s.boot_id not in old_boots), None)

    return wait_for(found, timeout, f"{vm} to boot again and report its state")


def host_file(lab, host, path):
    """The bytes of `path` as `host` sees it (one of its private directories), or None when it is absent."""
    for sub, target in PRIVATE_DIRS.items():
        if path.startswith(target + "/"):
            local = lab.root / "hosts" / host / sub / path.removeprefix(target + "/")
            return local.read_bytes() if local.is_file() else None
    raise AssertionError(f"{path} is not in a lab host's private directories")


def nvram_path_on(lab, host, vm):
    conn = lab.connect(host)
    try:
        return ET.fromstring(conn.lookupByName(vm).XMLDesc(0)).findtext("os/nvram")
    finally:
        conn.close()


def uuid_of(lab, host, vm):
    conn = lab.connect(host)
    try:
        return conn.lookupByName(vm).UUIDString()
    finally:
        conn.close()


def variable_in(nvram, token):
    """True when the NVRAM image holds the guest's variable with `token` as its data."""
    return nvram is not None and EFI_VAR_NAME + b"\0\0" + token.encode() in nvram


def quietest_host(lab):
    """The lab host running the fewest VMs (a drain moves them all; the fewer, the quicker)."""
    counts = {host: len(vms) for host, vms in lab.domains().items()}
    return min(sorted(counts), key=lambda host: counts[host])


def drain(host, tmp_path):
    """The operator's drain of `host` (playbooks/drain-host.yml); returns (rc, output, the report's result)."""
    rc, lines = run_playbook("drain-host.yml", "-e", f"target={host}", "-e", f"drain_host_report_dir={tmp_path}",
                             "-e", "drain_host_poll_wait=2", "-e", "drain_host_progress_interval=2")
    return rc, text_of(lines), printed_report(lines)["result"]


def row_of(rc, result, vm):
    """`vm`'s row of the drain's result; with no other VM on the host the whole drain succeeded too."""
    rows = [r for r in result["vms"] if r["vm"] == vm]
    assert len(rows) == 1, f"the report has {len(rows)} rows for {vm}: {result['vms']}"
    if len(result["vms"]) == 1:
        assert rc == 0 and result["state"] == "drained", result.get("message")
    return rows[0]


def on_host(lab, host, vm, action):
    conn = lab.connect(host)
    try:
        getattr(conn.lookupByName(vm), action)()
    finally:
        conn.close()


# the shapes: UEFI with a CRB TPM (the usual pairing), and a TPM behind SeaBIOS (TIS) with no NVRAM at all
SHAPES = [pytest.param(True, "crb", id="uefi-tpm_crb"), pytest.param(False, "tis", id="bios-tpm_tis")]


@pytest.fixture
def state_vm(clean_lab):
    """Start guests that keep state; removed afterwards wherever they are, with what a move leaves on its source
    (the NVRAM file after a live migration, an emptied TPM state directory) and the swtpm logs."""
    lab, made = clean_lab, []

    def make(host, uefi, tpm):
        name = f"efi{os.getpid() % 1000}-{next(_serial)}"
        made.append((name, None))
        lab.vm_start(VMSpec(name=name, uefi=uefi, tpm=tpm, memory=256, disk="none"), host=host)
        made[-1] = (name, uuid_of(lab, host, name))
        return name

    yield make
    for name, uuid in made:
        lab.vm_rm(name)
        for host in lab.hosts():
            private = lab.root / "hosts" / host
            (private / "lib-libvirt" / "qemu" / "nvram" / f"{name}_VARS.fd").unlink(missing_ok=True)
            (private / "log-swtpm" / "libvirt" / "qemu" / f"{name}-swtpm.log").unlink(missing_ok=True)
            if uuid:
                shutil.rmtree(private / "lib-libvirt" / "swtpm" / uuid, ignore_errors=True)
        # lab hosts built before swtpm had a private log directory log to the machine's
        (MACHINE_SWTPM_LOGS / f"{name}-swtpm.log").unlink(missing_ok=True)


def booted_with_state(lab, vm, uefi):
    """Wait for the guest's first state line: it wrote its token into the NVRAM (UEFI only) and the TPM.
    Returns that line and what the guest must report from now on, (efi, tpm)."""
    with timed(f"{vm}: {'OVMF' if uefi else 'SeaBIOS'} + TPM boot under TCG, defined to first state line"):
        boot = wait_for(lambda: lab.heartbeat(vm).boot_id, 120, f"{vm} to boot")
        first = state_after(lab, vm, boot)
    token = token_of(first.boot_id)
    kept = (token if uefi else "none", token)
    assert (first.efi, first.tpm) == kept, f"{vm} could not keep its state: {first}"
    return first, kept


@pytest.mark.parametrize("uefi, tpm", SHAPES)
def test_live_drain_keeps_nvram_and_tpm_state(clean_lab, state_vm, tmp_path, uefi, tpm):
    lab = clean_lab
    source = quietest_host(lab)
    vm = state_vm(source, uefi, tpm)
    first, kept = booted_with_state(lab, vm, uefi)
    before = lab.wait_heartbeat_advances(vm, beyond=first.n + 1)
    if uefi:
        assert variable_in(host_file(lab, source, nvram_path_on(lab, source, vm)), kept[0])

    rc, out, result = drain(source, tmp_path)
    row = row_of(rc, result, vm)
    print(f"LAB-FIGURES live move of {vm} (uefi={uefi}, tpm={tpm}): {row['duration_s']} s, downtime "
          f"{row['downtime_ms']} ms, {row['bytes_sent']} bytes sent, {row['mode_used']}")
    assert row["ok"] and row["kind"] == "live" and row["state"] == "moved", row
    destination = row["destination"]
    assert destination != source and f"{vm} -> {destination}: moved in" in out

    # one host, the same boot, and the guest reads its token from the destination's firmware and TPM
    assert_only_on(lab, vm, destination, before)
    after = state_after(lab, vm, first.boot_id, beyond=lab.heartbeat(vm).last_n)
    assert (after.efi, after.tpm) == kept, after
    if uefi:  # the destination's NVRAM file holds the variable (QEMU wrote the migrated flash back) ...
        assert variable_in(host_file(lab, destination, nvram_path_on(lab, destination, vm)), kept[0])
    # ... so a power cycle there finds it, and the NV index is in the destination's TPM state
    on_host(lab, destination, vm, "destroy")
    on_host(lab, destination, vm, "create")
    again = state_of_new_boot(lab, vm, {first.boot_id})
    assert (again.efi, again.tpm) == kept, f"after a power cycle on {destination}: {again}"
    assert lab.locate(vm) == {destination: "running"}
    if uefi:
        path = nvram_path_on(lab, destination, vm)
        left = [h for h in lab.hosts() if h != destination and host_file(lab, h, path) is not None]
        print(f"NVRAM files of {vm} left on other hosts after the live move: {left or 'none'}")


@pytest.mark.parametrize("uefi, tpm", SHAPES)
def test_offline_move_keeps_nvram_and_tpm_state(clean_lab, state_vm, tmp_path, uefi, tpm):
    lab = clean_lab
    source = quietest_host(lab)
    vm = state_vm(source, uefi, tpm)
    first, kept = booted_with_state(lab, vm, uefi)
    on_host(lab, source, vm, "destroy")  # shut off: the persistent definition stays
    assert lab.locate(vm) == {source: "shutoff"}

    rc, _out, result = drain(source, tmp_path)
    row = row_of(rc, result, vm)
    assert row["ok"] and row["kind"] == "definition" and row["state"] == "moved", row
    destination = row["destination"]
    assert destination != source and lab.locate(vm) == {destination: "shutoff"}
    if uefi:
        nvram = nvram_path_on(lab, destination, vm)
        assert variable_in(host_file(lab, destination, nvram), kept[0]), \
            f"{destination} has no NVRAM file {nvram} holding the variable {vm} wrote on {source}"
    uuid = uuid_of(lab, destination, vm)
    left = [str(p.relative_to(lab.root)) for p in (lab.root / "hosts" / source / "lib-libvirt").rglob("*")
            if vm in p.name or uuid in str(p)]
    print(f"left on {source} after the definition moved: {left or 'nothing'}")

    on_host(lab, destination, vm, "create")
    again = state_of_new_boot(lab, vm, {first.boot_id})
    assert (again.efi, again.tpm) == kept, \
        f"started on {destination}, {vm} found efi={again.efi} tpm={again.tpm}; its first boot wrote {kept}"
    assert lab.locate(vm) == {destination: "running"}


@pytest.mark.parametrize("running", [pytest.param(False, id="shut-off"), pytest.param(True, id="running")])
def test_a_vm_coming_home_gets_its_own_nvram_not_the_copy_left_there(clean_lab, state_vm, tmp_path, running):
    """A live move leaves the source's NVRAM file behind (libvirt deletes the definition, not the file). The VM
    comes home with the undrain, running (a live move) or shut off while away (its definition moves): it must
    boot at home with the NVRAM it has now, not with the older file still there (made older here: OVMF's blank
    template)."""
    lab = clean_lab
    home = quietest_host(lab)
    vm = state_vm(home, True, "crb")
    first, kept = booted_with_state(lab, vm, True)
    rc, _out, result = drain(home, tmp_path)
    away = row_of(rc, result, vm)["destination"]
    assert lab.locate(vm) == {away: "running"}
    stale = lab.root / "hosts" / home / "lib-libvirt" / nvram_path_on(lab, away, vm).removeprefix("/var/lib/libvirt/")
    stale.write_bytes(Path(OVMF_VARS).read_bytes())
    if not running:
        on_host(lab, away, vm, "destroy")

    rc, lines = run_playbook("undrain-host.yml", "-e", f"target={home}", "-e", f"restore_host_report_dir={tmp_path}")
    assert rc == 0, text_of(lines)[-2000:]
    assert lab.locate(vm) == {home: "running" if running else "shutoff"}
    if running:  # the same boot came home; its NVRAM file there is the one QEMU wrote from the migrated flash
        assert state_after(lab, vm, first.boot_id, beyond=lab.heartbeat(vm).last_n)[2:] == kept
        on_host(lab, home, vm, "destroy")
    on_host(lab, home, vm, "create")
    again = state_of_new_boot(lab, vm, {first.boot_id})
    assert (again.efi, again.tpm) == kept, \
        f"back on {home}, {vm} found efi={again.efi} tpm={again.tpm}; its first boot wrote {kept}"
