"""A callback that SIGKILLs its own process once: after global step `step`, on global rank `rank`, unless the
file `marker` exists (it writes it first). Given by import path in a config override, so a launcher's
command runs as written and only its arguments grow:

    callbacks=[{name: "helpers.kill_callback:KillOnce", args: {step: 130, rank: 1, marker: /tmp/killed}}]

(tests/ on PYTHONPATH). A real, unannounced death of one worker mid-training, whatever started it: a pod's
process, a Ray Train worker, a torchrun worker.
"""

import os
import signal
from pathlib import Path


class KillOnce:
    def __init__(self, step: int, rank: int, marker: str):
        self.step, self.rank, self.marker = step, rank, Path(marker)

    def on_step_end(self, run) -> None:
        if run.global_step == self.step and run.rank == self.rank and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
