# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does the destination's libvirt and QEMU support every device model the VM uses?

A VM defined on a newer stack can use a device model, bus or backend an older QEMU or libvirt does not
have (a newer video model, a TPM backend version, a disk bus); libvirt on the older destination then
refuses the migration only once it starts. libvirt's domain capabilities of the destination (for the
VM's emulator type, arch and machine type) list, per device kind, the values it supports: each value
the VM's XML uses is looked up there before anything changes. A kind or value the capabilities do not
describe is not judged (older libvirt lists less); only a value missing from a listed enum, or a device
kind the destination marks unsupported, is.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Optional

# (device kind in <devices> of the capabilities, enum name, how to read the values from the domain's XML)
# the reader is an XPath below <devices> of the domain and the attribute holding the value
USES: tuple[tuple[str, str, str, str], ...] = (
    ("disk", "diskDevice", "disk", "device"),
    ("disk", "bus", "disk/target", "bus"),
    ("disk", "model", "disk", "model"),
    ("graphics", "type", "graphics", "type"),
    ("video", "modelType", "video/model", "type"),
    ("rng", "model", "rng", "model"),
    ("rng", "backendModel", "rng/backend", "model"),
    ("filesystem", "driverType", "filesystem/driver", "type"),
    ("tpm", "model", "tpm", "model"),
    ("tpm", "backendModel", "tpm/backend", "type"),
    ("tpm", "backendVersion", "tpm/backend", "version"),
    ("redirdev", "bus", "redirdev", "bus"),
    ("channel", "type", "channel", "type"),
    ("panic", "model", "panic", "model"),
)


def _enums(caps: ET.Element) -> dict[tuple[str, str], Optional[frozenset[str]]]:
    """{(kind, enum): supported values}; a kind marked supported='no' maps its enums to an empty set."""
    out: dict[tuple[str, str], Optional[frozenset[str]]] = {}
    devices = caps.find("devices")
    if devices is None:
        return out
    for kind in devices:
        unsupported = kind.get("supported") == "no"
        out[(kind.tag, "*")] = frozenset() if unsupported else None
        for enum in kind.findall("enum"):
            values = frozenset((v.text or "").strip() for v in enum.findall("value"))
            out[(kind.tag, enum.get("name") or "")] = frozenset() if unsupported else values
    return out


def _used(domain: ET.Element) -> Iterator[tuple[str, str, str]]:
    """(kind, enum, value) for every device attribute of the domain that USES reads."""
    devices = domain.find("devices")
    if devices is None:
        return
    for kind, enum, path, attribute in USES:
        for element in devices.findall(path):
            value = element.get(attribute)
            if value:
                yield kind, enum, value


def unsupported(domain_xml: str, capabilities_xml: str) -> list[str]:
    """What the domain uses that the destination's domain capabilities say it does not support, in words
    ("video model 'virtio-vga'", "tpm backendVersion '2.0'"); [] when everything listed is supported."""
    domain = ET.fromstring(domain_xml)
    enums = _enums(ET.fromstring(capabilities_xml))
    missing: list[str] = []
    for kind, enum, value in _used(domain):
        if enums.get((kind, "*")) == frozenset():
            text = f"{kind} devices"
        else:
            values = enums.get((kind, enum))
            if values is None or value in values:
                continue
            text = f"{kind} {enum} '{value}'"
        if text not in missing:
            missing.append(text)
    return missing
