"""Who am I, and how do I join the others? The launcher's environment, the process group, signals, SLURM, Ray.

- env.py        detect(environ) -> DistEnv: torchrun, srun, Kubernetes (PyTorchJob, TrainJob, JobSet),
                TorchX, Ray Train or one process, and the launch traps refused (a pure function)
- dist.py       the process group's setup and teardown (or an existing one, used as is); collectives that
                do nothing in one process
- signals.py    SIGTERM, SIGINT and the requeue signal -> a save-and-stop every rank agrees on
- slurm.py      SLURM: a run directory per array task, requeue after a saved stop
- ray_train.py  Ray Train: the run directory on Ray's storage, the epoch's figures to ray.train.report
"""
