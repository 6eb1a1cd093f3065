"""host_drain's signal handling: Ctrl-C and kill cancel the drain (without blocking), a hang-up does not."""

import signal

import pytest

pytest.importorskip("libvirt")


class Recorder:
    def __init__(self):
        self.cancels = 0

    def cancel(self):
        self.cancels += 1


@pytest.mark.usefixtures("saved_handlers")
def test_ctrl_c_and_kill_cancel_the_drain_and_a_hang_up_is_ignored():
    from ansible_collections.hvfleet.drain.plugins.modules.host_drain import HostDrainModule

    drainer = Recorder()
    HostDrainModule._trap_signals(drainer)  # pylint: disable=protected-access
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN  # a dropped SSH session must not stop the drain
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    assert drainer.cancels == 2
