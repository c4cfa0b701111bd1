"""What is minimised, and how outputs are read: the loss, per-sample losses, predictions and accuracy.

    objective = build_objective(cfg.loss, data_info, loss=user_loss)   # before the model: sets num_outputs
    objective.check(model, probe_inputs, probe_targets)                # one eval forward: shapes, dtypes

The loss is any callable `loss(outputs, targets)`: a built-in name (torch.nn's classes under short names),
an import path, or an object given to distrain.fit. A torch.nn loss is run with reduction="none", so the
epoch's loss is the exact mean of the per-sample losses on any number of ranks; a loss that returns only
a batch mean counts as that mean for each of the batch's samples (exact whenever the loss is a mean of
per-sample terms, which the usual losses are; with class weights torch's mean is a weighted one, and the
epoch figure is the plain mean of the weighted per-sample losses).

How outputs are read (`kind`), from the loss and the shapes, checked once before training:
- multiclass (cross_entropy, nll): outputs [N, K], class-index targets; accuracy = argmax == target;
- binary (bce_with_logits on one output): outputs [N, 1] or [N], targets 0/1; accuracy = (logit > 0);
- multilabel (bce_with_logits on L outputs): targets [N, L] of 0/1; accuracy = mean over the L labels;
  bce (probabilities) reads the same with a 0.5 threshold;
- regression (mse, l1, huber, smooth_l1): outputs shaped like the targets ([N] targets meet [N, 1] outputs);
- custom: any other loss; outputs and targets reach it as they are.
Targets are made what the loss takes once per in-memory data set (per batch for a DataLoader): float
and [N, 1] for one-output BCE and regression, so no step pays a cast or a reshape (bench/parts.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from distrain.config.registry import call, resolve
from distrain.config.schema import LossConfig
from distrain.data.structures import call_model, describe, leaves
from distrain.errors import ConfigError

if TYPE_CHECKING:
    from distrain.data.splits import DataInfo

log = logging.getLogger("distrain")

_CLASS_INDEX = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)
_LOGITS = (nn.BCEWithLogitsLoss, nn.CrossEntropyLoss)
_REGRESSION = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss)


@dataclass
class Objective:
    loss_fn: Callable[[Any, Any], torch.Tensor]  # per-sample values (reduction="none"), or a batch mean
    name: str
    kind: str  # multiclass | binary | multilabel | regression | custom
    mean_fn: Callable[[Any, Any], torch.Tensor] | None = None  # the same loss with reduction="mean"
    threshold: float = 0.0  # binary/multilabel: 0 on logits, 0.5 on probabilities
    target_dtype: torch.dtype | None = None
    target_view: tuple[int, ...] | None = None  # one sample's target shape as the loss takes it
    num_outputs: int | None = None
    num_classes: int | None = None  # of the data, when known
    notes: list[str] = field(default_factory=list)

    @property
    def has_accuracy(self) -> bool:
        return self.kind in ("multiclass", "binary", "multilabel")

    # ------------------------------------------------------------------------------------ targets

    def prepare_targets(self, targets: Any) -> Any:
        """Targets as the loss takes them (dtype and shape); applied once per in-memory set."""
        if not isinstance(targets, torch.Tensor):
            return targets
        if self.target_dtype is not None and targets.dtype != self.target_dtype:
            targets = targets.to(self.target_dtype)
        if self.target_view is not None and tuple(targets.shape[1:]) != self.target_view:
            targets = targets.reshape(len(targets), *self.target_view)
        return targets

    # ------------------------------------------------------------------------------------- losses

    def losses(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Per-sample losses [N] (a batch-mean loss: that mean for each sample)."""
        value = self.loss_fn(outputs, targets)
        count = _count(targets, outputs)
        if value.dim() == 0:
            return value.reshape(()).expand(count)
        if value.dim() > 1:  # an empty share (or exact mode's empty chunk): no per-sample shape to infer
            return value.reshape(count, -1).mean(dim=1) if count else value.reshape(0)
        return value

    def forward_loss(
        self, model: nn.Module, inputs: Any, targets: Any, world_size: int, global_size: int, average: bool = True
    ) -> tuple[torch.Tensor, tuple[Any, ...]]:
        """(the step's loss, what the TrainMeter records: outputs and targets): the model's forward and
        `step_loss`. A user's step (loop/user_step.py) answers the same question its own way."""
        outputs = call_model(model, inputs)
        return self.step_loss(outputs, targets, world_size, global_size, average=average), (outputs, targets)

    def step_loss(
        self, outputs: Any, targets: Any, world_size: int, global_size: int, average: bool = True
    ) -> torch.Tensor:
        """The loss whose gradient, averaged over the ranks by DDP, is that of the global batch's mean loss.

        Weighted by the *global* batch size, not the local one: sum_local * world / global averages to the
        global mean even when the last batch splits unevenly (a local mean would over-weight the smaller
        shares), and micro-batch sums simply add up. When this rank holds exactly its even share (every
        step but an uneven last one) that is the local mean, computed by the loss in one kernel.
        """
        count = _count(targets, outputs)
        if average and count * world_size == global_size:
            if self.mean_fn is not None:
                return self.mean_fn(outputs, targets)
            return self.losses(outputs, targets).mean()
        return self.losses(outputs, targets).sum() * (world_size / global_size)

    # ---------------------------------------------------------------------------- reading outputs

    def hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample accuracy: 1 where the prediction equals the target (multilabel: the fraction of labels)."""
        if self.kind == "multiclass":
            return (outputs.argmax(dim=-1) == targets).to(torch.float64)
        predicted = outputs > self.threshold
        if self.kind == "binary":
            return (predicted.reshape(-1) == (targets.reshape(-1) > 0.5)).to(torch.float64)
        return (predicted == (targets > 0.5)).reshape(len(outputs), -1).to(torch.float64).mean(dim=1)

    def predictions(self, outputs: Any, targets: Any) -> tuple[Any, Any]:
        """(preds, targets) as metrics take them (torchmetrics' conventions): class probabilities [N, K]
        and labels [N]; a probability [N] and 0/1 labels (binary); probabilities and 0/1 [N, L]
        (multilabel); outputs shaped like the targets (regression); as they are (custom)."""
        if self.kind == "multiclass":
            probs = outputs.softmax(dim=-1) if self.name != "nll" else outputs.exp()
            return probs, targets
        if self.kind in ("binary", "multilabel"):
            probs = outputs.sigmoid() if self.threshold == 0.0 else outputs
            if self.kind == "binary":
                return probs.reshape(-1), targets.reshape(-1).long()
            return probs, targets.long()
        if self.kind == "regression" and isinstance(targets, torch.Tensor):
            if targets.dim() == 2 and targets.shape[1] == 1:
                return outputs.reshape(-1), targets.reshape(-1)
            return outputs, targets
        return outputs, targets

    # ------------------------------------------------------------------------------------ checking

    def check(self, model: nn.Module, outputs: Any, targets: Any) -> None:
        """Check model, loss and data together on the probe's outputs (see `probe_outputs`), so that a
        mismatch is an error naming the key, not a traceback mid-training."""
        if (
            isinstance(outputs, torch.Tensor)
            and outputs.dim() == 1
            and self.target_view == (1,)
            and self.kind in ("binary", "regression")
        ):
            self.target_view = ()  # a model that returns [N] (not [N, 1]) gets [N] targets
        targets = self.prepare_targets(targets)
        if isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor):
            self._check_shapes(outputs, targets)
        try:
            value = self.losses(outputs, targets)
        except Exception as exc:
            raise ConfigError(
                "loss.name",
                f"{self.name}(outputs {describe(outputs)}, targets {describe(targets)}) "
                f"fails: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                "choose the loss that fits the model's outputs and the data's targets",
            ) from None
        if value.shape != (_count(targets, outputs),):
            raise ConfigError(
                "loss.name",
                f"{self.name} returned shape {list(value.shape)} for a batch of {_count(targets, outputs)}",
                "a loss must return per-sample values or a scalar",
            )
        ending = _last_module(model)
        if self.name in ("bce_with_logits", "cross_entropy") and isinstance(ending, (nn.Sigmoid, nn.Softmax)):
            raise ConfigError(
                "loss.name",
                f"the model ends in {type(ending).__name__} but {self.name} expects raw "
                "scores (logits) and applies it itself: training would be silently wrong",
                "remove the final " + type(ending).__name__ + " from the model, or use loss.name=bce "
                "for a model that outputs probabilities",
            )
        for note in self.notes:
            log.info("loss: %s", note)

    def _check_shapes(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = len(targets)
        if len(outputs) != n:
            raise ConfigError("model", f"the model returned {len(outputs)} rows for a batch of {n} samples")
        if self.kind == "multiclass":
            if outputs.dim() != 2 or targets.dim() != 1:
                raise ConfigError(
                    "loss.name",
                    f"{self.name} needs outputs [N, classes] and class-index targets "
                    f"[N]; got outputs {describe(outputs)}, targets {describe(targets)}",
                )
            if self.num_classes is not None and outputs.shape[1] != self.num_classes:
                raise ConfigError(
                    "model",
                    f"the model has {outputs.shape[1]} outputs, the data has {self.num_classes} classes",
                    "make the model's last layer match the classes",
                )
        elif self.kind in ("binary", "multilabel", "regression") and outputs.shape != targets.shape:
            raise ConfigError(
                "model",
                f"the model's outputs {describe(outputs)} do not match the targets "
                f"{describe(targets)} for {self.name} (it would broadcast them silently)",
                "make the model return one value per target",
            )


def probe_outputs(model: nn.Module, inputs: Any) -> Any:
    """The model's outputs on a few training samples: one forward in eval mode, no gradient, no state
    change (BatchNorm statistics untouched). A model that fails on the data is an error naming `model`."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return call_model(model, inputs)
    except Exception as exc:
        mismatch = _dtype_mismatch(model, inputs)
        if mismatch is not None:
            data_dtype, model_dtype = mismatch
            raise ConfigError(
                "data",
                f"the training data's inputs are {data_dtype} but the model's parameters are {model_dtype}, "
                f"and the model fails on them ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                f"make the inputs {model_dtype}"
                + (
                    " (numpy arrays are float64: torch.from_numpy(x).float(), or x.astype('float32') "
                    "before building the data set)"
                    if data_dtype == torch.float64
                    else ""
                )
                + f", or the model {data_dtype} (model.to({data_dtype}))",
            ) from None
        raise ConfigError(
            "model",
            f"the model fails on a batch of the training data ({describe(inputs)}): {type(exc).__name__}: {exc}",
            "check the model's input size against the data",
        ) from None
    finally:
        model.train(was_training)


def _dtype_mismatch(model: nn.Module, inputs: Any) -> tuple[torch.dtype, torch.dtype] | None:
    """(the inputs' floating dtype, the parameters') when they differ, else None."""
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    if param is None:
        return None
    for tensor in leaves(inputs):
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.dtype != param.dtype:
            return tensor.dtype, param.dtype
    return None


def output_width(outputs: Any) -> int | None:
    """The last dimension of a tensor output (1 for [N]); None for structured outputs."""
    if not isinstance(outputs, torch.Tensor):
        return None
    return int(outputs.shape[-1]) if outputs.dim() >= 2 else 1


def _count(targets: Any, outputs: Any) -> int:
    found = leaves(targets) or leaves(outputs)
    return len(found[0])


def _last_module(model: nn.Module) -> nn.Module | None:
    last = None
    for module in model.modules():
        if not list(module.children()):
            last = module
    return last


# ----------------------------------------------------------------------------------------- building


def build_objective(cfg: LossConfig, data: DataInfo, loss: Any = None, model_outputs: int | None = None) -> Objective:
    """The objective for the config's loss (or the object given to fit). `model_outputs`: the output
    width of a model already built (given to fit), which decides between one-logit BCE and cross-entropy
    for two classes under `loss.name: auto`."""
    notes: list[str] = []
    name = cfg.name
    if loss is None and name == "auto":
        name = _auto_loss(data, model_outputs, notes)
    if loss is not None:  # given to distrain.fit: used as it is
        obj = loss
        name = getattr(loss, "__name__", None) or _short_name(loss)
    else:
        obj = resolve("loss", name, "loss.name")
        if "reduction" in cfg.args:
            raise ConfigError(
                "loss.args.reduction", "is set by distrain (per-sample losses keep metrics exact)", "remove it"
            )
        if isinstance(obj, type):
            obj = call(obj, cfg.args, "loss.args")
        elif cfg.args:
            import functools

            obj = functools.partial(obj, **cfg.args)
    return _objective_for(obj, name, data, model_outputs, notes)


def _auto_loss(data: DataInfo, model_outputs: int | None, notes: list[str]) -> str:
    if data.default_loss is not None:
        notes.append(f"loss.name=auto: {data.default_loss}, the data set's loss")
        return data.default_loss
    classes = data.num_classes
    if classes is None and data.target_is_integer and data.target_shape == ():
        classes = model_outputs if model_outputs and model_outputs > 1 else None
        if classes is None and model_outputs == 1:
            notes.append("loss.name=auto: bce_with_logits (integer targets, one model output)")
            return "bce_with_logits"
    if classes is None:
        raise ConfigError(
            "loss.name",
            "is auto but the task cannot be told from the data (its targets are "
            f"{'integers without known classes' if data.target_is_integer else 'not class labels'})",
            "set loss.name: mse, l1 or huber for regression, cross_entropy or bce_with_logits for "
            "classification, or an import path",
        )
    one_output = model_outputs == 1 if model_outputs is not None else classes == 2
    chosen = "bce_with_logits" if classes == 2 and one_output else "cross_entropy"
    notes.append(
        f"loss.name=auto: {chosen} ({classes} classes, {1 if chosen == 'bce_with_logits' else classes} model output(s))"
    )
    return chosen


_SHORT = {
    "CrossEntropyLoss": "cross_entropy",
    "BCEWithLogitsLoss": "bce_with_logits",
    "BCELoss": "bce",
    "NLLLoss": "nll",
    "MSELoss": "mse",
    "L1Loss": "l1",
    "HuberLoss": "huber",
    "SmoothL1Loss": "smooth_l1",
}


def _short_name(loss: Any) -> str:
    return _SHORT.get(type(loss).__name__, type(loss).__name__)


def _as_module(fn: Any) -> Any:
    """torch's functional losses (F.cross_entropy, F.nll_loss, F.binary_cross_entropy_with_logits, ...;
    also under functools.partial with keyword arguments) as their nn classes, which compute the same
    thing: they are then read as the task they are (accuracy for classification) and take the exact
    per-sample path. Any other callable is returned as it is."""
    import functools

    import torch.nn.functional as F

    modules = {
        F.cross_entropy: nn.CrossEntropyLoss,
        F.nll_loss: nn.NLLLoss,
        F.binary_cross_entropy_with_logits: nn.BCEWithLogitsLoss,
        F.binary_cross_entropy: nn.BCELoss,
        F.mse_loss: nn.MSELoss,
        F.l1_loss: nn.L1Loss,
        F.huber_loss: nn.HuberLoss,
        F.smooth_l1_loss: nn.SmoothL1Loss,
    }
    keywords: dict[str, Any] = {}
    if isinstance(fn, functools.partial) and not fn.args:
        fn, keywords = fn.func, dict(fn.keywords)
    try:
        cls = modules.get(fn)
    except TypeError:  # an unhashable callable
        cls = None
    if cls is None:
        return None
    keywords.pop("reduction", None)  # distrain sets it (per-sample values keep the figures exact)
    try:
        return cls(**keywords)
    except TypeError:
        return None


def _objective_for(fn: Any, name: str, data: DataInfo, model_outputs: int | None, notes: list[str]) -> Objective:
    module = _as_module(fn)
    if module is not None:
        fn = module
    name = _short_name(fn) if isinstance(fn, nn.Module) else name
    mean_fn = None
    if isinstance(fn, nn.modules.loss._Loss) and hasattr(fn, "reduction"):
        import copy

        mean_module = copy.copy(fn)
        mean_module.reduction = "mean"
        none_module = copy.copy(fn)
        none_module.reduction = "none"
        # forward, not __call__: the step runs this every time, and module hooks cost a share of a small
        # model's step. Class weights make torch's mean a weighted one; the per-sample path keeps it plain.
        has_weights = getattr(fn, "weight", None) is not None or getattr(fn, "pos_weight", None) is not None
        fn = none_module.forward
        mean_fn = None if has_weights else mean_module.forward
    classes = data.num_classes
    if isinstance(getattr(fn, "__self__", None), _CLASS_INDEX):
        kind = "multiclass"
        target_dtype, target_view = torch.int64, ()
        num_outputs = model_outputs or classes
    elif isinstance(getattr(fn, "__self__", None), (nn.BCEWithLogitsLoss, nn.BCELoss)):
        width = _prod(data.target_shape) if data.target_shape else 1
        kind = "binary" if width == 1 else "multilabel"
        target_dtype, target_view = torch.float32, (width,)
        num_outputs = model_outputs or width
        if kind == "binary" and classes not in (None, 2):
            raise ConfigError(
                "loss.name",
                f"{name} is for two classes (or 0/1 labels); the data has {classes}",
                "use loss.name=cross_entropy",
            )
        if model_outputs is not None and model_outputs != width:
            raise ConfigError(
                "model",
                f"the model has {model_outputs} outputs but {name} needs {width} "
                f"(one per {'label' if width > 1 else 'sample'})",
                "for two classes with two outputs use loss.name=cross_entropy",
            )
    elif isinstance(getattr(fn, "__self__", None), _REGRESSION):
        kind = "regression"
        width = _prod(data.target_shape) if data.target_shape else 1
        target_dtype, target_view = torch.float32, (width,) if len(data.target_shape) <= 1 else None
        num_outputs = model_outputs or width
    else:
        kind, target_dtype, target_view, num_outputs = "custom", None, None, model_outputs
    threshold = 0.5 if isinstance(getattr(fn, "__self__", None), nn.BCELoss) else 0.0
    return Objective(
        fn,
        name,
        kind,
        mean_fn=mean_fn,
        threshold=threshold,
        target_dtype=target_dtype,
        target_view=target_view,
        num_outputs=num_outputs,
        num_classes=classes,
        notes=notes,
    )


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out
