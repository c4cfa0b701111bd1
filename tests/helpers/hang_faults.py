"""A user script (distrain.fit, its own data set, step and model) with one injected fault on one rank, for
tests/test_hangs.py. FAULT names it, FAULT_RANK the rank (default 1), FAULT_STEP the global step it
strikes in (default 6); without FAULT the script trains normally (the reference run, and the resume).

    getitem        the rank's data set sleeps in __getitem__ (the sample of step FAULT_STEP)
    step           the rank's training step sleeps (the user's step function, at step FAULT_STEP)
    worker         a DataLoader worker of the rank deadlocks (run with data.num_workers=1)
    skip_exchange  the rank takes step FAULT_STEP under DDP's no_sync(): its gradient exchange is skipped once
    extra_eval     the rank's test set holds one evaluation batch more than the other ranks'
    slow           a straggler: the rank's step sleeps 0.3 s every step, the others' 0.1 s (3x slower)
    kill_agent     at step FAULT_STEP, the last rank SIGKILLs torchrun's agent (the workers live on, orphaned,
                   0.2 s a step)

    torchrun --nproc_per_node=2 tests/helpers/hang_faults.py CONFIG key=value ...   (env: FAULT=...)
"""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's distrain, not an installed one

import distrain  # noqa: E402

FAULT = os.environ.get("FAULT", "")
RANK = int(os.environ.get("RANK", "0"))
MINE = RANK == int(os.environ.get("FAULT_RANK", "1"))
AT = int(os.environ.get("FAULT_STEP", "6"))
PER_RANK = 32  # samples of one rank per step (global batch 64 on 2 ranks)


def mark() -> None:
    """When the fault struck (FAULT_MARK: a file the test reads; the first strike counts)."""
    path = os.environ.get("FAULT_MARK")
    if path and not os.path.exists(path):
        Path(path).write_text(repr(time.time()))


class Points(Dataset):
    """XOR points; label x1 XOR x2."""

    def __init__(self, size, seed, sleepy=False, marks=False):
        generator = torch.Generator().manual_seed(seed)
        data = torch.randint(0, 2, (size, 2), generator=generator).to(torch.float32)
        self.label = (data.sum(dim=1) == 1).to(torch.float32).unsqueeze(1)
        self.data = data + 0.1 * torch.randn(data.shape, generator=generator)
        self.sleepy, self.marks, self.calls = sleepy, marks, 0

    def __len__(self):
        return self.data.shape[0]

    def __getitem__(self, idx):
        self.calls += 1
        if self.marks:
            mark()
        if self.sleepy and self.calls > AT * PER_RANK:
            if FAULT in ("getitem", "worker"):
                mark()
            if FAULT == "getitem":
                time.sleep(600)
            if FAULT == "worker":
                lock = threading.Lock()  # a worker that deadlocks: takes a lock it already holds
                lock.acquire()
                lock.acquire()
        return self.data[idx], self.label[idx]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.body(x)


_taken = [0]
_loss = nn.BCEWithLogitsLoss()


def user_step(model, batch):
    x, y = batch
    if model.training:
        _taken[0] += 1
        if MINE and FAULT == "step" and _taken[0] == AT + 1:
            mark()
            time.sleep(600)
        if MINE and FAULT == "slow":
            time.sleep(0.3)
        elif FAULT == "slow":
            time.sleep(0.1)
        if FAULT == "kill_agent" and _taken[0] == AT + 1 and RANK == int(os.environ["WORLD_SIZE"]) - 1:
            mark()
            os.kill(os.getppid(), signal.SIGKILL)
        if FAULT == "kill_agent" and _taken[0] > AT:
            time.sleep(0.2)  # the orphans train on (slowly) until they notice
    return _loss(model(x), y)


def _skip_exchange_once():
    import contextlib

    import distrain.loop.steps

    original = distrain.loop.steps.StrategyStep.__call__

    def call(self, batch):
        skip = MINE and self.progress.global_step == AT
        if skip:
            mark()
        with self.model.no_sync() if skip else contextlib.nullcontext():
            return original(self, batch)

    distrain.loop.steps.StrategyStep.__call__ = call


def main():
    cfg = distrain.load_config(sys.argv[1], sys.argv[2:])
    torch.manual_seed(cfg.seed)
    if FAULT == "skip_exchange":
        _skip_exchange_once()
    test_size = 256 + (64 if MINE and FAULT == "extra_eval" else 0)
    distrain.fit(
        cfg,
        model=Net(),
        train_data=Points(1024, seed=1, sleepy=MINE),
        test_data=Points(test_size, seed=2, marks=MINE and FAULT == "extra_eval"),
        step=user_step,
    )


if __name__ == "__main__":
    distrain.run_main(main)
