"""The same training, several ways. Each `run_*` trains one workload from scratch and returns (samples, seconds)
for the training loop only (setup, model building and data generation excluded, the same for all five).

- floor: the bare compute. The tutorial's step (zero_grad, forward, loss, backward, step) on one pre-made
  batch: no shuffling, no data handling, no metrics. A loop that does all of those can only come near it
  by doing the step's own parts more cheaply (distrain does two: see the docs' Performance page).
- tutorial: the PyTorch tutorial loop: TensorDataset + DataLoader(shuffle=True), `loss.item()` every step.
- lightning: a LightningModule and `Trainer.fit`, logging, checkpoints and progress bar off (timed from
  the first to the last training batch by a callback).
- accelerate: the Accelerate quick-tour loop: `prepare(model, optimizer, loader)`, `accelerator.backward`.
- distrain: `distrain.train.train(cfg)`, the real thing, with exact per-epoch train metrics; its own
  per-epoch `train_time_s` (metrics.jsonl) is the time of its training steps.
- distrain_api: `distrain.fit(cfg, model=..., train_data=..., loss=...)` with a model, data and loss
  built outside distrain, as a user's script passes them; timed like distrain.
- distrain_step: distrain_api with the user's own training step (`fit(step=...)`: forward and loss in the
  user's function, returning the batch mean) instead of distrain's; timed like distrain.
- distrain_stream: distrain_api with the training set streamed from file shards (uint8 memory maps)
  instead of held in memory: the price of data that does not fit in memory; timed like distrain.
- distrain_exact: distrain with trainer.exact (chunk = the per-rank batch, the workload's threads): the
  price of bitwise-equal results on any number of processes; timed like distrain.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from distrain.config.parse import load_config
from distrain.config.schema import Config
from distrain.data import DataInfo, build_splits, describe_data
from distrain.loop.components import build_model
from distrain.loop.optim import build_optimizer


@dataclass
class Workload:
    name: str
    cfg: Config
    threads: int
    data: TensorDataset
    num_classes: int
    info: DataInfo
    device: torch.device = torch.device("cpu")
    tutorial_data: Any = None  # real image sets: torchvision's data set with the tutorial's own transforms

    @property
    def batch(self) -> int:
        return self.cfg.data.global_batch_size

    @property
    def samples(self) -> int:
        return len(self.data) * self.cfg.trainer.epochs

    def model(self) -> torch.nn.Module:
        torch.manual_seed(self.cfg.seed)
        return build_model(self.cfg, self.info).to(self.device)

    def sync(self) -> None:
        """Wait for queued GPU work before reading the clock (a no-op on the CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def loader(self) -> DataLoader:
        # The peers read what their users would: the tutorial's torchvision data set where there is one.
        data = self.data if self.tutorial_data is None else self.tutorial_data
        return DataLoader(data, batch_size=self.batch, shuffle=True, pin_memory=self.device.type == "cuda")

    def batch_of(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `size` training samples as one ready batch (the floor's)."""
        if self.tutorial_data is None:
            return self.data[:size]
        *_, targets = self.data.tensors
        return self.data.batch_transform(self.data.tensors[0][:size]), targets[:size]

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg.optim, model.parameters())  # the very optimizer distrain builds

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # The tutorials' losses: BCE-with-logits on one logit for two classes, else cross-entropy.
        if self.num_classes == 2:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), targets.float())
        return F.cross_entropy(logits, targets)


THREADS = {"xor": 1, "cnn": 2, "resnet18": 2, "mnist": 2, "fashion": 2}


def data_root() -> str:
    """Where tests/fetch_data.py put the real MNIST and FashionMNIST (bench/run.sh runs it first)."""
    return os.environ.get("DISTRAIN_DATA", str(Path.home() / ".cache" / "distrain" / "data"))


def load_workload(name: str, config_dir: Path, overrides: list[str] = (), device: str = "cpu") -> Workload:
    cfg = load_config(config_dir / f"{name}.yaml", [*overrides, f"trainer.device={device}"])
    if cfg.data.args.get("root") == "DATA":
        cfg = replace(cfg, data=replace(cfg.data, args={**cfg.data.args, "root": data_root()}))
    data = build_splits(cfg.data, cfg.seed)
    return Workload(
        name,
        cfg,
        THREADS[name],
        data.train,
        data.num_classes,
        describe_data(data, None),  # type: ignore[arg-type]
        torch.device(device),
        tutorial_data=tutorial_data(cfg),
    )


def tutorial_data(cfg: Config) -> Any:
    """The tutorials' own data path, as published: torchvision's MNIST with ToTensor + Normalize((0.1307,),
    (0.3081,)) (pytorch/examples mnist), FashionMNIST with ToTensor (the quickstart); the same samples as
    distrain's (the first num_train)."""
    if cfg.data.name not in ("mnist", "fashion_mnist"):
        return None
    from torch.utils.data import Subset
    from torchvision import datasets, transforms

    if cfg.data.name == "mnist":
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        full = datasets.MNIST(cfg.data.args["root"], train=True, download=False, transform=tf)
    else:
        full = datasets.FashionMNIST(cfg.data.args["root"], train=True, download=False, transform=transforms.ToTensor())
    count = cfg.data.args.get("num_train") or len(full)
    return Subset(full, range(count))


def run_floor(w: Workload) -> tuple[int, float]:
    model, (x, y) = w.model(), w.batch_of(w.batch)
    x, y = x.to(w.device), y.to(w.device)
    optimizer = w.optimizer(model)
    steps = w.samples // w.batch
    w.sync()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        w.loss(model(x), y).backward()
        optimizer.step()
    w.sync()
    return steps * w.batch, time.perf_counter() - started


def run_tutorial(w: Workload) -> tuple[int, float]:
    model = w.model()
    optimizer = w.optimizer(model)
    loader = w.loader()
    started = time.perf_counter()
    for _ in range(w.cfg.trainer.epochs):
        model.train()
        running = 0.0
        for x, y in loader:
            x, y = x.to(w.device, non_blocking=True), y.to(w.device, non_blocking=True)
            loss = w.loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item()
    w.sync()
    return w.samples, time.perf_counter() - started


def run_accelerate(w: Workload) -> tuple[int, float]:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=w.device.type == "cpu")
    model = w.model()
    optimizer = w.optimizer(model)
    loader = w.loader()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    started = time.perf_counter()
    for _ in range(w.cfg.trainer.epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            loss = w.loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
    w.sync()
    return w.samples, time.perf_counter() - started


def run_lightning(w: Workload) -> tuple[int, float]:
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="lightning")  # deprecation and "srun is available" notes

    import lightning as L

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = w.model()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return w.loss(self.net(x), y)

        def configure_optimizers(self):
            return w.optimizer(self.net)

    class Clock(L.Callback):
        started = ended = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not self.started:
                self.started = time.perf_counter()

        def on_train_end(self, trainer, module):
            w.sync()
            self.ended = time.perf_counter()

    clock = Clock()
    trainer = L.Trainer(
        max_epochs=w.cfg.trainer.epochs,
        accelerator="gpu" if w.device.type == "cuda" else "cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[clock],
    )
    trainer.fit(Module(), w.loader())
    return w.samples, clock.ended - clock.started


def run_distrain(w: Workload) -> tuple[int, float]:
    from distrain.loop.trainer import train

    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        cfg = replace(w.cfg, run=replace(w.cfg.run, dir=run_dir))
        train(cfg)
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    return sum(r["samples"] for r in train_records), sum(r["train_time_s"] for r in train_records)


def run_distrain_api(w: Workload, step: Any = None, train_data: Any = None) -> tuple[int, float]:
    """distrain.fit with the user's own nn.Module (the workload's model built outside distrain, as a user's
    script does), loss module and TensorDatasets: the API adds no per-step cost."""
    from torch import nn

    import distrain

    loss = nn.BCEWithLogitsLoss() if w.num_classes == 2 else nn.CrossEntropyLoss()
    with tempfile.TemporaryDirectory() as run_dir, contextlib.redirect_stdout(io.StringIO()):
        cfg = replace(w.cfg, run=replace(w.cfg.run, dir=run_dir))
        test = (
            w.data.subset(torch.arange(256), evaluation=True)
            if hasattr(w.data, "subset")
            else TensorDataset(*(t[:256] for t in w.data.tensors))
        )
        train = w.data if train_data is None else train_data
        if step is None:
            distrain.fit(cfg, model=w.model(), train_data=train, test_data=test, loss=loss)
        else:
            distrain.fit(cfg, model=w.model(), train_data=train, test_data=test, step=step)
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    return sum(r["samples"] for r in train_records), sum(r["train_time_s"] for r in train_records)


def run_distrain_step(w: Workload) -> tuple[int, float]:
    """distrain.fit(step=...): the user's step computes the loss (the batch mean) from the batch as the data
    set holds it: what a step of one's own costs against distrain's (run_distrain_api)."""
    import torch.nn.functional as F

    def step(model, batch):
        x, y = batch
        out = model(x)
        if w.num_classes == 2:
            return F.binary_cross_entropy_with_logits(out.view(-1), y.to(out.dtype))
        return F.cross_entropy(out, y)

    return run_distrain_api(w, step=step)


def run_distrain_exact(w: Workload) -> tuple[int, float]:
    """trainer.exact with exact_chunk equal to the per-rank batch (here, one process: the global batch) and
    the workload's thread count: what bitwise-on-any-world-size costs against run_distrain."""
    t = w.cfg.trainer
    trainer = replace(t, exact=True, exact_chunk=w.cfg.data.global_batch_size, exact_threads=w.threads)
    return run_distrain(replace(w, cfg=replace(w.cfg, trainer=trainer)))


_SHARDS: dict[str, Any] = {}


def run_distrain_stream(w: Workload) -> tuple[int, float]:
    """distrain_api with the training set streamed from distrain's file shards (data/shard_files.py: uint8
    memory maps, 8,192 samples a shard, the same transform on read) instead of held in memory: read by
    lanes, a shard range per step (data/streams.py). The shards are written once per process, untimed."""
    from distrain.data.shard_files import FileShards, write_shards

    if w.name not in _SHARDS:
        folder = tempfile.mkdtemp(prefix=f"distrain-bench-{w.name}-")
        write_shards(w.data, Path(folder) / "train", samples_per_shard=8192)
        _SHARDS[w.name] = FileShards(Path(folder) / "train")
    return run_distrain_api(w, train_data=_SHARDS[w.name])


VARIANTS = {
    "floor": run_floor,
    "tutorial": run_tutorial,
    "lightning": run_lightning,
    "accelerate": run_accelerate,
    "distrain": run_distrain,
    "distrain_api": run_distrain_api,
    "distrain_step": run_distrain_step,
    "distrain_exact": run_distrain_exact,
    "distrain_stream": run_distrain_stream,
}
