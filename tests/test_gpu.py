"""The CUDA paths, on a real GPU: NCCL, one device per local rank, bf16 and fp16 (the scaler's state
checkpointed and resumed), pinned memory with non-blocking copies, channels_last and compile on CUDA,
SIGKILL resume on CUDA, peak memory in metrics.jsonl. Skipped, with the reason, where CUDA is missing
(the development and CI machines have no GPU); run there with `pytest -m gpu`.
"""

import pytest
import torch
from helpers.runs import XOR, clean_env, last_record, newest_payload, newest_weights, run_cli, run_torchrun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
]

QUIET = ["wandb.mode=disabled", "log.plots=false"]


def test_nccl_world_size_1_trains_xor_like_the_cpu(tmp_path):
    args = ["train", XOR, "trainer.epochs=30", *QUIET]
    cpu = run_cli(*args, f"run.dir={tmp_path / 'cpu'}", "trainer.device=cpu")
    gpu = run_torchrun(1, *args, f"run.dir={tmp_path / 'gpu'}", "trainer.device=cuda")
    assert cpu.returncode == 0 and gpu.returncode == 0, gpu.stderr[-3000:]
    assert "backend nccl" in gpu.stdout and "device cuda:0" in gpu.stdout
    a, b = newest_weights(tmp_path / "cpu"), newest_weights(tmp_path / "gpu")
    for key in a:  # different kernels (cuBLAS vs CPU BLAS): float32 rounding, which grows with training
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-4)
    gpu_accuracy, cpu_accuracy = (last_record(tmp_path / run, "test")["accuracy"] for run in ("gpu", "cpu"))
    assert gpu_accuracy == pytest.approx(cpu_accuracy, abs=0.01)
    assert last_record(tmp_path / "gpu", "train")["peak_cuda_mem_gb"] > 0


def test_mnist_cnn_on_cuda_matches_cpu(tmp_path):
    args = [
        "train",
        "bench/configs/cnn.yaml",
        "data.args.num_train=512",
        "data.args.num_test=128",
        "trainer.epochs=1",
        "checkpoint.every_epochs=1",
        *QUIET,
    ]
    cpu = run_cli(*args, f"run.dir={tmp_path / 'cpu'}", "trainer.device=cpu")
    gpu = run_torchrun(1, *args, f"run.dir={tmp_path / 'gpu'}", "trainer.device=cuda")
    assert cpu.returncode == 0 and gpu.returncode == 0, gpu.stderr[-3000:]
    a, b = newest_weights(tmp_path / "cpu"), newest_weights(tmp_path / "gpu")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda_resumes_bitwise(tmp_path, precision):
    """An interrupted run (SIGTERM at a step, saved, rerun) ends bitwise equal to an uninterrupted one;
    under fp16 the gradient scaler's state is in the checkpoint."""
    args = [
        "train",
        XOR,
        "trainer.epochs=6",
        "checkpoint.every_steps=25",
        f"trainer.precision={precision}",
        "trainer.device=cuda",
        *QUIET,
    ]
    full = run_cli(*args, f"run.dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]
    env = clean_env(KILL_STEP="50", KILL_RANK="0")
    killed = run_torchrun(
        1,
        *args,
        f"run.dir={tmp_path / 'killed'}",
        extra=("--max-restarts=1",),
        env=env,
        script="tests/helpers/kill_at_step.py",
    )
    assert killed.returncode == 0 and "resumed from" in killed.stdout, killed.stderr[-3000:]
    a, b = newest_weights(tmp_path / "full"), newest_weights(tmp_path / "killed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    payload = newest_payload(tmp_path / "killed")
    assert (payload["scaler"] is not None) == (precision == "fp16")


def test_dataloader_batches_are_pinned_and_copied_without_blocking():
    from torch.utils.data import Dataset

    from distrain.data import build_train_batches
    from distrain.data.batches import BatchSetup

    class Plain(Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return torch.full((3,), float(i)), i % 2

    setup = BatchSetup(rank=0, world_size=1, device=torch.device("cuda", 0), seed=0, loader="dataloader")
    batches = build_train_batches(Plain(), setup, global_batch_size=16, shuffle=True)
    assert batches._loader.pin_memory
    batches.set_epoch(0)
    first = next(iter(batches))
    assert first.inputs.is_cuda and first.targets.is_cuda
    collated = next(iter(batches._loader))
    assert collated[0].is_pinned()  # host tensors pinned: the .to(device, non_blocking=True) is asynchronous


def test_channels_last_and_compile_on_cuda(tmp_path):
    args = [
        "train",
        "bench/configs/cnn.yaml",
        "data.args.num_train=256",
        "data.args.num_test=64",
        "trainer.epochs=1",
        "checkpoint.every_epochs=1",
        "trainer.device=cuda",
        *QUIET,
    ]
    eager = run_cli(*args, f"run.dir={tmp_path / 'eager'}")
    tuned = run_cli(*args, f"run.dir={tmp_path / 'tuned'}", "trainer.channels_last=true", "trainer.compile=true")
    assert eager.returncode == 0 and tuned.returncode == 0, tuned.stderr[-3000:]
    a, b = newest_weights(tmp_path / "eager"), newest_weights(tmp_path / "tuned")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-3)


def test_user_script_on_cuda(tmp_path):
    result = run_torchrun(
        1,
        "examples/xor.yaml",
        f"run.dir={tmp_path}",
        "trainer.epochs=5",
        "trainer.device=cuda",
        script="examples/xor_tutorial.py",
    )
    assert result.returncode == 0 and "device cuda:0" in result.stdout, result.stderr[-3000:]
    assert torch.load(tmp_path / "model.pt")["linear1.weight"].is_cuda  # the user's model, trained in place on the GPU


def test_fsdp_with_nccl_and_bf16_parameters_trains_and_resumes_on_the_cpu(tmp_path):
    """strategy=fsdp on CUDA: NCCL at world size 1 (torchrun: FSDP2 over a one-device mesh), bf16 gathered
    parameters; its sharded checkpoint resumes on the CPU (gloo, 2 processes) and is exported."""
    args = [
        "train",
        XOR,
        "strategy=fsdp",
        "fsdp.units=[Linear]",
        "model.name=mlp",
        "model.args={hidden_sizes: [16, 16], activation: tanh}",
        "data.global_batch_size=120",
        "trainer.epochs=4",
        "checkpoint.every_epochs=2",
        "checkpoint.keep_last=0",
        *QUIET,
    ]
    gpu = run_torchrun(1, *args, f"run.dir={tmp_path / 'gpu'}", "trainer.device=cuda", "fsdp.param_dtype=bfloat16")
    assert gpu.returncode == 0, gpu.stderr[-3000:]
    assert "backend nccl" in gpu.stdout
    assert last_record(tmp_path / "gpu", "test")["samples"] == 500
    # The epoch-2 shards, resumed on 2 CPU processes (the other strategy's device and backend).
    run = tmp_path / "cpu"
    (run / "checkpoints").mkdir(parents=True)
    import shutil

    for item in (tmp_path / "gpu" / "checkpoints").glob("step-00000042*"):
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, run / "checkpoints" / item.name)
    cpu = run_torchrun(2, *args, f"run.dir={run}", "trainer.device=cpu", "fsdp.param_dtype=bfloat16")
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    assert "resumed from" in cpu.stdout
    exported = run_cli("export", str(tmp_path / "gpu"), "--out", str(tmp_path / "model.pt"))
    assert exported.returncode == 0, exported.stderr
    assert all(t.device.type == "cpu" for t in torch.load(tmp_path / "model.pt", weights_only=True).values())
