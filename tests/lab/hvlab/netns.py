"""Network plumbing: the lab bridge in the root namespace, one network namespace per lab host joined
to it by a veth pair, bridges inside a host (the guests' networks), and link shaping / cutting.

Addresses live only in 10.254.0.0/24: the controller (pytest, ansible) is 10.254.0.1 on the
bridge, storage is .2, hypervisor hvN is .(10+N). Everything here is plain `ip` / `tc`.
"""

from __future__ import annotations

import os
import re
import subprocess

BRIDGE = "hvlab0"
PREFIX = "10.254.0"
CONTROLLER_ADDR = f"{PREFIX}.1"
STORAGE_ADDR = f"{PREFIX}.2"
GUEST_BRIDGE = "labbr0"
NETNS_PREFIX = "hvlab-"


def host_addr(name: str) -> str:
    """Lab address of a host: hvN -> 10.254.0.(10+N), storage -> 10.254.0.2."""
    if name == "storage":
        return STORAGE_ADDR
    m = re.fullmatch(r"hv(\d+)", name)
    if not m or not 1 <= int(m.group(1)) <= 200:
        raise ValueError(f"lab host names are hv1..hv200 or 'storage', got {name!r}")
    return f"{PREFIX}.{10 + int(m.group(1))}"


def netns_name(host: str) -> str:
    return f"{NETNS_PREFIX}{host}"


def veth_name(host: str) -> str:
    """Root-side end of the host's veth pair (the namespace side is always eth0)."""
    return f"{NETNS_PREFIX}{host}"


def run(cmd: list[str], check: bool = True, netns: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (inside `netns` if given), raising with its stderr on failure."""
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip", "-n", netns] if netns else ["ip"]
    return run([*cmd, "link", "show", "dev", name], check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def netns_inode(name: str) -> int | None:
    """Inode of the namespace (the identity of 'our' namespace, to find processes inside it)."""
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except FileNotFoundError:
        return None


def host_mac(name: str) -> str:
    """Fixed MAC for a host's eth0 (locally administered, last byte = address): a rebuilt host keeps
    its MAC, so the controller's ARP cache never points at a vanished one."""
    return f"02:fe:0a:fe:00:{int(host_addr(name).rsplit('.', 1)[1]):02x}"


def ensure_bridge() -> None:
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = run(["ip", "-4", "-o", "addr", "show", "dev", BRIDGE]).stdout
    if f"{CONTROLLER_ADDR}/24" not in addrs:
        run(["ip", "addr", "add", f"{CONTROLLER_ADDR}/24", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])


def delete_bridge() -> None:
    if link_exists(BRIDGE):
        run(["ip", "link", "del", BRIDGE])


def ensure_host_net(host: str) -> None:
    """Namespace + veth pair + address for one lab host (each step skipped if already there)."""
    ns, veth, addr = netns_name(host), veth_name(host), host_addr(host)
    if not netns_exists(ns):
        run(["ip", "netns", "add", ns])
    if not link_exists("eth0", netns=ns):
        if link_exists(veth):  # half-made pair from an interrupted run
            run(["ip", "link", "del", veth])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns, "address", host_mac(host)])
        run(["ip", "neigh", "flush", "to", addr, "dev", BRIDGE], check=False)
    run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])
    addrs = run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
    if f"{addr}/24" not in addrs:
        run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
    run(["ip", "-n", ns, "link", "set", "eth0", "up"])


def delete_host_net(host: str) -> None:
    ns, veth = netns_name(host), veth_name(host)
    if link_exists(veth):
        run(["ip", "link", "del", veth])  # deletes both ends of the pair
    if netns_exists(ns):
        run(["ip", "netns", "del", ns])


def add_bridge(host: str, name: str) -> None:
    """A bridge inside a lab host (guests attach to it); idempotent."""
    ns = netns_name(host)
    if not link_exists(name, netns=ns):
        run(["ip", "-n", ns, "link", "add", name, "type", "bridge"])
    run(["ip", "-n", ns, "link", "set", name, "up"])


def remove_bridge(host: str, name: str) -> None:
    ns = netns_name(host)
    if link_exists(name, netns=ns):
        run(["ip", "-n", ns, "link", "del", name])


def bridges(host: str) -> list[str]:
    out = run(["ip", "-n", netns_name(host), "-o", "link", "show", "type", "bridge"], check=False).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)


# ---------------------------------------------------------------------------------------------
# Shaping and faults


def tbf_args(mbit: float) -> list[str]:
    """tc tbf parameters for a `mbit` Mbit/s cap: a burst of ~10 ms (at least 32 KiB) and a
    queue of 100 ms, so the cap is real and TCP still gets smooth throughput."""
    if mbit <= 0:
        raise ValueError("link speed must be > 0 Mbit/s")
    burst = max(32 * 1024, int(mbit * 1_000_000 / 8 / 100))
    return ["tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "100ms"]


def shape(host: str, mbit: float) -> None:
    """Cap the host's link both ways: egress of eth0 inside the host, egress of the root-side veth
    (= the host's ingress)."""
    run(["tc", "qdisc", "replace", "dev", "eth0", "root", *tbf_args(mbit)], netns=netns_name(host))
    run(["tc", "qdisc", "replace", "dev", veth_name(host), "root", *tbf_args(mbit)])


def unshape(host: str) -> None:
    run(["tc", "qdisc", "del", "dev", "eth0", "root"], netns=netns_name(host), check=False)
    run(["tc", "qdisc", "del", "dev", veth_name(host), "root"], check=False)


def cut_link(host: str) -> None:
    run(["ip", "link", "set", veth_name(host), "down"])


def restore_link(host: str) -> None:
    run(["ip", "link", "set", veth_name(host), "up"])
