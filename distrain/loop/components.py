"""What a run trains: data, model, loss, metrics and optimizer, from the config or given to distrain.fit.

    parts = build_parts(cfg, ctx, given)      # every rank, the same way
    parts.model, parts.objective, parts.evals["test"], parts.data.train, ...

The order, and why:
1. the data (built-in, import path or the user's Dataset objects) and what is known of it (classes, the
   shapes of one sample), so that
2. a model named by the config gets its sizes (num_inputs, num_outputs, ...) by parameter name;
3. the loss is then fixed with the model's real output width (two classes with two outputs means
   cross-entropy, not one-logit BCE) and checked on a few training samples in one eval-mode forward:
   a model that ends in a sigmoid before a logits loss, outputs that would broadcast against the targets,
   or a loss that fails on this data stop the run with the config key to change, before any training.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from distrain.config.registry import call, describe, resolve
from distrain.config.schema import Config, MetricConfig, OptimConfig
from distrain.data import DataInfo, DataSets, EvalBatches, build_eval_batches, build_splits, describe_data
from distrain.data.batches import BatchSetup, LoaderOptions
from distrain.data.shards import has_length, is_stream
from distrain.data.splits import first_batch
from distrain.data.streams import describe_stream
from distrain.data.structures import split_sample, target_key_of, to_device
from distrain.errors import ArgumentError, ConfigError
from distrain.launch import dist
from distrain.launch.dist import DistContext, distributed
from distrain.loop.metrics import MetricSet, build_metric
from distrain.loop.objective import Objective, build_objective, output_width, probe_outputs
from distrain.reporting.console import setup_logging
from distrain.seeding import configure_determinism, seed_everything

log = logging.getLogger("distrain")


@dataclass
class Given:
    """What distrain.fit or distrain.predict was handed; None: built from the config."""

    model: nn.Module | None = None
    train_data: Any = None
    val_data: Any = None
    test_data: Any = None
    loss: Any = None
    metrics: dict[str, Any] | None = None
    optimizer: Any = None  # an Optimizer over the model's parameters, or a function params -> Optimizer
    scheduler: Any = None  # a function optimizer -> torch LR scheduler
    step: Any = None  # the user's training step: a function (model, batch) -> loss (loop/user_step.py)
    callbacks: list[Any] | None = None  # objects with hooks (callbacks/base.py)

    def check(self) -> None:
        """Refuse what cannot be what fit's docstring asks for, naming the argument (`fit(model=...)`)."""
        if isinstance(self.model, dict):
            bad = [k for k, m in self.model.items() if not isinstance(m, nn.Module) or not str(k).isidentifier()]
            if not self.model or bad:
                raise ArgumentError("model", f"a dict of models needs nn.Modules under identifier names: {bad}")
        elif self.model is not None and not isinstance(self.model, nn.Module):
            raise ArgumentError("model", f"is a {type(self.model).__name__}, not a torch.nn.Module")
        for name in ("train_data", "val_data", "test_data"):
            data = getattr(self, name)
            if data is None:
                continue
            if isinstance(data, (str, bytes, tuple, list, dict, torch.Tensor)) or type(data).__module__ == "numpy":
                raise ArgumentError(
                    name,
                    f"is a {type(data).__name__}, not a Dataset",
                    "wrap tensors in one: torch.utils.data.TensorDataset(torch.as_tensor(x, dtype=torch.float32), "
                    "torch.as_tensor(y))",
                )
            if not (hasattr(data, "__getitem__") and hasattr(data, "__len__")) and not is_stream(data):
                raise ArgumentError(
                    name,
                    f"is a {type(data).__name__}, not a Dataset with __getitem__ and __len__, nor a stream",
                    "give a map-style Dataset, a torch IterableDataset or a distrain.ShardedDataset",
                )
        if self.loss is not None and not callable(self.loss):
            raise ArgumentError("loss", f"is a {type(self.loss).__name__}, not a callable loss(outputs, targets)")
        if (
            self.optimizer is not None
            and not isinstance(self.optimizer, dict)
            and not (isinstance(self.optimizer, torch.optim.Optimizer) or callable(self.optimizer))
        ):
            raise ArgumentError(
                "optimizer",
                f"is a {type(self.optimizer).__name__}",
                "give a torch optimizer over model.parameters(), or a function params -> optimizer",
            )
        if self.step is not None:
            if not callable(self.step):
                raise ArgumentError("step", f"is a {type(self.step).__name__}, not a function (model, batch) -> loss")
            for name in ("loss", "metrics"):
                if getattr(self, name) is not None:
                    raise ArgumentError(
                        name,
                        "cannot be given with step=: the step computes the loss and the figures it reports",
                        "return per-sample losses or a dict with 'loss' and named scalars from the step",
                    )
        if self.scheduler is not None and (not callable(self.scheduler) or hasattr(self.scheduler, "state_dict")):
            raise ArgumentError(
                "scheduler",
                f"is a {type(self.scheduler).__name__}, not a function of the optimizer",
                "give a function optimizer -> scheduler (distrain builds the optimizer), e.g. "
                "scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=1000)",
            )


@dataclass
class Parts:
    """What a run builds on one rank."""

    data: DataSets
    info: DataInfo
    model: nn.Module  # the user's object when given: trained in place
    objective: Objective
    evals: dict[str, tuple[EvalBatches, MetricSet]]  # "val" and "test", those that exist
    batch_setup: BatchSetup  # how every batch source of the run places its batches
    metric_objects: dict[str, Any] = field(default_factory=dict)  # name -> metric (its direction)
    stream: Any = None  # the training split's StreamSetup (data/streams.py) when it is a stream


@contextlib.contextmanager
def joined(cfg: Config, env: Any) -> Iterator[DistContext]:
    """Every command's start (train, eval, predict): logging for this rank, then the process group the
    launcher's environment (`env`, launch.env.detect's) describes, torn down on the way out."""
    setup_logging(env.rank)
    with distributed(env, backend=cfg.dist.backend, timeout_s=cfg.dist.timeout_s, device=cfg.trainer.device) as ctx:
        yield ctx


def build_parts(cfg: Config, ctx: DistContext, given: Given | None = None) -> Parts:
    given = given or Given()
    configure_determinism(cfg.trainer.deterministic, cfg.trainer.deterministic_algorithms)
    seed_everything(cfg.seed)
    data = _build_data(cfg, ctx, given)
    # A stream that cannot be dealt over this world's readers is refused here, before anything is written.
    stream = describe_stream(
        data.train,
        lanes=cfg.data.lanes,
        split_by=cfg.data.split_by,
        world_size=ctx.world_size,
        num_workers=cfg.data.num_workers,
        steps_per_epoch=cfg.trainer.steps_per_epoch,
        shuffle_window=cfg.data.shuffle_window,
        max_steps=cfg.trainer.max_steps,
        global_batch_size=cfg.data.global_batch_size,
    )
    info = describe_data(data, cfg.data.target_key)
    if isinstance(given.model, dict):
        from distrain.loop.several import check_several
        from distrain.strategies.base import ModelSet

        check_several(cfg, given)
        model: nn.Module = ModelSet(given.model)
    else:
        model = given.model if given.model is not None else build_model(cfg, info, given)
    model = model.to(ctx.device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)  # 4-d weights only; others are unchanged
    first = first_batch(data.train)
    probe_inputs, probe_targets = (to_device(t, ctx.device) for t in split_sample(first, cfg.data.target_key))
    if cfg.data.streams:
        _check_streams(cfg, data)
    if given.step is not None:
        # The user's step is the objective: run once on two training samples (eval mode, no gradient),
        # so that what it returns is checked and its named scalars are known before training.
        from distrain.loop.user_step import StepObjective

        if isinstance(first, dict):  # the step gets dict samples with their own keys, in their order
            objective: Any = StepObjective(given.step, target_key_of(first, cfg.data.target_key), list(first))
        else:
            objective = StepObjective(given.step, cfg.data.target_key)
        if isinstance(given.model, dict):
            objective.probe_several(model, probe_inputs, probe_targets)
        else:
            objective.probe(model, probe_inputs, probe_targets)
        if cfg.metrics:
            raise ConfigError("metrics", "cannot be used with fit(step=...)", "return named scalars from the step")
    else:
        with naming_arguments(given):
            # One eval-mode forward on two training samples decides one-logit BCE vs cross-entropy and checks it all.
            probe = probe_outputs(model, probe_inputs)
            objective = build_objective(cfg.loss, info, given.loss, model_outputs=output_width(probe))
            objective.check(model, probe, probe_targets)
    metric_objects = _build_metrics(cfg.metrics, given)
    batch_setup = BatchSetup(
        rank=ctx.rank,
        world_size=ctx.world_size,
        device=ctx.device,
        seed=cfg.seed,
        loader=cfg.data.loader,
        options=LoaderOptions(
            cfg.data.num_workers, cfg.data.persistent_workers, cfg.data.prefetch_factor, cfg.data.seed_samples
        ),
        prepare_targets=objective.prepare_targets,
        channels_last=cfg.trainer.channels_last,
        target_key=cfg.data.target_key,
        streams=cfg.data.streams,
    )
    evals = {}
    for split, dataset in (("val", data.val), ("test", data.test)):
        if dataset is not None:
            batches = build_eval_batches(dataset, batch_setup, eval_batch_size=cfg.data.eval_batch_size)
            evals[split] = (batches, _metric_set(objective, metric_objects, ctx.device))
    return Parts(data, info, model, objective, evals, batch_setup, metric_objects, stream)


def _check_streams(cfg: Config, data: DataSets) -> None:
    """data.streams deals positions of map-style batches: a stream would not keep them (exact mode's chunks
    are refused with the strategy's options)."""
    for split, dataset in (("train", data.train), ("val", data.val), ("test", data.test)):
        if dataset is not None and is_stream(dataset):
            raise ConfigError("data.streams", f"needs map-style data sets; the {split} split is a stream")


def _metric_set(objective: Any, metric_objects: dict[str, Any], device: torch.device) -> Any:
    from distrain.loop.user_step import StepMetrics, StepObjective

    if isinstance(objective, StepObjective):
        return StepMetrics(objective)
    return MetricSet(objective, metric_objects, device)


# What a check calls a part (objective.py does not know who made it) -> the fit argument that may have
# handed it. Made by the config, the part keeps its config key (`model`: the model section).
_ARGUMENTS = {"model": "model", "loss.name": "loss", "data": "train_data"}


@contextlib.contextmanager
def naming_arguments(given: Given) -> Iterator[None]:
    """A check's error about the model, loss or data names what the user wrote: the fit argument that
    handed it (`fit(model=...)`), else the config key."""
    try:
        yield
    except ArgumentError:
        raise
    except ConfigError as exc:
        argument = _ARGUMENTS.get(exc.key)
        if argument is None or getattr(given, argument) is None:
            raise
        raise ArgumentError(argument, exc.problem, exc.hint) from None


def _build_data(cfg: Config, ctx: DistContext, given: Given) -> DataSets:
    splits = dict(train=given.train_data, val=given.val_data, test=given.test_data)
    if given.train_data is None and cfg.data.args.get("download"):
        # Only global rank 0 downloads; the others wait for the files (several ranks downloading into
        # one folder would race), then read them.
        data = build_splits(cfg.data, cfg.seed, **splits) if ctx.is_main else None
        dist.barrier()
        return data or build_splits(cfg.data, cfg.seed, allow_download=False, **splits)
    return build_splits(cfg.data, cfg.seed, **splits)


def build_model(cfg: Config, info: DataInfo, given: Given | None = None) -> nn.Module:
    """The config's model (model.name with model.args), sized from the data and the loss."""
    given = given or Given()
    if cfg.model.name is None:
        raise ConfigError(
            "model.name",
            "is not set and no model was given",
            "name a built-in model or a class module:attribute, or pass model= to distrain.fit",
        )
    # The output width the loss asks for (one logit for two classes, K for K classes, the target's size
    # for regression); a loss that cannot be told yet is decided after the model exists.
    try:
        num_outputs = build_objective(cfg.loss, info, given.loss).num_outputs
    except ConfigError as exc:
        if exc.key != "loss.name":
            raise
        num_outputs = None
    builder = resolve("model", cfg.model.name, "model.name")
    model = call(builder, cfg.model.args, "model.args", known=info.model_arguments(num_outputs))
    if not isinstance(model, nn.Module):
        raise ConfigError("model.name", f"{cfg.model.name} returned {type(model).__name__}, not an nn.Module")
    return model


def _build_metrics(cfg: dict[str, MetricConfig], given: Given) -> dict[str, Any]:
    metrics = {name: build_metric(name, metric_cfg) for name, metric_cfg in cfg.items()}
    for name, metric in (given.metrics or {}).items():
        if not str(name).isidentifier() or name == "loss":
            raise ArgumentError("metrics", f"{name!r}: a metric's name must be an identifier other than 'loss'")
        if not callable(metric):
            raise ArgumentError(
                "metrics", f"{name!r} is a {type(metric).__name__}", "give a torchmetrics Metric or a function"
            )
        metrics[name] = metric
    return metrics


def build_optimizer_for(
    cfg: OptimConfig | None, model: nn.Module, given: Given, replaces_parameters: bool = False
) -> tuple[Any, float]:
    """The optimizer and its base learning rate (for the schedule). `replaces_parameters`: the strategy
    swapped the model's parameters for new ones (fsdp), so an optimizer object built before cannot serve."""
    from distrain.loop.optim import build_optimizer

    chosen = given.optimizer
    if isinstance(chosen, dict):
        from distrain.loop.several import several_optimizers

        optimizer = several_optimizers(model, chosen)  # type: ignore[arg-type]
        _refuse_replaced_optim(cfg)
        return optimizer, optimizer.param_groups[0]["lr"]
    if chosen is None:
        if cfg is None:
            raise ConfigError(
                "optim.lr",
                "required key is missing (no optimizer was given)",
                "set optim.lr (and optim.name) in the config, or pass optimizer= to distrain.fit",
            )
        return build_optimizer(cfg, model.parameters()), cfg.lr
    if isinstance(chosen, torch.optim.Optimizer) and replaces_parameters:
        raise ArgumentError(
            "optimizer",
            "an optimizer object cannot be given with strategy=fsdp: sharding "
            "replaces the model's parameters, so the optimizer would step stale ones",
            "pass a function of the parameters instead, e.g. "
            "optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3)",
        )
    if not isinstance(chosen, torch.optim.Optimizer):
        chosen = chosen([p for p in model.parameters() if p.requires_grad])
        if not isinstance(chosen, torch.optim.Optimizer):
            raise ArgumentError(
                "optimizer",
                f"the function returned a {type(chosen).__name__}, not a torch optimizer",
                "e.g. optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3)",
            )
    owned = {id(p) for p in model.parameters()}
    if any(id(p) not in owned for group in chosen.param_groups for p in group["params"]):
        raise ArgumentError(
            "optimizer",
            "the optimizer holds parameters that are not the model's",
            "build it on model.parameters() of the model passed as model=",
        )
    _refuse_replaced_optim(cfg)
    return chosen, chosen.param_groups[0]["lr"]


def _refuse_replaced_optim(cfg: OptimConfig | None) -> None:
    """fit(optimizer=...) replaces what optim.lr, optim.name and optim.args would build: one of them set
    would be silently ignored, so it is refused naming both (optim.clip_grad_* still apply)."""
    if cfg is None:
        return
    for key, value, unset in (("lr", cfg.lr, None), ("name", cfg.name, "sgd"), ("args", cfg.args, {})):
        if value != unset:
            raise ConfigError(
                f"optim.{key}",
                f"is set ({value!r}), but fit(optimizer=...) gives the optimizer, so it would be ignored",
                f"remove optim.{key} (the optimizer you pass holds its own settings), or drop optimizer=",
            )


def monitor_direction(cfg_mode: str, monitor: str, parts: Parts, key: str, train_names: list[str]) -> bool:
    """Check that `monitor` is measured by this run; True when it improves upwards."""
    split, _, name = monitor.partition("_")
    available = {"train": train_names, **{s: ms.names for s, (_, ms) in parts.evals.items()}}
    if split not in available:
        raise ConfigError(
            key,
            f"is {monitor!r} but this run has no {split} split",
            "give it one with data.val_fraction=0.1 (held out from train by seed) or val_data= "
            "in distrain.fit, or monitor train_loss",
        )
    if name not in available[split]:
        raise ConfigError(
            key,
            f"is {monitor!r} but the {split} split measures only {', '.join(available[split])}",
            "add the metric under metrics:, or monitor one of these",
        )
    if cfg_mode != "auto":
        return cfg_mode == "max"
    from distrain.reporting.figures import higher_is_better

    return higher_is_better(name, parts.metric_objects.get(name))


def _count(dataset: Any, stream: Any) -> str:
    if stream is not None and stream.sizes is not None:
        return str(sum(stream.sizes))
    return str(len(dataset)) if has_length(dataset) else "a stream of"


def log_parts(
    parts: Parts, ctx: DistContext, num_steps: int, engine_name: str, version: str, strategy: str = "ddp"
) -> None:
    data = parts.data
    sizes = " / ".join(
        f"{_count(d, parts.stream if s == 'train' else None)} {s}"
        for s, d in (("train", data.train), ("val", data.val), ("test", data.test))
        if d is not None
    )
    from distrain.strategies.fsdp import model_class

    log.info(
        "distrain %s | %s | %d process(es) | device %s | backend %s | engine %s | strategy %s | %s samples | "
        "%d steps per epoch | model %s | loss %s (%s)",
        version,
        ctx.env.launcher,
        ctx.world_size,
        ctx.device,
        ctx.backend or "none",
        engine_name,
        strategy,
        sizes,
        num_steps,
        describe(model_class(parts.model)),
        parts.objective.name,
        parts.objective.kind,
    )
