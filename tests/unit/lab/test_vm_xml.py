"""Domain XML of lab VMs, heartbeat parsing, and the pure bits of the lab's state handling."""

import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "lab"))

from hvlab.hosts import host_uuid, libvirtd_conf, qemu_conf  # noqa: E402
from hvlab.netns import host_addr, host_mac, tbf_args  # noqa: E402
from hvlab.state import parse_stat  # noqa: E402
from hvlab.vm import (  # noqa: E402
    METADATA_NS,
    OVMF_CODE,
    OVMF_VARS,
    GuestState,
    VMSpec,
    boot_ids,
    domain_xml,
    labels_from_xml,
    local_disk_path,
    nvram_path,
    parse_heartbeats,
    parse_states,
)

NS = {"h": METADATA_NS}


def render(spec, console="/var/tmp/hvfleet-lab/console/web1.log"):
    xml = domain_xml(
        spec,
        kernel="/cache/vmlinuz",
        initrd="/cache/initrd.img",
        cmdline="console=ttyS0 hvlab.name=x",
        console_path=console,
    )
    return xml, ET.fromstring(xml)


def test_domain_is_tcg_with_direct_kernel_boot_and_safe_cpu():
    root = render(VMSpec("web1", memory=384, vcpus=2))[1]
    assert root.tag == "domain" and root.get("type") == "qemu"
    assert root.findtext("name") == "web1"
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "384"
    assert root.findtext("vcpu") == "2"
    assert root.findtext("os/kernel") == "/cache/vmlinuz"
    assert root.findtext("os/initrd") == "/cache/initrd.img"
    assert "hvlab.name=x" in root.findtext("os/cmdline")
    assert root.find("cpu").get("mode") == "custom"
    assert root.findtext("cpu/model") == "qemu64"
    assert root.find("devices/emulator").text.endswith("qemu-system-x86_64")


def test_nbd_disk_points_at_storage_export_named_after_vm():
    root = render(VMSpec("web1"))[1]
    disks = root.findall("devices/disk")
    assert len(disks) == 1
    disk = disks[0]
    assert disk.get("type") == "network" and disk.get("device") == "disk"
    assert disk.find("driver").get("type") == "raw"
    src = disk.find("source")
    assert src.get("protocol") == "nbd" and src.get("name") == "web1"
    host = src.find("host")
    assert (host.get("name"), host.get("port")) == ("10.254.0.2", "10809")
    assert disk.find("target").get("dev") == "vda" and disk.find("target").get("bus") == "virtio"


def test_local_disk_and_no_disk():
    root = render(VMSpec("db1", disk="local"))[1]
    disk = root.find("devices/disk")
    assert disk.get("type") == "file"
    assert disk.find("source").get("file") == local_disk_path("db1") == "/var/lib/libvirt/images/db1.qcow2"
    assert disk.find("driver").get("type") == "qcow2"
    root = render(VMSpec("nodisk", disk="none"))[1]
    assert root.findall("devices/disk") == []


def test_bridges_give_one_virtio_nic_each():
    root = render(VMSpec("web1", bridges=["labbr0", "storage0"]))[1]
    nics = root.findall("devices/interface")
    assert [n.get("type") for n in nics] == ["bridge", "bridge"]
    assert [n.find("source").get("bridge") for n in nics] == ["labbr0", "storage0"]
    assert all(n.find("model").get("type") == "virtio" for n in nics)
    root = render(VMSpec("web2", bridges=[]))[1]
    assert root.findall("devices/interface") == []
    assert VMSpec("web3").bridges == ["labbr0"]


def test_default_guest_has_bios_and_no_tpm():
    root = render(VMSpec("web1"))[1]
    assert root.find("os/loader") is None and root.find("os/nvram") is None
    assert root.findall("devices/tpm") == []
    assert root.find("os").get("firmware") is None


def test_uefi_guest_boots_ovmf_with_its_own_nvram_and_the_same_kernel():
    root = render(VMSpec("efi1", uefi=True))[1]
    loader, nvram = root.find("os/loader"), root.find("os/nvram")
    assert (loader.text, loader.get("type"), loader.get("readonly")) == (OVMF_CODE, "pflash", "yes")
    assert "secboot" not in OVMF_CODE and "_4M" in OVMF_CODE  # no SMM needed: the 'pc' machine type boots it
    assert nvram.get("template") == OVMF_VARS
    assert nvram.text == nvram_path("efi1") == "/var/lib/libvirt/qemu/nvram/efi1_VARS.fd"
    assert root.find("os/type").get("machine") == "pc"
    assert root.findtext("os/kernel") == "/cache/vmlinuz"  # direct kernel boot, through fw_cfg
    assert root.findall("devices/tpm") == []


@pytest.mark.parametrize("tpm, model", [("crb", "tpm-crb"), ("tis", "tpm-tis")])
def test_tpm_guest_has_an_emulated_tpm2(tpm, model):
    root = render(VMSpec("tpm1", tpm=tpm, uefi=tpm == "crb"))[1]
    (dev,) = root.findall("devices/tpm")
    assert dev.get("model") == model
    backend = dev.find("backend")
    assert (backend.get("type"), backend.get("version")) == ("emulator", "2.0")
    assert (root.find("os/loader") is not None) == (tpm == "crb")


def test_guest_state_lines_parse_only_complete_lines_of_this_guest():
    token = "5aeb0c23df5447e0852a5938643986d1"
    text = (
        f"HVLAB-HB name=e1 boot=b1 n=1 up_ms=1 dirtied_mb=0\n"
        f"HVLAB-STATE name=e1 boot=b1 n=1 efi={token} tpm={token}\n"
        f"HVLAB-STATE name=other boot=zz n=9 efi=none tpm=none\n"
        f"\x1b[01;01HHVLAB-STATE name=e1 boot=b2 n=1 efi={token} tpm=rc-18B\n"
        f"HVLAB-STATE name=e1 boot=b2 n=2 efi={token} tpm="
    )
    assert parse_states(text, "e1") == [GuestState("b1", 1, token, token), GuestState("b2", 1, token, "rc-18B")]
    assert len(parse_states(text)) == 3
    assert parse_heartbeats(text, "e1").last_n == 1  # state lines are not heartbeats


def test_console_goes_to_shared_file_in_append_mode():
    path = "/var/tmp/hvfleet-lab/console/web1.log"
    root = render(VMSpec("web1"), console=path)[1]
    for tag in ("serial", "console"):
        dev = root.find(f"devices/{tag}")
        assert dev.get("type") == "file"
        assert dev.find("source").get("path") == path
        assert dev.find("source").get("append") == "on"


def test_labels_live_in_the_collection_metadata_namespace():
    labels = {"tier": "web", "drain/priority": "high & <urgent>"}
    xml, root = render(VMSpec("web1", labels=labels))
    found = root.findall("metadata/h:drain/h:label", NS)
    assert {el.get("name"): el.text for el in found} == labels
    assert labels_from_xml(xml) == labels
    # the namespace is declared in the XML text, as libvirt needs it
    assert f'xmlns:hvfleet="{METADATA_NS}"' in xml


def test_no_labels_still_gives_an_empty_namespaced_element():
    xml, root = render(VMSpec("web1"))
    assert root.find("metadata/h:drain", NS) is not None
    assert labels_from_xml(xml) == {}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "bad name"},
        {"name": ""},
        {"name": "x", "disk": "iscsi"},
        {"name": "x", "memory": 32},
        {"name": "x", "dirty_mb": -1},
        {"name": "x", "memory": 128, "dirty_mb": 100},
        {"name": "x", "tpm": "tpm-crb"},
        {"name": "x", "tpm": "1.2"},
    ],
)
def test_bad_specs_are_refused(kwargs):
    with pytest.raises(ValueError):
        VMSpec(**kwargs)


def test_spec_round_trips_through_state_dict():
    spec = VMSpec("web1", memory=512, dirty_mb=64, dirty_rate=16, labels={"a": "b"})
    assert VMSpec.from_dict({**spec.to_dict(), "created_on": "hv1"}) == spec
    spec = VMSpec("efi1", uefi=True, tpm="tis")
    assert VMSpec.from_dict(spec.to_dict()) == spec
    old_record = {k: v for k, v in spec.to_dict().items() if k not in ("uefi", "tpm")}  # a state file from before
    assert VMSpec.from_dict(old_record) == VMSpec("efi1")


HB = "HVLAB-HB name={name} boot={boot} n={n} up_ms={ms} dirtied_mb=0"


def test_heartbeat_parse_takes_last_complete_line_of_this_guest():
    text = (
        "\n".join(
            [
                "HVLAB-INIT host=web1",
                HB.format(name="web1", boot="b1", n=1, ms=500),
                "kernel noise",
                HB.format(name="other", boot="zz", n=99, ms=1),
                HB.format(name="web1", boot="b1", n=2, ms=1000),
                "\r" + HB.format(name="web1", boot="b1", n=3, ms=1500),
            ]
        )
        + "\n"
        + "HVLAB-HB name=web1 boot=b1 n=4 up_ms=20"
    )  # half-written last line
    hb = parse_heartbeats(text, "web1")
    assert hb.boot_id == "b1" and hb.last_n == 3
    assert len(hb.lines) == 3
    assert boot_ids(hb) == ["b1"]


def test_heartbeat_detects_a_reboot_and_empty_console():
    text = "\n".join(HB.format(name="v", boot=b, n=n, ms=0) for b, n in (("b1", 7), ("b1", 8), ("b2", 0))) + "\n"
    hb = parse_heartbeats(text, "v")
    assert (hb.boot_id, hb.last_n) == ("b2", 0)
    assert boot_ids(hb) == ["b1", "b2"]
    assert parse_heartbeats("", "v") == (None, -1, [])


def test_proc_stat_parsing_survives_odd_command_names():
    # field 22 (start time) counted after the last ')' even if the name contains ') ('
    stat = "4242 (we ird) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10"
    assert parse_stat(stat) == ("S", 987654)


def test_host_addresses_macs_and_uuids_are_distinct_and_stable():
    assert host_addr("hv1") == "10.254.0.11" and host_addr("hv3") == "10.254.0.13"
    assert host_addr("storage") == "10.254.0.2"
    with pytest.raises(ValueError):
        host_addr("db1")
    assert host_mac("hv1") == "02:fe:0a:fe:00:0b"
    assert len({host_uuid(f"hv{i}") for i in range(1, 10)}) == 9
    assert host_uuid("hv1") == host_uuid("hv1")


def test_daemon_configs_carry_host_identity_and_lab_settings():
    conf = libvirtd_conf("hv2", "10.254.0.12")
    assert f'host_uuid = "{host_uuid("hv2")}"' in conf
    assert 'listen_addr = "10.254.0.12"' in conf
    assert 'auth_tcp = "none"' in conf and "LAB ONLY" in conf
    q = qemu_conf()
    for line in (
        'security_driver = "none"',
        'stdio_handler = "file"',
        "cgroup_controllers = [ ]",
        'migrate_tls_x509_cert_dir = "/etc/pki/qemu"',
    ):
        assert line in q
    assert "swtpm_user" not in q  # swtpm runs as the packages' tss user (the default), see qemu_conf()


def test_tbf_burst_scales_with_rate():
    args = tbf_args(1000)
    assert args[:3] == ["tbf", "rate", "1000mbit"]
    assert int(args[args.index("burst") + 1]) == 1_250_000
    assert int(tbf_args(1)[tbf_args(1).index("burst") + 1]) == 32 * 1024
    with pytest.raises(ValueError):
        tbf_args(0)


def test_the_guest_prints_the_state_lines_the_lab_parses():
    source = Path(__file__).parents[2].joinpath("lab", "guest", "hvguest.c").read_text()
    fmt = re.search(r'"(HVLAB-STATE [^"]+)\\n"', source).group(1)
    line = fmt.replace("%lu", "%s") % ("e1", "b1", "7", "a" * 32, "rc-18B") + "\n"
    assert parse_states(line) == [GuestState("b1", 7, "a" * 32, "rc-18B")]
