import os
import signal
import time

from pmd.signals import StopSignals


def test_signal_is_recorded_not_raised_and_handler_restored():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop.wait(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        t0 = time.monotonic()
        assert stop.wait(5.0) and time.monotonic() - t0 < 0.5
        assert stop.received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before
