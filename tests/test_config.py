"""Config parsing and validation; bad configs through the real CLI exit 2 naming the key, no traceback."""

import pytest
import yaml
from helpers.runs import REPO, XOR, run_cli, run_torchrun

from distrain.config.parse import dump_config, from_dict, load_config
from distrain.config.schema import Config
from distrain.errors import ConfigError


def test_shipped_configs_load(tmp_path):
    for name in ("xor", "xor_linear", "breast_cancer", "wine"):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert isinstance(cfg, Config)
    cfg = load_config(XOR)
    assert (
        cfg.seed,
        cfg.data.name,
        cfg.data.global_batch_size,
        cfg.trainer.epochs,
        cfg.optim.name,
        cfg.optim.lr,
        cfg.run.dir,
    ) == (42, "xor", 128, 100, "sgd", 0.1, "runs/xor")


def test_overrides_are_parsed_as_yaml():
    cfg = load_config(
        XOR,
        [
            "optim.lr=1e-3",
            "model.name=mlp",
            "model.args.hidden_sizes=[8, 8]",
            "optim.clip_grad_norm=null",
            "data.shuffle=false",
            "seed=7",
        ],
    )
    assert cfg.optim.lr == 0.001 and cfg.model.args["hidden_sizes"] == [8, 8] and cfg.optim.clip_grad_norm is None
    assert cfg.data.shuffle is False and cfg.seed == 7


def test_resolved_config_round_trips():
    cfg = load_config(XOR, ["optim.args.momentum=0.9"])
    assert from_dict(yaml.safe_load(dump_config(cfg))) == cfg


def test_typo_suggests_the_nearest_key():
    with pytest.raises(ConfigError) as info:
        load_config(XOR, ["optim.lrr=0.1"])
    assert info.value.key == "optim.lrr" and "optim.lr" in str(info.value)


BAD_OVERRIDES = [
    (["optimizer.lr=0.1"], "optimizer", "optim"),
    (["optim.lrr=0.1"], "optim.lrr", "optim.lr"),
    (["data.batch_size=64"], "data.batch_size", "did you mean 'data.global_batch_size'"),
    (["data.global_batch_size=abc"], "data.global_batch_size", "integer"),
    (["data.global_batch_size=0"], "data.global_batch_size", "> 0"),
    (["optim.lr=-1"], "optim.lr", "> 0"),
    (["data.name=xorr"], "data.name", "xor"),
    (["trainer.epochs=0"], "trainer.epochs", "> 0"),
    (["data.shuffle=maybe"], "data.shuffle", "true or false"),
    (["optim.args.momentum=-1"], "optim.args", "momentum"),
    (["model.name=mlp", "model.args={}", "model.args.hidden_sizes=[16, 0]"], "model.args.hidden_sizes", "> 0"),
    (["trainer.requeue_signal=SIGFOO"], "trainer.requeue_signal", "SIGUSR2"),
    (["dist.backend=mpi"], "dist.backend", "gloo"),
    (["data=3"], "data", "mapping"),
    (["optim.lr"], "optim.lr", "dotted.key=value"),
    (["optim.args.nesterov=true"], "optim.args", "Nesterov"),
    (["optim.args.momentun=0.9"], "optim.args.momentun", "momentum"),
    (["optim.name=adamm"], "optim.name", "adam"),
    (["data.val_fraction=1.5"], "data.val_fraction", "[0, 1)"),
    (["data.args.num_trian=5"], "data.args.num_trian", "num_train"),
    (["data.args.num_train=abc"], "data.args.num_train", "integer"),
    (["data.args.num_train=0"], "data.args.num_train", "> 0"),
    (["model.name=nosuch_pkg.models:Net"], "model.name", "cannot import module 'nosuch_pkg.models'"),
    (["model.name=torch.nn:Linearr"], "model.name", "did you mean 'Linear'"),
    (["model.name=torch.nn:Linear", "model.args={}", "model.args.widthh=3"], "model.args.widthh", "takes no argument"),
    (["model.name=torch.nn:Bilinear", "model.args={}"], "model.args.in1_features", "needs argument"),
    (["model.name=simple_clasifier"], "model.name", "simple_classifier"),
    (["model.args.num_hidden=four"], "model.args.num_hidden", "integer"),
    (["loss.name=msee"], "loss.name", "mse"),
    (["loss.name=mse", "model.args.num_outputs=2"], "model", "broadcast"),
    (["loss.name=cross_entropy", "model.args.num_outputs=1"], "model", "classes"),
    (["loss.args.reduction=sum"], "loss.args.reduction", "per-sample"),
    (["metrics.f1.name=torchmetrics.classification:BinaryF1Scor"], "metrics.f1.name", "BinaryF1Score"),
    (["metrics.loss.name=mae"], "metrics.loss", "other than 'loss'"),
    (["stop.monitor=test_loss"], "stop.monitor", "never used for model selection"),
    (["stop.patience=3"], "stop.monitor", "no val split"),
    (
        ["stop.patience=3", "stop.monitor=val_f1", "data.val_fraction=0.2"],
        "stop.monitor",
        "measures only loss, accuracy",
    ),
    (["checkpoint.keep_last=-1"], "checkpoint.keep_last", ">= 0"),
    (["checkpoint.keep_best=all"], "checkpoint.keep_best", "how many of the best checkpoints to keep"),
    (["checkpoint.keep_best=-1"], "checkpoint.keep_best", "how many of the best checkpoints to keep"),
    (["data.loader=fast"], "data.loader", "tensor"),
]


@pytest.mark.parametrize("overrides,key,words", BAD_OVERRIDES, ids=[o[0][0] for o in BAD_OVERRIDES])
def test_bad_config_exits_2_naming_the_key(overrides, key, words, tmp_path):
    result = run_cli("train", XOR, f"run.dir={tmp_path}", *overrides)
    assert result.returncode == 2, result.stderr
    assert f"'{key}'" in result.stderr and words in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any training


def test_missing_required_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data: {global_batch_size: 8}\nmodel: {name: mlp}\noptim: {name: sgd, lr: 0.1}\ntrainer: {epochs: 1}\n"
    )
    result = run_cli("train", str(path))
    assert result.returncode == 2 and "'data.name': is not set and no data was given" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text", ["data: [unclosed", "- a list\n- not a mapping\n"])
def test_unreadable_yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = run_cli("train", str(path), fresh=True)  # through `python -m distrain` itself
    assert result.returncode == 2 and str(path) in result.stderr and "Traceback" not in result.stderr


def test_a_missing_argument_is_a_usage_error():
    result = run_cli("train")
    assert result.returncode == 2 and "the following arguments are required: config" in result.stderr


def test_missing_config_file():
    result = run_cli("train", "configs/nope.yaml", fresh=True)
    assert result.returncode == 2 and "configs/nope.yaml does not exist" in result.stderr


def test_global_batch_smaller_than_the_world_is_refused(tmp_path):
    result = run_torchrun(2, "train", XOR, f"run.dir={tmp_path}", "data.global_batch_size=1")
    assert result.returncode != 0
    assert "'data.global_batch_size': 1 is smaller than the 2 processes" in result.stderr
    # Met by every rank alike: one message for the job, not one per rank.
    assert (
        sum(
            line.startswith(("distrain: error: config key 'data.global_batch_size'", "[rank"))
            for line in (result.stdout + result.stderr).splitlines()
        )
        == 1
    ), result.stderr
    # torchrun's agent prints its own ChildFailedError traceback; none may come from distrain's code.
    assert "distrain/" not in "".join(l for l in result.stderr.splitlines(True) if l.lstrip().startswith("File "))


@pytest.mark.parametrize("value,kept", [("true", 1), ("false", 0), ("3", 3)])
def test_keep_best_true_means_one(value, kept):
    cfg = load_config(XOR, [f"checkpoint.keep_best={value}"])
    assert cfg.checkpoint.keep_best == kept and type(cfg.checkpoint.keep_best) is int
    assert load_config(XOR, [f"checkpoint.keep_best={value}"]) == from_dict(yaml.safe_load(dump_config(cfg)))
