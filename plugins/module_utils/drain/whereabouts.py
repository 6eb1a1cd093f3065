# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where is a VM really? Look at every host a run knows, then decide from what is there.

A journal entry says what a run last did, not where the VM is now: a post-copy may have completed
after its deadline, an operator may have resumed one by hand, a link may have come back. So resume
and restore first look (`locate`: the domain's state on each host, without changing anything) and
then `judge` (pure) names the placement and the one safe thing to do about it - including a shut-off
definition libvirt left behind on the source, which must never become a second copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.common.vocabulary import Word
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile
from ansible_collections.hvfleet.drain.plugins.module_utils.engine.reconcile import SideView


class Placement(Word):
    ON_SOURCE = "on_source"  # running, paused or defined on the source only: plan it
    MOVED = "moved"  # on `host` only (a leftover shut-off definition elsewhere is dropped)
    IN_FLIGHT = "in_flight"  # a pre-copy job is still active: wait, then abort (the VM stays on the source)
    POSTCOPY_STREAMING = "postcopy_streaming"  # post-copy still running: wait; never touch the source
    POSTCOPY_INTERRUPTED = "postcopy_interrupted"  # resume the post-copy to `host`, before anything else
    DEFINITION_TWICE = "definition_twice"  # shut off on the source and on `host`: a half-done definition move
    TWO_RUNNING = "two_running"  # running on two hosts: pause as `pause` says, then a person decides
    UNSAFE = "unsafe"  # a state a drain must not touch (both paused, post-copy destination lost...)
    MISSING = "missing"  # on no host that could be seen
    UNKNOWN = "unknown"  # a host that may hold it cannot be seen


@dataclasses.dataclass(frozen=True)
class Whereabouts:
    """The domain's state on each host looked at (host name -> SideView)."""

    name: str
    views: dict

    def hosts(self, predicate: Any) -> list[str]:
        return sorted(h for h, v in self.views.items() if predicate(v))

    @property
    def active_on(self) -> list[str]:
        return self.hosts(lambda v: v.running or v.paused)

    @property
    def defined_on(self) -> list[str]:
        return self.hosts(lambda v: v.present)

    @property
    def unreachable(self) -> list[str]:
        return self.hosts(lambda v: not v.reachable)

    def describe(self) -> str:
        return "; ".join(f"{h}: {v.label()}" for h, v in sorted(self.views.items()))


@dataclasses.dataclass(frozen=True)
class Judgement:
    placement: Placement
    host: Optional[str]  # where the VM is (or is going), when one host is meant
    reason: str
    pause: tuple = ()  # hosts whose running copy must be paused (never two running copies)
    drop_leftover_on: tuple = ()  # hosts holding a shut-off leftover definition of a VM that runs on `host`


def locate(backend: Any, conns: Any, name: str, hosts: list) -> Whereabouts:
    """Observe `name` on each of `hosts` (Host objects); a host that cannot be reached is recorded so."""
    views = {}
    for host in hosts:
        try:
            views[host.name] = backend.observe(conns.get(host.uri), name, host.uri)
        except HvfleetError as exc:
            views[host.name] = SideView(uri=host.uri, reachable=False, error=exc.message)
    return Whereabouts(name, views)


def judge(where: Whereabouts, source: str, destination: Optional[str],  # pylint: disable=too-many-return-statements
          postcopy_started: bool = False) -> Judgement:
    """Placement of the VM from what each host shows (pure). `destination`: where the journal says it went."""
    text = where.describe()
    active = where.active_on
    others = [h for h in active if h != source]
    dest = destination if destination in others else (others[0] if others else destination)
    src_view = where.views.get(source) or SideView(uri=source, reachable=False, error="not looked at")
    dst_view = where.views.get(dest) if dest else None
    if dst_view is None:
        dst_view = SideView(uri=str(dest), present=False)
    extra = [h for h in others if h != dest]  # a third copy: never legitimate
    if extra:
        running = tuple(h for h in active if where.views[h].running and h != dest)
        return Judgement(Placement.TWO_RUNNING, dest, f"'{where.name}' is active on {', '.join(active)} ({text})",
                         pause=running)
    verdict = reconcile.classify(src_view, dst_view, postcopy_started=postcopy_started)
    leftovers = tuple(h for h in where.defined_on if h not in active and h != dest)
    placement = verdict.placement
    if placement == reconcile.MOVED or placement == reconcile.PAUSED_ON_DESTINATION:
        return Judgement(Placement.MOVED, dest, verdict.reason, drop_leftover_on=leftovers)
    if placement == reconcile.STAYED or placement == reconcile.PAUSED_ON_SOURCE and not postcopy_started:
        stale = tuple(h for h in where.defined_on if h not in active)
        return Judgement(Placement.ON_SOURCE, source, verdict.reason, drop_leftover_on=stale)
    if placement == reconcile.IN_FLIGHT:
        return Judgement(Placement.IN_FLIGHT, dest, verdict.reason)
    if placement == reconcile.POSTCOPY_ACTIVE:
        return Judgement(Placement.POSTCOPY_STREAMING, dest, verdict.reason)
    if placement == reconcile.POSTCOPY_INTERRUPTED:
        return Judgement(Placement.POSTCOPY_INTERRUPTED, dest, verdict.reason)
    if placement == reconcile.BOTH_RUNNING:
        pause = {reconcile.PAUSE_SOURCE: (source,), reconcile.PAUSE_DESTINATION: (dest,),
                 reconcile.PAUSE_BOTH: (source, dest)}.get(verdict.action, ())
        return Judgement(Placement.TWO_RUNNING, dest, verdict.reason, pause=tuple(h for h in pause if h))
    if where.unreachable and not active:
        return Judgement(Placement.UNKNOWN, dest, f"'{where.name}' is not active on any host that answered and "
                         f"{', '.join(where.unreachable)} cannot be seen ({text})")
    if placement == reconcile.NOWHERE or (not active and not where.unreachable):
        return _inactive(where, source, dest, text)
    return Judgement(Placement.UNSAFE, dest, verdict.reason)


def _inactive(where: Whereabouts, source: str, dest: Optional[str], text: str) -> Judgement:
    """Nothing runs anywhere: where is it defined?"""
    defined = where.defined_on
    if defined == [source]:
        return Judgement(Placement.ON_SOURCE, source, f"defined (shut off) on {source} only ({text})")
    if len(defined) == 1:
        return Judgement(Placement.MOVED, defined[0], f"defined (shut off) on {defined[0]} only ({text})")
    if not defined:
        return Judgement(Placement.MISSING, dest, f"'{where.name}' is defined on no host given ({text})")
    other = dest if dest in defined else next(h for h in defined if h != source)
    if len(defined) == 2 and source in defined:
        return Judgement(Placement.DEFINITION_TWICE, other, f"shut off and defined on both {source} and {other} "
                         f"({text})")
    return Judgement(Placement.UNSAFE, other, f"shut off and defined on {', '.join(defined)} ({text})")
