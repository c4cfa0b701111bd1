"""Predictions: a trained model's outputs for every sample of a data set, in data set order, each sample
exactly once, on any number of ranks.

    preds = distrain.predict(cfg, checkpoint="runs/xor")                 # the config's test split
    preds = distrain.predict(cfg, model=net, data=my_dataset, checkpoint="runs/xor/checkpoints/step-....pt")
    distrain predict configs/xor.yaml checkpoint=runs/xor [split=test] [out=preds.pt|preds.csv]
    torchrun --standalone --nproc_per_node=3 -m distrain predict configs/xor.yaml checkpoint=runs/xor

Each rank runs the model on a contiguous run of whole evaluation batches (the exact evaluation shards,
no padding); the pieces are gathered to every rank in rank order, which is data set order.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from distrain.atomic import atomic_write_bytes
from distrain.checkpoint.store import load_model_weights, load_payload, resolve_checkpoint
from distrain.config.schema import Config
from distrain.data import build_eval_batches
from distrain.data.structures import cat
from distrain.errors import ConfigError
from distrain.launch import dist
from distrain.launch.env import detect
from distrain.loop.components import Given, build_parts, joined
from distrain.loop.steps import predict_outputs


def predict(
    cfg: Config,
    *,
    model: torch.nn.Module | None = None,
    data: Any = None,
    checkpoint: str | None = None,
    split: str = "test",
    environ: Mapping[str, str] = os.environ,
) -> Any:
    """The model's outputs for every sample of `data` (default: the config's `split`), in order, on every
    rank. `checkpoint`: a .pt file or a run directory (its newest complete checkpoint); without one, the
    model's current weights. Must run on every rank."""
    env = detect(environ)
    path = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    with joined(cfg, env) as ctx:
        given = Given(model=model, train_data=data, test_data=data) if data is not None else Given(model=model)
        parts = build_parts(cfg, ctx, given)
        if path is not None:
            load_model_weights(parts.model, load_payload(path, map_location=ctx.device), path)
        dataset = (
            data
            if data is not None
            else {"train": parts.data.train, "val": parts.data.val, "test": parts.data.test}.get(split)
        )
        if dataset is None:
            raise ConfigError("split", f"this config has no {split!r} split", "use split=test, val or train")
        # Whole batches per rank (also with data.streams: outputs are joined in data set order below).
        setup = dataclasses.replace(parts.batch_setup, streams=False)
        batches = build_eval_batches(dataset, setup, eval_batch_size=cfg.data.eval_batch_size)
        mine = predict_outputs(parts.model, batches)
        # Rank order is data set order: each rank holds a contiguous run of whole batches.
        pieces = [piece for rank_pieces in dist.all_gather_object(mine) for piece in rank_pieces]
    return cat(pieces)


def write_predictions(outputs: Any, out: Path) -> None:
    """`.csv`: one row per sample (outputs flattened per sample); anything else: torch.save of the outputs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        if not isinstance(outputs, torch.Tensor):
            raise ConfigError("out", "CSV needs a model with one tensor output", "write a .pt file instead")
        rows = outputs.reshape(len(outputs), -1).tolist()
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow([f"output_{i}" for i in range(len(rows[0]) if rows else 0)])
        writer.writerows(rows)
        atomic_write_bytes(out, text.getvalue().encode())
        return
    buffer = io.BytesIO()
    torch.save(outputs, buffer)
    atomic_write_bytes(out, buffer.getvalue())
