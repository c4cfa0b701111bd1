"""Run `distrain` under torchrun, but SIGKILL rank KILL_RANK right after global step KILL_STEP, on the
first attempt only (TORCHELASTIC_RESTART_COUNT=0): a real, unannounced death of one worker mid-training.
With KILL_AGENT=1 (set in one torchrun agent's environment) every worker of that agent kills the agent
and then itself at that step instead: the node is lost, as when its machine dies (each worker is in a
session of its own, so killing the agent alone would leave them running).
With HOLD_STEP and HOLD_FILE instead, every rank waits after global step HOLD_STEP until the file HOLD_FILE
exists (rank 0 first writes HOLD_FILE.held): a run kept alive, mid-training, for exactly as long as a test
needs it.

    torchrun ... tests/helpers/kill_at_step.py train CONFIG ...          (env: KILL_RANK, KILL_STEP)
    torchrun ... tests/helpers/kill_at_step.py SCRIPT.py CONFIG ...      a user's script, the same way
"""

import os
import signal
import sys
import time
from pathlib import Path

import distrain.loop.trainer
from distrain.cli import main

_original = distrain.loop.trainer.Trainer.maybe_save_step  # after each step's advance and log


def _maybe_save_then_die(self):
    saved = _original(self)
    if os.environ.get("HOLD_STEP") and self.state.progress.global_step == int(os.environ["HOLD_STEP"]):
        release = Path(os.environ["HOLD_FILE"])
        if os.environ.get("RANK", "0") == "0":
            Path(f"{release}.held").touch()
        while not release.exists():
            time.sleep(0.05)
        return saved
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and self.state.progress.global_step == int(os.environ.get("KILL_STEP", "-1")):
        if os.environ.get("KILL_AGENT") == "1":
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ.get("RANK") == os.environ.get("KILL_RANK"):
            os.kill(os.getpid(), signal.SIGKILL)
    return saved


distrain.loop.trainer.Trainer.maybe_save_step = _maybe_save_then_die
if sys.argv[1].endswith(".py"):
    import runpy

    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    sys.exit(main())
