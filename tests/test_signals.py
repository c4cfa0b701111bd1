"""StopSignals in one process: when a signal means "save and stop", and when it acts as without distrain."""

import signal

from distrain.launch.signals import StopSignals


def test_a_signal_stops_the_loop_and_in_the_teardown_only_the_second_acts():
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with StopSignals(["SIGUSR2"]) as stop:
            signal.raise_signal(signal.SIGUSR2)  # setup: the previous handler acts
            assert seen == [signal.SIGUSR2] and stop.received is None
            stop.start_agreement()  # the loop: recorded, agreed (one process: at once)
            assert stop.agreed_signal() is None
            signal.raise_signal(signal.SIGUSR2)
            assert stop.agreed_signal() == signal.SIGUSR2 and len(seen) == 1
            stop.finish_agreement(failed=True)
            stop.received = None
            signal.raise_signal(signal.SIGUSR2)  # teardown: the first is recorded (torchrun's SIGTERM) ...
            assert stop.received == signal.SIGUSR2 and len(seen) == 1
            signal.raise_signal(signal.SIGUSR2)  # ... a second one acts as before
            assert len(seen) == 2
        signal.raise_signal(signal.SIGUSR2)  # after the block: the previous handler
        assert len(seen) == 3
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_no_handlers_outside_the_main_thread():
    """Ray Train runs the training function in a thread: installing a handler there would raise
    "signal only works in main thread"; none is installed, the launcher's failure handling applies."""
    import threading

    before = signal.getsignal(signal.SIGTERM)
    errors = []

    def loop():
        try:
            with StopSignals(["SIGTERM"]) as stop:
                stop.start_agreement()
                assert signal.getsignal(signal.SIGTERM) is before
                stop.finish_agreement(failed=False)
        except Exception as exc:  # pragma: no cover - the failure this test is for
            errors.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    thread.join()
    assert not errors and signal.getsignal(signal.SIGTERM) is before
