"""Where do metrics go? Console and metrics.jsonl always; W&B, TensorBoard, CSV or your own as log.loggers
says; plots. Written by global rank 0.

- report.py       the Reporter: step and epoch metrics fanned out to every sink
- history.py      metrics.jsonl (one record per split and epoch)
- loggers.py      the logger plug-in interface (log_scalars, log_epoch, log_summary, close) and building them
- wandb_run.py    the job's one W&B run (on when W&B is set up)
- tensorboard.py  TensorBoard event files
- csv_log.py      scalars.csv
- plots.py        curves per metric (PNG)
"""
