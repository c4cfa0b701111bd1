"""Stop requests: SIGTERM, SIGINT and the requeue signal become "save and stop at the next step boundary".

A handler only records the signal; the training loop asks `should_stop()` after each optimizer step, and
the ranks agree with one all-reduce (any rank that got a signal stops them all). Deciding inside the
handler instead would let one rank leave while the others wait in the next all-reduce until the timeout.

Exit status after such a stop: 128 + the signal number (SIGTERM 143, SIGINT 130, SIGUSR2 140), the shell's
convention for "ended by this signal", so schedulers and scripts see an interrupted run, not a success.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import torch

from distrain import dist

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on a signal after saving; the CLI exits with `exit_code`."""

    def __init__(self, signum: int):
        super().__init__(f"stopped on {signal.Signals(signum).name} after saving a checkpoint")
        self.signum = signum
        self.exit_code = 128 + signum


class StopSignals:
    """Install with `with StopSignals(names) as stop:`; the previous handlers come back on exit."""

    def __init__(self, names: list[str]):
        self.signums = [signal.Signals[name] for name in names]
        self.received: int | None = None
        self._previous: dict[int, object] = {}
        self._collective = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            log.warning("received %s: saving a checkpoint and stopping at the next step",
                        signal.Signals(signum).name)
        self.received = signum

    def __enter__(self) -> "StopSignals":
        self._collective = dist.is_distributed()  # asked once: agreed_signal runs every step
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def agreed_signal(self, device: torch.device) -> int | None:
        """The signal to stop on if any rank received one, else None. Collective: every rank must call it."""
        if not self._collective:
            return self.received  # one process: no collective, no host sync
        local = torch.tensor([self.received or 0], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX)
        signum = int(local.item())
        return signum or None
