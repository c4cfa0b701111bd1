"""Who am I, and how do I join the others? The launcher's environment, the process group, signals, SLURM, Ray.

- env.py         detect(environ) -> DistEnv, trying each launch contract in a written-down order: torchrun,
                 Ray Train, Kubernetes, SLURM or one process (a pure function)
- contract.py    DistEnv, and the checks every contract shares
- kubernetes.py  PyTorchJob, TrainJob, JobSet, TorchX: what their pods hold, and the traps refused
- dist.py        the process group's setup and teardown (or an existing one, used as is); collectives that
                 do nothing in one process
- signals.py     SIGTERM, SIGINT and the requeue signal -> a save-and-stop every rank agrees on
- slurm.py       SLURM: a run directory per array task, requeue after a saved stop
- ray_train.py   Ray Train: its workers' variables, the run directory on Ray's storage, the epoch's figures
                 to ray.train.report
"""
