"""Run `distrain` under torchrun, but SIGKILL rank KILL_RANK right after global step KILL_STEP, on the
first attempt only (TORCHELASTIC_RESTART_COUNT=0): a real, unannounced death of one worker mid-training.
With KILL_AGENT=1 (set in one torchrun agent's environment) every worker of that agent kills the agent
and then itself at that step instead: the node is lost, as when its machine dies (each worker is in a
session of its own, so killing the agent alone would leave them running).

    torchrun ... tests/helpers/kill_at_step.py train CONFIG ...          (env: KILL_RANK, KILL_STEP)
    torchrun ... tests/helpers/kill_at_step.py SCRIPT.py CONFIG ...      a user's script, the same way
"""

import os
import signal
import sys

import distrain.state
from distrain.cli import main

_original = distrain.state.Saver.maybe_save_step


def _maybe_save_then_die(self):
    saved = _original(self)
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and self.state.progress.global_step == int(os.environ["KILL_STEP"]):
        if os.environ.get("KILL_AGENT") == "1":
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ.get("RANK") == os.environ.get("KILL_RANK"):
            os.kill(os.getpid(), signal.SIGKILL)
    return saved


distrain.state.Saver.maybe_save_step = _maybe_save_then_die
if sys.argv[1].endswith(".py"):
    import runpy

    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
else:
    sys.exit(main())
