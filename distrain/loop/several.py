"""Several models and optimizers (a GAN): `model={"g": G, "d": D}`, `optimizer={"g": ..., "d": ...}` and a
step that receives them and steps them itself.

    def step(models, batch, optimizers):        # models: each wrapped for data parallelism (DDP)
        ...; optimizers["d"].step(); ...; optimizers["g"].step()
        return {"loss": g_loss.detach(), "d_loss": d_loss.detach()}

    distrain.fit(cfg, model={"g": G(), "d": D()}, optimizer={"g": fn_or_opt, "d": fn_or_opt},
                 train_data=data, step=step)

The models are held as one `ModelSet` (an nn.ModuleDict: a checkpoint's weights are "g.<name>",
"d.<name>") and the optimizers as one `OptimizerSet` (its state_dict: one per name), so every checkpoint,
resume (bitwise: each rank's random stream is checkpointed too) and run definition covers them all.
The strategy prepares each model on its own (ddp: each wrapped for data parallelism, its gradients
averaged over the ranks in its backward, whichever loss it comes from; the others refuse by name). The
step does backward and the optimizer steps itself, so gradient clipping, fp16 loss scaling and the
non-finite step guard are not applied (refused where they are asked for); the reported figures are what
the step returns, read as a user's step's (loop/user_step.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from distrain.errors import ArgumentError, ConfigError
from distrain.strategies.base import ModelSet


class OptimizerSet(torch.optim.Optimizer):
    """The run's optimizers by name, one object for checkpoints, schedules and the run definition. Its
    param_groups are theirs (the same dicts: a schedule that sets the lr sets theirs); step() and
    zero_grad() act on every one; its state_dict holds one per name."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = dict(optimizers)
        groups = [group for opt in self.optimizers.values() for group in opt.param_groups]
        # torch's own constructor (its hooks and step patching), over all the parameters in one group;
        # then the groups are the optimizers' own, shared, not copies.
        super().__init__([p for group in groups for p in group["params"]], defaults={})
        self.param_groups = groups

    def _share_groups(self) -> None:
        # torch's load_state_dict gives an optimizer new group dicts: hold those (in the same list).
        self.param_groups[:] = [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state_dict[name])
        self._share_groups()

    def __repr__(self) -> str:
        return f"OptimizerSet({', '.join(self.optimizers)})"


def check_several(cfg: Any, given: Any) -> None:
    """What a dict of models needs and refuses, named (before anything is built)."""
    if given.step is None:
        raise ArgumentError("model", "a dict of models needs step=: a function (models, batch, optimizers)")
    if not isinstance(given.optimizer, dict) or set(given.optimizer) != set(given.model):
        raise ArgumentError(
            "optimizer",
            "with a dict of models, give a dict of optimizers with the same names "
            f"({', '.join(given.model)}): each an optimizer or a function params -> optimizer",
        )
    # The strategy refuses several models itself where it cannot train them (its setup()).
    if cfg.trainer.accumulate_steps != 1:
        raise ConfigError("trainer.accumulate_steps", "cannot be used with several models: the step steps itself")
    for name in ("val_data", "test_data"):
        if getattr(given, name) is not None:
            raise ArgumentError(name, "is not evaluated with several models: their step trains (steps) itself")
    if cfg.data.val_fraction:
        raise ConfigError("data.val_fraction", "must be 0 with several models: their step is not evaluated")
    if given.scheduler is not None:
        raise ArgumentError("scheduler", "with several optimizers, step their schedulers in the step")


def several_optimizers(model: ModelSet, chosen: dict[str, Any]) -> OptimizerSet:
    made = {}
    for name, opt in chosen.items():
        params = [p for p in model[name].parameters() if p.requires_grad]
        if not isinstance(opt, torch.optim.Optimizer):
            opt = opt(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise ArgumentError("optimizer", f"[{name!r}] is not a torch optimizer (nor made one)")
        owned = {id(p) for p in model[name].parameters()}
        if any(id(p) not in owned for group in opt.param_groups for p in group["params"]):
            raise ArgumentError("optimizer", f"[{name!r}] holds parameters that are not model[{name!r}]'s")
        made[name] = opt
    return OptimizerSet(made)


class SelfSteppingStep:
    """The train step for several models (loop/steps.py's TrainStep): the user's step does backward and
    the optimizer steps itself, with the models as the strategy prepared them (each averages its
    gradients over the ranks in its own backward); this records what it returns."""

    def __init__(self, models: nn.ModuleDict, optimizer: OptimizerSet, objective: Any, meter: Any):
        self.models, self.optimizers = dict(models.items()), optimizer.optimizers
        self.objective, self.meter = objective, meter

    def __call__(self, batch: Any) -> bool:
        from distrain.data.structures import num_samples

        count = num_samples(batch.targets)
        out = self.objective.fn(self.models, self.objective.user_batch(batch.inputs, batch.targets), self.optimizers)
        values = self.objective.read(out, count)
        self.meter.add({name: (v.detach(), w) for name, (v, w) in values.items()}, count)
        return True
