"""distrain/config/parse.py, without the CLI: dotted overrides into the nested dict (values read as YAML),
a config from a dict or a file, and back to YAML. The end-to-end config errors (through `distrain train`)
are in test_config.py."""

import pytest
import yaml

from distrain.config.parse import apply_overrides, dump_config, from_dict, load_config
from distrain.config.schema import Config
from distrain.errors import ConfigError

BASE = {"data": {"global_batch_size": 8}, "trainer": {"epochs": 1}}


def overridden(raw, *overrides):
    apply_overrides(raw, list(overrides))
    return raw


@pytest.mark.parametrize(
    "text,value",
    [
        ("0.05", 0.05),
        ("3", 3),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[8, 8]", [8, 8]),
        ("{num_classes: 3, average: macro}", {"num_classes": 3, "average": "macro"}),
        ("tanh", "tanh"),
        ("'32'", "32"),
        ("1e-3", "1e-3"),  # YAML 1.1 reads 1e-3 (no dot) as a string: the schema's float takes it
        ("", ""),
        ("a=b", "a=b"),  # the value is everything after the first '='
        ("[unclosed", "[unclosed"),  # not YAML: kept as the text
    ],
)
def test_values_are_read_as_yaml(text, value):
    assert overridden({}, f"section.key={text}") == {"section": {"key": value}}


def test_overrides_set_nested_keys_and_keep_the_rest():
    raw = {"optim": {"name": "sgd", "lr": 0.1}, "seed": 1}
    overridden(raw, "optim.lr=0.5", "optim.args.momentum=0.9", "trainer.epochs=2", " seed = 7")
    assert raw == {"optim": {"name": "sgd", "lr": 0.5, "args": {"momentum": 0.9}}, "seed": 7, "trainer": {"epochs": 2}}


def test_a_later_override_wins_and_a_mapping_replaces_a_section():
    assert overridden({}, "a.b=1", "a.b=2") == {"a": {"b": 2}}
    assert overridden({"model": {"args": {"num_hidden": 4}}}, "model.args={}", "model.args.width=3") == {
        "model": {"args": {"width": 3}}
    }


def test_a_sub_key_of_a_value_is_refused_naming_the_value():
    with pytest.raises(ConfigError) as info:
        overridden({"optim": {"lr": 0.1}}, "optim.lr.max=1")
    assert info.value.key == "optim.lr" and "is a value, not a section" in str(info.value)
    with pytest.raises(ConfigError) as info:
        overridden({"seed": 1}, "seed.x.y=1")
    assert info.value.key == "seed"


@pytest.mark.parametrize("item", ["optim.lr", "=3", " =3"])
def test_an_override_without_key_and_value_is_refused(item):
    with pytest.raises(ConfigError) as info:
        overridden({}, item)
    assert info.value.key == item and "dotted.key=value" in str(info.value)


def test_load_config_from_a_dict_applies_overrides_to_a_copy():
    raw = {"data": {"global_batch_size": 8, "name": "xor"}, "trainer": {"epochs": 1}, "optim": {"lr": 0.1}}
    cfg = load_config(
        raw,
        [
            "optim.lr=1e-3",
            "model.name=mlp",
            "model.args.hidden_sizes=[8, 8]",
            "optim.clip_grad_norm=null",
            "trainer.precision=32",
        ],
    )
    assert isinstance(cfg, Config) and cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.model.args == {"hidden_sizes": [8, 8]} and cfg.optim.clip_grad_norm is None
    assert cfg.trainer.precision == "32"  # YAML's int 32, the Literal's "32"
    assert raw == {"data": {"global_batch_size": 8, "name": "xor"}, "trainer": {"epochs": 1}, "optim": {"lr": 0.1}}


def test_defaults_fill_what_the_config_does_not_set():
    cfg = from_dict(BASE)
    assert (cfg.strategy, cfg.engine, cfg.seed, cfg.run.dir, cfg.loss.name, cfg.optim) == (
        "ddp",
        "native",
        0,
        None,  # run.dir: runs/<script name>, resolved when the run starts
        "auto",
        None,
    )
    assert cfg.trainer.epochs == 1 and cfg.trainer.accumulate_steps == 1 and cfg.data.global_batch_size == 8


@pytest.mark.parametrize(
    "raw,key,words",
    [
        ({"trainer": {"epochs": 1}}, "data", "required key is missing"),
        ({"data": {}, "trainer": {"epochs": 1}}, "data.global_batch_size", "required key is missing"),
        (dict(BASE, optimizer={"lr": 0.1}), "optimizer", "did you mean 'optim'?"),
        (dict(BASE, zzz=1), "zzz", "valid keys here: data, trainer, model, optim"),
        (dict(BASE, data={"batch_size": 8}), "data.batch_size", "did you mean 'data.global_batch_size'?"),
        (dict(BASE, trainer={"max_epochs": 3}), "trainer.max_epochs", "did you mean 'trainer.epochs'?"),
        (dict(BASE, trainer={"epoch": 3}), "trainer.epoch", "did you mean 'trainer.epochs'?"),
        (dict(BASE, data=3), "data", "must be a mapping of keys, got 3"),
    ],
)
def test_from_dict_names_the_dotted_key(raw, key, words):
    with pytest.raises(ConfigError) as info:
        from_dict(raw)
    assert info.value.key == key and words in str(info.value), str(info.value)


def test_the_dumped_config_loads_back_to_the_same_config():
    cfg = load_config(
        BASE,
        [
            "optim.lr=0.05",
            "optim.args.momentum=0.9",
            "model.name=mlp",
            "model.args.hidden_sizes=[4]",
            "strategy=fsdp",
            "fsdp.units=[Linear]",
            "checkpoint.every_steps=7",
            "seed=3",
        ],
    )
    text = dump_config(cfg)
    assert yaml.safe_load(text)["optim"]["args"] == {"momentum": 0.9}
    assert load_config(yaml.safe_load(text)) == cfg


def test_load_config_reads_a_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = load_config(path, ["trainer.epochs=3"])
    assert cfg.trainer.epochs == 3 and cfg.data.global_batch_size == 8
    assert load_config(str(path)) == from_dict(BASE)


@pytest.mark.parametrize(
    "text,words",
    [
        (None, "does not exist or is not a file"),
        ("data: [unclosed", "not valid YAML"),
        ("- a list\n", "must hold a mapping of keys, not list"),
    ],
)
def test_an_unreadable_file_is_a_config_error(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "<config file>" and str(path) in str(info.value) and words in str(info.value)


def test_an_empty_file_is_an_empty_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "data" and "required key is missing" in str(info.value)
    cfg = load_config(path, ["data.global_batch_size=4", "trainer.epochs=2"])
    assert (cfg.data.global_batch_size, cfg.trainer.epochs) == (4, 2)


@pytest.mark.parametrize(
    "program,run_dir",
    [
        ("examples/xor_tutorial.py", "runs/xor_tutorial"),  # python examples/xor_tutorial.py CONFIG
        ("/abs/configs/mnist_cnn.yaml", "runs/mnist_cnn"),  # the distrain command passes its config
        ("/venv/lib/python3/site-packages/ipykernel_launcher.py", "runs/notebook"),
        ("-c", "runs/python"),
        ("", "runs/python"),
    ],
)
def test_an_unset_run_dir_is_the_scripts_own(program, run_dir):
    from distrain.config.schema import default_run_dir

    assert default_run_dir(program) == run_dir
