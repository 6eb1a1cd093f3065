"""Lab VMs: a small spec, the pure function that turns it into libvirt domain XML, and the parser
for the heartbeat the guest prints on its serial console.

Guests run under TCG (`<domain type='qemu'>`; KVM here is nested and hangs Linux guests), boot the
cached lab kernel + initramfs directly, and write their serial console to LAB_ROOT/console/NAME.log
with append='on': the path is the same on every host, so a migrated guest keeps appending to the
same file and a test can see that its heartbeat counter kept going with the same boot id.

Two optional shapes: `uefi` boots the same kernel through OVMF (QEMU hands it over by fw_cfg) with a
per-VM NVRAM file made from OVMF's template, `tpm` adds an emulated TPM 2.0 (swtpm, started by libvirt).
Such a guest keeps a token in an EFI variable and a TPM NV index and prints them after each heartbeat
(HVLAB-STATE lines, see guest/hvguest.c), so a test can check that the firmware and TPM state moved.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

METADATA_NS = "https://hvfleet.github.io/drain/xmlns/1"
METADATA_PREFIX = "hvfleet"
DISK_KINDS = ("nbd", "local", "none")
TPM_MODELS = {"none": "", "crb": "tpm-crb", "tis": "tpm-tis"}  # spec value -> libvirt <tpm model>
# OVMF without Secure Boot or SMM (so the 'pc' machine type boots it); the same paths on Debian 12 and 13.
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
CPU_MODEL = "qemu64"  # TCG-safe and identical on every lab host, so migration checks pass
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass
class VMSpec:
    """What a lab VM looks like. `dirty_mb`/`dirty_rate` drive the guest's memory dirtier
    (MiB touched, MiB/s); `bridges` are bridges inside the host (one virtio NIC each)."""

    name: str
    memory: int = 256
    vcpus: int = 1
    dirty_mb: int = 0
    dirty_rate: int = 0
    disk: str = "nbd"
    disk_mb: int = 64
    bridges: list[str] = field(default_factory=lambda: ["labbr0"])
    labels: dict[str, str] = field(default_factory=dict)
    hb_ms: int = 500
    pti: bool = True  # the guests' TCG workaround (image.kernel_cmdline); off only to test whether it is needed
    uefi: bool = False  # boot through OVMF with an NVRAM file of its own
    tpm: str = "none"  # an emulated TPM 2.0: "crb" or "tis" (the guest-visible interface)

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name or ""):
            raise ValueError(f"VM name must match [A-Za-z0-9_.-]{{1,64}}, got {self.name!r}")
        if self.disk not in DISK_KINDS:
            raise ValueError(f"disk must be one of {', '.join(DISK_KINDS)}, got {self.disk!r}")
        if self.memory < 64 or self.vcpus < 1:
            raise ValueError("memory must be >= 64 MiB and vcpus >= 1")
        if self.dirty_mb < 0 or self.dirty_rate < 0:
            raise ValueError("dirty_mb and dirty_rate must be >= 0")
        if self.tpm not in TPM_MODELS:
            raise ValueError(f"tpm must be one of {', '.join(TPM_MODELS)}, got {self.tpm!r}")
        if self.dirty_mb > self.memory - 48:
            raise ValueError(f"dirty_mb {self.dirty_mb} leaves the guest too little of its {self.memory} MiB")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VMSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def local_disk_path(name: str) -> str:
    """Path of a local (non-shared) disk as seen inside a host."""
    return f"/var/lib/libvirt/images/{name}.qcow2"


def nvram_path(name: str) -> str:
    """Path of a UEFI VM's NVRAM file as seen inside a host (libvirt's own default name)."""
    return f"/var/lib/libvirt/qemu/nvram/{name}_VARS.fd"


def domain_xml(
    spec: VMSpec,
    *,
    kernel: str,
    initrd: str,
    cmdline: str,
    console_path: str,
    nbd_host: str = "10.254.0.2",
    nbd_port: int = 10809,
) -> str:
    """libvirt domain XML for `spec` (pure: no I/O)."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    dom = ET.Element("domain", type="qemu")
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "memory", unit="MiB").text = str(spec.memory)
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(spec.memory)
    ET.SubElement(dom, "vcpu").text = str(spec.vcpus)

    meta = ET.SubElement(dom, "metadata")
    drain = ET.SubElement(meta, f"{{{METADATA_NS}}}drain")
    for key, value in sorted(spec.labels.items()):
        ET.SubElement(drain, f"{{{METADATA_NS}}}label", name=str(key)).text = str(value)

    os_ = ET.SubElement(dom, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="pc").text = "hvm"
    if spec.uefi:
        ET.SubElement(os_, "loader", readonly="yes", type="pflash").text = OVMF_CODE
        ET.SubElement(os_, "nvram", template=OVMF_VARS).text = nvram_path(spec.name)
    ET.SubElement(os_, "kernel").text = kernel
    ET.SubElement(os_, "initrd").text = initrd
    ET.SubElement(os_, "cmdline").text = cmdline
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    cpu = ET.SubElement(dom, "cpu", mode="custom", match="exact", check="none")
    ET.SubElement(cpu, "model", fallback="forbid").text = CPU_MODEL
    ET.SubElement(dom, "clock", offset="utc")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"

    dev = ET.SubElement(dom, "devices")
    ET.SubElement(dev, "emulator").text = "/usr/bin/qemu-system-x86_64"
    if spec.disk == "nbd":
        disk = ET.SubElement(dev, "disk", type="network", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        src = ET.SubElement(disk, "source", protocol="nbd", name=spec.name)
        ET.SubElement(src, "host", name=nbd_host, port=str(nbd_port))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    elif spec.disk == "local":
        disk = ET.SubElement(dev, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        ET.SubElement(disk, "source", file=local_disk_path(spec.name))
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    ET.SubElement(dev, "controller", type="usb", model="none")
    for bridge in spec.bridges:
        nic = ET.SubElement(dev, "interface", type="bridge")
        ET.SubElement(nic, "source", bridge=bridge)
        ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(dev, "serial", type="file")
    ET.SubElement(serial, "source", path=console_path, append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(dev, "console", type="file")
    ET.SubElement(console, "source", path=console_path, append="on")
    ET.SubElement(console, "target", type="serial", port="0")
    if spec.tpm != "none":
        tpm = ET.SubElement(dev, "tpm", model=TPM_MODELS[spec.tpm])
        ET.SubElement(tpm, "backend", type="emulator", version="2.0")
    ET.SubElement(dev, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def labels_from_xml(xml: str) -> dict[str, str]:
    """The hvfleet labels of a domain XML (what the collection will read)."""
    root = ET.fromstring(xml)
    return {
        el.get("name"): el.text or "" for el in root.iterfind(f"metadata/{{{METADATA_NS}}}drain/{{{METADATA_NS}}}label")
    }


# ---------------------------------------------------------------------------------------------
# Heartbeat

HB_RE = re.compile(
    r"HVLAB-HB name=(?P<name>\S+) boot=(?P<boot>\S+) n=(?P<n>\d+) up_ms=(?P<up_ms>\d+) dirtied_mb=(?P<dirtied_mb>\d+)"
)


class Heartbeat(NamedTuple):
    boot_id: str | None  # boot id of the last heartbeat line
    last_n: int  # its counter (-1 if none yet)
    lines: list[str]  # every complete heartbeat line of this guest, oldest first


def parse_heartbeats(text: str, name: str | None = None) -> Heartbeat:
    """Heartbeat from console text; only complete lines count (the last one may be half-written)."""
    complete = text[: text.rfind("\n") + 1] if "\n" in text else ""
    lines, boot, last = [], None, -1
    for raw in complete.splitlines():
        m = HB_RE.search(raw)
        if not m or (name and m.group("name") != name):
            continue
        lines.append(m.group(0))
        boot, last = m.group("boot"), int(m.group("n"))
    return Heartbeat(boot, last, lines)


def boot_ids(hb: Heartbeat) -> list[str]:
    """Distinct boot ids in order of appearance (more than one = the guest restarted)."""
    seen: list[str] = []
    for line in hb.lines:
        b = HB_RE.search(line).group("boot")
        if b not in seen:
            seen.append(b)
    return seen


# ---------------------------------------------------------------------------------------------
# State a UEFI / TPM guest keeps (guest/hvguest.c)

STATE_RE = re.compile(
    r"HVLAB-STATE name=(?P<name>\S+) boot=(?P<boot>\S+) n=(?P<n>\d+) efi=(?P<efi>\S+) tpm=(?P<tpm>\S+)\n"
)


class GuestState(NamedTuple):
    boot_id: str
    n: int  # the heartbeat it followed
    efi: str  # the token in the EFI variable, or none/missing/rc-...
    tpm: str  # the token in the TPM NV index, or none/rc-...


def parse_states(text: str, name: str | None = None) -> list[GuestState]:
    """Every complete HVLAB-STATE line of this guest in console text, oldest first."""
    return [
        GuestState(m.group("boot"), int(m.group("n")), m.group("efi"), m.group("tpm"))
        for m in STATE_RE.finditer(text)
        if not name or m.group("name") == name
    ]
