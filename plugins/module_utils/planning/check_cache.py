# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The live calls of the prerequisite checks, made once per plan and per distinct question.

A plan checks every VM of a host against every candidate destination. Most of what those checks ask a
host live does not depend on the VM: whether the destination's migration address answers, whether it
has a file at a path (after a storage-pool refresh), what libvirt says of a CPU definition, whether a
disk of the source is on shared storage. `CheckCache` keeps each answer for the length of one plan:

- per destination and distinct requirement: the probe of its migration address (host, port); a CPU
  definition compared (emulator, arch, machine, virt type, the CPU XML without what the comparison ignores -
  cpu_definition - and flags): VMs of one CPU model and feature set ask once; a storage path looked up
  (and its pool refreshed); a pool volume looked up;
- per source and disk: whether the disk is shared (its pool, or the filesystem under its path).

What is kept is the outcome of the call - its value, or the exception it raised - so a check built on
it decides and words exactly what it would have with the call made afresh; a cached plan and an
uncached one give the same checks. Each scope (the source, one destination) computes a key once, under
that scope's lock: the source's connection is never used by two threads at once, and a destination's
only by the thread checking that destination. A cache lives for one plan (facts go stale): the planner
makes a new one each time, nothing keeps one longer.
"""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Hashable
from typing import Any, Optional, TypeVar, cast

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.probe import LocalProbe, Probe

T = TypeVar("T")

SOURCE = "source"  # the scope of what is asked of the source host


class CheckCache:
    """Answers of live calls by (scope, key) for one plan; `calls` counts the calls made, `hits` those saved.

    `probe` is the one local probe of the plan (it reads /proc/self/mounts once)."""

    def __init__(self, probe: Optional[Probe] = None) -> None:
        self.probe: Probe = probe if probe is not None else LocalProbe()
        self.calls = 0
        self.hits = 0
        self._lock = threading.Lock()
        self._scopes: dict[str, threading.Lock] = {}
        self._answers: dict[tuple[str, Hashable], tuple[bool, Any]] = {}

    def _scope_lock(self, scope: str) -> threading.Lock:
        with self._lock:
            lock = self._scopes.get(scope)
            if lock is None:
                lock = self._scopes[scope] = threading.Lock()
            return lock

    def _known(self, entry: tuple[str, Hashable]) -> Optional[tuple[bool, Any]]:
        with self._lock:
            found = self._answers.get(entry)
            if found is not None:
                self.hits += 1
            return found

    def recall(self, scope: str, key: Hashable, call: Callable[[], T]) -> T:
        """call()'s outcome for (scope, key): made on the first ask, replayed after (a value returned
        again, an exception raised again)."""
        entry = (scope, key)
        found: Optional[tuple[bool, Any]] = self._known(entry)
        if found is None:
            with self._scope_lock(scope):
                found = self._known(entry)
                if found is None:
                    try:
                        found = (True, call())
                    except Exception as exc:  # pylint: disable=broad-except
                        found = (False, exc)
                    with self._lock:
                        self.calls += 1
                        self._answers[entry] = found
        if found[0]:
            return cast(T, found[1])
        raise cast(Exception, found[1])


def recall(cache: Optional[CheckCache], scope: str, key: Hashable, call: Callable[[], T]) -> T:
    """call() through `cache`, or made afresh when there is none."""
    if cache is None:
        return call()
    return cache.recall(scope, key, call)


# Parts of a domain's <cpu> libvirt's CPU comparison does not look at (it compares vendor, model and features):
# the vCPU topology and the guest NUMA cells differ from VM to VM and would make every VM a distinct question.
_NOT_COMPARED = ("topology", "numa", "cache", "maxphysaddr")


def cpu_definition(cpu_xml: str) -> str:
    """The <cpu> XML as a CPU definition to compare: without what the comparison ignores (_NOT_COMPARED) and
    whitespace between elements, so VMs with one CPU model and feature set ask one question per destination."""
    if not cpu_xml:
        return cpu_xml
    try:
        cpu = ET.fromstring(cpu_xml)
    except ET.ParseError:
        return cpu_xml  # libvirt words what is wrong with it
    for child in [c for c in cpu if c.tag in _NOT_COMPARED]:
        cpu.remove(child)
    for element in cpu.iter():
        element.tail = None
        if element.text is not None and not element.text.strip():
            element.text = None
    return ET.tostring(cpu, encoding="unicode")


def destination_scope(name: str) -> str:
    """The scope of what is asked of destination `name`."""
    return f"destination:{name}"
