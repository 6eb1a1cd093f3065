# Copyright: hvfleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's capacity ledger, kept in that host's own libvirtd as two libvirt secret objects.

Why there: a drain runs on the host it drains and reaches its destinations through libvirt only; it has
no other channel to them, and a second operator's drain runs from another controller. libvirtd is the
one place every drain of the fleet already reaches, it persists what it keeps (/etc/libvirt/secrets),
and it gives an atomic create-if-absent: defining a secret whose usage id another secret already has
is refused. So
- the lock is a secret with usage `volume` id LOCK_USAGE: whoever defines it holds the lock; its value
  says who and until when, so a lock whose holder died (or hangs) is taken over after LOCK_TTL_S;
- the ledger is a secret with usage id DATA_USAGE whose value is the ledger's JSON (ledger.py).
Both are visible with `virsh secret-list` ("hvfleet.drain ...") and removable by hand (`virsh
secret-undefine UUID`). Every libvirt call is bounded (CALL_TIMEOUT_S): a stuck daemon gives an error
that names the host, never a hang.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Optional

from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded
from ansible_collections.hvfleet.drain.plugins.module_utils.drain.ledger import (
    Cordon,
    Ledger,
    LedgerError,
    publish_cordon,
)

LOCK_USAGE = "/var/lib/hvfleet/ledger.lock"
DATA_USAGE = "/var/lib/hvfleet/ledger"
USAGE_TYPE_VOLUME = 1  # libvirt.VIR_SECRET_USAGE_TYPE_VOLUME
LOCK_TTL_S = 30.0
ACQUIRE_S = 60.0
CALL_TIMEOUT_S = 10.0
POLL_S = 0.1


def secret_xml(usage: str, description: str, secret_uuid: Optional[str] = None) -> str:
    uid = f"<uuid>{secret_uuid}</uuid>" if secret_uuid else ""
    return (f"<secret ephemeral='no' private='no'>{uid}<description>{description}</description>"
            f"<usage type='volume'><volume>{usage}</volume></usage></secret>")


def _usage_taken(exc: Exception) -> bool:
    return "already defined" in str(exc)


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "get_error_code", lambda: None)()
    return code == 66 or "no secret" in str(exc).lower() or "no value" in str(exc).lower()  # VIR_ERR_NO_SECRET


class SecretLedgerStore:
    """The ledger of `host` in the libvirtd behind `conn`; `holder` says who locks it (for the others)."""

    def __init__(self, conn: Any, host: str, holder: str, wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = time.sleep, acquire_s: float = ACQUIRE_S) -> None:
        self.conn = conn
        self.host = host
        self.holder = holder
        self.wall = wall
        self.sleep = sleep
        self.acquire_s = acquire_s

    def _call(self, fn: Callable[..., Any], *args: Any, what: str) -> Any:
        try:
            return bounded.call(fn, *args, timeout_s=CALL_TIMEOUT_S, what=what)
        except bounded.NoAnswer as exc:
            raise LedgerError(f"The libvirtd of {self.host} did not answer ({what}) within {CALL_TIMEOUT_S:g} s.",
                              f"check libvirtd on {self.host}; the migration was not started.") from exc

    def _fail(self, what: str, exc: Exception) -> LedgerError:
        return LedgerError(
            f"Cannot {what} the capacity ledger on {self.host}: {exc}.",
            f"the drain keeps its claims in libvirt secrets on each destination: make sure libvirtd on {self.host} "
            "runs its secret driver (virsh secret-list must work there).")

    # ---- the lock ----------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator[None]:
        lock = self._acquire()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # it expires after LOCK_TTL_S; the next one takes it over then
                self._call(lock.undefine, what="release the ledger lock")

    def _acquire(self) -> Any:
        deadline = self.wall() + self.acquire_s
        seen_empty: dict[str, float] = {}
        while True:
            xml = secret_xml(LOCK_USAGE, f"hvfleet.drain ledger lock of {self.host}", str(uuid.uuid4()))
            try:
                lock = self._call(self.conn.secretDefineXML, xml, 0, what="take the ledger lock")
            except LedgerError:
                raise
            except Exception as exc:  # pylint: disable=broad-except
                if not _usage_taken(exc):
                    raise self._fail("lock", exc) from exc
            else:
                stamp = json.dumps({"holder": self.holder, "expires": self.wall() + LOCK_TTL_S}).encode()
                with contextlib.suppress(Exception):  # an unstamped lock is taken over after LOCK_TTL_S
                    self._call(lock.setValue, stamp, 0, what="stamp the ledger lock")
                return lock
            holder = self._take_over_if_stale(seen_empty)
            if self.wall() > deadline:
                raise LedgerError(f"The capacity ledger of {self.host} stayed locked for {self.acquire_s:g} s "
                                  f"(by {holder or 'an unknown holder'}).",
                                  "wait for the other drain's step to finish and run again; a lock whose holder "
                                  f"died is taken over after {LOCK_TTL_S:g} s.")
            self.sleep(POLL_S)

    def _take_over_if_stale(self, seen_empty: dict[str, float]) -> str:
        """Remove the lock when its holder let it expire; returns who holds it (for the message)."""
        try:
            lock = self._call(self.conn.secretLookupByUsage, USAGE_TYPE_VOLUME, LOCK_USAGE, what="look at the lock")
            key = lock.UUIDString()
        except Exception:  # pylint: disable=broad-except
            return ""  # released meanwhile: try again
        try:
            stamp = json.loads(self._call(lock.value, 0, what="read the ledger lock"))
            expires, holder = float(stamp["expires"]), str(stamp.get("holder") or "")
        except Exception:  # pylint: disable=broad-except
            # no value yet, or a garbled one: it counts as stale once LOCK_TTL_S passed since first seen
            expires, holder = seen_empty.setdefault(key, self.wall()) + LOCK_TTL_S, ""
        if self.wall() > expires:
            with contextlib.suppress(Exception):  # somebody else took it over first
                self._call(lock.undefine, what="take over an expired ledger lock")
        return holder

    # ---- the ledger --------------------------------------------------------------------------

    def _data_secret(self, create: bool) -> Any:
        try:
            return self._call(self.conn.secretLookupByUsage, USAGE_TYPE_VOLUME, DATA_USAGE, what="find the ledger")
        except LedgerError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            if not _missing(exc):
                raise self._fail("read", exc) from exc
        if not create:
            return None
        try:
            return self._call(self.conn.secretDefineXML,
                              secret_xml(DATA_USAGE, f"hvfleet.drain capacity ledger of {self.host}"), 0,
                              what="create the ledger")
        except LedgerError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise self._fail("create", exc) from exc

    def read(self) -> Ledger:
        secret = self._data_secret(create=False)
        if secret is None:
            return Ledger(self.host)
        where = f"libvirt secret {self._uuid(secret)} on {self.host}"
        try:
            raw = self._call(secret.value, 0, what="read the ledger")
        except LedgerError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            if _missing(exc):
                return Ledger(self.host)
            raise self._fail("read", exc) from exc
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return Ledger.from_json(self.host, text, where)

    def write(self, ledger: Ledger) -> None:
        secret = self._data_secret(create=True)
        try:
            self._call(secret.setValue, ledger.to_json().encode(), 0, what="write the ledger")
        except LedgerError:
            raise
        except Exception as exc:  # pylint: disable=broad-except
            raise self._fail("write", exc) from exc

    def _uuid(self, secret: Any) -> str:
        try:
            return str(secret.UUIDString())
        except Exception:  # pylint: disable=broad-except
            return "?"


def publish_host_cordon(conn: Any, host: str, cordon: Cordon) -> bool:
    """Write `cordon` into the ledger of the host behind `conn` (host_maintenance: the host itself); changed."""
    return publish_cordon(SecretLedgerStore(conn, host, f"host_maintenance on {host} (pid {os.getpid()})"), cordon)
