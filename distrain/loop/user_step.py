"""Your own training step: `distrain.fit(cfg, ..., step=fn)`, `fn(model, batch)` returning the loss.

    loss = fn(model, batch)    # batch: the data set's samples collated and on the device: (x, y), (x1, x2, y)
                               # or a dict with its target under data.target_key (else "target")

What fn returns, and what distrain makes of it (the gradient of the global batch's mean on any number of
processes, and the reported train loss):
- per-sample losses, a tensor [N]: the step's loss is their sum / the global batch size; the reported
  loss is the exact mean of the per-sample losses over the epoch;
- a scalar: the batch's mean loss: weighted by this rank's share of the global batch (an uneven last
  batch splits unevenly); the reported loss is the mean of the batch means weighted by their sizes
  (exact when the scalar is a mean over the batch's samples);
- a dict with `loss` (either of the above) or `loss_sum` (a loss summed over the batch's samples, as
  pytorch/examples' VAE loss_function returns: divided by the global batch size), and named scalars
  (batch means) that are logged as train_<name> like the loss: per-sample sums over the ranks.

The step's output decides the objective; distrain's own loss, its model probe and its metrics are not
used (fit(loss=...) and fit(metrics=...) are refused with it). Evaluation runs the same fn in eval mode
without gradients and reports the same figures for val and test.

Before training the step runs once on two training samples (the probe: eval mode, no gradients; several
models: optimizers that do not step, whose step(closure) calls the closure): what it returns is checked
and its named scalars become the reported names. `distrain.probing()` is True during that call, for a step
that counts or logs what it does; a stateful step's state is put back afterwards.

A stateful step (a recurrent hidden state carried from batch to batch, a memory bank) is an object with
`__call__(model, batch)` and any of:
- `state_dict()` / `load_state_dict(state)`: this rank's state, saved per rank in every checkpoint and
  loaded on resume on the same world size (another world size is refused by name);
- `on_split_start(split)`: called with "train" at the start of each epoch (not on a mid-epoch resume:
  the checkpoint's state continues) and with "val" / "test" before each evaluation split.
With data.streams each rank sees the same positions of every batch, in training and evaluation.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import torch
from torch import nn

from distrain.data.structures import MultipleInputs, num_samples
from distrain.errors import ArgumentError

_probing = False


def probing() -> bool:
    """True while distrain runs your step once before training to read what it returns (the probe): a
    step that counts, logs or keeps state of its own can leave that call out. Public as distrain.probing."""
    return _probing


def keeps_state(fn: Any) -> bool:
    """A stateful step: its per-rank state goes into every checkpoint."""
    return callable(getattr(fn, "state_dict", None)) and callable(getattr(fn, "load_state_dict", None))


@contextlib.contextmanager
def _probe(fn: Any) -> Iterator[None]:
    """distrain.probing() is True inside; a stateful step's state is what it was before."""
    global _probing
    saved = copy.deepcopy(fn.state_dict()) if keeps_state(fn) else None
    _probing = True
    try:
        yield
    finally:
        _probing = False
        if saved is not None:
            fn.load_state_dict(saved)


# The keys of a step's dict that hold the loss: a batch mean or per-sample losses; a sum over the batch.
_LOSS_KEYS = ("loss", "loss_sum")


class StepObjective:
    """What a user's step minimises and reports. Stands where distrain's Objective does: the train step
    asks it for the loss to backpropagate and the values to record, evaluation for per-batch sums."""

    kind = "custom"
    has_accuracy = False
    name = "step"

    def __init__(self, fn: Callable[[nn.Module, Any], Any], target_key: str | None, keys: list[str] | None = None):
        """`target_key`: the key of a dict sample's target (found, or data.target_key); `keys`: a dict
        sample's keys in the data set's order (the step gets the batch with the same keys, in that order)."""
        self.fn, self.target_key, self.keys = fn, target_key, keys
        self.names = ["loss"]  # and the step's named scalars, once probed

    def prepare_targets(self, targets: Any) -> Any:
        return targets  # the step sees the targets as the data set holds them

    def user_batch(self, inputs: Any, targets: Any) -> Any:
        """The collated batch as the data set's samples are: (x, y), (x1, x2, y), or the dict (its keys)."""
        if isinstance(inputs, MultipleInputs):
            return (*inputs, targets)
        if isinstance(inputs, dict):
            batch = {**inputs, self.target_key or "target": targets}
            return {k: batch[k] for k in self.keys} if self.keys and set(self.keys) == set(batch) else batch
        return (inputs, targets)

    def start_split(self, split: str) -> None:
        """A stateful step's hook at the start of each epoch ("train") and evaluation split ("val", "test")."""
        hook = getattr(self.fn, "on_split_start", None)
        if hook is not None:
            hook(split)

    def state_dict(self) -> dict[str, Any] | None:
        """This rank's state of a stateful step (None: the step keeps none). The first one is checked to load
        back from a checkpoint (tensors, numbers, strings in dicts, lists and tuples), so that no save writes a
        state that a resume would refuse."""
        if not keeps_state(self.fn):
            return None
        state = self.fn.state_dict()
        if not getattr(self, "_checked", False):
            _check_loadable(state)
            self._checked = True
        return state

    def load_state_dict(self, states: list[Any], saved_world: int, rank: int, world_size: int) -> None:
        """This rank's state from a checkpoint's per-rank states (`saved_world` ranks wrote them)."""
        if not keeps_state(self.fn) or not states:
            return
        if saved_world != world_size or len(states) != world_size:
            from distrain.checkpoint.files import CheckpointError

            error = CheckpointError(
                f"the checkpoint holds the step's state of each of {saved_world} processes (step.state_dict), "
                f"which has no meaning on {world_size}",
                f"resume with {saved_world} processes, or start afresh (checkpoint.resume=never)",
            )
            error.agreed = True  # every rank reads the same checkpoint: printed once
            raise error
        try:
            self.fn.load_state_dict(states[rank])
        except Exception as exc:
            raise ArgumentError(
                "step", f"load_state_dict raised {type(exc).__name__}: {exc}", "check what state_dict() returns"
            ) from None

    def probe(self, model: nn.Module, inputs: Any, targets: Any) -> None:
        """Run the step once (eval mode, no gradient) on a few training samples: what it returns is checked
        and its named scalars become the reported names, before any training."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), _probe(self.fn):
                values = self.read(self.fn(model, self.user_batch(inputs, targets)), num_samples(targets))
        finally:
            model.train(was_training)
        self.names = list(values)  # loss first, then the named scalars

    def probe_several(self, models: nn.ModuleDict, inputs: Any, targets: Any) -> None:
        """`probe` for a step of several models (which does backward and steps itself): run once with
        optimizers that do not step (a closure given to step() is called, as a real one would), in eval
        mode; the gradients it left and the random draws it made are undone."""
        from distrain.checkpoint.store import capture_rng, restore_rng

        class Still:  # an optimizer that does not step
            def step(self, closure: Any = None) -> Any:
                if closure is not None:
                    with torch.enable_grad():
                        return closure()
                return None

            def zero_grad(self, set_to_none: bool = True) -> None:
                pass

        rng, was_training = capture_rng(), models.training
        models.eval()
        try:
            with _probe(self.fn):
                out = self.fn(dict(models.items()), self.user_batch(inputs, targets), {k: Still() for k in models})
            values = self.read(out, num_samples(targets))
        finally:
            models.train(was_training)
            restore_rng(rng)
            for p in models.parameters():
                p.grad = None
        self.names = list(values)

    def forward_loss(
        self, model: nn.Module, inputs: Any, targets: Any, world_size: int, global_size: int, average: bool = True
    ) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """(the loss to backpropagate, what the meter records). The loss is this rank's part of the global
        batch's mean: a sum over its samples divided by global_size / world_size, so DDP's average over the
        ranks is the global mean also when the last batch splits unevenly (then a batch mean is reweighted
        by its share). A batch mean on an even share is used as it is: no extra kernel per step."""
        count = num_samples(targets)
        values = self.read(self.fn(model, self.user_batch(inputs, targets)), count)
        value, weight = values["loss"]
        if weight == count:  # a batch mean
            even = average and count * world_size == global_size
            loss = value if even else value * (count * world_size / global_size)
        else:  # a sum over the batch (per-sample losses were summed by _read)
            loss = value * (world_size / global_size)
        return loss, ({name: (v.detach(), w) for name, (v, w) in values.items()}, count)

    def batch_sums(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """Evaluation: [sum over the batch's samples per name] in float64."""
        values = self.read(self.fn(model, self.user_batch(inputs, targets)), num_samples(targets))
        return torch.stack([v.detach().double() * w for v, w in values.values()])

    def read(self, out: Any, count: int) -> dict[str, tuple[torch.Tensor, int]]:
        """{name: (a 0-d value, its weight)} from what the step returned: a batch mean weighs `count`
        samples, a sum (per-sample values summed here) weighs 1; `loss` first."""
        scalars: dict[str, Any] = {}
        if isinstance(out, dict):
            keys = [k for k in _LOSS_KEYS if k in out]
            if len(keys) != 1:
                raise ArgumentError(
                    "step",
                    f"returned a dict with keys {sorted(out)}: it needs exactly one of 'loss' (a batch mean or "
                    "per-sample losses) and 'loss_sum' (a sum over the batch)",
                )
            scalars = {k: v for k, v in out.items() if k not in _LOSS_KEYS}
            loss, summed = out[keys[0]], keys[0] == "loss_sum"
        else:
            loss, summed = out, False
        values = {"loss": _weighted(loss, count, summed, "loss")}
        for name, value in scalars.items():
            if not str(name).isidentifier():
                raise ArgumentError("step", f"returned a scalar named {name!r}: a name must be an identifier")
            if not isinstance(value, torch.Tensor):
                value = torch.as_tensor(float(value))
            scalar, weight = _weighted(value, count, False, name)
            values[name] = (scalar.detach(), weight)
        return values


def _check_loadable(state: Any) -> None:
    """A step's state must load back the way checkpoints load (torch.load(weights_only=True))."""
    import io

    buffer = io.BytesIO()
    try:
        torch.save(state, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception as exc:
        raise ArgumentError(
            "step",
            f"state_dict() returned state that a checkpoint cannot hold ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]})",
            "return dicts, lists and tuples of tensors, numbers and strings (not a namedtuple or a NumPy array)",
        ) from None


def _weighted(value: Any, count: int, summed: bool, name: str) -> tuple[torch.Tensor, int]:
    """(a 0-d value, how many samples it stands for: `count` for a batch mean, 1 for a sum)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise ArgumentError("step", f"returned {name} as a {type(value).__name__}, not a floating-point tensor", _WHAT)
    if value.dim() == 0:
        return value, 1 if summed else count
    if value.shape != (count,) or summed:
        problem = f"returned {name} of shape {list(value.shape)} for a batch of {count} samples"
        raise ArgumentError("step", problem, _WHAT)
    return value.sum(), 1


_WHAT = (
    "return the batch's mean loss (a scalar), per-sample losses [N], or a dict with 'loss' (either) or "
    "'loss_sum' (a sum over the batch) and named scalars"
)


class StepMetrics:
    """Evaluation of a user's step (MetricSet's place): the step's figures, summed per batch."""

    def __init__(self, objective: StepObjective):
        self.objective = objective

    @property
    def columns(self) -> list[str]:
        return self.objective.names

    @property
    def names(self) -> list[str]:
        return self.objective.names

    def reset(self) -> None:
        pass

    def batch_sums_of(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        return self.objective.batch_sums(model, inputs, targets)

    def compute_stateful(self) -> dict[str, Any]:
        return {}
