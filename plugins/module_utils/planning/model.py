# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What planning reasons about: hypervisors (`Host`), their domains (`VmInfo`) and check results.

Plain frozen data, read from libvirt by a backend and handed to the pure planning functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Kind
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import migrate_uri_for

DEFAULT_LINK_MBIT = 1000.0
CORDON_STATES = ("active", "cordoned")


class HostError(HvfleetError):
    """A host description that cannot work."""


@dataclasses.dataclass(frozen=True)
class Host:  # pylint: disable=too-many-instance-attributes
    """A hypervisor: how this process reaches it (`uri`), how other libvirt daemons reach it
    (`peer_uri`, the peer-to-peer migration target), its migration network address and link speed."""

    name: str
    uri: str
    peer_uri: Optional[str] = None
    migration_address: Optional[str] = None
    link_mbit: Optional[float] = None
    cordoned: bool = False
    facts: Optional[dict] = dataclasses.field(default=None, compare=False, hash=False)  # read on the host itself

    @property
    def target_uri(self) -> str:
        return self.peer_uri or self.uri

    @property
    def migrate_uri(self) -> Optional[str]:
        return migrate_uri_for(self.migration_address, f"migration_address of {self.name}")

    def link_bps(self, default_mbit: float = DEFAULT_LINK_MBIT) -> float:
        return float(self.link_mbit or default_mbit) * 1e6 / 8

    def validate(self) -> None:
        """Refuse a host description that cannot work before anything is touched."""
        if not isinstance(self.name, str) or not self.name.strip():
            raise HostError(f"A host has no usable name ({self.name!r}).", "give every host its inventory name.")
        for field in ("uri", "peer_uri"):
            value = getattr(self, field)
            if (value is not None or field == "uri") and (not isinstance(value, str) or not value.strip()):
                raise HostError(f"{self.name}: {field} {value!r} is not a libvirt URI.",
                                "give a URI such as qemu+tls://HOST/system.")
        mbit = self.link_mbit
        if mbit is not None and (isinstance(mbit, bool) or not isinstance(mbit, (int, float))
                                 or not math.isfinite(mbit) or mbit <= 0 or mbit > 1e7):
            raise HostError(f"{self.name}: link_mbit {mbit!r} is not a link speed.",
                            "give the link speed in Mbit/s (e.g. 10000, at most 10000000), or leave it unset.")
        if self.migration_address is not None and not isinstance(self.migration_address, str):
            raise HostError(f"{self.name}: migration_address {self.migration_address!r} is not an address.",
                            "give the host's address on the migration network.")
        migrate_uri_for(self.migration_address, f"migration_address of {self.name}")  # InvalidSpec for a URI
        cordon_of(self.name, self.facts)

    @property
    def cordoned_now(self) -> bool:
        """Cordoned as given, or as its facts (read on the host) say."""
        return self.cordoned or cordon_of(self.name, self.facts) == "cordoned"


def cordon_of(name: str, facts: Any) -> Optional[str]:
    """The cordon state in a host's facts (hypervisor_info), None when the facts do not say; a malformed
    value is an error that names the host and the fix, not a traceback."""
    if facts is None:
        return None
    hint = ("pass the facts hypervisor_info returned for that host unchanged (cordon: {state: active|cordoned}), "
            "or leave facts out.")
    if not isinstance(facts, dict):
        raise HostError(f"{name}: facts {facts!r} is not a mapping.", hint)
    cordon = facts.get("cordon")
    if cordon is None:
        return None
    if not isinstance(cordon, dict):
        raise HostError(f"{name}: facts.cordon {cordon!r} is not a mapping.", hint)
    state = cordon.get("state")
    if state is None:
        return None
    if state not in CORDON_STATES:
        raise HostError(f"{name}: facts.cordon.state {state!r} is not one of {', '.join(CORDON_STATES)}.", hint)
    return str(state)


@dataclasses.dataclass(frozen=True)
class VmInfo:  # pylint: disable=too-many-instance-attributes
    """One domain of a host as planning sees it."""

    name: str
    memory_mib: int
    vcpus: int
    active: bool  # running or paused: migrates live
    persistent: bool
    state: str = "running"
    labels: dict = dataclasses.field(default_factory=dict)
    dirty_rate_bps: Optional[float] = None
    dirty_rate_sampled_s: Optional[float] = None  # the seconds of page sampling the rate rests on (its precision)
    postcopy: bool = False  # a leftover of an interrupted post-copy (paused "post-copy failed")
    facts: Any = None  # the facts module's DomainFacts, for the prerequisite checks
    resident_mib: Optional[int] = None  # the QEMU process's resident size: how much guest memory was touched
    local_disk_bytes: int = 0  # data on its host-local disks (file/block, not shareable): what a copying policy moves

    @property
    def kind(self) -> Kind:
        return Kind.LIVE if self.active else Kind.DEFINITION

    @property
    def domain_type(self) -> str:
        return getattr(self.facts, "domain_type", None) or "kvm"


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One prerequisite check of one VM towards one destination."""

    id: str
    status: str  # pass, warn, fail, skip
    vm: str
    destination: str
    message: str
    fix: Optional[str] = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"
