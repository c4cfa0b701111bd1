"""TensorBoard: event files in <run.dir>/tensorboard that `tensorboard --logdir runs` reads.

    log:
      loggers: [tensorboard]      # needs the tensorboard package: pip install 'distrain[tensorboard]'

Every scalar is written under its name (train/step_loss, test/accuracy, lr, ...) against the global
optimizer step, through torch's own SummaryWriter. A resumed run rewrites the steps after its
checkpoint: TensorBoard is told to hide the earlier attempt's events from that step on (purge_step).
"""

from __future__ import annotations

from pathlib import Path

from distrain.errors import ConfigError


class TensorBoardLogger:
    """TensorBoard event files in <run.dir>/tensorboard, every scalar against the global step."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        # Events of steps after the checkpoint a resume starts from were written by the interrupted attempt
        # and are written again: TensorBoard hides every event from purge_step on.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    @staticmethod
    def check_available() -> None:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "log.loggers",
                "names tensorboard but the tensorboard package is not installed",
                "pip install tensorboard (or distrain[tensorboard]), or remove tensorboard from log.loggers",
            )

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)

    def close(self) -> None:
        self.writer.close()
