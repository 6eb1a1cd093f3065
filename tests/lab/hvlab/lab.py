"""The lab as one object: `Lab().up()`, `down()`, `status()`, VMs, faults. Tests and the CLI use it.

Rules it follows: every creation step is recorded in the state file *before* it happens (intent)
and again after (pids with start times); `up` reuses what is healthy, tears down by record what is
dead or half-made and rebuilds it; `down` removes only what the state file names. Lab-internal
calls reach each libvirtd through its unix socket (a plain file under LAB_ROOT, reachable from the
root namespace), so they keep working while a host's link is cut; tests use the TCP/TLS URIs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from . import faults, hosts, inventory, netns, rootfs, storage, tls
from .state import State, alive, kill_record, lab_root
from .vm import Heartbeat, VMSpec, domain_xml, parse_heartbeats

DEMO_DIRTY = [(0, 0), (32, 8), (64, 32), (16, 4)]  # (dirty_mb, dirty_rate MiB/s) for demo1, demo2, ...


class LabError(RuntimeError):
    """A lab operation failed; the message says what and where to look."""


class NotRoot(LabError):
    pass


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRoot(
            "the lab needs root: it creates network namespaces, bridges and bind mounts and runs "
            "libvirtd/sshd. Run it as root (e.g. sudo .venv/bin/python tests/lab/lab.py up)."
        )


def _host_sort(name: str) -> tuple:
    return (len(name), name)


class Lab:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else lab_root()
        self.state = State(self.root)

    # -----------------------------------------------------------------------------------------
    # Facts about the lab

    def hosts(self) -> list[str]:
        """Names of the hypervisor hosts the state file records (hv1, hv2, ...)."""
        return sorted(self.state.load().data["hosts"], key=_host_sort)

    def generation(self, host: str) -> int:
        """1: the machine's own libvirt/QEMU (Debian 12); 2: the Debian 13 root (libvirt 11, QEMU 10)."""
        return int(self._host_rec(host).get("generation", 1))

    def addr(self, host: str) -> str:
        return netns.host_addr(host)

    def uri(self, host: str) -> str:
        """libvirt URI from the controller (root namespace): qemu+tcp://10.254.0.1N/system."""
        return hosts.libvirt_uri(self.addr(host))

    def tls_uri(self, host: str) -> str:
        return hosts.tls_uri(self.root, self.addr(host))

    def unix_uri(self, host: str) -> str:
        return f"qemu+unix:///system?socket={hosts.hostdir(self.root, host) / 'run-libvirt' / 'libvirt-sock'}"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def pkipath(self) -> Path:
        return self.root / "pki" / "controller"

    def console_path(self, vm: str) -> Path:
        return self.root / "console" / f"{vm}.log"

    def _host_rec(self, host: str) -> dict:
        rec = self.state.load().data["hosts"].get(host)
        if not rec:
            raise LabError(f"no lab host {host!r} (hosts: {', '.join(self.hosts()) or 'none; run up'})")
        return rec

    def _update_host(self, host: str, **changes) -> None:
        self.state.load()
        self.state.data["hosts"][host].update(changes)
        self.state.save()
        if "link_mbit" in changes:
            self._write_inventory()

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -----------------------------------------------------------------------------------------
    # libvirt

    def connect(self, host: str, via: str = "tcp"):
        """libvirt connection to a host's libvirtd: via "tcp" (default), "tls" or "unix" (works
        with the host's link cut). Fails within seconds if the port does not answer. The caller
        closes it."""
        import libvirt

        libvirt.registerErrorHandler(lambda *_: None, None)
        uri = {"tcp": self.uri, "tls": self.tls_uri, "unix": self.unix_uri}[via](host)
        port = {"tcp": hosts.LIBVIRT_TCP_PORT, "tls": hosts.LIBVIRT_TLS_PORT}.get(via)
        if port and not hosts.tcp_open(self.addr(host), port, timeout=3):
            # libvirt's own connect has no timeout: fail fast on a cut link or stopped libvirtd
            raise LabError(f"cannot connect to {uri}: {self.addr(host)}:{port} does not answer")
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot connect to {uri}: {exc}") from exc

    @contextlib.contextmanager
    def _conn(self, host: str) -> Iterator:
        conn = self.connect(host, via="unix")
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _libvirtd_up(self, host: str) -> bool:
        rec = self.state.load().data["hosts"].get(host) or {}
        return alive(rec.get("libvirtd"))

    def locate(self, name: str) -> dict[str, str]:
        """Where a VM is defined or running: {host: "running" | "paused" | "shutoff" | ...}.
        Hosts whose libvirtd is stopped are skipped."""
        import libvirt

        states = {
            libvirt.VIR_DOMAIN_RUNNING: "running",
            libvirt.VIR_DOMAIN_PAUSED: "paused",
            libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
            libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
            libvirt.VIR_DOMAIN_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_BLOCKED: "blocked",
            libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
        }
        return {host: states.get(dom.state()[0], "unknown") for host, dom in self._lookup_everywhere(name)}

    def _lookup_everywhere(self, name: str) -> Iterator:
        """(host, domain) for every host with a live libvirtd that knows the VM; the connection is open
        while the caller handles that host's domain."""
        import libvirt

        for host in self.hosts():
            if not self._libvirtd_up(host):
                continue
            with self._conn(host) as conn:
                try:
                    dom = conn.lookupByName(name)
                except libvirt.libvirtError:
                    continue
                yield host, dom

    def running_on(self, name: str) -> list[str]:
        """Hosts where the VM is active (running or paused). A healthy VM gives exactly one."""
        return [h for h, s in self.locate(name).items() if s in ("running", "paused", "blocked")]

    def domains(self) -> dict[str, dict[str, str]]:
        """{host: {vm: state}} for every host with a live libvirtd."""
        out = {}
        for host in self.hosts():
            if not self._libvirtd_up(host):
                continue
            with self._conn(host) as conn:
                out[host] = {d.name(): ("running" if d.isActive() else "shutoff") for d in conn.listAllDomains()}
        return out

    # -----------------------------------------------------------------------------------------
    # VMs

    def vm_start(self, spec: VMSpec | str, host: str = "hv1", **knobs) -> VMSpec:
        """Define (persistent) and start a VM on `host`. A VM of that name must not exist yet."""
        from .image import ensure_image

        if isinstance(spec, str):
            spec = VMSpec(name=spec, **knobs)
        self._host_rec(host)
        if self.locate(spec.name):
            raise LabError(f"VM {spec.name} already exists on {', '.join(self.locate(spec.name))}")
        image = ensure_image()
        self.state.load()
        self.state.data["vms"][spec.name] = {**spec.to_dict(), "created_on": host}
        self.state.save()
        try:
            self._define_and_start(spec, host, image)
        except BaseException:
            with contextlib.suppress(Exception):
                self.vm_rm(spec.name)
            raise
        return spec

    def _define_and_start(self, spec: VMSpec, host: str, image) -> None:
        from .image import kernel_cmdline

        if spec.disk == "nbd":
            storage.create_disk(storage.disk_path(self.root, spec.name), spec.disk_mb)
            storage.export(self.root, spec.name)
        elif spec.disk == "local":
            storage.create_disk(
                hosts.hostdir(self.root, host) / "lib-libvirt" / "images" / f"{spec.name}.qcow2", spec.disk_mb
            )
        console = self.console_path(spec.name)
        console.parent.mkdir(parents=True, exist_ok=True)
        console.write_bytes(b"")  # a new VM starts a new console log
        xml = domain_xml(
            spec,
            kernel=image.kernel,
            initrd=image.initrd,
            cmdline=kernel_cmdline(spec.name, spec.dirty_mb, spec.dirty_rate, spec.hb_ms, spec.pti),
            console_path=str(console),
            nbd_host=netns.STORAGE_ADDR,
            nbd_port=storage.NBD_PORT,
        )
        with self._conn(host) as conn:
            dom = conn.defineXML(xml)
            try:
                dom.create()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    dom.undefine()
                raise LabError(f"VM {spec.name} did not start on {host}: {exc}") from exc

    def vm_rm(self, name: str) -> None:
        """Destroy and undefine the VM wherever it is, remove its disk and console log."""
        import libvirt

        for _host, dom in self._lookup_everywhere(name):
            if dom.isActive():
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    if dom.isActive():  # not just a migration that ended between the two calls
                        raise
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        for host in self.hosts():
            local = hosts.hostdir(self.root, host) / "lib-libvirt" / "images" / f"{name}.qcow2"
            with contextlib.suppress(FileNotFoundError):
                local.unlink()
            nvram = hosts.hostdir(self.root, host) / "lib-libvirt" / "qemu" / "nvram" / f"{name}_VARS.fd"
            nvram.unlink(missing_ok=True)  # a live move leaves the source's NVRAM file behind
            if self._libvirtd_up(host):
                with self._conn(host) as conn:
                    storage.remove_local_volumes(conn, name)
        st = self.state.load().data
        if alive((st.get("storage") or {}).get("qsd")):
            storage.unexport(self.root, name)
        with contextlib.suppress(FileNotFoundError):
            storage.disk_path(self.root, name).unlink()
        with contextlib.suppress(FileNotFoundError):
            self.console_path(name).unlink()
        st["vms"].pop(name, None)
        self.state.save()

    def heartbeat(self, name: str) -> Heartbeat:
        """(boot_id, last_n, lines) from the VM's console log."""
        try:
            text = self.console_path(name).read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        return parse_heartbeats(text, name)

    def wait_heartbeat_advances(self, name: str, beyond: int = -1, timeout: float = 60) -> Heartbeat:
        """Poll the console until the heartbeat counter is > `beyond` (default: any heartbeat)."""
        deadline = time.monotonic() + timeout
        while True:
            hb = self.heartbeat(name)
            if hb.last_n > beyond:
                return hb
            if time.monotonic() > deadline:
                tail = ""
                with contextlib.suppress(OSError):
                    tail = "\n".join(self.console_path(name).read_text(errors="replace").splitlines()[-10:])
                raise TimeoutError(
                    f"heartbeat of {name} did not pass n={beyond} within {timeout:.0f}s "
                    f"(last n={hb.last_n}); console tail:\n{tail}"
                )
            time.sleep(0.1)

    # -----------------------------------------------------------------------------------------
    # Local storage

    def ensure_local_pool(self, host: str) -> str:
        """The host's `local` dir pool (storage.LOCAL_POOL_DIR, private to it); see storage.ensure_local_pool."""
        with self._conn(host) as conn:
            return storage.ensure_local_pool(conn, hosts.hostdir(self.root, host))

    def local_pool(self, host: str) -> dict | None:
        """{name, path, active, volumes} of the host's `local` pool; None when it has none."""
        import libvirt

        with self._conn(host) as conn:
            try:
                pool = conn.storagePoolLookupByName(storage.LOCAL_POOL)
                active = bool(pool.isActive())
                if active:
                    pool.refresh(0)
                vols = sorted(v.name() for v in pool.listAllVolumes(0)) if active else []
            except libvirt.libvirtError:
                return None
        return {"name": storage.LOCAL_POOL, "path": storage.LOCAL_POOL_DIR, "active": active, "volumes": vols}

    # -----------------------------------------------------------------------------------------
    # Bridges, shaping, faults

    def add_bridge(self, host: str, name: str) -> None:
        rec = self._host_rec(host)
        netns.add_bridge(host, name)
        self._update_host(host, bridges=sorted(set(rec.get("bridges", [])) | {name}))

    def remove_bridge(self, host: str, name: str) -> None:
        rec = self._host_rec(host)
        netns.remove_bridge(host, name)
        self._update_host(host, bridges=sorted(set(rec.get("bridges", [])) - {name}))

    def shape(self, host: str, mbit: float) -> None:
        faults.shape(self, host, mbit)

    def unshape(self, host: str) -> None:
        faults.unshape(self, host)

    def cut_link(self, host: str) -> None:
        faults.cut_link(self, host)

    def restore_link(self, host: str) -> None:
        faults.restore_link(self, host)

    def stop_libvirtd(self, host: str) -> None:
        faults.stop_libvirtd(self, host)

    def start_libvirtd(self, host: str, timeout: float = 60) -> None:
        faults.start_libvirtd(self, host, timeout)

    def kill_qemu(self, vm: str) -> int:
        return faults.kill_qemu(self, vm)

    def restart_storage(self) -> None:
        faults.restart_storage(self)

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        rec = self._host_rec(host) if host != storage.NAME else self.state.load().data["storage"]
        if not rec or not alive(rec.get("holder")):
            raise LabError(f"lab host {host} is not running")
        return hosts.nsenter_argv(rec["holder"], argv, rec.get("rootfs"))

    def exec(self, host: str, argv: list[str], check: bool = True, timeout: float | None = 120):
        """Run a command inside a lab host (its network, mount and UTS namespaces)."""
        res = subprocess.run(self.exec_argv(host, argv), capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(argv)} on {host} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    # -----------------------------------------------------------------------------------------
    # up

    def up(
        self,
        hosts_count: int = 3,
        guests: int = 0,
        no_guest_bridge: tuple[str, ...] = (),
        inventory_path: Path | None = None,
        gen2: tuple[str, ...] = (),
    ) -> dict:
        """Bring the lab to `hosts_count` healthy hosts (+ storage) and `guests` demo VMs on hv1.
        Hosts named in `gen2` run the Debian 13 root (libvirt 11, QEMU 10; see rootfs.py), the
        others the machine's own libvirt and QEMU; a host recorded with the other generation is
        rebuilt. Idempotent; repairs what a crashed run left. Returns a summary with timings."""
        require_root()
        if not 1 <= hosts_count <= 200:
            raise LabError("hosts must be between 1 and 200")
        t0 = time.monotonic()
        wanted = [f"hv{i}" for i in range(1, hosts_count + 1)]
        unknown = sorted(set(gen2) - set(wanted))
        if unknown:
            raise LabError(f"--gen2 names {', '.join(unknown)}, not among the lab's hosts {', '.join(wanted)}")
        generation = {h: 2 if h in gen2 else 1 for h in wanted}
        gen_root = rootfs.ensure_root() if gen2 else None  # built once, cached outside LAB_ROOT
        with self._lock():
            st = self.state.load()
            self.root.mkdir(parents=True, exist_ok=True)
            self.root.chmod(0o755)
            st.save()
            reused, built = [], []

            # 1. what is recorded but not wanted, or dead, goes (by record)
            for host in list(st.data["hosts"]):
                rec = st.data["hosts"][host]
                if (
                    host not in wanted
                    or rec.get("generation", 1) != generation[host]
                    or not alive(rec.get("holder"))
                    or not netns.netns_exists(rec["netns"])
                ):
                    self._teardown_host(host)
            srec = st.data["storage"]
            if srec and (not alive(srec.get("holder")) or not netns.netns_exists(srec["netns"])):
                self._teardown_storage()

            # 2. the bridge and the namespaces
            if st.data["bridge"] is None:
                st.data["bridge"] = {"name": netns.BRIDGE}
                st.save()
            netns.ensure_bridge()
            if not os.path.isdir("/run/netns") and not st.data["run_netns_created"]:
                st.data["run_netns_created"] = True
                st.save()
            hosts.ensure_ssh_key(self.root)
            tls.ensure_controller(self.root / "pki")

            new_hosts = [h for h in wanted if h not in st.data["hosts"]]
            for name in ([storage.NAME] if not st.data["storage"] else []) + new_hosts:
                rec = {
                    "name": name,
                    "netns": netns.netns_name(name),
                    "veth": netns.veth_name(name),
                    "addr": netns.host_addr(name),
                    "status": "creating",
                }
                if name == storage.NAME:
                    st.data["storage"] = rec
                else:
                    rec.update(
                        bridges=[] if name in no_guest_bridge else [netns.GUEST_BRIDGE],
                        link_mbit=None,
                        link_cut=False,
                        generation=generation[name],
                    )
                    if generation[name] == 2 and gen_root is not None:
                        rec["root"] = {
                            "lower": gen_root.path,
                            "suite": gen_root.suite,
                            "libvirt": gen_root.libvirt_version,
                            "qemu": gen_root.qemu_version,
                        }
                        rec["rootfs"] = hosts.rootfs(self.root, name)
                    st.data["hosts"][name] = rec
                st.save()
                netns.ensure_host_net(name)
                rec["netns_inode"] = netns.netns_inode(rec["netns"])
                st.save()

            # 3. holders (own mount + UTS namespace, private dirs)
            srec = st.data["storage"]
            if not alive(srec.get("holder")):
                (hosts.hostdir(self.root, storage.NAME)).mkdir(parents=True, exist_ok=True)
                srec["holder"] = hosts.start_holder(
                    self.root, storage.NAME, [], storage.NAME, on_started=lambda r: (srec.update(holder=r), st.save())
                )
                st.save()
            for name in wanted:
                rec = st.data["hosts"][name]
                netns.ensure_host_net(name)  # also brings a cut link back
                rec["link_cut"] = False
                if alive(rec.get("holder")):
                    reused.append(name)
                    continue
                built.append(name)

                def note(path: str) -> None:
                    st.note_dir(path)
                    st.save()

                lower = (rec.get("root") or {}).get("lower")
                binds = hosts.prepare_dirs(self.root, name, rec["addr"], note, lower)
                rec["holder"] = hosts.start_holder(
                    self.root,
                    name,
                    binds,
                    name,
                    on_started=lambda r, rec=rec: (rec.update(holder=r), st.save()),
                    gen_root=lower,
                )
                st.save()
            for name in wanted:
                for br in st.data["hosts"][name].get("bridges", []):
                    netns.add_bridge(name, br)

            # 4. daemons: start every missing one, then wait for all of them together
            pending = []
            for name in wanted:
                rec = st.data["hosts"][name]
                if not alive(rec.get("libvirtd")):
                    rec["libvirtd"] = None
                    st.save()
                    hosts.stop_unrecorded(self.root, name, "libvirtd", rec.get("netns_inode"))
                    rec["libvirtd"] = hosts.start_libvirtd(self.root, name, rec.get("rootfs"))
                    st.save()
                    pending.append((name, rec["libvirtd"], "libvirtd", lambda a=rec["addr"]: hosts.libvirt_ready(a)))
                if not alive(rec.get("sshd")):
                    rec["sshd"] = None
                    st.save()
                    hosts.stop_unrecorded(self.root, name, "sshd", rec.get("netns_inode"))
                    rec["sshd"] = hosts.start_sshd(self.root, name, rec.get("rootfs"))
                    st.save()
                    pending.append((name, rec["sshd"], "sshd", lambda a=rec["addr"]: hosts.port_open(a, 22)))
            if not alive(srec.get("qsd")):
                self._start_storage_daemon()
            for name, prec, what, check in pending:
                hosts.wait_ready(self.root, name, prec, what, check)
            for name in wanted:
                self.ensure_local_pool(name)
            for name in wanted:
                st.data["hosts"][name]["status"] = "up"
            st.data["storage"]["status"] = "up"
            st.save()
            t_hosts = time.monotonic() - t0

            self._write_inventory(inventory_path or inventory.default_path())

            # 5. demo guests
            started = []
            for i in range(1, guests + 1):
                name = f"demo{i}"
                where = self.locate(name)
                if any(state != "shutoff" for state in where.values()):
                    continue
                if where or name in st.load().data["vms"]:
                    # defined but not running, or recorded but gone (a killed run, a host restart):
                    # start afresh, so the guest also gets the current domain XML and kernel command line
                    self.vm_rm(name)
                dirty_mb, rate = DEMO_DIRTY[(i - 1) % len(DEMO_DIRTY)]
                self.vm_start(VMSpec(name=name, dirty_mb=dirty_mb, dirty_rate=rate), host="hv1")
                started.append(name)
        return {
            "hosts": wanted,
            "reused": reused,
            "built": built,
            "guests_started": started,
            "seconds_hosts": round(t_hosts, 2),
            "seconds": round(time.monotonic() - t0, 2),
        }

    def _start_storage_daemon(self) -> None:
        st = self.state.load()
        srec = st.data["storage"]
        srec["qsd"] = None
        st.save()
        srec["qsd"] = storage.start_daemon(self.root)
        st.save()
        for name, vm in st.data["vms"].items():
            if vm.get("disk") == "nbd" and storage.disk_path(self.root, name).exists():
                storage.export(self.root, name)

    def _write_inventory(self, path: Path | None = None) -> None:
        """(Re)write the inventory of every checkout that used this lab, plus `path` if given: a second
        checkout (a fresh clone running the tests) reusing a lab started from the first gets its own."""
        st = self.state.load()
        paths = [p for p in _inventories(st.data) if Path(p).parent.is_dir()]  # checkouts since deleted drop out
        if path is not None and str(path) not in paths:
            paths.append(str(path))
        if not paths:
            paths.append(str(inventory.default_path()))
        st.data["inventory"] = paths[0]
        st.data["inventories"] = paths
        st.save()
        shaped = {h: r["link_mbit"] for h, r in st.data["hosts"].items() if r.get("link_mbit")}
        for one in paths:
            inventory.write_inventory(Path(one), list(st.data["hosts"]), self.root, shaped)

    # -----------------------------------------------------------------------------------------
    # down

    def _kill_netns_stragglers(self, rec: dict) -> list[str]:
        """Kill processes still inside a namespace the lab created (identified by its inode), e.g.
        SSH sessions Ansible keeps open (ControlPersist) after their sshd listener is gone."""
        inode = rec.get("netns_inode")
        if not inode or netns.netns_inode(rec["netns"]) != inode:
            return []
        pids = hosts.processes_in_netns(inode)
        names = []
        for pid in pids:
            with contextlib.suppress(OSError):
                names.append(f"{pid}:{Path(f'/proc/{pid}/comm').read_text().strip()}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while hosts.processes_in_netns(inode) and time.monotonic() < deadline:
            time.sleep(0.02)
        return names

    def _teardown_host(self, host: str) -> None:
        st = self.state.load()
        rec = st.data["hosts"].get(host)
        if not rec:
            return
        rec["status"] = "removing"
        st.save()
        if netns.link_exists(rec["veth"]):
            netns.restore_link(host)
        if alive(rec.get("libvirtd")):
            import libvirt

            with contextlib.suppress(Exception), self._conn(host) as conn:
                for dom in conn.listAllDomains():
                    with contextlib.suppress(libvirt.libvirtError):
                        if dom.isActive():
                            dom.destroy()
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        qdir = hosts.hostdir(self.root, host) / "run-libvirt" / "qemu"
        for pidfile in qdir.glob("*.pid") if qdir.is_dir() else []:
            pid = faults.qemu_pid(self, host, pidfile.stem)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for key in ("sshd", "libvirtd", "holder"):
            kill_record(rec.get(key))
        stragglers = self._kill_netns_stragglers(rec)
        if stragglers:
            print(f"lab: stopped leftover processes in {rec['netns']}: {', '.join(stragglers)}")
        netns.delete_host_net(host)
        self._remove_tree(hosts.hostdir(self.root, host))
        st.data["hosts"].pop(host, None)
        st.save()

    def _teardown_storage(self) -> None:
        st = self.state.load()
        rec = st.data["storage"]
        if not rec:
            return
        for key in ("qsd", "holder"):
            kill_record(rec.get(key))
        self._kill_netns_stragglers(rec)
        netns.delete_host_net(storage.NAME)
        self._remove_tree(hosts.hostdir(self.root, storage.NAME))
        st.data["storage"] = None
        st.save()

    def _remove_tree(self, path: Path) -> None:
        """rm -r, but never across a mount point (nothing of ours is mounted in the root ns)."""
        if not path.exists():
            return
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f]
        inside = [m for m in mounted if m == str(path) or m.startswith(f"{path}/")]
        if inside:
            raise LabError(f"refusing to delete {path}: mounted below it: {inside}")
        shutil.rmtree(path)

    def down(self, purge: bool = False) -> dict:
        """Remove exactly what the state file records. Idempotent. `purge` also deletes the lab's
        credentials (ssh key, CA) and LAB_ROOT itself."""
        require_root()
        removed: dict = {"hosts": [], "storage": False}
        with self._lock():
            st = self.state.load()
            if not self.state.exists() and not purge:
                return removed
            for host in sorted(st.data["hosts"], key=_host_sort):
                self._teardown_host(host)
                removed["hosts"].append(host)
            if st.data["storage"]:
                self._teardown_storage()
                removed["storage"] = True
            self._remove_tree(self.root / "storage")
            self._remove_tree(self.root / "console")
            self._remove_tree(self.root / "hosts")
            if st.data["bridge"]:
                netns.delete_bridge()
                st.data["bridge"] = None
                st.save()
            if st.data["run_netns_created"] and os.path.isdir("/run/netns") and not os.listdir("/run/netns"):
                with open("/proc/self/mountinfo") as f:
                    if any(line.split()[4] == "/run/netns" for line in f):
                        subprocess.run(["umount", "/run/netns"], check=False)
                with contextlib.suppress(OSError):
                    os.rmdir("/run/netns")
            for d in reversed(st.data["created_dirs"]):
                with contextlib.suppress(OSError):  # only if empty: never remove what others put there
                    os.rmdir(d)
            for inv in _inventories(st.data):
                with contextlib.suppress(FileNotFoundError):
                    Path(inv).unlink()
            self.state.remove()
            for tmp in self.root.glob(".state.*.tmp"):  # left by a run killed while saving
                tmp.unlink()
            if purge:
                for sub in ("ssh", "pki"):
                    self._remove_tree(self.root / sub)
        if purge:
            with contextlib.suppress(OSError):
                (self.root / ".lock").unlink()
                self.root.rmdir()
        return removed

    # -----------------------------------------------------------------------------------------
    # status

    def status(self) -> dict:
        st = self.state.load().data
        out: dict = {"root": str(self.root), "exists": self.state.exists(), "hosts": {}, "storage": None, "vms": {}}
        for host in self.hosts():
            rec = st["hosts"][host]
            out["hosts"][host] = {
                "addr": rec.get("addr"),
                "generation": rec.get("generation", 1),
                "root": rec.get("root"),
                "uri": self.uri(host),
                "holder": {"pid": (rec.get("holder") or {}).get("pid"), "alive": alive(rec.get("holder"))},
                "libvirtd": {"pid": (rec.get("libvirtd") or {}).get("pid"), "alive": alive(rec.get("libvirtd"))},
                "sshd": {"pid": (rec.get("sshd") or {}).get("pid"), "alive": alive(rec.get("sshd"))},
                "bridges": rec.get("bridges", []),
                "link_mbit": rec.get("link_mbit"),
                "link_cut": rec.get("link_cut", False),
                "local_pool": self.local_pool(host) if alive(rec.get("libvirtd")) else None,
            }
        srec = st.get("storage")
        if srec:
            out["storage"] = {
                "addr": srec.get("addr"),
                "qsd": {"pid": (srec.get("qsd") or {}).get("pid"), "alive": alive(srec.get("qsd"))},
                "exports": storage.exports(self.root) if alive(srec.get("qsd")) else [],
            }
        for host, doms in self.domains().items():
            for vm, state in doms.items():
                out["vms"].setdefault(vm, {})[host] = state
        return out


def _inventories(data: dict) -> list[str]:
    """Inventory files the lab wrote (older state files recorded one, as "inventory")."""
    paths = list(data.get("inventories") or [])
    if data.get("inventory") and data["inventory"] not in paths:
        paths.insert(0, data["inventory"])
    return paths
