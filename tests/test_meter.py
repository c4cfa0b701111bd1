"""distrain/loop/meters.py's TrainMeter and reporting/figures.py's EpochMetrics: the epoch's train sums
[loss, hits, samples] are
the per-sample figures of every batch added, however often the kept outputs are flushed; load and reset.
The expected figures are computed by hand, sample by sample, in float64."""

import math

import pytest
import torch

from distrain.config.schema import LossConfig
from distrain.data.splits import DataInfo
from distrain.loop.meters import TrainMeter
from distrain.loop.objective import build_objective
from distrain.reporting.figures import EpochMetrics

BINARY = DataInfo(num_classes=2, default_loss=None, target_shape=(), target_is_integer=True, input_shape=(3,))
CPU = torch.device("cpu")


def objective(name="bce_with_logits", data=BINARY):
    return build_objective(LossConfig(name=name), data)


def batches(sizes, seed=0):
    """Steps' (outputs, targets) of the given sizes: one logit per sample and prepared 0/1 targets."""
    g = torch.Generator().manual_seed(seed)
    prepare = objective().prepare_targets
    return [(torch.randn(n, 1, generator=g) * 3, prepare(torch.randint(0, 2, (n,), generator=g))) for n in sizes]


def by_hand(steps):
    """[loss sum, hits, samples] sample by sample: BCE on a logit x with target y is
    max(x, 0) - x*y + log(1 + exp(-|x|)); a hit is (x > 0) == y."""
    loss = hits = count = 0
    for outputs, targets in steps:
        for x, y in zip(outputs.reshape(-1).tolist(), targets.reshape(-1).tolist()):
            loss += max(x, 0.0) - x * y + math.log1p(math.exp(-abs(x)))
            hits += (x > 0) == (y > 0.5)
            count += 1
    return loss, hits, count


def filled(steps, **kwargs):
    meter = TrainMeter(objective(), CPU, **kwargs)
    for outputs, targets in steps:
        meter.add(outputs, targets)
    return meter


def test_totals_are_the_per_sample_loss_hits_and_count():
    steps = batches([32, 32, 17, 5])
    meter = filled(steps)
    assert meter.names == ["loss", "accuracy"]
    totals = meter.totals()
    assert totals.dtype == torch.float64 and totals.shape == (3,)
    loss, hits, count = by_hand(steps)
    assert totals[0].item() == pytest.approx(loss, rel=1e-6)
    assert totals[1:].tolist() == [hits, count] == [hits, 86]


def test_adding_keeps_the_outputs_until_totals_are_asked():
    steps = batches([8, 8])
    meter = filled(steps)
    assert meter._totals.tolist() == [0, 0, 0]  # nothing computed in the step itself
    assert meter.totals()[2].item() == 16 and meter._held == 0


def test_flushing_at_max_held_gives_the_same_totals():
    steps = batches([32, 64, 32, 96, 32], seed=1)
    once = filled(steps).totals()
    every_step = filled(steps, max_held=1)  # a flush at each add
    assert every_step._held == 0 and torch.equal(every_step.totals(), once)
    some = filled(steps, max_held=150)  # one flush after the 4th step (224 logits held), the 5th stays held
    assert some._held == 32 and torch.equal(some.totals(), once)


def test_flush_sizes_that_do_not_divide_agree_to_rounding():
    steps = batches([13, 7, 29, 3, 11], seed=2)
    once, each = filled(steps).totals(), filled(steps, max_held=1).totals()
    assert once[1:].tolist() == each[1:].tolist()
    assert once[0].item() == pytest.approx(each[0].item(), rel=1e-12)


def test_totals_is_live_and_adding_continues_it():
    first, second = batches([10], seed=3), batches([6], seed=4)
    meter = filled(first)
    snapshot = meter.totals().clone()
    meter.add(*second[0])
    assert meter.totals()[2].item() == 16 and snapshot[2].item() == 10
    assert meter.totals()[0].item() == pytest.approx(by_hand(first + second)[0], rel=1e-6)


def test_load_replaces_the_sums_and_drops_what_was_held():
    meter = filled(batches([10], seed=5))  # held, not yet counted
    saved = torch.tensor([4.5, 3.0, 7.0], dtype=torch.float64)
    meter.load(saved)  # a resume: the checkpoint's sums of the epoch so far
    assert meter.totals().tolist() == [4.5, 3.0, 7.0]
    step = batches([5], seed=6)
    meter.add(*step[0])
    loss, hits, count = by_hand(step)
    assert meter.totals()[0].item() == pytest.approx(4.5 + loss, rel=1e-6)
    assert meter.totals()[1:].tolist() == [3.0 + hits, 12.0]


def test_reset_starts_the_next_epoch_from_zero():
    meter = filled(batches([10], seed=7))
    meter.totals()
    meter.add(*batches([4], seed=8)[0])  # held
    meter.reset()
    assert meter.totals().tolist() == [0.0, 0.0, 0.0]
    step = batches([3], seed=9)
    meter.add(*step[0])
    assert meter.totals()[1:].tolist() == list(map(float, by_hand(step)[1:]))


def test_a_regression_meter_sums_the_loss_alone():
    data = DataInfo(num_classes=None, default_loss=None, target_shape=(), target_is_integer=False, input_shape=(3,))
    mse = objective("mse", data)
    meter = TrainMeter(mse, CPU)
    outputs, targets = torch.tensor([[1.0], [2.0], [4.0]]), mse.prepare_targets(torch.tensor([0.0, 2.0, 1.0]))
    meter.add(outputs, targets)
    assert meter.names == ["loss"] and meter.totals().tolist() == [1.0 + 0.0 + 9.0, 3.0]


def test_epoch_metrics_are_the_means_over_the_samples():
    metrics = EpochMetrics.from_totals(torch.tensor([5.0, 3.0, 4.0], dtype=torch.float64), ["loss", "accuracy"])
    assert metrics.values == {"loss": 1.25, "accuracy": 0.75} and metrics.samples == 4 and metrics.loss == 1.25
    empty = EpochMetrics.from_totals(torch.zeros(3, dtype=torch.float64), ["loss", "accuracy"])
    assert empty.values == {"loss": 0.0, "accuracy": 0.0} and empty.samples == 0  # no division by zero
