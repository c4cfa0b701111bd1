"""distrain: plain data parallelism done right. The same code trains in one process, under torchrun,
under SLURM's srun and under `accelerate launch`, with exact metrics and exact resume. See README.md.

    cfg = distrain.load_config("configs/xor.yaml", sys.argv[2:])
    result = distrain.fit(cfg, model=my_model, train_data=my_train, test_data=my_test, loss=nn.MSELoss())
    preds = distrain.predict(cfg, model=my_model, data=my_test)
    distrain.register("model", "my_net", MyNet)        # a short name for configs
    distrain.run_main(main)                             # user errors: a message and exit 2, no traceback

Also here: `Config` (what load_config returns), `Run` and the `Callback` hooks (for fit's callbacks=), and
the errors to catch: `UserError` (any the user can fix), `ConfigError` (a config key), `ArgumentError`
(an argument of fit), `Diverged` (NaN or Inf with trainer.on_nonfinite: stop), `LostPeer` (another rank
is gone). `distrain.run` is the old name of run_main and still works, without a warning.

Nothing happens at import: no environment reads or writes, no torch import (the names below are loaded
when first used).
"""

from distrain.version import __version__ as __version__

__all__ = [
    "EMA",
    "ArgumentError",
    "Callback",
    "Config",
    "ConfigError",
    "DataSets",
    "Diverged",
    "FitResult",
    "LostPeer",
    "Run",
    "ShardedDataset",
    "UserError",
    "fit",
    "is_main_process",
    "load_config",
    "predict",
    "probing",
    "register",
    "run_main",
]


def __getattr__(name: str):
    if name in ("fit", "predict", "run_main", "run", "is_main_process"):
        from distrain import api

        return getattr(api, name)
    if name == "load_config":
        from distrain.config.parse import load_config

        return load_config
    if name == "register":
        from distrain.config.registry import register

        return register
    if name == "EMA":
        from distrain.callbacks.ema import EMA

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
    if name in ("Callback", "Run"):
        from distrain.callbacks import base

        return getattr(base, name)
    if name == "probing":
        from distrain.loop.user_step import probing

        return probing
    if name == "Config":
        from distrain.config.schema import Config

        return Config
    if name in ("ArgumentError", "ConfigError", "Diverged", "LostPeer", "UserError"):
        from distrain import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'distrain' has no attribute {name!r}")
