"""Who am I, and how do I join the others? The launcher's environment, the process group, signals, SLURM.

- env.py      detect(environ) -> DistEnv: torchrun, srun or one process (a pure function)
- dist.py     the process group's setup and teardown; collectives that do nothing in one process
- signals.py  SIGTERM, SIGINT and the requeue signal -> a save-and-stop every rank agrees on
- slurm.py    SLURM: a run directory per array task, requeue after a saved stop
"""
