# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which hosts may start their maintenance now (hvfleet.drain.rolling_turn and the rolling strategy).

Pure and stateless (no Ansible imports): the caller (the rolling_turn action through
fleet/rolling_ledger.py, or the strategy) says which hosts are in flight (admitted,
not finished), which finished, which failed and what time it is; `decide` answers which waiting
hosts to admit now and why each other one waits. `read_settings` turns the hvfleet_rolling_*
variables the hosts of the play see into Settings, refusing unknown names, hosts that disagree and
unreadable values. Admission rules, checked in this order:

1. more failed hosts than `max_failures`: nobody is admitted any more (final);
2. a host outside its maintenance window is not admitted;
3. at most `max_in_flight` hosts in flight;
4. at most one host in flight per failure domain (hosts whose domain is `UNDEFINED_DOMAIN`
   share one domain; a host with domain None has no domain constraint);
5. capacity: the VM memory of every host out of service (in flight, failed, and the candidate)
   must fit in the free memory of the hosts left in service. Aggregate check on memory figures
   taken before the play; skipped when any host lacks either figure.

Waiting hosts are considered in `order_hosts` order; a host that cannot be admitted (its domain
is busy, it does not fit) does not hold back the ones behind it.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Union

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError

UTC = datetime.timezone.utc  # noqa: UP017 - module_utils also run on Python < 3.11
UNDEFINED_DOMAIN = "<undefined>"

# Reasons a host waits (the strategy lists them when the run ends with hosts not done).
REASON_FAILURES = "admission stopped after failures"
REASON_WINDOW = "outside its maintenance window"
REASON_IN_FLIGHT = "max in flight reached"
REASON_DOMAIN = "failure domain busy"
REASON_CAPACITY = "remaining hosts cannot absorb its VMs"

_DAILY = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")  # a variable name or a dotted path


class RollingConfigError(HvfleetError):
    """A rolling setting or window specification is invalid."""


class Window(Protocol):
    """A maintenance window: open or not at a moment, and how it reads."""

    def contains(self, now: datetime.datetime) -> bool: ...


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class DailyWindow:
    """Every day from `start` to `end`, minutes after midnight UTC; wraps midnight when end <= start."""

    start: int
    end: int

    def contains(self, now: datetime.datetime) -> bool:
        utc = now.astimezone(UTC)
        minute = utc.hour * 60 + utc.minute + utc.second / 60.0
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"daily {self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d} UTC"


@dataclass(frozen=True)
class AbsoluteWindow:
    """From `start` (inclusive) to `end` (exclusive), timezone-aware datetimes."""

    start: datetime.datetime
    end: datetime.datetime

    def contains(self, now: datetime.datetime) -> bool:
        return self.start <= now < self.end

    def __str__(self) -> str:
        return f"{self.start.isoformat()} to {self.end.isoformat()}"


@dataclass(frozen=True)
class AnyWindow:
    """Open when any of `windows` is open."""

    windows: tuple[Window, ...]

    def contains(self, now: datetime.datetime) -> bool:
        return any(w.contains(now) for w in self.windows)

    def __str__(self) -> str:
        return " or ".join(str(w) for w in self.windows)


def parse_instant(value: object, what: str) -> datetime.datetime:
    """An aware datetime from an ISO 8601 string, a datetime or a date (naive means UTC)."""
    if isinstance(value, datetime.datetime):
        moment = value
    elif isinstance(value, datetime.date):
        moment = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise RollingConfigError(
                f"maintenance window {what} {value!r} is not an ISO 8601 date-time.",
                "write it like 2025-06-01T22:00:00Z.",
            ) from None
    else:
        raise RollingConfigError(
            f"maintenance window {what} must be an ISO 8601 date-time, got {type(value).__name__}.",
            "write it like 2025-06-01T22:00:00Z.",
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def parse_window(spec: object) -> Union[DailyWindow, AbsoluteWindow, AnyWindow, None]:
    """A window object from a specification, or None (always open) when `spec` is empty.

    Accepted: "HH:MM-HH:MM" (daily, UTC, may wrap midnight, "24:00" allowed as end);
    a mapping with ISO 8601 `start` and `end` (naive means UTC); a list of those (open when any is).
    """
    if spec is None or spec == "" or spec == [] or spec == {}:
        return None
    if isinstance(spec, str):
        match = _DAILY.match(spec)
        if not match:
            raise RollingConfigError(
                f"maintenance window {spec!r} is not HH:MM-HH:MM.",
                'use a daily UTC window like "22:00-04:00" or a mapping with start and end.',
            )
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if m1 > 59 or m2 > 59 or start >= 24 * 60 or end > 24 * 60:
            raise RollingConfigError(f"maintenance window {spec!r} has an invalid time.", "hours 00-23, minutes 00-59.")
        if start == end:
            raise RollingConfigError(
                f"maintenance window {spec!r} starts where it ends.",
                'for an always-open window leave hvfleet_maintenance_window unset; "00:00-24:00" is the whole day.',
            )
        return DailyWindow(start, end)
    if isinstance(spec, dict):
        unknown = set(spec) - {"start", "end"}
        if unknown or "start" not in spec or "end" not in spec:
            raise RollingConfigError(
                f"maintenance window mapping must have exactly start and end, got {sorted(spec)}.",
                "for example {start: 2025-06-01T22:00:00Z, end: 2025-06-02T04:00:00Z}.",
            )
        opens, closes = parse_instant(spec["start"], "start"), parse_instant(spec["end"], "end")
        if closes <= opens:
            raise RollingConfigError(
                f"maintenance window ends ({closes.isoformat()}) before it starts ({opens.isoformat()}).",
                "swap start and end.",
            )
        return AbsoluteWindow(opens, closes)
    if isinstance(spec, (list, tuple)):
        windows = tuple(w for w in (parse_window(item) for item in spec) if w is not None)
        return AnyWindow(windows) if windows else None
    raise RollingConfigError(
        f"maintenance window must be a string, a mapping or a list, got {type(spec).__name__}.",
        'use "22:00-04:00" or {start: ..., end: ...}.',
    )


# --------------------------------------------------------------------------- hosts and settings


@dataclass(frozen=True)
class Host:
    """What admission needs to know about one host (figures gathered before the play)."""

    name: str
    domain: Optional[str] = None  # None: no failure-domain constraint for this host
    order: object = None  # value of the order hostvar; None sorts last
    vm_memory_mib: Optional[float] = None  # memory of the VMs it runs (to be absorbed by others)
    free_memory_mib: Optional[float] = None  # memory it can absorb while in service
    window: Optional[Window] = None  # parse_window() result; None: always open


@dataclass(frozen=True)
class Settings:
    max_in_flight: int = 1
    max_failures: int = 0
    capacity_check: bool = True
    failure_domain_key: Optional[str] = None  # host variable (or dotted path) naming the failure domain
    order_key: Optional[str] = None  # host variable (or dotted path) giving the admission order

    def __post_init__(self) -> None:
        if isinstance(self.max_in_flight, bool) or not isinstance(self.max_in_flight, int) or self.max_in_flight < 1:
            raise RollingConfigError(
                f"hvfleet_rolling_max_in_flight must be an integer >= 1, got {self.max_in_flight!r}.",
                "set how many hosts may be in maintenance at once.",
            )
        if isinstance(self.max_failures, bool) or not isinstance(self.max_failures, int) or self.max_failures < 0:
            raise RollingConfigError(
                f"hvfleet_rolling_max_failures must be an integer >= 0, got {self.max_failures!r}.",
                "0 stops admission after the first failed host.",
            )
        for name, key in (("hvfleet_rolling_failure_domain_key", self.failure_domain_key),
                          ("hvfleet_rolling_order_key", self.order_key)):
            if key is not None and not (isinstance(key, str) and _KEY.match(key)):
                raise RollingConfigError(
                    f"{name} must name a host variable (or a dotted path into one), got {key!r}.",
                    f"for example {name}: rack, or hvfleet_hypervisor.rack; leave it unset for none.",
                )


# --------------------------------------------------------------------------- reading the settings

SETTING_PREFIX = "hvfleet_rolling_"
# variable -> (Settings field, kind)
SETTINGS = {
    "hvfleet_rolling_max_in_flight": ("max_in_flight", "integer"),
    "hvfleet_rolling_failure_domain_key": ("failure_domain_key", "key"),
    "hvfleet_rolling_order_key": ("order_key", "key"),
    "hvfleet_rolling_max_failures": ("max_failures", "integer"),
    "hvfleet_rolling_capacity_check": ("capacity_check", "boolean"),
}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_FIX = ("it is one setting for the whole play: set it where every host of the play gets it (group_vars of a "
        "group they all belong to, such as all or hypervisors), in the play's vars, or with -e.")


def _names(hosts: list[str], most: int = 5) -> str:
    shown = ", ".join(hosts[:most])
    return shown if len(hosts) <= most else f"{shown} and {len(hosts) - most} more"


def _convert(name: str, value: object) -> object:
    """The value of setting `name` as its Settings field wants it; RollingConfigError when unreadable."""
    kind = SETTINGS[name][1]
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if kind == "integer":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        raise RollingConfigError(f"{name} must be a whole number, got {value!r}.",
                                 f"write it as a number, for example {name}: 2.")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise RollingConfigError(f"{name} must be true or false, got {value!r}.", f"write {name}: true or false.")
    return value.strip() if isinstance(value, str) else value  # a key: Settings checks it


def read_settings(values_by_host: dict[str, dict[str, object]]) -> Settings:
    """The play's Settings from the hvfleet_rolling_* variables of each host of the play.

    values_by_host: host name -> that host's hvfleet_rolling_* variables, as Ansible resolved them
    (inventory group and host vars, overridden by play vars and extra vars) and templated. The settings
    are play-wide, so every host must see the same value (or none). An unknown hvfleet_rolling_* name,
    hosts that disagree, or a value that cannot be read raise RollingConfigError naming the setting.
    A value of None or "" means unset (the default).
    """
    for values in values_by_host.values():
        for name in values:
            if name.startswith(SETTING_PREFIX) and name not in SETTINGS:
                where = sorted(h for h, v in values_by_host.items() if name in v)
                close = difflib.get_close_matches(name, SETTINGS, n=1)
                raise RollingConfigError(
                    f"unknown setting {name} (set for {_names(where)}).",
                    (f"did you mean {close[0]}? " if close else "")
                    + f"The settings of the rolling strategy are {', '.join(SETTINGS)}; rename or remove it.",
                )
    fields: dict[str, Any] = {}
    for name, (field_name, _kind) in SETTINGS.items():
        seen: list[tuple[object, list[str]]] = []  # (converted value, hosts); unset is None
        for host in sorted(values_by_host):
            value = values_by_host[host].get(name)
            value = None if value is None or value == "" else _convert(name, value)
            for known, hosts in seen:
                if known == value:
                    hosts.append(host)
                    break
            else:
                seen.append((value, [host]))
        if len(seen) > 1:
            found = "; ".join(f"{'unset' if v is None else repr(v)} on {_names(h)}" for v, h in seen)
            raise RollingConfigError(f"{name} differs between the hosts of the play: {found}.", _FIX)
        if seen and seen[0][0] is not None:
            fields[field_name] = seen[0][0]
    return Settings(**fields)


@dataclass(frozen=True)
class Decision:
    admit: tuple[str, ...] = ()  # host names to admit now, in order
    waiting: dict[str, str] = field(default_factory=dict)  # host name -> reason it is not admitted now
    final: bool = False  # True: no host will ever be admitted again in this run
    capacity_checked: bool = False  # False when the capacity figures were incomplete (check skipped)


def _order_key(host: Host) -> tuple[tuple[int, float | str], str]:
    value = host.order
    rank: tuple[int, float | str]
    if value is None:
        rank = (2, "")
    elif isinstance(value, bool):
        rank = (1, str(value))
    elif isinstance(value, (int, float)):
        rank = (0, value)
    else:
        rank = (1, str(value))
    return rank, host.name


def order_hosts(hosts: Iterable[Host]) -> list[Host]:
    """Hosts sorted by order value (numbers, then strings, then undefined), then by name."""
    return sorted(hosts, key=_order_key)


def capacity_known(hosts: Iterable[Host]) -> bool:
    """True when every host has both memory figures (otherwise the capacity check is skipped)."""
    return all(h.vm_memory_mib is not None and h.free_memory_mib is not None for h in hosts)


def fits(hosts: Iterable[Host], out_of_service: set[str]) -> bool:
    """Can the hosts in service absorb the VM memory of every host in `out_of_service` (names)?

    A missing figure counts 0: decide() only asks when every host has both (capacity_known).
    """
    hosts = list(hosts)
    demand = sum(h.vm_memory_mib or 0.0 for h in hosts if h.name in out_of_service)
    supply = sum(h.free_memory_mib or 0.0 for h in hosts if h.name not in out_of_service)
    return demand <= supply


def decide(settings: Settings, hosts: list[Host], in_flight: Iterable[str] = (), finished: Iterable[str] = (),
           failed: Iterable[str] = (), now: datetime.datetime | None = None,
           candidates: Optional[Iterable[str]] = None) -> Decision:
    """Which waiting hosts to admit now.

    hosts: every host of the play (Host objects); in_flight/finished/failed: host names
    (failed may overlap in_flight and finished); now: an aware datetime (default: current UTC time);
    candidates: the names of the hosts that wait for admission (default: every host neither in flight
    nor finished) - the others count for capacity only.
    """
    if now is None:
        now = datetime.datetime.now(UTC)
    in_flight, finished, failed = set(in_flight), set(finished), set(failed)
    ordered = order_hosts(hosts)
    waiting_hosts = [h for h in ordered if h.name not in in_flight and h.name not in finished]
    if candidates is not None:
        wanted = set(candidates)
        waiting_hosts = [h for h in waiting_hosts if h.name in wanted]
    check_capacity = settings.capacity_check and capacity_known(hosts)

    if len(failed) > settings.max_failures:
        waiting = {h.name: f"{REASON_FAILURES} ({len(failed)} failed, threshold {settings.max_failures})"
                   for h in waiting_hosts}
        return Decision((), waiting, True, check_capacity)

    by_name = {h.name: h for h in hosts}
    busy = {}
    for name in sorted(in_flight):
        host = by_name.get(name)
        if host is not None and host.domain is not None:
            busy[host.domain] = name
    out = in_flight | failed
    admit: list[str] = []
    waiting = {}
    for host in waiting_hosts:
        if host.window is not None and not host.window.contains(now):
            waiting[host.name] = f"{REASON_WINDOW} ({host.window})"
        elif len(in_flight) + len(admit) >= settings.max_in_flight:
            waiting[host.name] = f"{REASON_IN_FLIGHT} ({settings.max_in_flight})"
        elif host.domain is not None and host.domain in busy:
            waiting[host.name] = f"{REASON_DOMAIN} ({host.domain}: {busy[host.domain]} in flight)"
        elif check_capacity and not fits(hosts, out | {host.name}):
            waiting[host.name] = REASON_CAPACITY
        else:
            admit.append(host.name)
            out.add(host.name)
            if host.domain is not None:
                busy[host.domain] = host.name
    # Nothing in flight and nothing admitted: no event can change the answer (only time can,
    # and a window that is closed now ends the run rather than making it wait).
    final = bool(waiting) and not admit and not in_flight
    return Decision(tuple(admit), waiting, final, check_capacity)
