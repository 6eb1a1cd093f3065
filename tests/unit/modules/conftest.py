"""What the module tests share: the process's signal handlers put back after a test that installs its own."""

import signal

import pytest


@pytest.fixture
def saved_handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
