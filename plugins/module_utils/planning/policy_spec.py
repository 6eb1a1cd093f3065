# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Turn a VM's policy settings (policy.select_policy) and its forecast into a MigrationSpec.

The one place where the policy vocabulary meets the engine's:

* `mode: auto` takes the forecast's choice (pre-copy, post-copy, ...) and its auto-converge;
  a forecast of `refuse` is an error that names the forecast's reason;
* `compression: none` -> no compression; `storage: copy_all` / `copy_incremental` ->
  `copy_storage` `all` / `incremental`, `shared_only` -> nothing copied;
* the bandwidth is the lower of the policy's `bandwidth_mib` and the drain's share of its
  bandwidth budget;
* a transient domain is neither persisted on the destination nor undefined on the source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import InvalidSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import (
    Compression,
    ForecastVerdict,
    Mode,
    OnTimeout,
    Storage,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.spec import MAX_BANDWIDTH_MIB, MigrationSpec
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import Settings

# a policy's `storage` -> the engine's `copy_storage` (libvirt's NON_SHARED_DISK / NON_SHARED_INC)
STORAGE: dict[str, str | None] = {
    Storage.SHARED_ONLY: None, Storage.COPY_ALL: "all", Storage.COPY_INCREMENTAL: "incremental"}


class ModeChoice(Protocol):
    """What is read of a forecast: forecast.Forecast, or the mode a reviewed plan recorded."""

    @property
    def mode(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def auto_converge(self) -> bool: ...


def effective_mode(settings: Settings, forecast: ModeChoice | None = None) -> tuple[str, bool, str]:
    """(mode, auto_converge, explanation) the migration will use."""
    mode = settings.get("mode", Mode.AUTO)
    auto_converge = bool(settings.get("auto_converge"))
    if mode != Mode.AUTO:
        why = f"mode {mode} set by the policy"
        if forecast is not None and forecast.reason:
            why += f"; forecast: {forecast.reason}"
        return mode, auto_converge, why
    if forecast is None:
        return Mode.PRECOPY, auto_converge, "mode auto without a forecast (no dirty rate or link bandwidth): pre-copy"
    if forecast.mode == ForecastVerdict.REFUSE:
        raise InvalidSpec(f"the forecast refuses to migrate: {forecast.reason}",
                          "give the VM a policy that allows post-copy or auto-converge, raise max_downtime_cap_ms "
                          "or the completion timeout, or move it at a quieter time.")
    return forecast.mode, auto_converge or bool(forecast.auto_converge), forecast.reason


def spec_for(settings: Settings, forecast: ModeChoice | None = None, migrate_uri: str | None = None,
             bandwidth_mib: float | None = None, persistent: bool = True, tls_destination: str | None = None,
             copy_disks: Sequence[str] | None = None, **overrides: Any) -> MigrationSpec:
    """The MigrationSpec for one VM; raises InvalidSpec (with a hint) when the settings cannot work.
    `copy_disks`: the disks a copying storage policy copies (the preflight's list: local disks only); an empty
    list copies nothing; None leaves the choice to libvirt (every disk it does not know to be shared)."""
    mode, auto_converge, _why = effective_mode(settings, forecast)
    storage = settings.get("storage", Storage.SHARED_ONLY)
    if storage not in STORAGE:
        raise InvalidSpec(f"storage={storage!r} is not one of: {', '.join(STORAGE)}.",
                          f"set storage to one of {', '.join(STORAGE)}.")
    compression = settings.get("compression")
    if compression in (None, Compression.NONE):
        compression = None
    limit = _bandwidth_limit(settings.get("bandwidth_mib"), bandwidth_mib)
    kwargs = dict(
        mode=mode,
        allow_postcopy=bool(settings.get("allow_postcopy", True)),
        migrate_uri=migrate_uri,
        persist_dest=bool(persistent),
        undefine_source=bool(persistent),
        bandwidth_mib=limit,
        postcopy_bandwidth_mib=settings.get("postcopy_bandwidth_mib"),
        max_downtime_ms=int(settings.get("max_downtime_ms", 500)),
        max_downtime_cap_ms=int(max(settings.get("max_downtime_cap_ms", 2000), settings.get("max_downtime_ms", 500))),
        auto_converge=auto_converge,
        auto_converge_initial=settings.get("auto_converge_initial") if auto_converge else None,
        auto_converge_increment=settings.get("auto_converge_increment") if auto_converge else None,
        compression=compression,
        parallel_connections=settings.get("parallel_connections"),
        tls=bool(settings.get("tls", False)),
        tls_destination=tls_destination if settings.get("tls") else None,
        copy_storage=STORAGE[storage] if copy_disks is None or copy_disks else None,
        copy_disks=tuple(copy_disks) if copy_disks and STORAGE[storage] else None,
        completion_timeout_per_gib_s=float(settings.get("completion_timeout_per_gib_s", 150)),
        on_timeout=settings.get("on_timeout", OnTimeout.ABORT),
    )
    kwargs.update(overrides)
    return MigrationSpec(**kwargs)


def _bandwidth_limit(policy_mib: float | None, share_mib: float | None) -> int | None:
    """The lower of the policy's limit and the drain's share, in whole MiB/s; None: no limit.

    Unset or 0 sets no limit, and neither does a share above what libvirt can express (infinity
    included: an unlimited budget). A negative or NaN value is a bug in the caller (the policy
    schema refuses them), said as such rather than throttling the VM to 1 MiB/s or failing in int().
    """
    if share_mib is not None and share_mib > MAX_BANDWIDTH_MIB:
        share_mib = None
    limits = []
    for name, value in (("bandwidth_mib", policy_mib), ("the drain's bandwidth share", share_mib)):
        if not value:
            continue
        if math.isnan(value) or value < 0:
            raise InvalidSpec(f"{name} is {value!r} MiB/s.", "give a bandwidth > 0 MiB/s, or none for no limit.")
        limits.append(value)
    return max(1, int(min(limits))) if limits else None
