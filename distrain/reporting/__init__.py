"""Where do metrics go? Console, metrics.jsonl, Weights & Biases and plots, written by global rank 0.

- report.py     the Reporter: step and epoch metrics fanned out to every sink
- history.py    metrics.jsonl (one record per split and epoch)
- wandb_run.py  the job's one W&B run
- plots.py      curves per metric (PNG)
"""
