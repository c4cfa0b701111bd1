"""distrain/loop/objective.py, one component at a time: the step loss is weighted by the global batch size,
so that DDP's average over the ranks is the global batch's mean loss (uneven last batch, micro-batches);
an even share is the plain mean. Each figure is compared with one computed by torch directly."""

import pytest
import torch
import torch.nn.functional as F

from distrain.config.schema import LossConfig
from distrain.data.splits import DataInfo
from distrain.loop.objective import build_objective

BINARY = DataInfo(num_classes=2, default_loss=None, target_shape=(), target_is_integer=True, input_shape=(3,))
CLASSES = DataInfo(num_classes=4, default_loss=None, target_shape=(), target_is_integer=True, input_shape=(3,))


def binary_batch(n, seed=0):
    """One-logit outputs [n, 1] and 0/1 targets, as the step sees them (prepared: float, [n, 1])."""
    g = torch.Generator().manual_seed(seed)
    objective = build_objective(LossConfig(name="bce_with_logits"), BINARY)
    outputs = torch.randn(n, 1, generator=g, dtype=torch.float64) * 2
    targets = objective.prepare_targets(torch.randint(0, 2, (n,), generator=g))
    return objective, outputs, targets


def reference_losses(outputs, targets):
    return F.binary_cross_entropy_with_logits(outputs, targets, reduction="none").reshape(-1)


def test_bce_objective_is_binary_on_one_logit_with_float_targets():
    objective, outputs, targets = binary_batch(5)
    assert (objective.kind, objective.name, objective.num_outputs) == ("binary", "bce_with_logits", 1)
    assert targets.dtype == torch.float32 and targets.shape == (5, 1)
    assert torch.equal(objective.losses(outputs, targets.double()), reference_losses(outputs, targets.double()))


def test_an_uneven_share_is_its_sum_weighted_by_world_over_global_size():
    # The last global batch of 45 samples over 2 ranks: 23 and 22.
    objective, outputs, targets = binary_batch(45)
    targets = targets.double()
    shares = [(outputs[:23], targets[:23]), (outputs[23:], targets[23:])]
    step = [objective.step_loss(o, t, world_size=2, global_size=45) for o, t in shares]
    for loss, (o, t) in zip(step, shares):
        assert loss.item() == pytest.approx(reference_losses(o, t).sum().item() * 2 / 45, rel=1e-12)
    # DDP averages over the ranks: the global batch's mean per-sample loss...
    global_mean = F.binary_cross_entropy_with_logits(outputs, targets).item()
    assert (step[0] + step[1]).item() / 2 == pytest.approx(global_mean, rel=1e-12)
    # ...which the average of the local means is not (it over-weights the smaller share).
    local_means = [reference_losses(o, t).mean().item() for o, t in shares]
    assert sum(local_means) / 2 != pytest.approx(global_mean, rel=1e-6)


def test_the_ranks_gradients_average_to_the_global_mean_loss_gradient():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(45, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (45,), generator=g)
    objective = build_objective(LossConfig(name="bce_with_logits"), BINARY)
    y = objective.prepare_targets(y).double()
    weight = torch.randn(1, 3, generator=g, dtype=torch.float64)

    def gradient(inputs, targets, world_size):
        w = weight.clone().requires_grad_(True)
        objective.step_loss(inputs @ w.T, targets, world_size=world_size, global_size=45).backward()
        return w.grad

    averaged = (gradient(x[:23], y[:23], 2) + gradient(x[23:], y[23:], 2)) / 2
    whole = weight.clone().requires_grad_(True)
    F.binary_cross_entropy_with_logits(x @ whole.T, y).backward()
    assert torch.allclose(averaged, whole.grad, rtol=1e-12, atol=0), (averaged, whole.grad)


@pytest.mark.parametrize(
    "local,global_size,world",
    [(23, 45, 2), (32, 64, 2), (30, 30, 1), (7, 21, 3)],
    ids=["uneven", "even", "one-process", "three-ranks"],
)
def test_micro_batch_sums_add_up_to_the_one_batch_loss(local, global_size, world):
    objective, outputs, targets = binary_batch(local, seed=local)
    targets = targets.double()
    one = objective.step_loss(outputs, targets, world_size=world, global_size=global_size)
    cut = local // 2
    micro = [
        objective.step_loss(o, t, world_size=world, global_size=global_size, average=False)
        for o, t in ((outputs[:cut], targets[:cut]), (outputs[cut:], targets[cut:]))
    ]
    assert (micro[0] + micro[1]).item() == pytest.approx(one.item(), rel=1e-12)
    assert one.item() == pytest.approx(reference_losses(outputs, targets).sum().item() * world / global_size, rel=1e-12)


def test_an_even_share_is_the_plain_mean_of_the_loss():
    objective, outputs, targets = binary_batch(32)
    loss = objective.step_loss(outputs, targets.double(), world_size=2, global_size=64)
    assert torch.equal(loss, F.binary_cross_entropy_with_logits(outputs, targets.double()))  # the same kernel
    # Without average (a micro-batch), the same figure as a weighted sum.
    summed = objective.step_loss(outputs, targets.double(), world_size=2, global_size=64, average=False)
    assert summed.item() == pytest.approx(loss.item(), rel=1e-12)


def test_only_an_averaged_even_share_takes_the_losss_own_mean():
    objective, outputs, targets = binary_batch(32)
    targets, mean_fn, calls = targets.double(), objective.mean_fn, []
    objective.mean_fn = lambda o, t: calls.append(len(o)) or mean_fn(o, t)
    objective.step_loss(outputs, targets, world_size=2, global_size=64)
    assert calls == [32]  # one call of the loss with reduction="mean": one kernel
    objective.step_loss(outputs, targets, world_size=2, global_size=64, average=False)
    objective.step_loss(outputs[:31], targets[:31], world_size=2, global_size=63)
    assert calls == [32]


def test_an_even_share_of_class_scores_is_the_cross_entropy_mean():
    g = torch.Generator().manual_seed(2)
    objective = build_objective(LossConfig(name="auto"), CLASSES)
    outputs, targets = (
        torch.randn(12, 4, generator=g),
        objective.prepare_targets(torch.randint(0, 4, (12,), generator=g)),
    )
    assert objective.kind == "multiclass" and objective.name == "cross_entropy" and objective.num_outputs == 4
    assert torch.equal(
        objective.step_loss(outputs, targets, world_size=3, global_size=36), F.cross_entropy(outputs, targets)
    )
    uneven = objective.step_loss(outputs, targets, world_size=3, global_size=35)
    assert uneven.item() == pytest.approx(F.cross_entropy(outputs, targets, reduction="sum").item() * 3 / 35, rel=1e-6)


def test_a_batch_mean_loss_counts_its_mean_for_every_sample():
    def mean_only(outputs, targets):  # a user's loss that returns only the batch mean
        return ((outputs - targets) ** 2).mean()

    objective = build_objective(LossConfig(), DataInfo(None, None, (1,), False, (3,)), loss=mean_only)
    g = torch.Generator().manual_seed(3)
    outputs, targets = torch.randn(10, 1, generator=g), torch.randn(10, 1, generator=g)
    mean = mean_only(outputs, targets)
    assert objective.kind == "custom" and torch.equal(objective.losses(outputs, targets), mean.expand(10))
    assert objective.step_loss(outputs, targets, world_size=2, global_size=20).item() == pytest.approx(
        mean.item(), rel=1e-6
    )
    assert objective.step_loss(outputs, targets, world_size=2, global_size=19).item() == pytest.approx(
        mean.item() * 10 * 2 / 19, rel=1e-6
    )


def test_hits_read_logits_at_zero_and_classes_by_argmax():
    binary, _, _ = binary_batch(1)
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    assert binary.hits(logits, torch.tensor([[1.0], [1.0], [0.0], [0.0]])).tolist() == [1.0, 0.0, 0.0, 1.0]
    classes = build_objective(LossConfig(name="cross_entropy"), CLASSES)
    scores = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert classes.hits(scores, torch.tensor([1, 2])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize(
    "loss,name,kind",
    [
        (F.cross_entropy, "cross_entropy", "multiclass"),
        (F.nll_loss, "nll", "multiclass"),
        (F.binary_cross_entropy_with_logits, "bce_with_logits", "binary"),
        (F.mse_loss, "mse", "regression"),
    ],
)
def test_torchs_functional_losses_read_as_their_task(loss, name, kind):
    info = BINARY if kind == "binary" else CLASSES
    objective = build_objective(LossConfig(), info, loss=loss, model_outputs=1 if kind == "binary" else 4)
    assert (objective.name, objective.kind) == (name, kind)
    assert objective.has_accuracy == (kind != "regression")


def test_a_functional_loss_with_keywords_keeps_them_and_its_per_sample_values():
    import functools

    g = torch.Generator().manual_seed(2)
    outputs, targets = torch.randn(6, 4, generator=g), torch.randint(0, 4, (6,), generator=g)
    smoothed = functools.partial(F.cross_entropy, label_smoothing=0.1)
    objective = build_objective(LossConfig(), CLASSES, loss=smoothed, model_outputs=4)
    assert objective.kind == "multiclass" and objective.has_accuracy
    expected = F.cross_entropy(outputs, targets, label_smoothing=0.1, reduction="none")
    assert torch.equal(objective.losses(outputs, targets), expected)
    custom = build_objective(LossConfig(), CLASSES, loss=lambda o, t: F.cross_entropy(o, t), model_outputs=4)
    assert custom.kind == "custom"  # a function of its own is taken as it is


def test_a_dtype_mismatch_names_both_dtypes():
    from distrain.errors import ConfigError
    from distrain.loop.objective import probe_outputs

    with pytest.raises(ConfigError) as info:
        probe_outputs(torch.nn.Linear(3, 1), torch.zeros(2, 3, dtype=torch.float64))
    assert info.value.key == "data" and "are torch.float64 but the model's parameters are torch.float32" in str(
        info.value
    )
    with pytest.raises(ConfigError) as info:
        probe_outputs(torch.nn.Linear(3, 1), torch.zeros(2, 5))  # same dtype, wrong size: the model's input size
    assert info.value.key == "model" and "input size" in str(info.value)


def test_an_empty_share_has_no_per_sample_losses_and_still_backpropagates():
    """The last global batch may leave a rank (or exact mode's fsdp chunk) no samples: its forward and
    backward still run (a sharded model's are collectives), with a zero loss and zero gradients."""
    objective, outputs, targets = binary_batch(0)
    outputs.requires_grad_(True)
    assert objective.losses(outputs, targets.double()).shape == (0,)
    loss = objective.step_loss(outputs, targets.double(), world_size=2, global_size=45, average=False)
    loss.backward()
    assert loss.item() == 0.0 and outputs.grad.shape == (0, 1)
