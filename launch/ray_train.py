"""Ray Train: a distrain config (or your own fit call, in train_loop_per_worker) on a Ray cluster's workers.

    python launch/ray_train.py CONFIG [key=value ...]          (env: RAY_WORKERS, RAY_GPUS, RAY_MAX_FAILURES,
                                                                RAY_STORAGE, RAY_NAME, RAY_ADDRESS)
    e.g. RAY_WORKERS=2 python launch/ray_train.py xor            (a local Ray, 2 CPU workers)
         RAY_ADDRESS=auto RAY_WORKERS=8 RAY_GPUS=1 RAY_STORAGE=/shared/ray python launch/ray_train.py xor

Ray's TorchTrainer starts RAY_WORKERS worker actors, initialises their process group and runs
train_loop_per_worker in each; distrain.fit uses that group as is (launch "ray"). run.dir unset: the run
directory is RAY_STORAGE/RAY_NAME (Ray's experiment directory; it must be a file system every worker sees).
A worker that dies fails the worker group; Ray restarts it up to RAY_MAX_FAILURES times (default 1), and
the restarted workers resume from distrain's newest checkpoint, bitwise. Each epoch's figures reach
`ray.train.report` (the returned Result, Ray's callbacks and its dashboard).
"""

import os
import sys

import distrain


def train_loop_per_worker(config: dict) -> None:
    cfg = distrain.load_config(config["config"], config["overrides"])
    distrain.fit(cfg)  # your own script: distrain.fit(cfg, model=..., train_data=..., ...) as under torchrun


def reports_printed():
    """A Ray Train callback (it runs in Ray's controller) that prints what rank 0 reported each epoch."""
    from ray.train import UserCallback

    class PrintReports(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            print(f"ray_train: reported {metrics[0]}", flush=True)

    return PrintReports()


def main(argv: list[str]) -> None:
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distrain.examples import resolve_config

    if not argv:
        sys.exit(__doc__)
    ray.init(address=os.environ.get("RAY_ADDRESS"))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": os.path.abspath(resolve_config(argv[0])), "overrides": argv[1:]},
        scaling_config=ScalingConfig(
            num_workers=int(os.environ.get("RAY_WORKERS", "2")), use_gpu=os.environ.get("RAY_GPUS") == "1"
        ),
        run_config=RunConfig(
            storage_path=os.path.abspath(os.environ.get("RAY_STORAGE", "runs/ray")),
            name=os.environ.get("RAY_NAME", "distrain"),
            failure_config=FailureConfig(max_failures=int(os.environ.get("RAY_MAX_FAILURES", "1"))),
            callbacks=[reports_printed()],
        ),
    )
    result = trainer.fit()
    print(f"ray_train: done, {result.path}")


if __name__ == "__main__":
    main(sys.argv[1:])
