# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the checks ask of the machine they run on: its mounts and its network path to an address.

Apart from the checks so that a test can give its own Probe, and hypervisor_info can use the
local one without the checker.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Protocol
from urllib.parse import urlsplit

from ansible_collections.hvfleet.drain.plugins.module_utils.planning.host_facts import Mount, mount_of, read_mounts
from ansible_collections.hvfleet.drain.plugins.module_utils.planning.precheck import FAIL, PASS, WARN

PROBE_TIMEOUT_S = 2.0
URI_PORTS = {"qemu+tcp": 16509, "qemu+tls": 16514, "qemu+ssh": 22, "qemu+libssh": 22, "qemu+libssh2": 22}


class Probe(Protocol):
    """What the checks ask of the machine they run on (LocalProbe; tests give their own)."""

    def fs_type(self, path: str) -> tuple[str | None, str | None]: ...

    def reach(self, host: str, port: int) -> tuple[str, str]: ...


class LocalProbe:
    """What the machine this code runs on sees: its mounts and its network path to an address."""

    def __init__(self, proc: str = "/proc", timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self.proc = proc
        self.timeout_s = timeout_s
        self._mounts: list[Mount] | None = None

    def mounts(self) -> list[Mount]:
        if self._mounts is None:
            self._mounts = read_mounts(self.proc) or []
        return self._mounts

    def fs_type(self, path: str) -> tuple[str | None, str | None]:
        """(fs type, mount point) of the filesystem `path` is on, or (None, None)."""
        found = mount_of(os.path.realpath(path), self.mounts())
        return (found[1], found[0]) if found else (None, None)

    def reach(self, host: str, port: int) -> tuple[str, str]:
        """(status, text): does `host` answer on TCP `port` from here?"""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            return FAIL, f"the name {host} does not resolve ({exc.strerror or exc})"
        family, kind, proto, _name, sockaddr = infos[0]
        address = sockaddr[0]
        via = ""
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as udp:  # route lookup only; sends nothing
                udp.connect((address, port))
                via = f" via local address {udp.getsockname()[0]}"
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return FAIL, f"no route to {address} ({exc.strerror})"
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(self.timeout_s)
            try:
                sock.connect(sockaddr)
                return PASS, f"{address}:{port} accepted a TCP connection{via}"
            except ConnectionRefusedError:
                return PASS, f"{address} answered on port {port} (connection refused: the host is reachable){via}"
            except TimeoutError:
                return WARN, (f"no answer from {address}:{port} within {self.timeout_s:g} s{via}: a firewall may drop "
                              "traffic to it, including the migration ports 49152-49215")
            except OSError as exc:
                if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                    return FAIL, f"no route to {address} ({exc.strerror})"
                return WARN, f"{address}:{port}: {exc.strerror or exc}{via}"


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """('host', port) from 'host', 'host:port', '[v6]:port' or a bare IPv6 address."""
    text = address.strip()
    if text.startswith("["):
        host, _sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port) if port.isdigit() else default_port
    return text, default_port


def probe_port(dest_uri: str | None) -> int:
    """The destination's libvirt port (from its URI) - a port that is never an incoming migration."""
    parts = urlsplit(dest_uri or "")
    try:
        explicit = parts.port
    except ValueError:
        explicit = None
    return explicit or URI_PORTS.get(parts.scheme, 16509)
