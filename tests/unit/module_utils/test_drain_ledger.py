"""The fleet-wide capacity ledger: the decision, its store in libvirt secrets, and two drains at once."""

from __future__ import annotations

import threading
import time

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.drain import ledger_store
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.drainer import Drainer
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import (
    Claim,
    Cordon,
    Ledger,
    LedgerError,
    Request,
    decide,
)
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.model import DrainConfig
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.model import Host
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.placement import (
    HostCapacity,
    PlacementConfig,
    VmDemand,
)
from drain_fakes import FakeBackend, World, vm

NOW = 1_000_000.0
CONFIG = PlacementConfig(memory_headroom_mib=0, memory_headroom_fraction=0.0, vcpu_overcommit=1.0)


def claim(vm_name, memory=1024, vcpus=1, source="hv1", expires=NOW + 60, bandwidth=None, run="r1"):
    return Claim(id=f"{run}/{vm_name}", vm=vm_name, source=source, memory_mib=memory, vcpus=vcpus,
                 by=f"drain of {source}", expires=expires, bandwidth_mib=bandwidth)


def request(vm_name="x", memory=1024, vcpus=1, returning=False, max_inbound=0, link_mib=None, bandwidth=None):
    return Request(claim(vm_name, memory, vcpus, source="hv9", run="mine", bandwidth=bandwidth),
                   VmDemand(vm_name, memory, vcpus), returning=returning, max_inbound=max_inbound, link_mib=link_mib)


def capacity(used=0, vcpus_used=0, total=4096, cpus=8):
    return HostCapacity("hv3", total, used, cpus, vcpus_used)


# ---- the decision ----------------------------------------------------------------------------------


def test_claims_of_vms_not_there_yet_count_against_the_memory():
    ledger = Ledger("hv3", claims=(claim("a1", 2048), claim("a2", 1024)))
    verdict = decide(ledger, request(memory=1536), capacity(), CONFIG, present=frozenset())
    assert not verdict.granted and not verdict.wait
    assert "a1 from hv1" in verdict.why and "a2 from hv1" in verdict.why  # names what is in the way
    fits = decide(ledger, request(memory=1024), capacity(), CONFIG, present=frozenset())
    assert fits.granted, fits.why


def test_a_vm_already_on_the_host_is_not_counted_twice():
    """Once the migration started its domain is in the host's own figures; its claim must not add to them."""
    ledger = Ledger("hv3", claims=(claim("a1", 2048),))
    verdict = decide(ledger, request(memory=2048), capacity(used=2048), CONFIG, present=frozenset({"a1"}))
    assert verdict.granted, verdict.why
    counted_twice = decide(ledger, request(memory=2048), capacity(used=2048), CONFIG, present=frozenset())
    assert not counted_twice.granted


def test_vcpus_claimed_count_too():
    ledger = Ledger("hv3", claims=(claim("a1", 64, vcpus=6),))
    verdict = decide(ledger, request(memory=64, vcpus=3), capacity(cpus=8), CONFIG, present=frozenset())
    assert not verdict.granted and "vCPU" in verdict.why


def test_a_cordoned_host_takes_no_vm_but_its_own_coming_home():
    ledger = Ledger("hv3", cordon=Cordon(True, by="drain of hv3 by ops@ctl", reason="CHG-1", since="2026-12-04"))
    refused = decide(ledger, request(), capacity(), CONFIG, present=frozenset())
    assert not refused.granted and not refused.wait
    assert "hv3 is cordoned (CHG-1; by drain of hv3 by ops@ctl" in refused.why
    assert decide(ledger, request(returning=True), capacity(), CONFIG, present=frozenset()).granted


def test_a_busy_inbound_slot_or_link_means_wait_not_refuse():
    ledger = Ledger("hv3", claims=(claim("a1", 64, bandwidth=100),))
    slot = decide(ledger, request(memory=64, max_inbound=1), capacity(), CONFIG, present=frozenset())
    assert not slot.granted and slot.wait and "max_inbound 1" in slot.why
    link = decide(ledger, request(memory=64, link_mib=119.2, bandwidth=50), capacity(), CONFIG, present=frozenset())
    assert not link.granted and link.wait and "link" in link.why
    assert decide(ledger, request(memory=64, link_mib=200, bandwidth=50), capacity(), CONFIG,
                  present=frozenset()).granted


def test_claims_of_a_crashed_drain_lapse():
    ledger = Ledger("hv3", claims=(claim("old", 4096, expires=NOW - 1), claim("new", 1024, expires=NOW + 1)))
    assert [c.vm for c in ledger.live(NOW).claims] == ["new"]
    assert decide(ledger.live(NOW), request(memory=3072), capacity(), CONFIG, present=frozenset()).granted


def test_the_ledger_round_trips_and_a_garbled_one_is_named():
    ledger = Ledger("hv3", cordon=Cordon(True, "me", "why", "then"), claims=(claim("a1"),))
    assert Ledger.from_json("hv3", ledger.to_json(), "here") == ledger
    with pytest.raises(LedgerError) as err:
        Ledger.from_json("hv3", '{"version": 7}', "libvirt secret 1234 on hv3")
    assert "libvirt secret 1234 on hv3" in err.value.message and "remove it" in err.value.hint


# ---- the store: libvirt secrets --------------------------------------------------------------------


class FakeSecret:
    def __init__(self, conn, key, usage):
        self.conn, self.key, self.usage, self.data = conn, key, usage, None

    def UUIDString(self):  # noqa: N802 (libvirt's name)
        return self.key

    def setValue(self, value, flags=0):  # noqa: N802
        self.conn.alive(self)
        self.data = value

    def value(self, flags=0):
        self.conn.alive(self)
        if self.data is None:
            raise RuntimeError("secret has no value")
        return self.data

    def undefine(self):
        with self.conn.lock:
            self.conn.alive(self)
            del self.conn.secrets[self.usage]


class FakeSecretConn:
    """The two properties of libvirt's secret driver the store relies on: a usage id is held by one secret
    only (a second define with another UUID is refused), and every object is addressed by its UUID."""

    def __init__(self):
        self.lock = threading.Lock()
        self.secrets = {}
        self.count = 0

    def alive(self, secret):
        if self.secrets.get(secret.usage) is not secret:
            raise RuntimeError(f"Secret not found: no secret with matching uuid '{secret.key}'")

    def secretDefineXML(self, xml, flags=0):  # noqa: N802
        usage = xml.split("<volume>")[1].split("</volume>")[0]
        key = xml.split("<uuid>")[1].split("</uuid>")[0] if "<uuid>" in xml else f"u{self.count}"
        with self.lock:
            self.count += 1
            old = self.secrets.get(usage)
            if old is not None and old.key != key:
                raise RuntimeError(f"internal error: a secret with UUID {old.key} already defined for use with {usage}")
            self.secrets[usage] = old or FakeSecret(self, key, usage)
            return self.secrets[usage]

    def secretLookupByUsage(self, kind, usage):  # noqa: N802
        with self.lock:
            if usage not in self.secrets:
                raise RuntimeError(f"Secret not found: no secret with matching usage '{usage}'")
            return self.secrets[usage]


def test_the_lock_admits_one_holder_at_a_time():
    conn = FakeSecretConn()
    inside, most = [0], [0]
    guard = threading.Lock()

    def worker(i):
        store = ledger_store.SecretLedgerStore(conn, "hv3", f"t{i}")
        for _round in range(5):
            with store.locked():
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                ledger = store.read()
                store.write(ledger.with_claim(claim(f"vm{i}-{len(ledger.claims)}")))
                with guard:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1
    assert len(ledger_store.SecretLedgerStore(conn, "hv3", "x").read().claims) == 20  # no update was lost
    assert ledger_store.LOCK_USAGE not in conn.secrets  # every holder released it


def test_a_lock_whose_holder_died_is_taken_over_after_its_ttl():
    conn = FakeSecretConn()
    clock = [NOW]
    dead = ledger_store.SecretLedgerStore(conn, "hv3", "drain of hv1 (pid 1)", wall=lambda: clock[0])
    dead._acquire()  # never released: the process died holding it  # pylint: disable=protected-access

    def sleep(seconds):
        clock[0] += seconds

    waiting = ledger_store.SecretLedgerStore(conn, "hv3", "drain of hv2", wall=lambda: clock[0], sleep=sleep)
    with waiting.locked():
        waited = clock[0] - NOW
    assert ledger_store.LOCK_TTL_S <= waited < ledger_store.LOCK_TTL_S + 1


def test_a_lock_held_too_long_is_an_error_naming_its_holder():
    conn = FakeSecretConn()
    clock = [NOW]
    holder = ledger_store.SecretLedgerStore(conn, "hv3", "drain of hv1 by ops@ctl", wall=lambda: clock[0])
    holder._acquire()  # pylint: disable=protected-access

    def sleep(seconds):
        clock[0] += seconds
        with conn.lock:  # the holder is alive: it renews its stamp
            lock = conn.secrets[ledger_store.LOCK_USAGE]
        lock.data = ('{"holder": "drain of hv1 by ops@ctl", "expires": %f}' % (clock[0] + 30)).encode()

    waiting = ledger_store.SecretLedgerStore(conn, "hv3", "me", wall=lambda: clock[0], sleep=sleep, acquire_s=5)
    with pytest.raises(LedgerError) as err:
        waiting._acquire()  # pylint: disable=protected-access
    assert "hv3" in err.value.message and "drain of hv1 by ops@ctl" in err.value.message


def test_a_daemon_without_secrets_gives_an_error_that_says_so():
    class NoSecrets:
        def secretLookupByUsage(self, *a):  # noqa: N802
            raise RuntimeError("this function is not supported by the connection driver: virSecretLookupByUsage")

        def secretDefineXML(self, *a):  # noqa: N802
            raise RuntimeError("this function is not supported by the connection driver: virSecretDefineXML")

    store = ledger_store.SecretLedgerStore(NoSecrets(), "hv3", "me")
    with pytest.raises(LedgerError) as err:
        store.read()
    assert "hv3" in err.value.message and "secret driver" in err.value.hint


# ---- two drains at once over a fake fleet --------------------------------------------------------


def _host(name):
    return Host(name, World.uri(name), migration_address=f"10.0.0.{name[-1]}", link_mbit=1000)


def _drainer(world, source, destinations, tmp_path, **config):
    backend = FakeBackend(world, migrate_delay=0.3)
    config = {"progress_interval_s": 0.05, "max_parallel": 1, "measure_dirty_rate": False,
              "placement": PlacementConfig(memory_headroom_mib=0, memory_headroom_fraction=0.0), **config}
    state = tmp_path / source
    state.mkdir()
    return Drainer(backend, _host(source), [_host(d) for d in destinations], DrainConfig(**config),
                   state_dir=str(state)), backend


def _run_together(*drainers):
    results = {}
    threads = [threading.Thread(target=lambda d=d: results.__setitem__(d.ctx.source.name, d.drain()))
               for d in drainers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_two_drains_onto_one_destination_with_room_for_one_set_never_overcommit_it(tmp_path):
    world = World(["hv1", "hv2", "hv3"], memory_mib=2560)  # hv3 has room for two 1 GiB VMs, not four
    for name in ("a1", "a2"):
        world.place("hv1", name, vm(memory=1024))
    for name in ("b1", "b2"):
        world.place("hv2", name, vm(memory=1024))
    seen = []

    def watch(name, src, dst):
        with world.lock:
            seen.append(sum(d["memory"] for d in world.hosts["hv3"].values()) + 1024)  # with this one

    a, backend_a = _drainer(world, "hv1", ["hv3"], tmp_path)
    b, backend_b = _drainer(world, "hv2", ["hv3"], tmp_path)
    backend_a.before_migrate = backend_b.before_migrate = watch
    results = _run_together(a, b)
    on_hv3 = sorted(world.hosts["hv3"])
    assert sum(d["memory"] for d in world.hosts["hv3"].values()) <= 2560
    assert max(seen) <= 2560 and len(on_hv3) == 2, (seen, on_hv3)
    for name in ("a1", "a2", "b1", "b2"):
        assert len(world.where(name)) == 1
    refused = [b for r in results.values() for b in r.blockers if b["vm"] not in on_hv3]
    assert len(refused) == 2 and all("claimed by migrations on their way" in b["message"] or "short" in b["message"]
                                     or "MiB" in b["message"] for b in refused), refused
    assert world.ledgers.store("hv3").read().live(time.time()).claims == ()  # every claim given back


def test_draining_two_hosts_at_once_never_sends_a_vm_from_one_to_the_other(tmp_path):
    world = World(["hv1", "hv2", "hv3"], memory_mib=65536)
    for name in ("a1", "a2"):
        world.place("hv1", name, vm(memory=512))
    for name in ("b1", "b2", "b3"):
        world.place("hv2", name, vm(memory=512))
    moves = []

    def record(name, src, dst):
        moves.append((src, dst))

    b, backend_b = _drainer(world, "hv2", ["hv1", "hv3"], tmp_path)
    backend_b.before_migrate = record
    thread = threading.Thread(target=b.drain)
    thread.start()
    deadline = time.monotonic() + 10
    while not world.ledgers.store("hv2").read().cordoned:  # hv2's drain has begun
        assert time.monotonic() < deadline
        time.sleep(0.01)
    a, backend_a = _drainer(world, "hv1", ["hv2", "hv3"], tmp_path)
    backend_a.before_migrate = record
    a.drain()
    thread.join(60)
    assert ("hv1", "hv2") not in moves, moves
    # a VM of hv2 that reached hv1 before hv1's cordon was waited for and moved on: both hosts end empty
    assert world.hosts["hv1"] == {} and world.hosts["hv2"] == {}, moves
    assert sorted(world.hosts["hv3"]) == ["a1", "a2", "b1", "b2", "b3"]
