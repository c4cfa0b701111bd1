"""The run configuration's schema: one keyword-only dataclass per section, read from YAML by
distrain.config.parse.

Every section is a keyword-only dataclass; each field carries a one-line docstring. Unknown keys, wrong
types and bad values raise `ConfigError` naming the dotted key (with the nearest valid key for a typo),
before anything is built. This module does not import torch, so `distrain --help` and config errors stay
fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from distrain.checkpoint.options import CheckpointConfig
from distrain.config.coerce import check, check_monitor
from distrain.config.registry import check_name
from distrain.errors import ConfigError
from distrain.launch.options import DistConfig
from distrain.reporting.options import LogConfig, WandbConfig
from distrain.strategies.options import DDPConfig, DiLoCoConfig, FSDPConfig, check_strategy


@dataclass(kw_only=True)
class RunConfig:
    dir: str | None = None
    """Run directory: config.yaml, definition.json, metrics.jsonl and checkpoints are written here; null:
    runs/<script name> (`python train.py CONFIG`: runs/train), or runs/<config name> for the distrain
    command (`distrain train configs/xor.yaml`: runs/xor), so two scripts never share one by default."""

    def __post_init__(self) -> None:
        check(self.dir is None or bool(self.dir.strip()), "run.dir", "must not be empty (null: the default)")


def default_run_dir(program: str) -> str:
    """run.dir when the config leaves it unset: runs/<name> of the script (or the config file) that runs."""
    from pathlib import PurePath

    name = PurePath(program).stem if program not in ("", "-c", "-m") else ""
    if name in ("ipykernel_launcher", "__main__"):
        name = "notebook" if name == "ipykernel_launcher" else ""
    return f"runs/{name or 'python'}"


@dataclass(kw_only=True)
class DataConfig:
    global_batch_size: int
    """Samples per optimizer step summed over all ranks; each rank gets global_batch_size / world_size
    (when the world size does not divide it, the first ranks take one sample more: the loss is still the
    global batch's mean)."""
    name: str | None = None
    """The data set: a built-in name (xor, mnist, ...: see the docs, Built-in components) or an import path
    module:attribute of a function returning (train, test) or (train, val, test); null when distrain.fit is
    given the data."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the data set (e.g. num_train for xor, root for mnist); checked against it."""
    eval_batch_size: int = 256
    """Samples per forward pass in evaluation, the same on every rank (this keeps test metrics exact)."""
    val_fraction: float = 0.0
    """Hold this fraction of the training set out as the validation split (by seed), when the data set has
    no validation split of its own (0: none). Model selection (stop.monitor, checkpoint.monitor) uses it."""
    target_key: str | None = None
    """Dict samples: the key holding the target (null: the one of target, targets, label, labels, y present);
    the other keys are passed to the model as keyword arguments."""
    shuffle: bool = True
    """Shuffle the training set every epoch (from seed + epoch, identically on every rank)."""
    streams: bool = False
    """Samples are positions of parallel streams carried from batch to batch (a recurrent model trained
    with truncated backpropagation through time): sample i is position i % B of batch i // B, and each
    rank takes the same positions (rank::world_size) of every batch, in training and in evaluation, so
    its part of batch b+1 continues its part of batch b. Needs data.shuffle: false and a map-style set."""
    loader: Literal["auto", "tensor", "dataloader"] = "auto"
    """auto: index whole in-memory tensors when the set allows it, else a DataLoader; or force one."""
    num_workers: int = 0
    """DataLoader worker processes per rank (dataloader path only)."""
    persistent_workers: bool | None = None
    """Keep DataLoader workers alive between epochs (null: yes when num_workers > 0). New workers every
    epoch are forked from a process whose other threads may hold Python's runtime lock: on Python 3.8-3.11
    such a worker can hang before its first line (cpython#112275)."""
    prefetch_factor: int | None = None
    """Batches each worker loads ahead (null: torch's default)."""
    seed_samples: bool = True
    """DataLoader path: seed torch's, Python's and NumPy's generators from (seed, epoch, sample index) before
    each sample is read, so random augmentation in the data set gives a sample the same draws on any rank,
    worker or world size (and exact mode stays exact with it). false: each worker's own streams."""
    lanes: int | None = None
    """Sharded streams: the lanes the shards are dealt to, the unit of reading (rank r reads lanes r, r+W,
    ...). Part of the data order: keep it when resuming on another world size (null: one per shard, at most
    64). A multiple of every world size you will use keeps the ranks' shares even."""
    shuffle_window: int = 0
    """Sharded streams: shuffle each lane's samples within windows of this many (a seeded, resumable
    shuffle buffer; its memory: lanes x window samples per rank). 0: each shard in its own order."""
    split_by: Literal["shards", "samples"] = "shards"
    """Streams: shards (each reader reads only its own shards); samples (opt-in for a stream without shards:
    every reader reads all of it and keeps one sample in N)."""

    def __post_init__(self) -> None:
        check(self.global_batch_size > 0, "data.global_batch_size", f"must be > 0, got {self.global_batch_size}")
        check(self.eval_batch_size > 0, "data.eval_batch_size", f"must be > 0, got {self.eval_batch_size}")
        check(0 <= self.val_fraction < 1, "data.val_fraction", f"must lie in [0, 1), got {self.val_fraction}")
        check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        check(
            self.persistent_workers is not True or self.num_workers > 0,
            "data.persistent_workers",
            "needs data.num_workers > 0",
        )
        check(
            self.prefetch_factor is None or (self.prefetch_factor > 0 and self.num_workers > 0),
            "data.prefetch_factor",
            "must be > 0 and needs data.num_workers > 0",
        )
        check(self.lanes is None or self.lanes > 0, "data.lanes", f"must be > 0, got {self.lanes}")
        check(self.shuffle_window >= 0, "data.shuffle_window", f"must be >= 0, got {self.shuffle_window}")
        check(
            not (self.streams and self.shuffle),
            "data.streams",
            "needs data.shuffle: false (shuffling would break each stream's order)",
            "set data.shuffle=false",
        )
        check(
            not (self.streams and self.val_fraction > 0),
            "data.streams",
            "cannot be used with data.val_fraction: holding samples out would move every later sample to "
            "another stream",
            "give a validation split of your own (val_data=), or data.val_fraction=0",
        )
        if self.name is not None:
            check_name("data", self.name, "data.name")


@dataclass(kw_only=True)
class ModelConfig:
    name: str | None = None
    """The model: a built-in name (simple_classifier, mlp, mnist_cnn, torchvision, ...) or an import path
    module:attribute of an nn.Module class or a function returning one; null when distrain.fit is given it.
    Parameters named num_inputs, num_outputs, num_classes, input_shape or in_channels that args does not
    set are filled in from the data and the loss."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the model (e.g. num_hidden for simple_classifier); checked against it."""

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name("model", self.name, "model.name")


@dataclass(kw_only=True)
class LossConfig:
    name: str = "auto"
    """auto: classification when the data has class labels (bce_with_logits for 2 classes with one output,
    cross_entropy otherwise; logged), else an error asking for one; or a built-in (cross_entropy,
    bce_with_logits, bce, nll, mse, l1, huber, smooth_l1) or an import path of a loss class or function
    loss(outputs, targets)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the loss class (e.g. delta for huber, label_smoothing for cross_entropy)."""

    def __post_init__(self) -> None:
        if self.name != "auto":
            check_name("loss", self.name, "loss.name")


@dataclass(kw_only=True)
class MetricConfig:
    name: str
    """A built-in metric (accuracy, mae, mse, r2), a torchmetrics class (torchmetrics.classification:
    MulticlassF1Score) or a function metric(preds, targets) returning per-sample values or a batch mean."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the metric class (e.g. num_classes, average)."""


@dataclass(kw_only=True)
class CallbackConfig:
    name: str
    """A callback: a built-in name (ema) or an import path module:attribute of a class or function
    returning an object with hooks (on_step_end(run), on_epoch_end(run, metrics), ...)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the callback (e.g. decay for ema)."""

    def __post_init__(self) -> None:
        check_name("callback", self.name, "callbacks.name")


@dataclass(kw_only=True)
class OptimConfig:
    lr: float | None = None
    """Learning rate (the schedule's base). Required unless fit(optimizer=...) gives the optimizer (then
    optim.lr, optim.name and optim.args are refused: the optimizer you pass holds its own)."""
    name: str = "sgd"
    """Optimizer: any torch.optim optimizer by its lowercase class name (sgd, adam, adamw, adadelta, nadam,
    rmsprop, ...), any class by import path (torch.optim:NAdam) or a user's optimizer class taking (params,
    lr=..., **args)."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the optimizer (momentum, nesterov, weight_decay, betas, ...)."""
    clip_grad_norm: float | None = None
    """Clip the total gradient norm to this value before each step (off when null)."""
    clip_grad_value: float | None = None
    """Clip each gradient element to [-value, value] before each step (off when null)."""

    def __post_init__(self) -> None:
        check(self.lr is None or self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        check_name("optim", self.name, "optim.name")
        for key in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, key)
            check(value is None or value > 0, f"optim.{key}", f"must be > 0 or null, got {value}")


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
    """32: float32; bf16: bfloat16 autocast (CPU and GPU); fp16: float16 autocast with a gradient scaler (GPU;
    on the CPU too with engine native, slowly: torch's CPU autocast)."""
    compile: bool = False
    """torch.compile the model (the DDP wrapper, so all-reduces still overlap backward); the first steps pay
    the compilation."""
    channels_last: bool = False
    """Convolutional models: keep parameters and image batches in channels_last memory format."""
    on_nonfinite: Literal["stop", "skip_step"] = "stop"
    """A NaN or Inf loss or gradient: stop (every rank, exit status 3, nothing non-finite saved) or
    skip_step (skip that optimizer step on every rank, count and log it). See distrain/loop/nonfinite.py."""
    accumulate_steps: int = 1
    """Split each rank's share of a global batch into this many micro-batches, summing their gradients
    (DDP syncs only on the last); the optimizer still steps once per global batch."""
    exact: bool = False
    """Bitwise the same weights, losses, metrics and checkpoints on every world size that divides the
    number of chunks (data.global_batch_size / exact_chunk): each chunk's forward and backward runs alone,
    with randomness seeded by (seed, global step, chunk), and the chunks' gradients are summed
    on a grid (float64 sums that are exact), which no order or grouping changes. exact_threads intra-op threads.
    strategy ddp, or fsdp (sharded, the same bits as ddp; fsdp.param_dtype float32, no cpu_offload), engine
    native; precision 32, bf16 or fp16 (one loss scale for every chunk); BatchNorm running statistics
    replayed in chunk order,
    augmentation in the data set seeded per sample (data.seed_samples). See the docs page
    "What is exact"."""
    steps_per_epoch: int | None = None
    """Optimizer steps per epoch: required for a stream without a length (the stream goes on across
    epochs); with a length, an epoch ends after this many steps when it is shorter than the data (null: the
    whole training set)."""
    max_steps: int | None = None
    """End the run after this many optimizer steps (null: trainer.epochs decides): the epoch in progress
    ends there, is evaluated and saved as the last. A stream without a length and without
    trainer.steps_per_epoch then has one epoch of max_steps steps."""
    exact_chunk: int = 8
    """trainer.exact: samples per chunk, cut from each global batch by global position. Bounds the world
    sizes (they must divide global_batch_size / exact_chunk) and the memory of one forward."""
    hang_timeout: float | None = None
    """Seconds without a finished step, evaluation batch or checkpoint after which the job is stopped as
    hung: one message names the rank(s) behind and where each one is, every rank exits with status 5, and
    the newest complete checkpoint resumes. null: 300, or half of dist.timeout_s when that is shorter; set,
    it must be shorter than dist.timeout_s; 0: no watchdog. See the docs page "When a job hangs or crawls"."""
    straggler_ratio: float = 1.5
    """Every logging window, the slowest rank's step time against the median: logged (with its data wait
    and compute apart) when it is at least this many times the median; 0: never."""
    exact_threads: int = 1
    """trainer.exact: intra-op threads per process (torch.set_num_threads). A CPU kernel may split its
    reductions by the thread count, so it is fixed here rather than left to the machine or the launcher."""

    def __post_init__(self) -> None:
        check(self.epochs > 0, "trainer.epochs", f"must be > 0, got {self.epochs}")
        check(self.accumulate_steps > 0, "trainer.accumulate_steps", f"must be > 0, got {self.accumulate_steps}")
        check(
            self.steps_per_epoch is None or self.steps_per_epoch > 0,
            "trainer.steps_per_epoch",
            f"must be > 0, got {self.steps_per_epoch}",
        )
        check(self.max_steps is None or self.max_steps > 0, "trainer.max_steps", f"must be > 0, got {self.max_steps}")
        check(self.exact_chunk > 0, "trainer.exact_chunk", f"must be > 0, got {self.exact_chunk}")
        check(self.exact_threads > 0, "trainer.exact_threads", f"must be > 0, got {self.exact_threads}")
        check(
            self.straggler_ratio == 0 or self.straggler_ratio > 1,
            "trainer.straggler_ratio",
            f"must be > 1 (0: off), got {self.straggler_ratio}",
        )
        check(
            self.hang_timeout is None or self.hang_timeout >= 0,
            "trainer.hang_timeout",
            f"must be >= 0 (0: off; null: the default), got {self.hang_timeout}",
        )
        import signal

        valid = {s.name for s in signal.Signals}
        check(
            self.requeue_signal in valid and self.requeue_signal not in ("SIGKILL", "SIGSTOP"),
            "trainer.requeue_signal",
            f"must name a catchable signal such as SIGUSR2, got {self.requeue_signal!r}",
        )


@dataclass(kw_only=True)
class ScheduleConfig:
    name: str = "constant"
    """LR schedule: a built-in one after the warm-up (constant; step: times gamma every step_epochs; cosine:
    down to min_lr), or any torch scheduler by its lowercase class name (steplr, onecyclelr, ...), a short
    name (one_cycle, reduce_on_plateau, ...) or import path (torch.optim.lr_scheduler:OneCycleLR) with its
    args. distrain.fit(scheduler=fn) replaces it."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a scheduler named by import path (e.g. max_lr for OneCycleLR); its optimizer,
    and epochs and steps_per_epoch (1 with interval epoch) when it takes them and args does not set them,
    come from the run."""
    interval: Literal["step", "epoch"] = "step"
    """When a scheduler named by import path (or fit's scheduler=) steps: after every optimizer step, or
    after each epoch's evaluation. The built-in schedules step every optimizer step."""
    monitor: str | None = None
    """For a scheduler whose step() takes a metric (ReduceLROnPlateau): the per-epoch metric it is given,
    <split>_<metric> (val_loss, train_loss, val_accuracy); needs interval epoch."""
    warmup_steps: int = 0
    """Linear warm-up over this many optimizer steps, from warmup_start_factor * lr up to lr (built-ins)."""
    warmup_start_factor: float = 0.01
    """Fraction of optim.lr the warm-up starts from."""
    step_epochs: int = 30
    """step: multiply the LR by gamma every this many epochs."""
    gamma: float = 0.1
    """step: the decay factor."""
    min_lr: float = 0.0
    """cosine: the LR reached at the last step."""

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0, "schedule.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(
            0 < self.warmup_start_factor <= 1,
            "schedule.warmup_start_factor",
            f"must lie in (0, 1], got {self.warmup_start_factor}",
        )
        check(self.step_epochs > 0, "schedule.step_epochs", f"must be > 0, got {self.step_epochs}")
        check(0 < self.gamma <= 1, "schedule.gamma", f"must lie in (0, 1], got {self.gamma}")
        check(self.min_lr >= 0, "schedule.min_lr", f"must be >= 0, got {self.min_lr}")
        if self.monitor is not None:
            check_monitor(self.monitor, "schedule.monitor")
        if self.name in BUILT_IN_SCHEDULES:
            built_in = f"the built-in schedule {self.name!r}"
            check(not self.args, "schedule.args", f"{built_in} takes no args (its keys are schedule.*)")
            return
        check_name("scheduler", self.name, "schedule.name")
        check(
            self.warmup_steps == 0,
            "schedule.warmup_steps",
            f"is the built-in schedules' warm-up, not {self.name}'s",
            "chain torch's LinearLR and your scheduler in a SequentialLR (fit(scheduler=...)), or drop it",
        )


BUILT_IN_SCHEDULES = ("constant", "step", "cosine")


@dataclass(kw_only=True)
class StopConfig:
    patience: int = 0
    """Early stopping: stop after this many epochs without improving `monitor` by min_delta (0: off)."""
    monitor: str = "val_loss"
    """Early stopping: the per-epoch metric watched, <split>_<metric> with split val or train (val_loss,
    val_accuracy, val_<your metric>)."""
    mode: Literal["auto", "min", "max"] = "auto"
    """Whether `monitor` improves downwards or upwards; auto: min for losses and errors (names with loss,
    mae, mse, rmse, error), a torchmetrics metric's own higher_is_better, else max."""
    min_delta: float = 0.0
    """Early stopping: the least change that counts as an improvement."""
    window: int = 0
    """Convergence (the tutorials' rule): stop when the last `window` epoch train losses lie within
    `threshold` of each other (0: off)."""
    threshold: float = 1e-4
    """Convergence: the largest spread (max - min) of the last `window` train losses that counts as converged."""

    def __post_init__(self) -> None:
        check_monitor(self.monitor, "stop.monitor")
        check(self.patience >= 0, "stop.patience", f"must be >= 0, got {self.patience}")
        check(self.min_delta >= 0, "stop.min_delta", f"must be >= 0, got {self.min_delta}")
        check(self.window >= 0 and self.window != 1, "stop.window", f"must be 0 (off) or >= 2, got {self.window}")
        check(self.threshold >= 0, "stop.threshold", f"must be >= 0, got {self.threshold}")


@dataclass(kw_only=True)
class Config:
    data: DataConfig
    """What to train on."""
    trainer: TrainerConfig
    """How long, and on what device."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """What to train."""
    optim: OptimConfig | None = None
    """How to step (required unless distrain.fit is given an optimizer)."""
    loss: LossConfig = field(default_factory=LossConfig)
    """What is minimised."""
    metrics: dict[str, MetricConfig] = field(default_factory=dict)
    """Extra metrics by name, computed on the validation and test splits (every sample once) and reported
    as val_<name> and test_<name>; accuracy is added for classification losses."""
    callbacks: list[CallbackConfig] = field(default_factory=list)
    """Callbacks run at the loop's moments (before those given to distrain.fit(callbacks=...)), e.g.
    [{name: ema, args: {decay: 0.999}}]; see the docs, Your own callbacks."""
    user: dict[str, Any] = field(default_factory=dict)
    """Free-form settings of your own script (paths, sizes: `cfg.user["img_dir"]`); distrain ignores them
    and overrides reach them like any key (user.width=64)."""
    engine: Literal["native", "accelerate"] = "native"
    """Who wraps the model and steps: native (torch DDP) or accelerate (HF Accelerate's Accelerator)."""
    strategy: Literal["ddp", "fsdp", "exact", "diloco"] = "ddp"
    """ddp: every rank holds the whole model (DistributedDataParallel); fsdp: parameters, gradients and
    optimizer state sharded over the ranks (FSDP2), with sharded checkpoints (see the fsdp section); exact:
    bitwise the same training on every world size (trainer.exact: true says the same, and with fsdp shards
    the model too; see trainer.exact);
    diloco: replicas that train apart and average every diloco.sync_every steps (for slow links)."""
    seed: int = 0
    """Seeds Python, NumPy and torch; also the data generation, the splits and the shuffling."""
    run: RunConfig = field(default_factory=RunConfig)
    """Where the run's files go."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Process-group settings."""
    ddp: DDPConfig = field(default_factory=DDPConfig)
    """DistributedDataParallel settings."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """Sharding settings (strategy: fsdp)."""
    diloco: DiLoCoConfig = field(default_factory=DiLoCoConfig)
    """Replicas that sync every H steps (strategy: diloco; local SGD with outer_lr 1, outer_momentum 0)."""
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
        check_strategy(self)  # the rules that tie the strategy to the other sections
        hang, pg = self.trainer.hang_timeout, self.dist.timeout_s
        if hang and hang >= pg:
            raise ConfigError(
                "trainer.hang_timeout",
                f"{hang:g} s is not shorter than dist.timeout_s ({pg:g} s): the process group's timeout would "
                "fail the collective first, with torch's traceback on every rank instead of one message",
                f"set trainer.hang_timeout below {pg:g} (or raise dist.timeout_s)",
            )
        for name in self.metrics:
            check(
                name.isidentifier() and name != "loss",
                f"metrics.{name}",
                "a metric's name must be an identifier other than 'loss' (it becomes val_<name>, test_<name>)",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
