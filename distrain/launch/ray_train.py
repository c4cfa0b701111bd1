"""Ray Train: distrain.fit inside a `TorchTrainer`'s training function, with Ray's workers and process group.

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def train_loop_per_worker(config):
        cfg = distrain.load_config(config["config"], config["overrides"])
        distrain.fit(cfg, model=..., train_data=...)              # as under torchrun

    TorchTrainer(train_loop_per_worker, train_loop_config={...},
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(storage_path="/shared/ray", name="xor",
                                      failure_config=FailureConfig(max_failures=1))).fit()

(launch/ray_train.py is this script, for a config.) What distrain does under Ray (env.py names the launch
"ray": RANK etc. with RAY_RAYLET_PID):
- the process group Ray initialised is used as is, and left for Ray to destroy (dist.adopt_existing_group);
- no signal handlers (the function runs in a thread of the worker actor, where Python allows none): Ray's
  own failure handling stops and restarts the worker group;
- run.dir unset: the run directory is Ray's experiment directory on its storage path
  (`RunConfig(storage_path, name)`), which must be a file system every worker sees; a relative run.dir is
  placed inside it (Ray runs each worker in a temporary folder of its node, no place for checkpoints); an
  absolute one is used as is. A restarted worker group (`FailureConfig(max_failures)`) resumes from
  distrain's newest checkpoint there, bitwise;
- after every epoch each worker reports the epoch's figures with `ray.train.report(metrics)` (a barrier
  every worker must reach, the same number of times: RayReport is called on every rank).

`ray` is imported only here, and only when running under Ray (the optional extra `distrain[ray]`).
"""

from __future__ import annotations

from typing import Any, Mapping

from distrain.errors import ConfigError, EnvError
from distrain.launch.contract import DistEnv, int_var, validated


def from_ray(environ: Mapping[str, str]) -> DistEnv:
    """Ray Train's worker: Ray sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, NODE_RANK (and
    MASTER_ADDR/PORT) and has initialised the process group before the training function runs."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        if var not in environ:
            raise EnvError(var, "is not set in a Ray Train worker", "call distrain.fit in a TorchTrainer loop")
    world_size = int_var(environ, "WORLD_SIZE")
    return validated(
        DistEnv(
            "ray",
            int_var(environ, "RANK"),
            int_var(environ, "LOCAL_RANK"),
            world_size,
            int_var(environ, "LOCAL_WORLD_SIZE"),
            int_var(environ, "NODE_RANK") if "NODE_RANK" in environ else 0,
            environ.get("MASTER_ADDR"),
            int_var(environ, "MASTER_PORT") if "MASTER_PORT" in environ else None,
        ),
        rank_var="RANK",
        world_var="WORLD_SIZE",
        local_var="LOCAL_RANK",
        local_world_var="LOCAL_WORLD_SIZE",
    )


def storage_run_dir() -> str:
    """Ray's experiment directory (storage_path/name), as the run directory when run.dir is unset."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    filesystem = type(getattr(storage, "storage_filesystem", None)).__name__
    path = getattr(storage, "experiment_fs_path", None)
    if path is None or filesystem not in ("LocalFileSystem", "NoneType"):
        raise ConfigError(
            "run.dir",
            f"is not set, and Ray's storage path is not a local file system ({filesystem})",
            "set run.dir to a folder on a file system every Ray worker sees",
        )
    return str(path)


class RayReport:
    """The epoch's figures to `ray.train.report`, from every worker (Ray's report is a barrier)."""

    def on_epoch_end(self, run: Any, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report({**metrics, "epoch": run.epoch + 1, "global_step": run.global_step})
