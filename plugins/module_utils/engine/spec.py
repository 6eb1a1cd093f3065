# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What one live migration should do, checked before anything is touched.

`MigrationSpec` is the single description of a migration: it maps to libvirt's
VIR_MIGRATE_* flags and VIR_MIGRATE_PARAM_* typed parameters, and it carries the
escalation policy (downtime cap, mode, deadline, final action) the ladder follows.

The flag values are libvirt's stable ABI numbers, spelled out here so that the spec
(and its unit tests) work without the libvirt binding installed.

Auto-converge and the ladder: libvirt can only enable migration capabilities before
a migration starts, so auto-converge cannot be "switched on" as a later rung. When
`auto_converge` is true it is armed at the start; QEMU starts throttling the guest
by itself once the dirty rate outpaces the link. The ladder records the moment the
throttle engages and, while the throttle is still rising, gives it time before the
next rung (post-copy or the final action). Restarting the migration with
auto-converge was rejected: it throws away everything already copied.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeGuard
from urllib.parse import SplitResult, urlsplit

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Compression, Mode, OnTimeout

# virDomainMigrateFlags (libvirt-domain.h)
VIR_MIGRATE_LIVE = 1 << 0
VIR_MIGRATE_PEER2PEER = 1 << 1
VIR_MIGRATE_PERSIST_DEST = 1 << 3
VIR_MIGRATE_UNDEFINE_SOURCE = 1 << 4
VIR_MIGRATE_NON_SHARED_DISK = 1 << 6
VIR_MIGRATE_NON_SHARED_INC = 1 << 7
VIR_MIGRATE_COMPRESSED = 1 << 11
VIR_MIGRATE_AUTO_CONVERGE = 1 << 13
VIR_MIGRATE_POSTCOPY = 1 << 15
VIR_MIGRATE_TLS = 1 << 16
VIR_MIGRATE_PARALLEL = 1 << 17
VIR_MIGRATE_POSTCOPY_RESUME = 1 << 19

# VIR_MIGRATE_PARAM_* names (strings are the ABI)
PARAM_URI = "migrate_uri"
PARAM_BANDWIDTH = "bandwidth"
PARAM_BANDWIDTH_POSTCOPY = "bandwidth.postcopy"
PARAM_AUTO_CONVERGE_INITIAL = "auto_converge.initial"
PARAM_AUTO_CONVERGE_INCREMENT = "auto_converge.increment"
PARAM_COMPRESSION = "compression"
PARAM_PARALLEL_CONNECTIONS = "parallel.connections"
PARAM_TLS_DESTINATION = "tls.destination"
PARAM_MIGRATE_DISKS = "migrate_disks"
PARAM_DEST_XML = "destination_xml"  # VIR_MIGRATE_PARAM_DEST_XML: the domain as it is to run on the destination
PARAM_PERSIST_XML = "persistent_xml"  # VIR_MIGRATE_PARAM_PERSIST_XML: the definition kept there (PERSIST_DEST)

# The engine's choices, in the collection's vocabulary (plain strings, in its order): a policy's `auto` is
# resolved to one of the modes before a spec is made, and its compression `none` is no compression (None).
MODES: tuple[str, ...] = tuple(m for m in Mode.values() if m != Mode.AUTO)
ON_TIMEOUT: tuple[str, ...] = tuple(OnTimeout.values())
COMPRESSIONS: tuple[str, ...] = tuple(c for c in Compression.values() if c != Compression.NONE)
COPY_STORAGE = ("all", "incremental")
MIGRATE_URI_SCHEMES = ("tcp", "rdma", "unix")

LIBVIRT_ZSTD_MIN = 9004000  # zlib/zstd compression of parallel migration: libvirt 9.4
LIBVIRT_POSTCOPY_RESUME_MIN = 8005000  # VIR_MIGRATE_POSTCOPY_RESUME: libvirt 8.5
QEMU_MAX_DOWNTIME_MS = 2000 * 1000  # QEMU refuses larger downtime limits
MAX_BANDWIDTH_MIB = (2 ** 63 - 1) // (1024 * 1024)  # libvirt's limit for bandwidth in MiB/s (bytes fit int64)
GIB = 1024 ** 3


def _finite_number(value: object) -> TypeGuard[float]:
    """An int or a finite float (not a bool, not text, not NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def migrate_uri_for(address: str | None, owner: str = "migrate_address") -> str | None:
    """tcp://ADDRESS on the dedicated migration network; a bare IPv6 address gets brackets."""
    if not address:
        return None
    if "://" in address:
        raise InvalidSpec(f"{owner} '{address}' is a URI, not an address.",
                          "give only the host or IP (optionally :PORT); the migration goes to tcp://ADDRESS.")
    if address.count(":") > 1 and not address.startswith("["):
        address = f"[{address}]"
    return f"tcp://{address}"


def version_text(number: int) -> str:
    """libvirt encodes versions as major*1e6 + minor*1e3 + micro."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


@dataclasses.dataclass(frozen=True)
class MigrationSpec:  # pylint: disable=too-many-instance-attributes
    """One live migration's options; invalid combinations raise InvalidSpec at construction."""

    mode: str = Mode.PRECOPY.value
    allow_postcopy: bool = True
    migrate_uri: str | None = None
    persist_dest: bool = True
    undefine_source: bool = True
    bandwidth_mib: int | None = None
    postcopy_bandwidth_mib: int | None = None
    max_downtime_ms: int = 300
    max_downtime_cap_ms: int = 2000
    auto_converge: bool = False
    auto_converge_initial: int | None = None
    auto_converge_increment: int | None = None
    compression: str | None = None
    parallel_connections: int | None = None
    tls: bool = False
    tls_destination: str | None = None
    copy_storage: str | None = None
    # the disks (target names) copy_storage copies; None: every disk libvirt does not know to be shared - a disk
    # on shared storage it cannot recognise (NFS, Ceph file disks) would then be mirrored onto itself
    copy_disks: tuple[str, ...] | None = None
    # the domain XML (migratable) to run on the destination and the definition to keep there, e.g. with its
    # pins re-mapped onto the destination's CPUs (planning/pinning.py); None: the source's, unchanged
    dest_xml: str | None = None
    persist_xml: str | None = None
    completion_timeout_s: float | None = None
    completion_timeout_per_gib_s: float = 150.0
    completion_timeout_min_s: float = 60.0
    on_timeout: str = OnTimeout.ABORT.value
    stall_iterations: int = 3
    stats_interval_s: float = 1.0
    postcopy_recovery_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation -------------------------------------------------------------------

    def validate(self, libvirt_version: int | None = None) -> MigrationSpec:
        """Raise InvalidSpec for impossible combinations; `libvirt_version` = oldest of both ends."""
        self._check_choices()
        self._check_numbers()
        self._check_postcopy()
        self._check_data_path()
        if libvirt_version is not None:
            self._check_versions(libvirt_version)
        return self

    def _check_choices(self) -> None:
        for field, value, choices in (
            ("mode", self.mode, MODES),
            ("on_timeout", self.on_timeout, ON_TIMEOUT),
            ("compression", self.compression, (None,) + COMPRESSIONS),
            ("copy_storage", self.copy_storage, (None,) + COPY_STORAGE),
        ):
            if value not in choices:
                listed = ", ".join(str(c) for c in choices if c is not None)
                raise InvalidSpec(f"{field}={value!r} is not one of: {listed}.", f"set {field} to one of {listed}.")
        if self.copy_storage and self.copy_disks is not None and not self.copy_disks:
            raise InvalidSpec("copy_storage with an empty list of disks to copy: libvirt would copy every disk it "
                              "does not know to be shared.", "leave copy_storage unset when no disk is to be copied.")
        for field, xml in (("dest_xml", self.dest_xml), ("persist_xml", self.persist_xml)):
            if xml is not None and (not isinstance(xml, str) or not xml.lstrip().startswith("<domain")):
                raise InvalidSpec(f"{field} is not domain XML (it must start with <domain).",
                                  f"give {field} the domain's migratable XML (virDomainGetXMLDesc), or leave it unset.")
        if self.persist_xml is not None and not self.persist_dest:
            raise InvalidSpec("persist_xml is set but persist_dest is off: there is no definition to keep on the "
                              "destination.", "set persist_dest: true, or drop persist_xml.")
        if self.undefine_source and not self.persist_dest:
            raise InvalidSpec(
                "undefine_source without persist_dest would leave the VM defined on no host "
                "(transient on the destination, undefined on the source).",
                "set persist_dest: true, or undefine_source: false.")

    def _check_numbers(self) -> None:
        def positive(name: str, value: object, allow_none: bool = True, minimum: float = 1,
                     maximum: float | None = None) -> None:
            if value is None and allow_none:
                return
            if not _finite_number(value) or value < minimum:  # NaN, inf, text, bools are not numbers here
                raise InvalidSpec(f"{name}={value!r} must be a number >= {minimum}.",
                                  f"give {name} a value >= {minimum}.")
            if maximum is not None and value > maximum:
                raise InvalidSpec(f"{name}={value!r} must be <= {maximum}.", f"give {name} a value <= {maximum}.")

        positive("bandwidth_mib", self.bandwidth_mib, maximum=MAX_BANDWIDTH_MIB)
        positive("postcopy_bandwidth_mib", self.postcopy_bandwidth_mib, maximum=MAX_BANDWIDTH_MIB)
        positive("max_downtime_ms", self.max_downtime_ms, allow_none=False)
        positive("max_downtime_cap_ms", self.max_downtime_cap_ms, allow_none=False)
        positive("parallel_connections", self.parallel_connections)
        positive("stall_iterations", self.stall_iterations, allow_none=False)
        positive("completion_timeout_s", self.completion_timeout_s)
        positive("completion_timeout_per_gib_s", self.completion_timeout_per_gib_s, allow_none=False)
        positive("completion_timeout_min_s", self.completion_timeout_min_s, allow_none=False, minimum=0)
        positive("postcopy_recovery_timeout_s", self.postcopy_recovery_timeout_s, allow_none=False, minimum=0)
        if not _finite_number(self.stats_interval_s) or not 0.05 <= self.stats_interval_s <= 60:
            raise InvalidSpec(f"stats_interval_s={self.stats_interval_s!r} must be between 0.05 and 60 seconds.",
                              "use a stats interval of about 1 second.")
        if self.max_downtime_cap_ms < self.max_downtime_ms:
            raise InvalidSpec(
                f"max_downtime_cap_ms ({self.max_downtime_cap_ms}) is below max_downtime_ms ({self.max_downtime_ms}).",
                "make the cap at least the initial max downtime (equal means: never raise it).")
        if self.max_downtime_cap_ms > QEMU_MAX_DOWNTIME_MS:
            raise InvalidSpec(f"max_downtime_cap_ms ({self.max_downtime_cap_ms}) exceeds QEMU's limit "
                              f"of {QEMU_MAX_DOWNTIME_MS} ms.", "lower max_downtime_cap_ms.")
        for name, value in (("auto_converge_initial", self.auto_converge_initial),
                            ("auto_converge_increment", self.auto_converge_increment)):
            if value is None:
                continue
            if not self.auto_converge:
                raise InvalidSpec(f"{name} is set but auto_converge is off.",
                                  "set auto_converge: true, or drop the auto_converge_* options.")
            if not _finite_number(value) or not 1 <= value <= 99:
                raise InvalidSpec(f"{name}={value!r} must be a percentage between 1 and 99.",
                                  f"give {name} a value from 1 to 99.")

    def _check_postcopy(self) -> None:
        needs: list[str] = []
        if self.mode != Mode.PRECOPY:
            needs.append(f"mode={self.mode}")
        if self.on_timeout == OnTimeout.POSTCOPY:
            needs.append("on_timeout=postcopy")
        if needs and not self.allow_postcopy:
            raise InvalidSpec(
                f"{' and '.join(needs)} needs post-copy, but allow_postcopy is false.",
                "set allow_postcopy: true, or use mode precopy with on_timeout abort or suspend.")
        if self.postcopy_armed and self.parallel_connections:
            raise InvalidSpec(
                "parallel_connections cannot be combined with post-copy (QEMU refuses multifd together "
                "with postcopy-ram: 'Postcopy is not yet compatible with multifd', QEMU 10.0 included); "
                f"post-copy is needed by {' and '.join(needs)}.",
                "drop parallel_connections, or use mode precopy with on_timeout abort or suspend.")

    def _check_data_path(self) -> None:
        if self.compression == Compression.ZSTD and not self.parallel_connections:
            raise InvalidSpec("compression=zstd only works with parallel migration.",
                              "set parallel_connections (e.g. 4), or use compression xbzrle.")
        if self.compression == Compression.XBZRLE and self.parallel_connections:
            raise InvalidSpec("compression=xbzrle does not work with parallel migration.",
                              "use compression zstd with parallel_connections, or drop parallel_connections.")
        if self.tls_destination and not self.tls:
            raise InvalidSpec("tls_destination is set but tls is off.", "set tls: true, or drop tls_destination.")
        if self.migrate_uri is not None:
            parts: SplitResult | None
            host: str | None
            try:
                parts = urlsplit(self.migrate_uri) if isinstance(self.migrate_uri, str) else None
                host = parts.hostname if parts is not None else None
            except ValueError:  # e.g. an unclosed IPv6 bracket
                parts = host = None
            if parts is None or parts.scheme not in MIGRATE_URI_SCHEMES or (parts.scheme != "unix" and not host):
                raise InvalidSpec(
                    f"migrate_uri={self.migrate_uri!r} is not a migration data URI.",
                    "use tcp://ADDRESS (or tcp://ADDRESS:PORT) on the migration network.")

    def _check_versions(self, libvirt_version: int) -> None:
        if self.compression == Compression.ZSTD and libvirt_version < LIBVIRT_ZSTD_MIN:
            raise InvalidSpec(
                f"compression=zstd needs libvirt >= {version_text(LIBVIRT_ZSTD_MIN)} on both hosts; "
                f"the older end runs {version_text(libvirt_version)}.",
                "use compression xbzrle (without parallel_connections), or no compression.")
        if self.postcopy_armed and libvirt_version < LIBVIRT_POSTCOPY_RESUME_MIN:
            raise InvalidSpec(
                f"post-copy is requested but libvirt {version_text(libvirt_version)} cannot resume an "
                f"interrupted post-copy (needs >= {version_text(LIBVIRT_POSTCOPY_RESUME_MIN)}); a network "
                "failure during post-copy would lose the VM.",
                "use mode precopy with on_timeout abort or suspend, or upgrade libvirt.")

    # ---- derived values ---------------------------------------------------------------

    @property
    def postcopy_armed(self) -> bool:
        """Post-copy capability is enabled at start only when this migration may use it."""
        return self.allow_postcopy and (self.mode != Mode.PRECOPY or self.on_timeout == OnTimeout.POSTCOPY)

    @property
    def ladder_has_postcopy(self) -> bool:
        """Whether post-copy is a rung of the ladder before the final action."""
        return self.postcopy_armed and self.mode in (Mode.POSTCOPY, Mode.POSTCOPY_AFTER_PRECOPY)

    def deadline_s(self, ram_bytes: float) -> float:
        """Completion deadline: explicit, or per GiB moved (RAM, plus the copied disks' size) with a floor."""
        if self.completion_timeout_s is not None:
            return float(self.completion_timeout_s)
        per_ram = self.completion_timeout_per_gib_s * (ram_bytes / GIB)
        return float(max(self.completion_timeout_min_s, math.ceil(per_ram)))

    def flags(self) -> int:
        """VIR_MIGRATE_* flags for virDomainMigrateToURI3."""
        flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER
        if self.persist_dest:
            flags |= VIR_MIGRATE_PERSIST_DEST
        if self.undefine_source:
            flags |= VIR_MIGRATE_UNDEFINE_SOURCE
        if self.postcopy_armed:
            flags |= VIR_MIGRATE_POSTCOPY
        if self.auto_converge:
            flags |= VIR_MIGRATE_AUTO_CONVERGE
        if self.compression:
            flags |= VIR_MIGRATE_COMPRESSED
        if self.parallel_connections:
            flags |= VIR_MIGRATE_PARALLEL
        if self.tls:
            flags |= VIR_MIGRATE_TLS
        if self.copy_storage == "all":
            flags |= VIR_MIGRATE_NON_SHARED_DISK
        elif self.copy_storage == "incremental":
            flags |= VIR_MIGRATE_NON_SHARED_INC
        return flags

    def resume_flags(self) -> int:
        """Flags to resume an interrupted post-copy: the original ones plus POSTCOPY_RESUME."""
        return self.flags() | VIR_MIGRATE_POSTCOPY | VIR_MIGRATE_POSTCOPY_RESUME

    def params(self) -> dict[str, str | int | list[str]]:
        """VIR_MIGRATE_PARAM_* typed parameters (libvirt-python picks the types by name)."""
        params: dict[str, str | int | list[str]] = {}
        if self.migrate_uri:
            params[PARAM_URI] = self.migrate_uri
        if self.bandwidth_mib:
            params[PARAM_BANDWIDTH] = int(self.bandwidth_mib)
        if self.postcopy_bandwidth_mib and self.postcopy_armed:
            params[PARAM_BANDWIDTH_POSTCOPY] = int(self.postcopy_bandwidth_mib)
        if self.auto_converge and self.auto_converge_initial is not None:
            params[PARAM_AUTO_CONVERGE_INITIAL] = int(self.auto_converge_initial)
        if self.auto_converge and self.auto_converge_increment is not None:
            params[PARAM_AUTO_CONVERGE_INCREMENT] = int(self.auto_converge_increment)
        if self.compression:
            params[PARAM_COMPRESSION] = self.compression
        if self.parallel_connections:
            params[PARAM_PARALLEL_CONNECTIONS] = int(self.parallel_connections)
        if self.tls and self.tls_destination:
            params[PARAM_TLS_DESTINATION] = self.tls_destination
        if self.copy_storage and self.copy_disks is not None:
            params[PARAM_MIGRATE_DISKS] = list(self.copy_disks)
        if self.dest_xml:
            params[PARAM_DEST_XML] = self.dest_xml
        if self.persist_xml and self.persist_dest:
            params[PARAM_PERSIST_XML] = self.persist_xml
        return params

    def describe(self) -> str:
        """One line for check mode and logs."""
        parts = [f"mode {self.mode}", f"max downtime {self.max_downtime_ms} ms (cap {self.max_downtime_cap_ms} ms)",
                 f"on timeout {self.on_timeout}"]
        if self.bandwidth_mib:
            parts.append(f"bandwidth {self.bandwidth_mib} MiB/s")
        if self.auto_converge:
            parts.append("auto-converge")
        if self.compression:
            parts.append(f"compression {self.compression}")
        if self.parallel_connections:
            parts.append(f"{self.parallel_connections} parallel connections")
        if self.tls:
            parts.append("TLS")
        if self.copy_storage:
            disks = f": {', '.join(self.copy_disks)}" if self.copy_disks else ""
            parts.append(f"copy storage ({self.copy_storage}{disks})")
        if self.migrate_uri:
            parts.append(f"data over {self.migrate_uri}")
        if self.dest_xml:
            parts.append("destination XML" + (" and definition" if self.persist_xml else "") + " given")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
