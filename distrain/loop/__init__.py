"""What is training? The trainer, the step, evaluation, and the state a checkpoint holds.

- trainer.py     train(cfg): resume, then for each epoch: train, evaluate, log, save, maybe stop
- steps.py       train_one_epoch, evaluate, the train-metrics meter
- components.py  what a run trains (data, model, loss, metrics, optimizer), from the config or given to fit
- objective.py   the loss, per-sample losses, how outputs are read, the pre-flight check
- metrics.py     accuracy, torchmetrics and function metrics over every sample once
- state.py       the training state, when it is saved (Saver), and resuming into it
- optim.py, schedule.py, stopping.py, nonfinite.py, seeding.py   optimizer, LR schedule, early stopping,
                 NaN/Inf handling, seeds
- evaluate.py, prediction.py   the `distrain eval` and `distrain predict` commands
"""
