"""Stop requests: SIGTERM, SIGINT and the requeue signal become "save and stop at the next step boundary".

A handler only records the signal; the training loop asks `agreed_signal()` after each optimizer step, and
the ranks agree with an asynchronous all-reduce on CPU (any rank that got a signal stops them all, one
step later, without a host or device sync in the step). Deciding inside the
handler instead would let one rank leave while the others wait in the next all-reduce until the timeout.

Only the main thread can install signal handlers: where the training runs in another thread (Ray Train runs
the training function in a thread of its worker actor), none is installed and the launcher's own failure
handling stops the run (Ray: a worker that dies or is killed fails the worker group, which restarts under
`FailureConfig(max_failures)` and resumes from the newest checkpoint).

Exit status after such a stop: 128 + the signal number (SIGTERM 143, SIGINT 130, SIGUSR2 140), the shell's
convention for "ended by this signal", so schedulers and scripts see an interrupted run, not a success.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch

from distrain.launch import dist


class Interrupted(Exception):
    """Training stopped on a signal after saving; the CLI exits with `exit_code`."""

    def __init__(self, signum: int):
        super().__init__(f"stopped on {signal.Signals(signum).name} after saving a checkpoint")
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """`with StopSignals(names) as stop:` around the run; `stop.start_agreement()` when the training loop
    starts installs the handlers, `stop.finish_agreement()` when it ends; the previous handlers come back
    when the block is left.

        with StopSignals(["SIGTERM", "SIGINT", "SIGUSR2"]) as stop:   # train(): setup, loop, teardown
            ...                                  # setup: a signal acts as it would without distrain
            stop.start_agreement()               # the loop: a signal means "save and stop", agreed
            ... stop.agreed_signal() ...         #   (collective, every step)
            stop.finish_agreement(failed=...)    # teardown: the first signal is recorded, a second acts
        # the previous handlers again

    Why the teardown still records one signal: when a worker dies, torchrun's agent sends SIGTERM to the
    others at once; with the default handler back, a survivor would die mid-teardown, without its message
    and maybe with its last background write cut short. A second signal (Ctrl-C twice, a scheduler that
    insists) then acts as it always did.
    """

    def __init__(self, names: list[str]):
        self.signums = [signal.Signals[name] for name in names]
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._collective = False
        self._pending = None
        self._looping = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Silent: the loop says it once the ranks agree to stop. A signal that is never acted on (torchrun's
        # agent sends SIGTERM to the survivors of a lost worker, whose next collective fails) promises no save.
        self.received = signum
        if not self._looping:
            self._restore()  # the teardown's one recorded signal: the next one acts as before

    def __enter__(self) -> StopSignals:
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def start_agreement(self) -> None:
        """The loop starts: the handlers are installed, and from here on `agreed_signal` is collective
        when the run has several ranks. Every rank calls it."""
        self._looping = True
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        self._collective = dist.is_distributed()  # asked once: agreed_signal runs every step
        if self._collective:
            # The agreement runs on CPU tensors in a gloo group (the default group when it is gloo, else a
            # side group), asynchronously: reading a GPU flag would sync the device on every step.
            self._group = dist.cpu_group()
            self._flag = torch.zeros(1, dtype=torch.int64)
            self._pending = None

    def finish_agreement(self, *, failed: bool) -> None:
        """The loop ends: collect the last reduction every rank started. `failed`: an exception is on its
        way out."""
        pending, self._pending = self._pending, None
        self._collective = self._looping = False
        if pending is None:
            return
        # Waited for on the failure path too: a gloo work object still pending when the group is destroyed
        # can abort the process at exit. Every rank started this reduction, so it ends, or fails at once
        # when a peer is gone.
        try:
            pending.wait()
        except RuntimeError:
            if not failed:
                raise
            # The reduction shared the lost peer's connection and fails the same way: the first error
            # (on its way out) is the one reported, not this repeat of it.

    def agreed_signal(self) -> int | None:
        """The signal to stop on if any rank received one, else None. Collective: every rank must call it,
        the same number of times.

        With several ranks the verdict lags one step: each call collects the all-reduce (MAX of the
        signal numbers) started by the previous call and starts the next one, so the step never waits
        for the network. Every rank sees the same verdict at the same call, so all stop together.
        """
        if not self._collective:
            return self.received  # one process: no collective, no host sync
        agreed = None
        if self._pending is not None:
            dist.tracked("all_reduce", self._pending.wait)
            self._pending = None
            agreed = int(self._flag.item()) or None
        if agreed is None:
            self._flag.fill_(self.received or 0)
            self._pending = torch.distributed.all_reduce(
                self._flag, op=torch.distributed.ReduceOp.MAX, group=self._group, async_op=True
            )
        return agreed
