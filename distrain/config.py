"""Run configuration: a YAML file plus `dotted.key=value` overrides, read into validated dataclasses.

    cfg = load_config("configs/xor.yaml", ["optim.lr=0.05", "trainer.epochs=10"])

Every section is a keyword-only dataclass; each field carries a one-line docstring. Unknown keys, wrong
types and bad values raise `ConfigError` naming the dotted key (with the nearest valid key for a typo),
before anything is built. This module does not import torch, so `distrain --help` and config errors stay
fast.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from distrain.errors import ConfigError

# Names registered in distrain.data and distrain.models. Kept here as Literals so a typo is caught
# (with a suggestion) before torch is even imported.
DATASETS = ("xor", "synthetic", "breast_cancer", "wine", "digits", "csv", "mnist", "fashion_mnist", "cifar10",
            "image_folder", "csv_images")
MODELS = ("simple_classifier", "logistic_regression", "mlp", "mnist_cnn", "cifar_lenet", "torchvision")


def _check(ok: bool, key: str, problem: str, hint: str | None = None) -> None:
    if not ok:
        raise ConfigError(key, problem, hint)


@dataclass(kw_only=True)
class RunConfig:
    dir: str = "runs/default"
    """Run directory: config.yaml, metrics.jsonl and checkpoints are written here."""

    def __post_init__(self) -> None:
        _check(bool(self.dir.strip()), "run.dir", "must not be empty")


@dataclass(kw_only=True)
class DataConfig:
    name: Literal[DATASETS]  # type: ignore[valid-type]
    """Data set: one of distrain.config.DATASETS."""
    global_batch_size: int
    """Samples per optimizer step summed over all ranks; each rank gets global_batch_size / world_size."""
    eval_batch_size: int = 256
    """Samples per forward pass in evaluation, the same on every rank (this keeps test metrics exact)."""
    num_train: int = 2500
    """xor, synthetic: number of training samples."""
    num_test: int = 500
    """xor, synthetic: number of test samples."""
    sample_shape: list[int] = field(default_factory=lambda: [1, 28, 28])
    """synthetic: the shape of one random sample, e.g. [3, 32, 32]."""
    num_classes: int = 10
    """synthetic: number of classes of the random labels."""
    noise_std: float = 0.1
    """xor: standard deviation of the Gaussian noise added to the {0,1}^2 corners."""
    test_fraction: float = 0.2
    """Sets without a test split (breast_cancer, wine): fraction held out for testing, split by seed."""
    shuffle: bool = True
    """Shuffle the training set every epoch (from seed + epoch, identically on every rank)."""
    loader: Literal["auto", "tensor", "dataloader"] = "auto"
    """auto: index whole in-memory tensors when the set allows it, else a DataLoader; or force one."""
    num_workers: int = 0
    """DataLoader worker processes per rank (dataloader path only)."""
    persistent_workers: bool = False
    """Keep DataLoader workers alive between epochs (needs num_workers > 0)."""
    prefetch_factor: int | None = None
    """Batches each worker loads ahead (null: torch's default)."""
    root: str = "data"
    """mnist, fashion_mnist, cifar10: folder holding torchvision's files; image_folder: the image folder
    (with train/ and test/ (or val/) sub-folders, or one folder of class folders split by test_fraction);
    csv_images: the folder the annotation file names are relative to."""
    download: bool = False
    """mnist, fashion_mnist, cifar10: download into root when the files are missing (global rank 0 only)."""
    path: str | None = None
    """csv: the CSV file; csv_images: the annotations CSV (file name, label)."""
    label_column: str = "label"
    """csv: name of the label column (in the header row)."""
    label_index: int | None = None
    """csv: 0-based index of the label column instead of a name (e.g. 0 for the UCI wine file)."""
    header: bool = True
    """csv: the first row holds column names."""
    image_size: int | None = None
    """Resize images to this size (digits: upsampled once at load time)."""
    crop: int | None = None
    """Crop images to this size: random crops for training, center crops for testing."""
    flip: bool = False
    """Random horizontal flips for training."""
    normalize: bool = True
    """Normalize images with `mean` and `std` (per-dataset defaults when those are null)."""
    mean: list[float] | None = None
    """Per-channel mean for normalization (null: the data set's known statistics)."""
    std: list[float] | None = None
    """Per-channel std for normalization (null: the data set's known statistics)."""

    def __post_init__(self) -> None:
        _check(self.global_batch_size > 0, "data.global_batch_size", f"must be > 0, got {self.global_batch_size}")
        _check(self.eval_batch_size > 0, "data.eval_batch_size", f"must be > 0, got {self.eval_batch_size}")
        _check(self.num_train > 0, "data.num_train", f"must be > 0, got {self.num_train}")
        _check(self.num_test > 0, "data.num_test", f"must be > 0, got {self.num_test}")
        _check(bool(self.sample_shape) and all(d > 0 for d in self.sample_shape), "data.sample_shape",
               f"must be positive sizes, got {self.sample_shape}")
        _check(self.num_classes >= 2, "data.num_classes", f"must be >= 2, got {self.num_classes}")
        _check(self.noise_std >= 0, "data.noise_std", f"must be >= 0, got {self.noise_std}")
        _check(0 < self.test_fraction < 1, "data.test_fraction", f"must lie in (0, 1), got {self.test_fraction}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(not self.persistent_workers or self.num_workers > 0, "data.persistent_workers",
               "needs data.num_workers > 0")
        _check(self.prefetch_factor is None or (self.prefetch_factor > 0 and self.num_workers > 0),
               "data.prefetch_factor", "must be > 0 and needs data.num_workers > 0")
        _check(self.path is not None or self.name not in ("csv", "csv_images"), "data.path",
               f"is required for data.name={self.name}", "set data.path to the CSV file")
        for key in ("image_size", "crop"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"data.{key}", f"must be > 0 or null, got {value}")
        _check((self.mean is None) == (self.std is None), "data.mean", "set data.mean and data.std together")


@dataclass(kw_only=True)
class ModelConfig:
    name: Literal[MODELS]  # type: ignore[valid-type]
    """Model: one of distrain.config.MODELS. Inputs and outputs come from the data set."""
    num_hidden: int = 4
    """simple_classifier: width of its one tanh hidden layer."""
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    """mlp: widths of the hidden layers."""
    activation: Literal["tanh", "relu", "gelu"] = "relu"
    """mlp: activation between layers."""
    arch: str = "resnet18"
    """torchvision: the classification model's name in torchvision.models (num_classes from the data)."""
    pretrained: str | None = None
    """torchvision: a local weights file (state dict) to start from; nothing is downloaded at run time."""
    freeze_backbone: bool = False
    """torchvision: train only the (replaced) classification head; every other parameter is frozen."""

    def __post_init__(self) -> None:
        _check(self.num_hidden > 0, "model.num_hidden", f"must be > 0, got {self.num_hidden}")
        _check(all(h > 0 for h in self.hidden_sizes), "model.hidden_sizes", f"widths must be > 0, got {self.hidden_sizes}")


@dataclass(kw_only=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"]
    """Optimizer."""
    lr: float
    """Learning rate."""
    momentum: float = 0.0
    """sgd: momentum."""
    nesterov: bool = False
    """sgd: Nesterov momentum (needs momentum > 0)."""
    weight_decay: float = 0.0
    """L2 penalty (sgd, adam) or decoupled weight decay (adamw)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """adam, adamw: the two moment decay rates."""
    clip_grad_norm: float | None = None
    """Clip the total gradient norm to this value before each step (off when null)."""
    clip_grad_value: float | None = None
    """Clip each gradient element to [-value, value] before each step (off when null)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(0 <= self.momentum < 1, "optim.momentum", f"must lie in [0, 1), got {self.momentum}")
        _check(not self.nesterov or self.momentum > 0, "optim.nesterov", "needs optim.momentum > 0")
        _check(self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               f"must be two numbers in [0, 1), got {self.betas}")
        for key in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"optim.{key}", f"must be > 0 or null, got {value}")


@dataclass(kw_only=True)
class TrainerConfig:
    epochs: int
    """Number of passes over the training set."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA (one device per local rank) when available, else CPU."""
    deterministic: bool = True
    """cudnn.deterministic on and cudnn.benchmark off."""
    deterministic_algorithms: bool = False
    """torch.use_deterministic_algorithms(True): errors on ops that have no deterministic version."""
    requeue_signal: str = "SIGUSR2"
    """Signal that, like SIGTERM and SIGINT, means "save and stop" (not SIGUSR1: NCCL uses it)."""
    precision: Literal["32", "bf16", "fp16"] = "32"
    """32: float32; bf16: bfloat16 autocast (CPU and GPU); fp16: float16 autocast with a gradient scaler (GPU)."""
    compile: bool = False
    """torch.compile the model (the DDP wrapper, so all-reduces still overlap backward); the first steps pay
    the compilation."""
    channels_last: bool = False
    """Convolutional models: keep parameters and image batches in channels_last memory format."""
    accumulate_steps: int = 1
    """Split each rank's share of a global batch into this many micro-batches, summing their gradients
    (DDP syncs only on the last); the optimizer still steps once per global batch."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "trainer.epochs", f"must be > 0, got {self.epochs}")
        _check(self.accumulate_steps > 0, "trainer.accumulate_steps", f"must be > 0, got {self.accumulate_steps}")
        import signal

        valid = {s.name for s in signal.Signals}
        _check(self.requeue_signal in valid and self.requeue_signal not in ("SIGKILL", "SIGSTOP"),
               "trainer.requeue_signal", f"must name a catchable signal such as SIGUSR2, got {self.requeue_signal!r}")


@dataclass(kw_only=True)
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """auto: NCCL when training on CUDA, gloo on CPU."""
    timeout_s: float = 900.0
    """Seconds a collective may wait for the other ranks before the job fails instead of hanging."""

    def __post_init__(self) -> None:
        _check(self.timeout_s > 0, "dist.timeout_s", f"must be > 0, got {self.timeout_s}")


@dataclass(kw_only=True)
class ScheduleConfig:
    name: Literal["constant", "step", "cosine"] = "constant"
    """LR schedule after warm-up: constant; step (times gamma every step_epochs); cosine (down to min_lr)."""
    warmup_steps: int = 0
    """Linear warm-up over this many optimizer steps, from warmup_start_factor * lr up to lr."""
    warmup_start_factor: float = 0.01
    """Fraction of optim.lr the warm-up starts from."""
    step_epochs: int = 30
    """step: multiply the LR by gamma every this many epochs."""
    gamma: float = 0.1
    """step: the decay factor."""
    min_lr: float = 0.0
    """cosine: the LR reached at the last step."""

    def __post_init__(self) -> None:
        _check(self.warmup_steps >= 0, "schedule.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0 < self.warmup_start_factor <= 1, "schedule.warmup_start_factor",
               f"must lie in (0, 1], got {self.warmup_start_factor}")
        _check(self.step_epochs > 0, "schedule.step_epochs", f"must be > 0, got {self.step_epochs}")
        _check(0 < self.gamma <= 1, "schedule.gamma", f"must lie in (0, 1], got {self.gamma}")
        _check(self.min_lr >= 0, "schedule.min_lr", f"must be >= 0, got {self.min_lr}")


MONITORED = ("test_loss", "test_accuracy", "train_loss", "train_accuracy")


@dataclass(kw_only=True)
class StopConfig:
    patience: int = 0
    """Early stopping: stop after this many epochs without improving `monitor` by min_delta (0: off)."""
    monitor: Literal[MONITORED] = "test_loss"  # type: ignore[valid-type]
    """Early stopping: the per-epoch metric watched (losses are minimised, accuracies maximised)."""
    min_delta: float = 0.0
    """Early stopping: the least change that counts as an improvement."""
    window: int = 0
    """Convergence (the tutorials' rule): stop when the last `window` epoch train losses lie within
    `threshold` of each other (0: off)."""
    threshold: float = 1e-4
    """Convergence: the largest spread (max - min) of the last `window` train losses that counts as converged."""

    def __post_init__(self) -> None:
        _check(self.patience >= 0, "stop.patience", f"must be >= 0, got {self.patience}")
        _check(self.min_delta >= 0, "stop.min_delta", f"must be >= 0, got {self.min_delta}")
        _check(self.window >= 0 and self.window != 1, "stop.window", f"must be 0 (off) or >= 2, got {self.window}")
        _check(self.threshold >= 0, "stop.threshold", f"must be >= 0, got {self.threshold}")


@dataclass(kw_only=True)
class DDPConfig:
    bucket_cap_mb: float = 25.0
    """Gradient bucket size for DDP's all-reduce (torch's default 25 MB)."""
    gradient_as_bucket_view: bool = True
    """Gradients are views into the all-reduce buckets: one copy less per step, less memory."""
    static_graph: bool = False
    """Promise DDP the same graph every step (lets it skip per-step bookkeeping)."""
    find_unused_parameters: bool = False
    """Search each step for parameters that got no gradient; needed only by models that skip parameters."""

    def __post_init__(self) -> None:
        _check(self.bucket_cap_mb > 0, "ddp.bucket_cap_mb", f"must be > 0, got {self.bucket_cap_mb}")


@dataclass(kw_only=True)
class CheckpointConfig:
    every_epochs: int = 1
    """Save at the end of every N-th epoch (0: never at epoch ends)."""
    every_steps: int = 0
    """Save every N optimizer steps, mid-epoch too (0: off)."""
    keep_last: int = 2
    """Keep the newest K periodic checkpoints and delete older ones (0: keep all)."""
    resume: str = "auto"
    """auto: resume from the newest complete checkpoint of run.dir; never; or a checkpoint path."""
    keep_best: int = 0
    """Also keep the best M epoch-end checkpoints by `monitor` (as best-*.pt), whatever keep_last does."""
    monitor: Literal["test_accuracy", "test_loss"] = "test_accuracy"
    """The metric keep_best ranks by: test_accuracy (higher is better) or test_loss (lower is better)."""

    def __post_init__(self) -> None:
        _check(self.keep_best >= 0, "checkpoint.keep_best", f"must be >= 0, got {self.keep_best}")
        _check(self.every_epochs >= 0, "checkpoint.every_epochs", f"must be >= 0, got {self.every_epochs}")
        _check(self.every_steps >= 0, "checkpoint.every_steps", f"must be >= 0, got {self.every_steps}")
        _check(self.keep_last >= 0, "checkpoint.keep_last", f"must be >= 0, got {self.keep_last}")
        _check(bool(self.resume.strip()), "checkpoint.resume", "must be auto, never or a checkpoint path")


@dataclass(kw_only=True)
class LogConfig:
    every_steps: int = 50
    """Every N optimizer steps: train loss, LR, samples/s, step time and gradient norm (W&B, and a console
    line when the output is not a terminal)."""
    progress_bar: Literal["auto", "always", "never"] = "auto"
    """A tqdm bar on rank 0: auto shows it only when stdout is a terminal (not in SLURM output files)."""
    grad_norms: bool = False
    """Also log each parameter's gradient norm at the log steps (through tensor hooks, register_hook)."""
    plots: bool = True
    """Write loss and accuracy curves (PNG) into <run.dir>/plots at the end of the run."""

    def __post_init__(self) -> None:
        _check(self.every_steps > 0, "log.every_steps", f"must be > 0, got {self.every_steps}")


@dataclass(kw_only=True)
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online when an API key is configured, offline otherwise (upload later with `wandb sync`),
    and off if wandb is not installed; disabled: no W&B at all."""
    project: str = "distrain"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team); null: your default."""
    name: str | None = None
    """Run name; null: the run directory's name."""
    group: str | None = None
    """Run group."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""


@dataclass(kw_only=True)
class Config:
    data: DataConfig
    """What to train on."""
    model: ModelConfig
    """What to train."""
    optim: OptimConfig
    """How to step."""
    trainer: TrainerConfig
    """How long, and on what device."""
    engine: Literal["native", "accelerate"] = "native"
    """Who wraps the model and steps: native (torch DDP) or accelerate (HF Accelerate's Accelerator)."""
    seed: int = 0
    """Seeds Python, NumPy and torch; also the data generation, the splits and the shuffling."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run's files go."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Process-group settings."""
    ddp: DDPConfig = field(default_factory=DDPConfig)
    """DistributedDataParallel settings."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """How the learning rate changes over training."""
    stop: StopConfig = field(default_factory=StopConfig)
    """When to stop before trainer.epochs."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """When to save and whether to resume."""
    log: LogConfig = field(default_factory=LogConfig)
    """Step logging, progress bar, gradient norms, plots."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases."""

    def __post_init__(self) -> None:
        # Refused loudly: torch's reducer asserts when no_sync (used for accumulation) meets a static graph.
        _check(not (self.ddp.static_graph and self.trainer.accumulate_steps > 1), "ddp.static_graph",
               "cannot be combined with trainer.accumulate_steps > 1 (DDP's no_sync does not support it)",
               "set ddp.static_graph=false, or trainer.accumulate_steps=1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- parsing

def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply `dotted.key=value` overrides, and validate it into a `Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<config file>", f"{path} does not exist or is not a file",
                          "pass the path of a YAML config, e.g. configs/xor.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("<config file>", f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError("<config file>", f"{path} must hold a mapping of keys, not {type(raw).__name__}")
    apply_overrides(raw, overrides)
    return from_dict(raw)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """Set each `a.b.c=value` in the nested dict; values are parsed as YAML (`1e-3`, `[8, 8]`, `null`)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(item, "an override must look like dotted.key=value", "e.g. optim.lr=0.05")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), "is a value, not a section, so it has no sub-keys")
            node = child
        node[parts[-1]] = value


def from_dict(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a `Config` (raises ConfigError naming the dotted key)."""
    return _build(Config, raw, "")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            valid = ", ".join(f"{prefix}.{k}" if prefix else k for k in fields)
            hint = f"did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else f"valid keys here: {valid}"
            raise ConfigError(dotted, "unknown key", hint)
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(dotted, "required key is missing", f"set it in the YAML file or pass {dotted}=...")
            continue
        kwargs[name] = _coerce(raw[name], hints[name], dotted)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        if not isinstance(value, bool) and str(value) in choices:  # YAML reads `precision: 32` as an int
            return str(value)
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise ConfigError(key, f"must be one of {', '.join(map(str, choices))}; got {value!r}", hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept what Python reads as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {value!r}")
    raise TypeError(f"distrain bug: no coercion for {tp} at {key}")


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, as written to <run.dir>/config.yaml (it loads back to the same Config)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
