# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""JSON Schema (draft 2020-12) of `hvfleet_migration_policies`, as a Python dict.

A dict in a module (not a data file) so that it loads the same way on the controller and
inside an AnsiballZ zip on a hypervisor. `policy_schema.json` next to this file is the same
schema for editors and operators; a unit test keeps the two equal.

Every object sets additionalProperties false: a typo in a policy is an error, not a silently
ignored key. Every number has a minimum and a maximum: what an experienced KVM operator could mean,
and no more. A value outside is a typo (or YAML's .inf), and letting it through only moves the error
into the middle of a drain, after the host was cordoned (1e300 s/GiB overflowed the deadline there;
0.5 s/GiB passed here and was refused by the engine). Defaults are a careful operator's;
`DEFAULT_SETTINGS` is derived from them.
"""

from __future__ import annotations

import copy
from typing import Any

from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import (
    Compression,
    Mode,
    OnTimeout,
    Storage,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MAX_BANDWIDTH_MIB, QEMU_MAX_DOWNTIME_MS

MAX_RANK = 10_000  # priority and drain_order: -10000..10000 orders any fleet, with room between ranks
MAX_MEMORY_MIB = 64 * 1024 * 1024  # 64 TiB: more than the largest x86 host holds, so above any real VM
MIN_TIMEOUT_PER_GIB_S = 1  # the engine (MigrationSpec) refuses less; 1 s/GiB already means ~1 GiB/s
MAX_TIMEOUT_PER_GIB_S = 24 * 3600  # a day per GiB: slower than that is not a live migration any more
MAX_THROTTLE_PCT = 99  # QEMU's cpu-throttle-initial / -increment: 1..99
MAX_PARALLEL_CONNECTIONS = 255  # QEMU's multifd-channels
MIN_SHUTDOWN_TIMEOUT_S = 10  # a guest OS needs seconds to react to the power button at all
MAX_SHUTDOWN_TIMEOUT_S = 3600  # an hour: a guest that takes longer is not shutting down

# A policy's settings as JSON data: key -> value, every key of the schema's settings.
Settings = dict[str, Any]

_GLOB_LIST = {
    "type": "array",
    "minItems": 1,
    "uniqueItems": True,
    "items": {"type": "string", "minLength": 1},
}

_LABEL_VALUE = {"type": "string"}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://hvfleet.github.io/drain/schemas/migration-policies.json",
    "title": "hvfleet_migration_policies",
    "description": (
        "A list of migration policies. Each VM gets exactly one: the most specific matching selector wins, "
        "then the higher priority, then the earlier declaration; the default policy catches the rest."
    ),
    "type": "array",
    "items": {"$ref": "#/$defs/policy"},
    "$defs": {
        "policy": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "Unique name, reported per VM."},
                "description": {"type": "string"},
                "selector": {"$ref": "#/$defs/selector"},
                "priority": {
                    "type": "integer",
                    "minimum": -MAX_RANK,
                    "maximum": MAX_RANK,
                    "default": 0,
                    "description": "Breaks ties between equally specific matches: higher wins.",
                },
                "default": {
                    "type": "boolean",
                    "default": False,
                    "description": "The catch-all for VMs no other policy matches (at most one; no selector).",
                },
                "settings": {"$ref": "#/$defs/settings"},
            },
        },
        "selector": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "description": "All given criteria must match (AND).",
            "properties": {
                "domains": dict(
                    _GLOB_LIST,
                    description="Domain name globs (fnmatch, case-sensitive); any one matching is enough.",
                ),
                "labels": {
                    "type": "object",
                    "minProperties": 1,
                    "description": (
                        "Label name -> value (or list of accepted values), from the domain's <metadata> "
                        "<hvfleet:label name='KEY'>VALUE</hvfleet:label> (xmlns:hvfleet="
                        "'https://hvfleet.github.io/drain/xmlns/1'). Every key must match."
                    ),
                    "propertyNames": {"minLength": 1},
                    "additionalProperties": {
                        "anyOf": [
                            _LABEL_VALUE,
                            {"type": "array", "minItems": 1, "uniqueItems": True, "items": _LABEL_VALUE},
                        ]
                    },
                },
                "memory_mib": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "description": "Inclusive range of the domain's memory in MiB; a missing bound is open.",
                    "properties": {
                        "min": {"type": "integer", "minimum": 0, "maximum": MAX_MEMORY_MIB},
                        "max": {"type": "integer", "minimum": 0, "maximum": MAX_MEMORY_MIB},
                    },
                },
            },
        },
        "settings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {
                    "enum": Mode.values(),
                    "default": Mode.AUTO,
                    "description": "auto: chosen per VM from its measured dirty rate and the link bandwidth.",
                },
                "allow_postcopy": {
                    "type": "boolean",
                    "default": True,
                    "description": "Whether post-copy may be used at all (by the mode, auto, or on_timeout).",
                },
                "max_downtime_ms": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": QEMU_MAX_DOWNTIME_MS,
                    "default": 500,
                    "description": "Target pause at switchover.",
                },
                "max_downtime_cap_ms": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": QEMU_MAX_DOWNTIME_MS,
                    "default": 2000,
                    "description": "Highest pause the engine may raise max downtime to when pre-copy stalls.",
                },
                "bandwidth_mib": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_BANDWIDTH_MIB,
                    "description": "Pre-copy bandwidth limit in MiB/s; unset: unlimited.",
                },
                "postcopy_bandwidth_mib": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_BANDWIDTH_MIB,
                    "description": "Post-copy bandwidth limit in MiB/s; unset: unlimited.",
                },
                "auto_converge": {
                    "type": "boolean",
                    "default": False,
                    "description": (
                        "Throttle the guest's vCPUs when pre-copy does not converge. In auto mode the "
                        "forecast may turn it on by itself."
                    ),
                },
                "auto_converge_initial": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_THROTTLE_PCT,
                    "description": "First throttle in percent; unset: QEMU's 20.",
                },
                "auto_converge_increment": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_THROTTLE_PCT,
                    "description": "Throttle step in percent; unset: QEMU's 10.",
                },
                "compression": {
                    "enum": Compression.values(),
                    "default": Compression.NONE,
                    "description": "xbzrle: single connection only; zstd: needs parallel_connections.",
                },
                "parallel_connections": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_PARALLEL_CONNECTIONS,
                    "description": "Parallel (multifd) migration with this many connections; unset: one stream.",
                },
                "completion_timeout_per_gib_s": {
                    "type": "number",
                    "minimum": MIN_TIMEOUT_PER_GIB_S,
                    "maximum": MAX_TIMEOUT_PER_GIB_S,
                    "default": 150,
                    "description": "Deadline per GiB of guest RAM before on_timeout applies.",
                },
                "on_timeout": {
                    "enum": OnTimeout.values(),
                    "default": OnTimeout.ABORT,
                    "description": "What happens at the deadline.",
                },
                "storage": {
                    "enum": Storage.values(),
                    "default": Storage.SHARED_ONLY,
                    "description": "shared_only refuses VMs with disks the destination cannot reach.",
                },
                "drain_order": {
                    "type": "integer",
                    "minimum": -MAX_RANK,
                    "maximum": MAX_RANK,
                    "default": 0,
                    "description": "Order within a drain: lower first.",
                },
                "destinations": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "pin": dict(_GLOB_LIST, description="Only these hosts (globs) may receive the VM."),
                        "avoid": dict(_GLOB_LIST, description="These hosts (globs) never receive the VM."),
                    },
                },
                "tls": {"type": "boolean", "default": False, "description": "Migrate over TLS."},
                "on_unmigratable": {
                    "enum": ["block", "shutdown", "leave"],
                    "default": "block",
                    "description": (
                        "A VM that cannot live-migrate (host devices, shmem, host serial devices, local disks under "
                        "shared_only): block blocks the drain; shutdown shuts it down (ACPI), moves it and starts it "
                        "on the destination; leave leaves it running on the host, which is then reported not empty."
                    ),
                },
                "shutdown_timeout_s": {
                    "type": "integer",
                    "minimum": MIN_SHUTDOWN_TIMEOUT_S,
                    "maximum": MAX_SHUTDOWN_TIMEOUT_S,
                    "default": 120,
                    "description": (
                        "on_unmigratable shutdown: how long the guest has to shut down after the ACPI power button; "
                        "a guest still running then is left running where it is."
                    ),
                },
                "managed_save": {
                    "enum": ["refuse", "discard"],
                    "default": "refuse",
                    "description": (
                        "A shut-off VM whose definition moves and that has a managed-save image: refuse refuses to "
                        "move it; discard removes the image (the VM then boots afresh)."
                    ),
                },
                "pinning": {
                    "enum": ["refuse", "adapt"],
                    "default": "refuse",
                    "description": (
                        "A VM pinned to host CPUs or NUMA nodes the destination lacks: refuse that destination, or "
                        "adapt (re-map the pins onto its CPUs and nodes in the destination XML)."
                    ),
                },
            },
        },
    },
}

_UNSET_SETTINGS: Settings = {
    "bandwidth_mib": None,
    "postcopy_bandwidth_mib": None,
    "auto_converge_initial": None,
    "auto_converge_increment": None,
    "parallel_connections": None,
    "destinations": {"pin": [], "avoid": []},
}


def default_settings() -> Settings:
    """Every settings key with its default (None where unset means unlimited / QEMU's own)."""
    props = SCHEMA["$defs"]["settings"]["properties"]
    settings = {key: copy.deepcopy(_UNSET_SETTINGS.get(key, props[key].get("default"))) for key in props}
    return settings


DEFAULT_SETTINGS = default_settings()
