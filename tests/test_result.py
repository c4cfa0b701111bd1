"""distrain/loop/result.py: what distrain.fit returns, per split and in the flat form."""

import dataclasses
from collections.abc import Mapping

import pytest

from distrain.loop.result import FitResult
from distrain.reporting.figures import EpochMetrics

SPLITS = {
    "train": EpochMetrics({"loss": 0.25, "accuracy": 0.875}, 2500),
    "test": EpochMetrics({"loss": 0.5, "accuracy": 0.75, "f1": 0.7}, 500),
}
PROGRESS = dict(global_step=2000, epochs_done=100, stopped=None, skipped_steps=3, trained=True, run_dir="runs/x")


def test_of_takes_each_splits_final_figures():
    result = FitResult.of(SPLITS, **PROGRESS)
    assert result.train == {"loss": 0.25, "accuracy": 0.875}
    assert result.test == {"loss": 0.5, "accuracy": 0.75, "f1": 0.7} and result.val == {}  # no val split
    assert result.samples == {"train": 2500, "test": 500}
    assert (
        result.global_step,
        result.epochs_done,
        result.stopped,
        result.skipped_steps,
        result.trained,
        result.run_dir,
    ) == (2000, 100, None, 3, True, "runs/x")


def test_of_copies_the_figures():
    metrics = EpochMetrics({"loss": 1.0}, 10)
    result = FitResult.of({"test": metrics})
    metrics.values["loss"] = 2.0
    assert result.test == {"loss": 1.0}


def test_as_dict_is_the_flat_form():
    assert FitResult.of(SPLITS, **PROGRESS).as_dict() == {
        "train_loss": 0.25,
        "train_accuracy": 0.875,
        "test_loss": 0.5,
        "test_accuracy": 0.75,
        "test_f1": 0.7,
        "train_samples": 2500,
        "test_samples": 500,
        "global_step": 2000,
        "epochs_done": 100,
        "stopped": None,
        "skipped_steps": 3,
        "trained": True,
        "run_dir": "runs/x",
    }


def test_flat_names_index_the_result_like_a_dict():
    result = FitResult.of(SPLITS, **PROGRESS)
    assert result["test_loss"] == result.test["loss"] == 0.5 and result["train_samples"] == 2500
    assert "test_f1" in result and "val_loss" not in result
    assert list(result) == list(result.keys()) == list(result.as_dict())
    assert dict(result.as_dict()) == {key: result[key] for key in result}
    with pytest.raises(KeyError):
        result["val_loss"]


def test_trained_says_whether_this_call_trained():
    assert FitResult().trained is True
    finished = FitResult.of(SPLITS, **dict(PROGRESS, trained=False, stopped="converged: ..."))
    assert finished["trained"] is False and finished.stopped == "converged: ..."


def test_a_result_is_read_only():
    result = FitResult.of(SPLITS, **PROGRESS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.global_step = 1


def test_a_result_is_a_mapping_of_the_flat_names():
    # What a script written against the plain dict of earlier versions does with it.
    result = FitResult.of(SPLITS, **PROGRESS)
    assert isinstance(result, Mapping)
    assert dict(result) == result.as_dict() and result == result.as_dict() and result.as_dict() == result
    assert len(result) == len(result.as_dict()) == 13
    assert list(result.items()) == list(result.as_dict().items())
    assert list(result.values()) == list(result.as_dict().values())
    assert result.get("test_f1") == 0.7 and result.get("nope", 3) == 3 and result.get("val_loss") is None
    assert result != dict(result.as_dict(), test_loss=0.25) and result != FitResult.of(SPLITS)
    assert result == FitResult.of(SPLITS, **PROGRESS)  # the same figures
    assert {**result, "extra": 1}["test_samples"] == 500  # ** unpacks it
