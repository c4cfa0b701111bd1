"""Several models and optimizers (a GAN: fit(model={"g": G, "d": D}, optimizer={...}, step=...) stepping
both itself): on 2 processes under torchrun, a SIGKILLed rank resumes to the uninterrupted run's weights
and optimizer states bitwise; what a dict of models needs is named."""

import pytest
import torch
from helpers.gan import models, ring, step
from helpers.runs import REPO, assert_bitwise, clean_env, newest_payload, records, run_torchrun
from torch import nn

import distrain
from distrain.errors import ArgumentError, ConfigError

CONFIG = str(REPO / "tests" / "helpers" / "gan.yaml")
SCRIPT = "tests/helpers/gan.py"


def test_a_gan_trains_in_one_process_with_both_models_in_the_checkpoint(tmp_path):
    cfg = distrain.load_config(CONFIG, [f"run.dir={tmp_path}"])
    given = models()
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in given.items()}
    adam = lambda params: torch.optim.Adam(params, lr=1e-3, betas=(0.5, 0.999))  # noqa: E731
    distrain.fit(cfg, model=given, optimizer={"g": adam, "d": adam}, train_data=ring(2048), step=step)
    payload = newest_payload(tmp_path)
    assert {k.split(".")[0] for k in payload["model"]} == {"g", "d"} and set(payload["optimizer"]) == {"g", "d"}
    for name, m in given.items():  # trained in place, both
        assert all(not torch.equal(a, b) for a, b in zip(before[name], m.parameters()))
        assert all(torch.equal(p.detach(), payload["model"][f"{name}.{k}"]) for k, p in m.state_dict().items())
    train = records(tmp_path, "train")
    assert len(train) == 2 and all(0 < r["loss"] < 5 and 0 < r["d_loss"] < 5 for r in train)
    definition = payload["definition"]["optimizer"]
    assert definition["g"]["class"].endswith("Adam") and definition["d"]["class"].endswith("Adam")


@pytest.mark.slow
def test_a_gan_on_two_processes_resumes_bitwise_after_a_sigkill(tmp_path):
    straight = run_torchrun(2, CONFIG, f"run.dir={tmp_path / 'straight'}", script=SCRIPT)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "weights agree on 2 ranks" in straight.stdout  # each model's gradients averaged over the ranks
    # rank 0 dies after step 45 (epoch 1, step 13 of 32); torchrun restarts both, resumed from step 40.
    killed = run_torchrun(
        2,
        SCRIPT,
        CONFIG,
        f"run.dir={tmp_path / 'killed'}",
        extra=("--max-restarts=1",),
        env=clean_env(KILL_RANK="0", KILL_STEP="45"),
        script="tests/helpers/kill_at_step.py",
    )
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "(exitcode: -9)" in killed.stderr
    a, b = newest_payload(tmp_path / "straight"), newest_payload(tmp_path / "killed")
    assert_bitwise(a["model"], b["model"])
    for name in ("g", "d"):
        for s, t in zip(a["optimizer"][name]["state"].values(), b["optimizer"][name]["state"].values()):
            assert all(torch.equal(s[k], t[k]) for k in s)
    timing = {"time_s", "train_time_s", "samples_per_s"}
    figures = [
        [{k: v for k, v in r.items() if k not in timing} for r in records(tmp_path / n)] for n in ("straight", "killed")
    ]
    assert figures[0] == figures[1]


@pytest.mark.parametrize(
    "kw, overrides, key",
    [
        ({}, [], "model"),  # no step
        ({"step": step, "optimizer": {"g": torch.optim.SGD}}, [], "optimizer"),  # not one per model
        ({"step": step}, ["strategy=fsdp"], "strategy"),
        ({"step": step}, ["trainer.exact=true"], "trainer.exact"),
        ({"step": step, "test_data": ring(64)}, [], "test_data"),
    ],
)
def test_what_several_models_need_is_named(tmp_path, kw, overrides, key):
    cfg = distrain.load_config(CONFIG, [f"run.dir={tmp_path}", *overrides])
    kw.setdefault("optimizer", {"g": torch.optim.SGD, "d": torch.optim.SGD})
    with pytest.raises((ArgumentError, ConfigError)) as err:
        distrain.fit(cfg, model=models(), train_data=ring(256), **kw)
    assert err.value.key == key


def test_a_dict_of_models_holds_modules(tmp_path):
    with pytest.raises(ArgumentError) as err:
        distrain.fit(distrain.load_config(CONFIG, [f"run.dir={tmp_path}"]), model={"g": nn.Linear(4, 2), "d": 3})
    assert err.value.key == "model"
