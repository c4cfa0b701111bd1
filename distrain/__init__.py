"""distrain: plain data parallelism done right. The same code trains in one process, under torchrun,
under SLURM's srun and under `accelerate launch`, with exact metrics and exact resume. See README.md.

    cfg = distrain.load_config("configs/xor.yaml", sys.argv[2:])
    result = distrain.fit(cfg, model=my_model, train_data=my_train, test_data=my_test, loss=nn.MSELoss())
    preds = distrain.predict(cfg, model=my_model, data=my_test)
    distrain.register("model", "my_net", MyNet)        # a short name for configs
    distrain.run(main)                                  # user errors: a message and exit 2, no traceback

Nothing happens at import: no environment reads or writes, no torch import (the names below are loaded
when first used).
"""

from distrain.version import __version__ as __version__

__all__ = [
    "EMA",
    "ConfigError",
    "DataSets",
    "FitResult",
    "ShardedDataset",
    "UserError",
    "fit",
    "is_main_process",
    "load_config",
    "predict",
    "register",
    "run",
]


def __getattr__(name: str):
    if name in ("fit", "predict", "run", "is_main_process"):
        from distrain import api

        return getattr(api, name)
    if name == "load_config":
        from distrain.config.parse import load_config

        return load_config
    if name == "register":
        from distrain.config.registry import register

        return register
    if name == "EMA":
        from distrain.loop.ema import EMA

        return EMA
    if name == "FitResult":
        from distrain.loop.result import FitResult

        return FitResult
    if name == "DataSets":
        from distrain.data.datasets import DataSets

        return DataSets
    if name == "ShardedDataset":
        from distrain.data.shards import ShardedDataset

        return ShardedDataset
    if name in ("ConfigError", "UserError"):
        from distrain import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'distrain' has no attribute {name!r}")
