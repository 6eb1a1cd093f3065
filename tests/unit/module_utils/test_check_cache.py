"""The prerequisite checks with a per-plan CheckCache say exactly what they say without one, over randomised
fleets of fake libvirt hosts, while each live call is made once per destination and distinct question."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.planning import preflight as P
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.check_cache import CheckCache, cpu_definition
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.policy_schema import DEFAULT_SETTINGS
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN
from test_preflight import DST, SRC, Conn, Pool, Probe, domain

CPUS = ["qemu64", "Skylake-Client", "EPYC", "Haswell"]
DIRS = ["/var/lib/libvirt/images", "/mnt/nfs", "/srv/vm"]
ISO = "<disk type='file' device='cdrom'><source file='/srv/iso/{f}'/><target dev='sda'/><readonly/></disk>"


def file_disk(directory, name, target):
    return f"<disk type='file' device='disk'><source file='{directory}/{name}'/><target dev='{target}'/></disk>"


def volume_disk(pool, name, target):
    return f"<disk type='volume' device='disk'><source pool='{pool}' volume='{name}'/><target dev='{target}'/></disk>"


class CountingConn(Conn):
    """A destination's storage and CPU calls, counted; `incompatible` CPU models compare as incompatible."""

    def __init__(self, pools, incompatible=(), cpu_error=None):
        super().__init__(pools, cpu_error=cpu_error)
        self.incompatible = set(incompatible)
        self.storage_calls = 0

    def compareHypervisorCPU(self, emulator, arch, machine, virttype, xml, flags):
        self.cpu_result = 0 if any(m in xml for m in self.incompatible) else P.VIR_CPU_COMPARE_IDENTICAL
        return super().compareHypervisorCPU(emulator, arch, machine, virttype, xml, flags)

    def storageVolLookupByPath(self, path):
        self.storage_calls += 1
        return super().storageVolLookupByPath(path)

    def storagePoolLookupByTargetPath(self, directory):
        self.storage_calls += 1
        return super().storagePoolLookupByTargetPath(directory)


class HostProbe(Probe):
    """Reach results by host; mounts: /mnt/nfs is NFS."""

    def __init__(self, results):
        super().__init__(fs={"/mnt/nfs": "nfs4"})
        self.results = results

    def reach(self, host, port):
        self.reached.append((host, port))
        return self.results[host]


def fleet(seed):
    """(vms, destinations, source conn, probe) of one randomised fleet; built afresh for each run."""
    rng = random.Random(seed)
    vms = []
    for i in range(rng.randint(3, 9)):
        disks = []
        for n in range(rng.randint(0, 3)):
            target = "vd" + "abc"[n]
            if rng.random() < 0.25:
                disks.append(volume_disk(rng.choice(["ceph", "local", "gone"]), f"v{rng.randint(0, 3)}", target))
            else:
                disks.append(file_disk(rng.choice(DIRS), f"d{rng.randint(0, 5)}.qcow2", target))
        if rng.random() < 0.3:
            disks.append(ISO.format(f=rng.choice(["a.iso", "b.iso"])))
        cpu = f"<cpu mode='custom' match='exact'><model>{rng.choice(CPUS)}</model></cpu>"
        nics = "".join(f"<interface type='bridge'><mac address='52:54:00:00:00:0{n}'/><source bridge='{b}'/>"
                       "</interface>" for n, b in enumerate(rng.sample(["br0", "br1", "br2"], rng.randint(0, 2))))
        dom = dataclasses.replace(domain("".join(disks), nics=nics, cpu=cpu, memory=rng.choice([512, 2048, 20000])),
                                  name=f"vm{i}")
        settings = dict(DEFAULT_SETTINGS, storage=rng.choice(["shared_only", "copy_all", "copy_incremental"]),
                        mode=rng.choice(["precopy", "auto", "postcopy"]))
        vms.append((dom, settings))
    dests = []
    results = {}
    for d in range(rng.randint(2, 7)):
        pools = []
        for p, directory in enumerate(DIRS):
            if rng.random() < 0.6:
                files = {f"d{k}.qcow2" for k in range(6) if rng.random() < 0.4}
                hidden = {f"d{k}.qcow2" for k in range(6) if rng.random() < 0.2}
                pools.append(Pool(f"p{p}", rng.choice(["dir", "netfs"]), directory, files, rng.random() < 0.9,
                                  hidden))
        pools.append(Pool("ceph", "rbd", "", {"v0", "v1", "v2"}))
        pools.append(Pool("local", "logical", "", {"v1"}))
        pools.append(Pool("iso", "dir", "/srv/iso", {"a.iso"}, hidden={"b.iso"}))
        conn = CountingConn(pools, rng.sample(CPUS, rng.randint(0, 2)),
                            cpu_error="no emulator" if rng.random() < 0.1 else None)
        address = f"10.0.1.{d}"
        results[address] = rng.choice([(PASS, f"{address}:16509 accepted a TCP connection"),
                                       (WARN, f"no answer from {address}:16509 within 2 s"),
                                       (FAIL, f"no route to {address}")])
        facts = dataclasses.replace(DST, name=f"hv{d + 2}", host_uuid=f"u{d + 2}",
                                    bridges={b: 1500 for b in ["br0", "br1", "br2"] if rng.random() < 0.7},
                                    memory_available_mib=rng.choice([1000, 16000]))
        dests.append((facts, conn, address))
    src_conn = Conn([Pool("srcnfs", "netfs", "/mnt/nfs", {f"d{k}.qcow2" for k in range(6)})])
    return vms, dests, src_conn, HostProbe(results)


def check_all(seed, cached):
    vms, dests, src_conn, probe = fleet(seed)
    cache = CheckCache(probe) if cached else None
    out = []
    for dom, settings in vms:
        for facts, conn, address in dests:
            res = P.run_prechecks(src_conn, conn, dom, SRC, facts, settings, migration_address=address,
                                  probe=None if cached else probe, cache=cache)
            out.append((res.vm, res.destination, [c.to_dict() for c in res.checks], res.copy_storage, res.copy_disks,
                        res.summary()))
    return out, vms, dests, probe, cache


@pytest.mark.parametrize("seed", range(40))
def test_cached_checks_say_what_uncached_checks_say(seed):
    plain = check_all(seed, cached=False)[0]
    cached = check_all(seed, cached=True)[0]
    assert cached == plain


@pytest.mark.parametrize("seed", range(10))
def test_each_live_call_is_made_once_per_destination_and_distinct_question(seed):
    _out, vms, dests, probe, cache = check_all(seed, cached=True)
    assert sorted(probe.reached) == sorted((address, 16509) for _f, _c, address in dests)  # one probe each
    for _facts, conn, _address in dests:
        assert len(conn.cpu_calls) == len(set(conn.cpu_calls))
        assert {xml for *_rest, xml, _flags in conn.cpu_calls} <= {dom.cpu_xml for dom, _s in vms}
        for pool in conn.pools:  # a pool is refreshed at most once per distinct path looked up in it
            paths = {d.path for dom, _s in vms for d in dom.disks
                     if d.path and d.path.rpartition("/")[0] == pool.target}
            assert pool.refreshed <= len(paths)
    assert cache.calls > 0 and cache.hits > 0


def test_the_uncached_path_asks_again_for_every_vm():
    """The comparison point: without a cache, two VMs of the same CPU model compare it twice."""
    dom = domain()
    other = dataclasses.replace(dom, name="vm2")
    for cache in (None, CheckCache(Probe())):
        conn = CountingConn([])
        probe = Probe()
        for d in (dom, other):
            P.run_prechecks(Conn(), conn, d, SRC, DST, dict(DEFAULT_SETTINGS), migration_address="10.0.0.12",
                            probe=probe if cache is None else None, cache=cache)
        assert len(conn.cpu_calls) == (2 if cache is None else 1)
        assert len(probe.reached if cache is None else cache.probe.reached) == (2 if cache is None else 1)


def test_a_failed_call_is_replayed_as_the_same_warning():
    conn = CountingConn([], cpu_error="cannot find emulator")
    cache = CheckCache(Probe())
    first, second = (P.run_prechecks(Conn(), conn, domain(), SRC, DST, dict(DEFAULT_SETTINGS), cache=cache,
                                     migration_address="10.0.0.12") for _round in range(2))
    cpu = [[c for c in r.checks if c.id == "cpu.compat"] for r in (first, second)]
    assert cpu[0] == cpu[1] and cpu[0][0].status == WARN and "cannot find emulator" in cpu[0][0].message
    assert len(conn.cpu_calls) == 1


def test_one_call_per_key_when_threads_ask_at_once():
    cache = CheckCache(Probe())
    barrier = threading.Barrier(6, timeout=10)
    made = []
    answers = []

    def call():
        made.append(1)
        return "answer"

    def ask():
        barrier.wait()
        answers.append(cache.recall("destination:hv2", ("cpu", "x"), call))

    threads = [threading.Thread(target=ask) for _thread in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == ["answer"] * 6 and len(made) == 1 and cache.calls == 1 and cache.hits == 5


def test_scopes_keep_destinations_apart():
    cache = CheckCache(Probe())
    assert cache.recall("destination:hv2", "k", lambda: 2) == 2
    assert cache.recall("destination:hv3", "k", lambda: 3) == 3
    assert cache.recall("destination:hv2", "k", lambda: 4) == 2


def test_a_local_disk_that_is_not_copied_fails_without_asking_the_destination():
    """Its verdict does not depend on the destination, so the destination's storage is not asked."""
    conn = CountingConn([Pool("images", "dir", "/var/lib/libvirt/images", {"vm1.qcow2"})])
    local = file_disk("/var/lib/libvirt/images", "vm1.qcow2", "vda")
    res = P.run_prechecks(Conn(), conn, domain(local), SRC, DST, dict(DEFAULT_SETTINGS, storage="shared_only"),
                          migration_address="10.0.0.12", probe=Probe())
    disk = [c for c in res.checks if c.id == "storage.disk"]
    assert [c.status for c in disk] == [FAIL] and "is not on shared storage" in disk[0].message
    assert "local ext4 filesystem" in disk[0].message and conn.storage_calls == 0
    copied = P.run_prechecks(Conn(), conn, domain(local), SRC, DST, dict(DEFAULT_SETTINGS, storage="copy_all"),
                             migration_address="10.0.0.12", probe=Probe())
    assert [c.status for c in copied.checks if c.id == "storage.disk"] == [PASS] and conn.storage_calls > 0


def _cpu(model="Haswell", features=("avx2",), cores=1, numa=""):
    feats = "".join(f"\n    <feature policy='require' name='{f}'/>" for f in features)
    return (f"<cpu mode='custom' match='exact' check='partial'>\n    <model fallback='forbid'>{model}</model>{feats}"
            f"\n    <topology sockets='1' dies='1' cores='{cores}' threads='1'/>{numa}\n  </cpu>")


def test_cpu_compatibility_is_asked_once_per_distinct_cpu_definition_and_destination():
    """Twelve VMs, three CPU definitions (vCPU topology and guest NUMA cells vary, libvirt does not compare
    them), two destinations: six compareHypervisorCPU calls, each destination asked about each definition once."""
    numa = "\n    <numa><cell id='0' cpus='0' memory='262144' unit='KiB'/></numa>"
    shapes = [_cpu(cores=1), _cpu(cores=4), _cpu(cores=2, numa=numa), _cpu(model="EPYC", features=()),
              _cpu(model="EPYC", features=(), cores=8), _cpu(features=("avx2", "aes"))]
    vms = [dataclasses.replace(domain(cpu=shapes[i % len(shapes)]), name=f"vm{i}") for i in range(12)]
    assert len({vm.cpu_xml for vm in vms}) == 6  # six distinct <cpu> texts...
    cache = CheckCache(Probe())
    conns = {}
    for dest in ("hv2", "hv3"):
        conns[dest] = CountingConn([], incompatible=["EPYC"])
        facts = dataclasses.replace(DST, name=dest, host_uuid=dest)
        results = [P.run_prechecks(Conn(), conns[dest], vm, SRC, facts, dict(DEFAULT_SETTINGS), cache=cache,
                                   migration_address="10.0.0.12") for vm in vms]
        verdicts = [[c.status for c in r.checks if c.id == "cpu.compat"] for r in results]
        assert verdicts == [[FAIL] if "EPYC" in vm.cpu_xml else [PASS] for vm in vms]
    for conn in conns.values():  # ...three definitions: Haswell+avx2, EPYC, Haswell+avx2+aes
        plain = [call for call in conn.cpu_calls if call[5] == 0]
        assert len(plain) == 3 and len(set(plain)) == 3
        assert all("topology" not in call[4] and "numa" not in call[4] for call in conn.cpu_calls)
        assert len(conn.cpu_calls) == 4  # plus one call naming EPYC's missing features, also once


def test_the_cpu_definition_keeps_what_libvirt_compares():
    text = cpu_definition(_cpu(features=("avx2", "aes"), cores=4))
    assert "<model fallback=\"forbid\">Haswell</model>" in text and "name=\"aes\"" in text and "mode=\"custom\"" in text
    assert cpu_definition(_cpu(cores=1)) == cpu_definition(_cpu(cores=16))
    assert cpu_definition(_cpu()) != cpu_definition(_cpu(features=()))
    assert cpu_definition("<cpu") == "<cpu" and cpu_definition("") == ""
