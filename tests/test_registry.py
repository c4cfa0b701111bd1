"""distrain/config/registry.py: what a config can name (a built-in short name, a registered one, an import
path) and how a component is called with its `args` (checked like config keys)."""

import pytest
import torch
from helpers.runs import XOR as XOR_PATH

from distrain.config import registry
from distrain.config.registry import call, check_name, import_path, names, register, resolve
from distrain.errors import ConfigError


@pytest.fixture
def own_names(monkeypatch):
    """register() writes into a fresh table, dropped after the test."""
    for kind in registry.KINDS:
        monkeypatch.setitem(registry._USER, kind, {})


def test_built_in_names_pass_and_resolve_to_their_objects():
    from distrain.models import simple_classifier

    check_name("model", "simple_classifier", "model.name")
    assert resolve("model", "simple_classifier", "model.name") is simple_classifier
    assert resolve("loss", "mse", "loss.name") is torch.nn.MSELoss
    assert resolve("optim", "adamw", "optim.name") is torch.optim.AdamW
    assert "simple_classifier" in names("model") and names("model") == sorted(names("model"))


@pytest.mark.parametrize(
    "kind,typo,meant,key",
    [
        ("model", "simple_clasifier", "simple_classifier", "model.name"),
        ("loss", "msee", "mse", "loss.name"),
        ("data", "brest_cancer", "breast_cancer", "data.name"),
    ],
)
def test_a_typo_is_refused_with_the_nearest_name(kind, typo, meant, key):
    with pytest.raises(ConfigError) as info:
        check_name(kind, typo, key)
    assert info.value.key == key and f"unknown {kind} '{typo}'" in str(info.value)
    assert f"did you mean '{meant}'?" in info.value.hint and "module:attribute" in info.value.hint


def test_a_name_like_nothing_lists_the_built_ins():
    with pytest.raises(ConfigError) as info:
        check_name("optim", "zzzzzz", "optim.name")
    assert "did you mean" not in info.value.hint and "adam, adamax, adamw" in info.value.hint


def test_an_import_path_passes_the_check_without_being_imported():
    check_name("model", "no_such_package.models:Net", "model.name")  # found out only when resolved
    assert resolve("model", "torch.nn:Linear", "model.name") is torch.nn.Linear
    assert resolve("loss", "torch.nn.functional:l1_loss", "loss.name") is torch.nn.functional.l1_loss
    assert import_path("torch.nn:modules.linear.Linear", "model.name") is torch.nn.Linear  # dotted attributes


@pytest.mark.parametrize(
    "path,words",
    [
        ("no_such_package.models:Net", "cannot import module 'no_such_package.models'"),
        ("torch.nn:Linearr", "has no attribute 'Linearr'"),
        ("torch.nn:", "is not an import path"),
    ],
)
def test_an_import_path_that_fails_is_a_config_error_naming_the_key(path, words):
    with pytest.raises(ConfigError) as info:
        import_path(path, "model.name")
    assert info.value.key == "model.name" and words in str(info.value)
    if "Linearr" in path:
        assert info.value.hint == "did you mean 'Linear'?"


def test_register_gives_a_short_name(own_names):
    def tiny(num_inputs, num_outputs):
        return torch.nn.Linear(num_inputs, num_outputs)

    with pytest.raises(ConfigError):
        check_name("model", "tiny_net", "model.name")
    register("model", "tiny_net", tiny)
    check_name("model", "tiny_net", "model.name")
    assert resolve("model", "tiny_net", "model.name") is tiny and "tiny_net" in names("model")
    register("model", "by_path", "torch.nn:Linear")  # an import path, resolved when used
    assert resolve("model", "by_path", "model.name") is torch.nn.Linear
    register("model", "simple_classifier", tiny)  # the user's name wins over a built-in of the same name
    assert resolve("model", "simple_classifier", "model.name") is tiny


def test_register_refuses_a_bad_kind_or_name(own_names):
    with pytest.raises(ValueError, match="kind must be one of"):
        register("models", "x", print)
    with pytest.raises(ValueError, match="cannot contain ':'"):
        register("model", "a:b", print)


def net(num_hidden: int, width: float = 1.0, *, activation: str = "tanh", seed: int | None = None):
    return {"num_hidden": num_hidden, "width": width, "activation": activation, "seed": seed}


def test_call_passes_args_converted_like_config_values():
    assert call(net, {"num_hidden": 4, "width": 2}, "model.args") == {
        "num_hidden": 4,
        "width": 2.0,
        "activation": "tanh",
        "seed": None,
    }
    assert isinstance(call(net, {"num_hidden": 4, "width": 2}, "model.args")["width"], float)


def test_call_refuses_an_unknown_argument_naming_the_key_and_the_nearest():
    with pytest.raises(ConfigError) as info:
        call(net, {"num_hiden": 4}, "model.args")
    assert info.value.key == "model.args.num_hiden" and "takes no argument 'num_hiden'" in str(info.value)
    assert info.value.hint == "did you mean 'model.args.num_hidden'?"
    with pytest.raises(ConfigError) as info:
        call(net, {"num_hidden": 4, "zzz": 1}, "model.args")
    assert info.value.key == "model.args.zzz" and "num_hidden, width, activation, seed" in info.value.hint


@pytest.mark.parametrize(
    "args,key,words",
    [
        ({"num_hidden": "four"}, "model.args.num_hidden", "expected an integer"),
        ({"num_hidden": 4, "width": "wide"}, "model.args.width", "expected a number"),
        ({"num_hidden": 4, "seed": 1.5}, "model.args.seed", "expected an integer, got 1.5"),
    ],
)
def test_call_refuses_a_value_of_the_wrong_type_naming_the_key(args, key, words):
    with pytest.raises(ConfigError) as info:
        call(net, args, "model.args")
    assert info.value.key == key and words in str(info.value)


def test_call_fills_in_known_values_and_args_win():
    assert call(net, {}, "model.args", known={"num_hidden": 8, "seed": 3})["num_hidden"] == 8
    assert call(net, {"num_hidden": 2}, "model.args", known={"num_hidden": 8, "seed": 3}) == {
        "num_hidden": 2,
        "width": 1.0,
        "activation": "tanh",
        "seed": 3,
    }
    assert call(net, {"num_hidden": 2}, "model.args", known={"unrelated": 1})["seed"] is None


def test_call_names_a_required_argument_the_run_does_not_know():
    with pytest.raises(ConfigError) as info:
        call(net, {}, "model.args", known={"num_hidden": None})
    assert info.value.key == "model.args.num_hidden" and "needs argument 'num_hidden'" in str(info.value)


def test_call_checks_a_class_against_its_init():
    layer = call(torch.nn.Linear, {"in_features": 3, "out_features": 2}, "model.args")
    assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (2, 3)
    with pytest.raises(ConfigError) as info:
        call(torch.nn.Linear, {"in_features": 3, "out_feature": 2}, "model.args")
    assert info.value.key == "model.args.out_feature"


def test_call_passes_anything_to_a_callable_taking_keywords():
    def anything(**kwargs):
        return kwargs

    assert call(anything, {"a": 1, "b": [2]}, "metrics.f1.args") == {"a": 1, "b": [2]}


def test_an_exponent_without_a_dot_reaches_a_torch_optimizer_as_a_number():
    # YAML 1.1 reads 1e-4 as a string; torch's optimizers give no annotation that converts it.
    import torch

    from distrain.config.parse import load_config
    from distrain.loop.optim import build_optimizer

    cfg = load_config(
        {"data": {"global_batch_size": 8}, "trainer": {"epochs": 1}, "optim": {"name": "adam", "lr": 0.1}},
        ["optim.args.weight_decay=1e-4", "optim.args.eps=1e-8"],
    )
    assert cfg.optim.args == {"weight_decay": "1e-4", "eps": "1e-8"}  # as YAML reads them
    optimizer = build_optimizer(cfg.optim, torch.nn.Linear(2, 1).parameters())
    assert optimizer.defaults["weight_decay"] == 1e-4 and optimizer.defaults["eps"] == 1e-8


def _torch_exports(module, base) -> set[str]:
    return {n for n in module.__all__ if isinstance(getattr(module, n), type) and issubclass(getattr(module, n), base)}


def test_every_torch_optimizer_and_scheduler_by_its_lowercase_class_name():
    import torch.optim.lr_scheduler as schedulers

    optimizers = _torch_exports(torch.optim, torch.optim.Optimizer) - {"Optimizer"}
    assert {"Adadelta", "NAdam", "LBFGS", "SparseAdam", "SGD"} <= optimizers  # pytorch/examples' MNIST: adadelta
    for cls in optimizers:
        check_name("optim", cls.lower(), "optim.name")
        assert resolve("optim", cls.lower(), "optim.name") is getattr(torch.optim, cls)
    found = _torch_exports(schedulers, schedulers.LRScheduler) - {"LRScheduler"}
    assert {"StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"} <= found
    for cls in found:
        assert resolve("scheduler", cls.lower(), "schedule.name") is getattr(schedulers, cls)
    assert set(names("optim")) == {c.lower() for c in optimizers}
    # The friendly names stay, and no base class or private alias is a name.
    for alias, cls in [("one_cycle", "OneCycleLR"), ("reduce_on_plateau", "ReduceLROnPlateau")]:
        assert resolve("scheduler", alias, "schedule.name") is getattr(schedulers, cls)
    assert not {"optimizer", "lrscheduler", "_lrscheduler"} & set(names("optim") + names("scheduler"))


def test_adadelta_is_no_longer_taken_for_adagrad():
    from distrain.config.parse import load_config

    cfg = load_config(
        XOR_PATH, ["optim.name=adadelta", "optim.lr=1.0", "schedule.name=steplr", "schedule.args.step_size=1"]
    )
    assert (cfg.optim.name, cfg.schedule.name) == ("adadelta", "steplr")
    with pytest.raises(ConfigError) as info:
        check_name("optim", "adadeltaa", "optim.name")
    assert "did you mean 'adadelta'?" in info.value.hint


def test_a_run_with_a_lowercase_torch_optimizer_and_scheduler_trains(tmp_path):
    from helpers.runs import last_record, run_cli

    overrides = ["optim.name=adadelta", "optim.lr=1.0", "schedule.name=steplr", "schedule.args.step_size=10"]
    result = run_cli("train", XOR_PATH, f"run.dir={tmp_path}", "trainer.epochs=2", "log.plots=false", *overrides)
    assert result.returncode == 0, result.stderr
    assert last_record(tmp_path, "test")["loss"] > 0
