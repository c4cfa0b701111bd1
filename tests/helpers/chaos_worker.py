"""Run `distrain` under torchrun with the SIGKILLs that tests/test_chaos.py planned: CHAOS_PLAN maps each
torchrun attempt (TORCHELASTIC_RESTART_COUNT) to whom it kills, after how many optimizer steps of that
attempt, and how many seconds after that step. A timer thread fires the SIGKILL at that moment, wherever
the process then is (in a step's backward, an evaluation, a background write, a save's barrier, the
teardown): unannounced deaths at moments no step boundary chooses.

    CHAOS_PLAN='{"0": ["rank1", 12, 0.004], "1": ["job", 30, 0.011]}' \\
        torchrun ... tests/helpers/chaos_worker.py train CONFIG ...

"rankN": that worker dies alone (torchrun --max-restarts restarts the group). "job": global rank 0 kills
the other workers, torchrun's agent and itself, as when the machine goes (the workers are in sessions of
their own, so killing the agent's process group would leave them running); the test then runs the same
command again.
"""

import json
import os
import signal
import sys
import threading
from pathlib import Path

import distrain.loop.trainer
from distrain.cli import main

_original = distrain.loop.trainer.Trainer.maybe_save_step  # after each step's advance and log
_steps = 0


def _children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _kill(whom: str) -> None:
    if whom == "job":
        agent = os.getppid()
        for pid in [p for p in _children_of(agent) if p != os.getpid()] + [agent]:
            os.kill(pid, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _maybe_save_then_plan(self):
    global _steps
    saved = _original(self)
    _steps += 1
    plan = json.loads(os.environ.get("CHAOS_PLAN", "{}")).get(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if plan is not None and _steps == plan[1]:
        whom, _, delay = plan
        if whom == f"rank{os.environ['RANK']}" or (whom == "job" and os.environ["RANK"] == "0"):
            threading.Timer(delay, _kill, (whom,)).start()
    return saved


distrain.loop.trainer.Trainer.maybe_save_step = _maybe_save_then_plan
sys.exit(main())
