# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet-wide capacity ledger of one host: its cordon, and the claims of migrations on their way to it.

Two drains at once (two operators, or a rolling upgrade with two hosts in flight) each see a
destination's live figures only: between one drain's check and its VM's arrival, another drain can
take the same memory, and a host that starts draining can still be chosen as a destination. So every
host keeps a small ledger, and a drain claims a destination's memory, vCPUs, an inbound slot and its
share of the link under that host's ledger lock right before a migration starts, and releases the
claim when the migration ends. The same ledger carries the host's cordon, so a destination's cordon
(and its own drain) is read live before each start. A claim expires unless the drain that holds it
renews it, so a crashed drain's claims lapse.

This module is the data and the decision (pure); ledger_store.py keeps a ledger on its host.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional, Protocol

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    VmDemand,
    recheck,
)

VERSION = 1
CLAIM_TTL_S = 120.0  # a claim lives this long past its last renewal (the drain renews every RENEW_EVERY_S)
RENEW_EVERY_S = 30.0


class LedgerError(HvfleetError):
    """A host's ledger cannot be read, written or locked; names the host and the fix."""


@dataclasses.dataclass(frozen=True)
class Claim:
    """What one migration on its way to the host holds there until it ends (`expires`: epoch seconds)."""

    id: str
    vm: str
    source: str
    memory_mib: int
    vcpus: int
    by: str
    expires: float
    bandwidth_mib: Optional[int] = None
    owner: str = ""  # the host whose drain or restore took it (one run per host at a time: its drain lock)
    run: str = ""

    def superseded_by(self, other: Claim) -> bool:
        """True when `other` makes this claim stale: same VM (a VM moves once at a time), or an earlier run of the
        same owner (which holds its host's drain lock, so that run has stopped)."""
        return self.vm == other.vm or (bool(self.owner) and self.owner == other.owner and self.run != other.run)

    def renewed(self, now: float, ttl_s: float = CLAIM_TTL_S) -> Claim:
        return dataclasses.replace(self, expires=now + ttl_s)

    def describe(self) -> str:
        return f"{self.vm} from {self.source} ({self.memory_mib} MiB, {self.vcpus} vCPU; {self.by})"


@dataclasses.dataclass(frozen=True)
class Cordon:
    """The host's cordon as its own drain or host_maintenance set it."""

    cordoned: bool
    by: str = ""
    reason: str = ""
    since: str = ""


@dataclasses.dataclass(frozen=True)
class Ledger:
    host: str
    cordon: Optional[Cordon] = None
    claims: tuple[Claim, ...] = ()

    def live(self, now: float) -> Ledger:
        """Without the claims that expired (their drain stopped renewing them)."""
        return dataclasses.replace(self, claims=tuple(c for c in self.claims if c.expires > now))

    def with_claim(self, claim: Claim) -> Ledger:
        """With `claim`, without the claims it makes stale (Claim.superseded_by)."""
        return dataclasses.replace(self, claims=tuple(c for c in self.claims if not c.superseded_by(claim)) + (claim,))

    def without(self, claim_id: str) -> Ledger:
        return dataclasses.replace(self, claims=tuple(c for c in self.claims if c.id != claim_id))

    def with_cordon(self, cordon: Cordon) -> Ledger:
        return dataclasses.replace(self, cordon=cordon)

    @property
    def cordoned(self) -> bool:
        return self.cordon is not None and self.cordon.cordoned

    def to_json(self) -> str:
        return json.dumps({"version": VERSION, "host": self.host,
                           "cordon": dataclasses.asdict(self.cordon) if self.cordon else None,
                           "claims": [dataclasses.asdict(c) for c in self.claims]}, sort_keys=True)

    @classmethod
    def from_json(cls, host: str, text: str, where: str) -> Ledger:
        """The ledger stored as `text`; LedgerError naming `where` when it is not one this code wrote."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version') if isinstance(data, dict) else '?'}, "
                                 f"expected {VERSION}")
            cordon = Cordon(**data["cordon"]) if data.get("cordon") else None
            claims = tuple(Claim(**c) for c in data.get("claims") or [])
        except (ValueError, TypeError, KeyError) as exc:
            raise LedgerError(f"The capacity ledger of {host} ({where}) is not readable: {exc}.",
                              f"remove it ({where}); drains write a new one and claims in flight are "
                              "re-taken at their next start.") from exc
        return cls(host=host, cordon=cordon, claims=claims)


@dataclasses.dataclass(frozen=True)
class Request:
    """A claim to take on `host` for `demand`, under this drain's limits."""

    claim: Claim
    demand: VmDemand
    returning: bool = False
    max_inbound: int = 0
    link_mib: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """granted; or refused for good (`wait` False) or for now (`wait` True: a slot or the link is busy)."""

    granted: bool
    why: str
    wait: bool = False


def pending(claims: list[Claim], present: frozenset[str]) -> list[Claim]:
    """Claims whose VM is not on the host yet (a VM already there is in the host's own figures)."""
    return [c for c in claims if c.vm not in present]


def decide(ledger: Ledger, request: Request, capacity: HostCapacity, config: PlacementConfig,
           present: frozenset[str]) -> Verdict:
    """Whether `request` may take its claim on the host of `ledger`, given the host's live `capacity`, the
    names of the domains `present` there, and the live claims of every drain (`ledger` already pruned)."""
    others = [c for c in ledger.claims if not c.superseded_by(request.claim)]
    if ledger.cordoned and not request.returning and ledger.cordon is not None:
        c = ledger.cordon
        return Verdict(False, f"{ledger.host} is cordoned ({c.reason or 'no reason given'}; by {c.by or '?'} "
                              f"since {c.since or '?'}): no VM is sent there")
    waiting = pending(others, present)
    held = dataclasses.replace(
        capacity, cordoned=capacity.cordoned and not request.returning,
        memory_used_mib=capacity.memory_used_mib + sum(c.memory_mib for c in waiting),
        vcpus_used=capacity.vcpus_used + sum(c.vcpus for c in waiting))
    ok, why = recheck(request.demand, held, config)
    if not ok:
        claimed = f" (claimed by migrations on their way: {'; '.join(c.describe() for c in waiting)})" \
            if waiting else ""
        return Verdict(False, why + claimed)
    if request.max_inbound and len(others) >= request.max_inbound:
        return Verdict(False, f"{ledger.host} already receives {len(others)} migration(s) (max_inbound "
                              f"{request.max_inbound}): {'; '.join(c.describe() for c in others)}", wait=True)
    if request.link_mib and request.claim.bandwidth_mib:
        used = sum(c.bandwidth_mib or 0 for c in others)
        if used and used + request.claim.bandwidth_mib > request.link_mib:
            return Verdict(False, f"{ledger.host}'s link is taken: {used} of {request.link_mib:.0f} MiB/s claimed "
                                  f"by {'; '.join(c.describe() for c in others if c.bandwidth_mib)}", wait=True)
    return Verdict(True, why)


class LedgerStore(Protocol):
    """Where a host's ledger lives; every read-change-write happens inside `locked()`."""

    def locked(self) -> Any:
        ...

    def read(self) -> Ledger:
        ...

    def write(self, ledger: Ledger) -> None:
        ...


def publish_cordon(store: LedgerStore, cordon: Cordon) -> bool:
    """Write the host's cordon into its ledger (under its lock); True when it changed."""
    with store.locked():
        ledger = store.read()
        if ledger.cordon is not None and ledger.cordoned == cordon.cordoned:
            return False
        store.write(ledger.with_cordon(cordon))
        return True


class MemoryLedgers:
    """Ledgers kept in this process, one per host name: for runs whose backend has no shared place
    (the unit tests' fakes). Production ledgers live on each host (ledger_store.py)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.texts: dict[str, str] = {}

    def store(self, host: str) -> MemoryStore:
        return MemoryStore(self, host)


class MemoryStore:
    def __init__(self, ledgers: MemoryLedgers, host: str) -> None:
        self.ledgers = ledgers
        self.host = host

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self.ledgers.lock:
            yield

    def read(self) -> Ledger:
        text = self.ledgers.texts.get(self.host)
        return Ledger.from_json(self.host, text, "memory") if text else Ledger(self.host)

    def write(self, ledger: Ledger) -> None:
        self.ledgers.texts[self.host] = ledger.to_json()
