"""What is training? The trainer, the step, evaluation, and the state a checkpoint holds.

- trainer.py     train(cfg): resume, then for each epoch: train, evaluate, log, save, maybe stop
- steps.py       train_step, evaluate (and evaluate_splits), the train-metrics meter (TrainMeter)
- components.py  what a run trains (data, model, loss, metrics, optimizer), from the config or given to fit
- objective.py   the loss, per-sample losses, how outputs are read, the pre-flight check
- user_step.py   fit(step=fn): the user's own training step and the scalars it logs
- several.py     several models and optimizers (a GAN), stepped by the user's step
- exact.py       trainer.exact: one optimizer step as fixed chunks, the same bits on any world size
- metrics.py     accuracy, torchmetrics and function metrics over every sample once
- state.py       the training state, when it is saved (Saver), and resuming into it
- definition.py  what defines a run beyond its config (definition.json), compared on resume
- callbacks.py, ema.py   the callback hooks and what they see (Run); EMA, a built-in callback
- result.py      FitResult, what distrain.fit returns
- optim.py, schedule.py, stopping.py, nonfinite.py, seeding.py   optimizer, LR schedule, early stopping,
                 NaN/Inf handling, seeds
- evaluate.py, prediction.py   the `distrain eval` and `distrain predict` commands
"""
