"""Batches as users write them: a tensor, or tuples, lists and dicts of tensors nested in any way.

to_device(batch, device)        every tensor moved (non-blocking: pinned on CUDA)
split(batch, n)                 n micro-batches along the first dimension
cat([b1, b2, ...])              the batches joined back along the first dimension
num_samples(batch)              the first dimension of the first tensor
split_sample(batch, target_key) (inputs, targets) of a collated batch: (x, y), (x1, x2, y) or a dict
call_model(model, inputs)       model(x), model(x1, x2) or model(**inputs)
"""

from __future__ import annotations

from typing import Any, Callable

import torch

TARGET_KEYS = ("target", "targets", "label", "labels", "y")


def tree_map(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, MultipleInputs):
        return MultipleInputs(tree_map(fn, v) for v in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(tree_map(fn, v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(tree_map(fn, v) for v in obj)
    if isinstance(obj, dict):
        return {k: tree_map(fn, v) for k, v in obj.items()}
    return obj


def leaves(obj: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t), obj)
    return found


def to_device(obj: Any, device: torch.device, non_blocking: bool = True) -> Any:
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), obj)


def num_samples(obj: Any) -> int:
    found = leaves(obj)
    return len(found[0]) if found else 0


def split(obj: Any, parts: int) -> list[Any]:
    """`parts` micro-batches (torch.tensor_split along dim 0: sizes differ by at most one)."""
    pieces = [None] * parts
    per_leaf: list[tuple[torch.Tensor, ...]] = []
    tree_map(lambda t: per_leaf.append(t.tensor_split(parts)), obj)
    for index in range(parts):
        iterator = iter(leaf[index] for leaf in per_leaf)
        pieces[index] = tree_map(lambda _t, it=iterator: next(it), obj)
    return pieces


def cat(batches: list[Any]) -> Any:
    """Join same-structured batches along dim 0 (one tensor: torch.cat)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return first if len(batches) == 1 else torch.cat(batches)
    columns = [leaves(b) for b in batches]
    joined = iter(torch.cat([column[i] for column in columns]) for i in range(len(columns[0])))
    return tree_map(lambda _t: next(joined), first)


class MultipleInputs(tuple):
    """Several positional model inputs (a sample (x1, x2, y) gives model(x1, x2))."""


def split_sample(batch: Any, target_key: str | None = None) -> tuple[Any, Any]:
    """(inputs, targets) of a collated batch.

    - a tuple or list (x, y): the model gets x (whatever its structure), the loss gets y;
    - (x1, ..., xk, y): the model gets model(x1, ..., xk);
    - a dict: the target is data.target_key (or the one of target, targets, label, labels, y present),
      the other entries are the model's keyword arguments.
    """
    if isinstance(batch, dict):
        key = target_key_of(batch, target_key)
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (list, tuple)) and len(batch) >= 2:
        *inputs, targets = batch
        return (inputs[0] if len(inputs) == 1 else MultipleInputs(inputs)), targets
    from distrain.errors import UserError

    raise UserError(
        f"a batch must be (inputs, targets), (input1, ..., targets) or a dict with a target key; "
        f"got {type(batch).__name__}",
        "make the data set's __getitem__ return (x, y) as in the tutorials",
    )


def target_key_of(batch: dict[str, Any], target_key: str | None = None) -> str:
    """The key of a dict sample's target: data.target_key, or the one of TARGET_KEYS present."""
    from distrain.errors import ConfigError

    key = target_key
    if key is None:
        present = [k for k in TARGET_KEYS if k in batch]
        if len(present) != 1:
            raise ConfigError(
                "data.target_key",
                f"samples are dicts with keys {sorted(batch)}; cannot tell which one is the target",
                "set data.target_key to the key of the target",
            )
        key = present[0]
    if key not in batch:
        raise ConfigError("data.target_key", f"{key!r} is not a key of the samples ({sorted(batch)})")
    return key


def call_model(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, MultipleInputs):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def describe(obj: Any) -> str:
    """A short shape description: `[128, 2]`, `([128, 3], [128])`, `{x: [128, 5]}`."""
    if isinstance(obj, torch.Tensor):
        return f"{list(obj.shape)} {str(obj.dtype).replace('torch.', '')}"
    if isinstance(obj, (list, tuple)):
        return "(" + ", ".join(describe(v) for v in obj) + ")"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in obj.items()) + "}"
    return type(obj).__name__
