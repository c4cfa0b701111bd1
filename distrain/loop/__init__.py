"""What is training? The trainer, the step, evaluation, and the state a checkpoint holds.

- trainer.py     train(cfg) and Trainer: built whole (state, resume, step, reporter), then fit(): the story
- steps.py       the step convention (TrainStep), StrategyStep (the strategy's gradient path), evaluate
- meters.py      the train meters (TrainMeter, StepMeter): running sums of the epoch, exact in any order
- components.py  what a run trains (data, model, loss, metrics, optimizer), from the config or given to fit
- objective.py   the loss, per-sample losses, how outputs are read, the pre-flight check
- user_step.py   fit(step=fn): the user's own training step and the scalars it logs
- several.py     several models and optimizers (a GAN), stepped by the user's step
- metrics.py     accuracy, torchmetrics and function metrics over every sample once
- state.py       the training state a checkpoint holds (Progress, TrainState)
- definition.py  what defines a run beyond its config (definition.json), compared on resume
- result.py      FitResult, what distrain.fit returns
- optim.py, schedule.py, stopping.py, nonfinite.py   optimizer, LR schedule, early stopping (typed stop
                 reasons), NaN/Inf handling

How gradients are made and exchanged is the strategy's (distrain.strategies); when to save and how to
resume, the checkpoint package's; the callbacks live in distrain.callbacks; the eval and predict commands
beside the API (distrain/evaluate.py, distrain/prediction.py).
"""
