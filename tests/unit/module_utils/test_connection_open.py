# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""connection.connect_all (parallel opens), keepalive and the event loop, against libvirt's test driver."""

from __future__ import annotations

import threading

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common import connection
from ansible_collections.hvfleet.drain.plugins.module_utils.common.errors import LibvirtConnectionError

libvirt = pytest.importorskip("libvirt")


def test_connect_all_returns_connections_in_order():
    conns = connection.connect_all(["test:///default", "test:///default"])
    try:
        assert len(conns) == 2 and conns[0] is not conns[1]
        assert all(c.getURI() == "test:///default" for c in conns)
    finally:
        for conn in conns:
            connection.close_quietly(conn)


def test_connect_all_opens_in_parallel(monkeypatch):
    """Three slow handshakes cost about one, not three."""
    inside, peak = [0], [0]
    lock = threading.Lock()
    real = connection.connect

    def slow_connect(uri, **kw):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        try:
            barrier.wait(5)  # all three must be in here at once, or this times out
            return real(uri, **kw)
        finally:
            with lock:
                inside[0] -= 1

    barrier = threading.Barrier(3)
    monkeypatch.setattr(connection, "connect", slow_connect)
    conns = connection.connect_all(["test:///default"] * 3)
    for conn in conns:
        connection.close_quietly(conn)
    assert peak[0] == 3


def test_connect_all_closes_the_opened_ones_and_names_the_failing_uri(monkeypatch):
    opened = []
    real = connection.connect

    def tracking(uri, **kw):
        conn = real(uri, **kw)
        opened.append(conn)
        return conn

    monkeypatch.setattr(connection, "connect", tracking)
    with pytest.raises(LibvirtConnectionError) as err:
        connection.connect_all(["test:///default", "http://nowhere/system", "test:///default"])
    assert "http://nowhere/system" in str(err.value)
    assert len(opened) == 2
    for conn in opened:  # closed by connect_all: libvirt refuses calls on a closed connection
        with pytest.raises(libvirt.libvirtError):
            conn.getURI()


def test_event_loop_runs_for_keepalive():
    """Keepalive needs libvirt's event loop: connect() registers it and a thread runs it."""
    conn = connection.connect("test:///default")
    try:
        thread = connection._event_thread  # pylint: disable=protected-access
        assert thread is not None and thread.is_alive() and thread.daemon
    finally:
        connection.close_quietly(conn)
