"""The Python API: train your own model, data, loss and metrics with everything distrain guarantees.

    import sys
    import distrain
    from torch import nn

    cfg = distrain.load_config("configs/xor.yaml", sys.argv[2:])     # YAML + dotted overrides
    model = SimpleClassifier(2, 4, 1)
    result = distrain.fit(cfg, model=model, train_data=XORDataset(2500, seed=1), test_data=XORDataset(500, seed=2),
                          loss=nn.BCEWithLogitsLoss(), metrics={"f1": BinaryF1Score()})
    # result.test["loss"], result.test["f1"] (or result["test_f1"]) on every rank; `model` holds the trained weights
    preds = distrain.predict(cfg, model=model, data=XORDataset(500, seed=2))  # outputs in data set order

The same script runs unchanged in one process (`python train.py CONFIG`), under
`torchrun --nproc_per_node=N train.py CONFIG`, `srun python train.py CONFIG` and
`accelerate launch train.py CONFIG engine=accelerate`: distrain reads the launcher's variables.
Whatever fit is not given comes from the config (a config alone still trains a built-in model).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from distrain.config.schema import Config
from distrain.loop.result import FitResult


def fit(
    cfg: Config,
    *,
    model: Any = None,
    train_data: Any = None,
    test_data: Any = None,
    val_data: Any = None,
    loss: Any = None,
    metrics: Mapping[str, Any] | None = None,
    optimizer: Any = None,
    scheduler: Any = None,
    step: Any = None,
    callbacks: Any = None,
) -> FitResult:
    """Train; returns a FitResult on every rank: the final figures per split (`result.test["loss"]`, also
    `result["test_loss"]`), global_step, epochs_done, stopped, trained, run_dir. Must run on every rank.

    model: an nn.Module (trained in place: afterwards it holds the trained weights, unwrapped, on every
    rank). train_data/val_data/test_data: torch Datasets whose samples are (x, y), (x1, ..., y) or dicts;
    TensorDatasets take the in-memory fast path. loss: a callable loss(outputs, targets), e.g. an nn loss
    module. metrics: {name: torchmetrics Metric or function(preds, targets)}. optimizer: a torch optimizer
    over model.parameters(), or a function params -> optimizer. scheduler: a function optimizer -> any
    torch LR scheduler (OneCycleLR, ReduceLROnPlateau, a SequentialLR, ...), stepped after every optimizer
    step, or after every epoch with schedule.interval=epoch (schedule.monitor: the metric a
    ReduceLROnPlateau is given); checkpointed and resumed. step: your own training step,
    fn(model, batch) -> loss, batch the data set's samples collated and on the device; the loss a batch
    mean, per-sample losses [N], or a dict with 'loss' (either) or 'loss_sum' (summed over the batch) and
    named scalars to log (see loop/user_step.py); replaces loss= and metrics=. callbacks: a list of
    objects with any of on_train_start(run), on_epoch_start(run), on_step_end(run), on_epoch_end(run,
    metrics), on_save(run, path), on_train_end(run, result), on_exception(run, exc) (see
    callbacks/base.py; distrain.EMA is one); checkpointed when they have state_dict/load_state_dict.
    Several models (a GAN): model={"g": G, "d": D}, optimizer={"g": ..., "d": ...} and a step
    fn(models, batch, optimizers) that does backward and steps them itself (see loop/several.py).
    """
    from distrain.errors import ArgumentError
    from distrain.loop.components import Given
    from distrain.loop.trainer import train

    if callbacks is not None and not isinstance(callbacks, (list, tuple)):
        raise ArgumentError("callbacks", f"is a {type(callbacks).__name__}", "give a list of callback objects")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ArgumentError("metrics", f"is a {type(metrics).__name__}", 'give a dict {"name": metric}')
    given = Given(
        model=model,
        train_data=train_data,
        val_data=val_data,
        test_data=test_data,
        loss=loss,
        metrics=dict(metrics) if metrics else None,
        optimizer=optimizer,
        scheduler=scheduler,
        step=step,
        callbacks=list(callbacks) if callbacks is not None else None,
    )
    given.check()
    return train(cfg, given)


def predict(
    cfg: Config, *, model: Any = None, data: Any = None, checkpoint: str | None = None, split: str = "test"
) -> Any:
    """The model's outputs for every sample of `data` (default: the config's `split`), in data set order,
    on every rank; `checkpoint`: a .pt file or a run directory. Must run on every rank."""
    from distrain.prediction import predict as run_predict

    return run_predict(cfg, model=model, data=data, checkpoint=checkpoint, split=split)


def is_main_process() -> bool:
    """Whether this process is global rank 0 (under any launcher; read from the environment), the one
    that should print results or write files of its own."""
    from distrain.launch.env import detect

    return detect(os.environ).rank == 0


def run_main(main: Callable[..., Any], *args: Any) -> None:
    """Call a script's `main(*args)` with the distrain command's error reporting: a user error (bad config
    key, file or launcher variable) prints one message and exits 2 without a traceback; a lost peer prints
    one line per surviving rank and exits 4; a hang (trainer.hang_timeout) one message for the job and exits
    5 on every rank; a stop on SIGTERM, SIGINT or the requeue signal exits 128+N
    (or 75: resubmit) after the checkpoint is saved. Anything else (a bug) keeps its traceback.

        if __name__ == "__main__":
            distrain.run_main(main)

    `distrain.run`, its old name, still works: the same function, without a warning.
    """
    import sys

    from distrain.errors import UserError
    from distrain.launch.signals import Interrupted

    try:
        main(*args)
    except UserError as exc:
        from distrain.errors import report_user_error

        report_user_error(exc)  # once (per node), by whichever rank meets it first
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        print(f"distrain: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


run = run_main  # the old name (distrain.run), kept working without a warning
