# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LibvirtBackend's definition moves and its resume-path actions, against libvirt's in-process test
driver (two private "hosts" from the XML files in data/; nothing touches a libvirt daemon).

A shut-off definition moves whole (its shapes and their rollbacks: test_definition_move.py).
drop_leftover_definition and pause are what the drain's resume path calls; they follow the engine's rule
(engine/leftover.py) and are bounded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import libvirt
import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import DomainNotFound, HvfleetError
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import libvirt_backend
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.libvirt_backend import LibvirtBackend
from ansible_collections.hvfleet.drain.plugins.module_utils.engine import reconcile as rc

DATA = Path(__file__).parent / "data"
SNAPSHOT = "<domainsnapshot><name>before-upgrade</name></domainsnapshot>"

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def names(conn):
    return sorted(d.name() for d in conn.listAllDomains(0))


@pytest.fixture
def hosts():
    """src defines db1 (started by the test driver: shut off here); dst is empty."""
    src = libvirt.open(f"test://{DATA / 'testdriver_src.xml'}")
    dst = libvirt.open(f"test://{DATA / 'testdriver_dst.xml'}")
    src.lookupByName("db1").destroy()
    yield src, dst
    src.close()
    dst.close()


def running_on(dst, src, persistent=True):
    """The VM moved: the same domain (same UUID) runs on dst."""
    xml = src.lookupByName("db1").XMLDesc(0)
    if persistent:
        dst.defineXML(xml).create()
    else:
        dst.createXML(xml, 0)


# ---- move_definition ---------------------------------------------------------------------------


def test_a_shut_off_definition_moves(hosts):
    src, dst = hosts
    LibvirtBackend().move_definition(src, dst, "db1")
    assert names(src) == [] and names(dst) == ["db1"]
    assert dst.lookupByName("db1").isPersistent() and not dst.lookupByName("db1").isActive()


# ---- drop_leftover_definition ------------------------------------------------------------------


def test_the_leftover_goes_when_the_destination_runs_it_persistently(hosts):
    src, dst = hosts
    running_on(dst, src)
    LibvirtBackend().drop_leftover_definition(src, dst, "db1")
    assert names(src) == [] and dst.lookupByName("db1").isActive()


def test_nothing_to_do_when_the_source_has_no_definition(hosts):
    src, dst = hosts
    running_on(dst, src)
    src.lookupByName("db1").undefine()
    LibvirtBackend().drop_leftover_definition(src, dst, "db1")
    assert names(src) == []


@pytest.mark.parametrize("case, why", [
    ("transient", "transient"),
    ("absent", "no running or paused copy"),
    ("snapshot", "it has 1 snapshot"),
    ("source running", "not a shut-off leftover"),
])
def test_the_leftover_stays_and_the_error_says_why(hosts, case, why):
    src, dst = hosts
    if case == "transient":
        running_on(dst, src, persistent=False)
    elif case == "snapshot":
        running_on(dst, src)
        src.lookupByName("db1").snapshotCreateXML(SNAPSHOT, 0)
    elif case == "source running":
        running_on(dst, src)
        src.lookupByName("db1").create()
    with pytest.raises(HvfleetError) as failed:
        LibvirtBackend().drop_leftover_definition(src, dst, "db1")
    assert names(src) == ["db1"], "kept"
    assert why in failed.value.message and src.getURI() in failed.value.message, failed.value.message
    assert failed.value.hint


# ---- pause -------------------------------------------------------------------------------------


def test_pause_suspends_a_running_copy_and_leaves_a_paused_one(hosts):
    src, _dst = hosts
    dom = src.lookupByName("db1")
    dom.create()
    LibvirtBackend().pause(src, "db1")
    assert dom.state()[0] == rc.PAUSED
    LibvirtBackend().pause(src, "db1")  # already paused: nothing to do
    assert dom.state()[0] == rc.PAUSED
    with pytest.raises(DomainNotFound):
        LibvirtBackend().pause(src, "nope")


class _Stuck:
    """A daemon that never answers (a job holds the domain)."""

    def __init__(self, release):
        self.release = release

    def lookupByName(self, name):  # noqa: N802
        self.release.wait()
        raise libvirt.libvirtError("gone")

    def getURI(self):  # noqa: N802
        return "qemu+tcp://stuck/system"


@pytest.mark.parametrize("call", ["pause", "drop_leftover_definition"])
def test_the_resume_path_actions_are_bounded(call, monkeypatch):
    monkeypatch.setattr(libvirt_backend, "ACTION_TIMEOUT_S", 0.3)
    monkeypatch.setattr(rc, "OBSERVE_CALL_TIMEOUT_S", 0.3)
    release = threading.Event()
    stuck = _Stuck(release)
    backend = LibvirtBackend()
    started = time.monotonic()
    try:
        with pytest.raises(HvfleetError) as failed:
            if call == "pause":
                backend.pause(stuck, "db1")
            else:
                backend.drop_leftover_definition(stuck, stuck, "db1")
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 3, f"{call} took {took:.1f} s"
    assert "qemu+tcp://stuck/system" in failed.value.message and failed.value.hint
