"""distrain/strategies/options.py: the ddp and fsdp sections and the rules that tie a strategy to the rest of
the config, met when the config is read (check_strategy, through distrain.config.parse.load_config): each
refusal is a ConfigError naming the key; the same settings without the strategy that refuses them load."""

import pytest

from distrain.config.parse import load_config
from distrain.errors import ConfigError

BASE = {"data": {"global_batch_size": 8}, "trainer": {"epochs": 1}}

REFUSED = [
    (["strategy=fsdp", "engine=accelerate"], "strategy", "fsdp runs on the native engine"),
    (["strategy=fsdp", "trainer.precision=fp16"], "trainer.precision", "fp16 is not supported with strategy=fsdp"),
    (["strategy=fsdp", "log.grad_norms=true"], "log.grad_norms", "is not supported with strategy=fsdp"),
    (["strategy=fsdp", "trainer.compile=true"], "trainer.compile", "is not supported with strategy=fsdp"),
    (["ddp.static_graph=true", "trainer.accumulate_steps=2"], "ddp.static_graph", "trainer.accumulate_steps > 1"),
    (["ddp.bucket_cap_mb=0"], "ddp.bucket_cap_mb", "must be > 0"),
    (["fsdp.units=[]"], "fsdp.units", "at least one module class"),
    (["fsdp.min_unit_params=0"], "fsdp.min_unit_params", "must be > 0"),
    (["fsdp.param_dtype=float16"], "fsdp.param_dtype", "did you mean"),
]


@pytest.mark.parametrize("overrides,key,words", REFUSED, ids=["+".join(o) for o, _, _ in REFUSED])
def test_a_refused_combination_names_the_key(overrides, key, words):
    with pytest.raises(ConfigError) as info:
        load_config(BASE, overrides)
    assert info.value.key == key and words in str(info.value), str(info.value)
    assert info.value.hint or key in ("ddp.bucket_cap_mb", "fsdp.units", "fsdp.min_unit_params")


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=ddp", "engine=accelerate"],
        ["strategy=ddp", "trainer.precision=fp16"],
        ["strategy=ddp", "log.grad_norms=true"],
        ["strategy=ddp", "trainer.compile=true"],
        ["ddp.static_graph=true", "trainer.accumulate_steps=1"],
        ["ddp.static_graph=false", "trainer.accumulate_steps=4"],
        ["strategy=fsdp", "trainer.precision=bf16", "fsdp.param_dtype=bfloat16"],
        ["strategy=fsdp", "trainer.accumulate_steps=4"],
    ],
    ids=lambda o: "+".join(o),
)
def test_what_only_the_other_strategy_refuses_loads(overrides):
    cfg = load_config(BASE, overrides)
    assert cfg.strategy == ("fsdp" if "strategy=fsdp" in overrides else "ddp")


def test_the_sections_keep_their_values_and_defaults():
    cfg = load_config(
        BASE, ["strategy=fsdp", "fsdp.units=[Linear, Conv2d]", "fsdp.cpu_offload=true", "ddp.bucket_cap_mb=1"]
    )
    assert cfg.fsdp.units == ["Linear", "Conv2d"] and cfg.fsdp.cpu_offload is True
    assert cfg.fsdp.min_unit_params == 1_000_000 and cfg.fsdp.reshard_after_forward is True
    assert cfg.ddp.bucket_cap_mb == 1.0 and isinstance(cfg.ddp.bucket_cap_mb, float)
    assert cfg.ddp.gradient_as_bucket_view is True and cfg.ddp.static_graph is False
