"""What `distrain.fit` returns: the run's final figures, typed.

result = distrain.fit(cfg, model=model, train_data=train, test_data=test)
result.test["loss"], result.test["accuracy"], result.val, result.train   # per split, metric -> value
result.global_step, result.epochs_done, result.stopped, result.trained, result.run_dir
result["test_loss"]                                                       # the flat names work too
dict(result), result.items(), result.get("val_loss"), len(result)          # a read-only Mapping of them

A `collections.abc.Mapping` of the flat names (`as_dict()`): what a script written against the plain
dict of earlier versions does with it (items, values, get, ==) still works. Frozen, like the figures.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


# eq=False: Mapping's ==, by the flat names, so a FitResult equals the dict of them (a dataclass's == would
# compare FitResults only). Unhashable, as a Mapping is.
@dataclass(frozen=True, eq=False)
class FitResult(Mapping[str, Any]):
    """The run's final figures: per split (`result.test["loss"]`) and the run's progress (`result.global_step`),
    and a read-only Mapping of the flat names (`result["test_loss"]`, `dict(result)`, `result.items()`)."""

    test: dict[str, Any] = field(default_factory=dict)
    """The test split's loss and metrics after the last epoch (empty without a test split)."""
    val: dict[str, Any] = field(default_factory=dict)
    """The validation split's, likewise."""
    train: dict[str, Any] = field(default_factory=dict)
    """The last epoch's train loss (and accuracy): the exact mean over its samples."""
    samples: dict[str, int] = field(default_factory=dict)
    """How many samples each split's figures cover."""
    global_step: int = 0
    """Optimizer steps since the start of the run (resumes included)."""
    epochs_done: int = 0
    stopped: str | None = None
    """Why the run stopped before trainer.epochs (early stopping, convergence), or None."""
    skipped_steps: int = 0
    """Steps skipped for NaN or Inf (trainer.on_nonfinite: skip_step)."""
    trained: bool = True
    """False when this call trained nothing: the run directory held a finished run, whose figures these are."""
    run_dir: str = ""

    @staticmethod
    def of(splits: dict[str, Any], **progress: Any) -> FitResult:
        """From the final EpochMetrics of each split."""
        values = {split: dict(m.values) for split, m in splits.items()}
        return FitResult(
            test=values.get("test", {}),
            val=values.get("val", {}),
            train=values.get("train", {}),
            samples={split: m.samples for split, m in splits.items()},
            **progress,
        )

    def as_dict(self) -> dict[str, Any]:
        """The flat form: test_loss, test_<metric>, val_..., train_..., <split>_samples, and the rest."""
        flat: dict[str, Any] = {}
        for split in ("train", "val", "test"):
            flat.update({f"{split}_{name}": value for name, value in getattr(self, split).items()})
        flat.update({f"{split}_samples": n for split, n in self.samples.items()})
        flat.update(
            global_step=self.global_step,
            epochs_done=self.epochs_done,
            stopped=self.stopped,
            skipped_steps=self.skipped_steps,
            trained=self.trained,
            run_dir=self.run_dir,
        )
        return flat

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.as_dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())
