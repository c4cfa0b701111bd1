"""`distrain inspect PATH`: a checkpoint's metadata (epoch, step, metrics, world size, config), without
building the model. PATH is a .pt file or a run directory (then its newest complete checkpoint)."""

from __future__ import annotations

from pathlib import Path

import yaml

from distrain.checkpoint.store import load_payload, resolve_checkpoint


def inspect_checkpoint(path: str | Path) -> str:
    path = resolve_checkpoint(path)
    if path.is_dir():  # sharded: the count comes from the shards' index, no weights are read
        from distrain.checkpoint.sharded import model_numel

        payload, tensors = load_payload(path, model_weights=False), model_numel(path)
    else:
        payload = load_payload(path)
        tensors = sum(t.numel() for t in payload["model"].values())
    summary = {
        "checkpoint": str(path),
        "epoch": payload["epoch"],
        "step_in_epoch": payload["step_in_epoch"],
        "global_step": payload["global_step"],
        "world_size": payload["world_size"],
        "engine": payload.get("engine", "native"),
        "sharded": path.is_dir(),  # a folder of per-rank shards (strategy: fsdp), or one .pt file
        "metrics": payload.get("metrics", {}),
        "model_parameters": tensors,
        "distrain_version": payload.get("distrain_version"),
        "torch_version": payload.get("torch_version"),
        "config": payload.get("config"),
    }
    return yaml.safe_dump(summary, sort_keys=False).rstrip()
