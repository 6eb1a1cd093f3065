# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Open libvirt connections by URI with a deadline and keepalive.

A hung TCP connect or an SSH password prompt must not hang a drain, and a dead peer
must turn into an error instead of a blocked call; hence the worker thread with a
deadline and libvirt keepalive (which needs libvirt's event loop running).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit, urlunsplit

try:
    import libvirt
except ImportError:  # pragma: no cover - the module reports it with missing_required_lib
    libvirt = None

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import LibvirtConnectionError

DEFAULT_CONNECT_TIMEOUT_S = 30.0
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
CLOSE_TIMEOUT_S = 5.0

KNOWN_SCHEMES = ("qemu", "qemu+ssh", "qemu+tls", "qemu+tcp", "qemu+unix", "qemu+libssh", "qemu+libssh2", "test")

_event_lock = threading.Lock()
_event_thread: threading.Thread | None = None

# A libvirt virConnect (the binding has no type information).
Connection = Any


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we raise them instead."""


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation once and run it in a daemon thread.

    Keepalive only works with an event loop; it must exist before connections open.
    """
    global _event_thread  # pylint: disable=global-statement
    if libvirt is None:
        return
    with _event_lock:
        if _event_thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _event_thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _event_thread.start()


def check_uri(uri: object) -> SplitResult:
    """Reject strings that are not libvirt URIs before libvirt gives a vaguer error."""
    if not uri or not isinstance(uri, str):
        raise LibvirtConnectionError(uri, "Empty libvirt URI.", "give a URI such as qemu:///system.")
    try:
        parts = urlsplit(uri)
        host = parts.hostname  # parsed lazily: may raise too
    except ValueError as exc:  # e.g. an unclosed [IPv6 bracket
        raise LibvirtConnectionError(uri, f"'{uri}' is not a valid URI: {exc}.",
                                     "use qemu+tls://HOST/system (IPv6 addresses in brackets).") from exc
    if parts.scheme not in KNOWN_SCHEMES:
        raise LibvirtConnectionError(
            uri,
            f"'{uri}' is not a supported libvirt URI (scheme '{parts.scheme or 'none'}').",
            "use qemu:///system locally, or qemu+ssh://HOST/system, qemu+tls://HOST/system, "
            "qemu+tcp://HOST/system for a remote host.",
        )
    if parts.scheme.startswith("qemu") and parts.path not in ("/system", "/session"):
        raise LibvirtConnectionError(
            uri,
            f"'{uri}' has no /system (or /session) path.",
            f"use {parts.scheme}://{parts.netloc}/system.",
        )
    if parts.scheme in ("qemu+ssh", "qemu+tls", "qemu+tcp", "qemu+libssh", "qemu+libssh2") and not host:
        raise LibvirtConnectionError(uri, f"'{uri}' names no host.", f"use {parts.scheme}://HOST/system.")
    return parts


def effective_uri(uri: str) -> str:
    """Return the URI actually opened: SSH URIs get no_tty=1 so a password prompt fails fast."""
    parts = check_uri(uri)
    if parts.scheme == "qemu+ssh" and "no_tty" not in dict(parse_qsl(parts.query)):
        # appended as text: re-encoding the query would escape values libvirt reads verbatim
        query = f"{parts.query}&no_tty=1" if parts.query else "no_tty=1"
        return urlunsplit(parts._replace(query=query))
    return uri


def explain(uri: str, message: str | None) -> str:
    """Name the most likely fix for a libvirt connection error message."""
    text = (message or "").lower()
    scheme = urlsplit(uri).scheme
    if "no connection driver available" in text or ("unsupported" in text and "uri" in text):
        return "the URI scheme is not supported by this libvirt; check the spelling (qemu+tcp://HOST/system)."
    if "libvirt-sock" in text or ("no such file or directory" in text and "sock" in text):
        return "libvirtd (or virtqemud) is not running on that host; start it."
    if "certificate" in text or "cacert" in text or ("tls" in text and "handshake" in text):
        return ("the TLS certificates are missing or not trusted: check /etc/pki/CA/cacert.pem and "
                "/etc/pki/libvirt/clientcert.pem, and that the server certificate names the host in the URI.")
    if "authentication" in text or "sasl" in text or "polkit" in text or "access denied" in text:
        return "authentication was refused: check SASL credentials or the polkit / auth_* settings of libvirtd."
    if "host key verification" in text or "permission denied" in text or "publickey" in text:
        return "SSH could not log in without a prompt: install the SSH key for that user and accept the host key."
    if "connection refused" in text:
        if scheme == "qemu+tcp":
            return "libvirtd does not listen for TCP there: enable listen_tcp (or virtproxyd-tcp.socket), port 16509."
        if scheme == "qemu+tls":
            return "libvirtd does not listen for TLS there: enable listen_tls (virtproxyd-tls.socket), port 16514."
        if scheme == "qemu+ssh":
            return "sshd is not reachable on that host."
        return "the libvirt daemon refused the connection; is it running?"
    if "no route to host" in text or "timed out" in text or "network is unreachable" in text:
        return "the host is not reachable over the network; check the address and firewalls."
    if "name or service not known" in text or "could not resolve" in text or "temporary failure in name" in text:
        return "the host name does not resolve; use an address or fix DNS."
    if "end of file" in text and scheme == "qemu+ssh":
        return "the SSH session closed: is libvirt installed and running on the remote host, and the key accepted?"
    return "check that the libvirt daemon runs on that host and that the URI is right."


def connect(uri: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, username: str | None = None,
            password: str | None = None, readonly: bool = False) -> Connection:
    """Open `uri` within `timeout_s` seconds with keepalive on; raise LibvirtConnectionError."""
    if libvirt is None:
        raise LibvirtConnectionError(uri, "The libvirt Python binding is not installed.",
                                     "install python3-libvirt (Debian) or libvirt-python (pip).")
    target = effective_uri(uri)
    ensure_event_loop()
    box: dict[str, Any] = {}
    done = threading.Event()
    abandoned = threading.Event()

    def opener() -> None:
        try:
            flags = libvirt.VIR_CONNECT_RO if readonly else 0
            if username is not None or password is not None:
                auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], _credentials, (username, password)]
                conn = libvirt.openAuth(target, auth, flags)
            elif readonly:
                conn = libvirt.openReadOnly(target)
            else:
                conn = libvirt.open(target)
            if abandoned.is_set():
                conn.close()
                return
            box["conn"] = conn
        except Exception as exc:  # pylint: disable=broad-except
            box["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=opener, name=f"libvirt-open {uri}", daemon=True)
    thread.start()
    if not done.wait(timeout_s):
        abandoned.set()
        raise LibvirtConnectionError(
            uri, f"Timed out after {timeout_s:g} s connecting to {uri}.", explain(uri, "timed out"))
    if "error" in box:
        message = str(box["error"])
        raise LibvirtConnectionError(uri, f"Cannot connect to {uri}: {message}", explain(uri, message))
    conn = box["conn"]
    if not target.startswith("test:"):
        # local (unix socket) connections may refuse keepalive; they cannot hang on a network
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
    return conn


def connect_all(uris: Iterable[str], timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, username: str | None = None,
                password: str | None = None, readonly: bool = False) -> list[Connection]:
    """Open several connections at once (each as connect()); returns them in the order of `uris`.

    A migration needs three (source, destination, a second source connection for the blocking
    call): opened one after another their handshakes add up; in parallel it costs the slowest.
    If any fails, the ones that opened are closed and the first failure (in `uris` order) raised.
    """
    uris = list(uris)
    boxes: list[dict[str, Any]] = [{} for _uri in uris]

    def opener(uri: str, box: dict[str, Any]) -> None:
        try:
            box["conn"] = connect(uri, timeout_s=timeout_s, username=username, password=password, readonly=readonly)
        except Exception as exc:  # pylint: disable=broad-except
            box["error"] = exc

    ensure_event_loop()  # once, before the threads race for it
    threads = [threading.Thread(target=opener, args=(uri, boxes[i]), name=f"connect {uri}", daemon=True)
               for i, uri in enumerate(uris)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()  # connect() itself gives up after timeout_s
    errors = [box["error"] for box in boxes if "error" in box]
    if errors:
        for box in boxes:
            close_quietly(box.get("conn"))
        raise errors[0]
    return [box["conn"] for box in boxes]


def _credentials(creds: list[list[Any]], userdata: tuple[str | None, str | None]) -> int:
    """Answer libvirt's SASL prompts from (username, password) without a terminal."""
    username, password = userdata
    for cred in creds:
        if cred[0] == libvirt.VIR_CRED_AUTHNAME:
            cred[4] = username or ""
        elif cred[0] == libvirt.VIR_CRED_PASSPHRASE:
            cred[4] = password or ""
        else:
            return -1
    return 0


def close_quietly(conn: Connection | None, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close a connection, ignoring errors of an already-broken peer; never wait long for it
    (a call still stuck in a busy daemon can hold the close up)."""
    if conn is None:
        return
    with contextlib.suppress(Exception):
        bounded.call(conn.close, timeout_s=timeout_s, what="close")


@contextlib.contextmanager
def connection(uri: str, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, username: str | None = None,
               password: str | None = None, readonly: bool = False) -> Iterator[Connection]:
    """Context manager around connect() that always closes the connection."""
    conn = connect(uri, timeout_s=timeout_s, username=username, password=password, readonly=readonly)
    try:
        yield conn
    finally:
        close_quietly(conn)
