"""The bare DDP loop of bench/links.py: what a user writes by hand (torch's DistributedDataParallel, a
DistributedSampler, the links workload's model, batch and optimizer), timed and counted like
bench/links_worker.py: at steps FIRST and LAST, the time and this node's bytes sent, as JSON to $LINKS_OUT.

    torchrun ... bench/links_bare.py DATA
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchvision.datasets import FashionMNIST

from bench.links_worker import tx_bytes


def main() -> None:
    dist.init_process_group("gloo")
    first, last = int(os.environ["LINKS_FIRST"]), int(os.environ["LINKS_LAST"])
    raw = FashionMNIST(sys.argv[1], train=True, download=False)
    data = TensorDataset(raw.data.float().div(255).unsqueeze(1), raw.targets)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)
    )
    model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    per_rank = 256 // dist.get_world_size()
    loader = DataLoader(data, batch_size=per_rank, sampler=DistributedSampler(data, shuffle=True, seed=0))
    marks = {}
    for step, (x, y) in enumerate(loader, start=1):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step in (first, last):
            marks[step] = (time.perf_counter(), tx_bytes())
        if step == last:
            break
    (t0, b0), (t1, b1) = marks[first], marks[last]
    Path(os.environ["LINKS_OUT"]).write_text(
        json.dumps({"seconds": t1 - t0, "tx_bytes": b1 - b0, "steps": last - first, "rank": dist.get_rank()})
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
