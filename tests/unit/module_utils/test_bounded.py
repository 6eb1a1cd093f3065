# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""bounded.call: the answer, the error, or NoAnswer once the deadline passes."""

from __future__ import annotations

import threading
import time

import pytest
from ansible_collections.hvfleet.drain.plugins.module_utils.common import bounded


def test_returns_the_value_and_passes_arguments():
    assert bounded.call(lambda a, b: a + b, 2, 3, timeout_s=5) == 5


def test_raises_the_callees_error():
    def refuse():
        raise ValueError("refused by the daemon")
    with pytest.raises(ValueError, match="refused by the daemon"):
        bounded.call(refuse, timeout_s=5)


def test_gives_up_on_a_call_that_never_returns():
    release = threading.Event()
    start = time.monotonic()
    try:
        with pytest.raises(bounded.NoAnswer, match=r"state of 'vm1': no answer within 0.2 s"):
            bounded.call(release.wait, timeout_s=0.2, what="state of 'vm1'")
        assert time.monotonic() - start < 5
    finally:
        release.set()
