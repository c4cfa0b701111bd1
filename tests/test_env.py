"""Environment detection from patched environment dicts: no processes."""

import pytest

from distrain.errors import EnvError
from distrain.launch.env import DistEnv, detect, expand_nodelist, parse_tasks_per_node

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "abc",
}
SRUN = {
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_NODEID": "2",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_ID": "123456",
    "SLURM_JOB_NODELIST": "gpu[01-04,07]",
    "SLURM_STEP_NODELIST": "gpu[01-04,07]",
    "SLURM_TASKS_PER_NODE": "2(x4)",
}


def test_nothing_is_one_process():
    env = detect({})
    assert env == DistEnv(source="single")
    assert not env.is_distributed


def test_torchrun():
    env = detect(TORCHRUN)
    assert (env.source, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (
        "torchrun",
        3,
        1,
        4,
        2,
        1,
    )
    assert (env.master_addr, env.master_port, env.restart_count, env.uses_agent_store) == ("node0", 29500, 0, False)
    restarted = detect({**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "2", "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert (restarted.restart_count, restarted.uses_agent_store) == (2, True)


def test_srun_with_bracketed_node_list():
    env = detect(SRUN)
    assert (env.source, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (
        "slurm",
        5,
        1,
        8,
        2,
        2,
    )
    assert env.master_addr == "gpu01"
    assert env.master_port == 15000 + 123456 % 20000


def test_srun_master_port_and_addr_can_be_set():
    env = detect({**SRUN, "MASTER_PORT": "40000", "MASTER_ADDR": "10.0.0.9"})
    assert (env.master_addr, env.master_port) == ("10.0.0.9", 40000)


def test_srun_step_node_list_wins_over_the_job_list():
    env = detect(
        {
            **SRUN,
            "SLURM_JOB_NODELIST": "gpu[01-08]",
            "SLURM_STEP_NODELIST": "gpu[05-08]",
            "SLURM_TASKS_PER_NODE": "2(x4)",
        }
    )
    assert env.master_addr == "gpu05"


def test_torchrun_inside_slurm_counts_as_torchrun():
    env = detect({**SRUN, **TORCHRUN})
    assert env.source == "torchrun" and env.rank == 3


def test_sbatch_shell_without_srun_is_one_process():
    # The batch script has SLURM_PROCID=0 and SLURM_NTASKS but no step: nobody else was started.
    batch = {k: v for k, v in SRUN.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NODELIST")}
    assert detect({**batch, "SLURM_PROCID": "0"}).source == "single"


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("vm", ["vm"]),
        ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
        ("gpu[01-02],cpu3", ["gpu01", "gpu02", "cpu3"]),
        ("node[8-11]", ["node8", "node9", "node10", "node11"]),
        ("a[1-2]-b[1-2]", ["a1-b1", "a1-b2", "a2-b1", "a2-b2"]),
        ("x[009-011]y", ["x009y", "x010y", "x011y"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_tasks_per_node():
    assert parse_tasks_per_node("2(x3),1") == [2, 2, 2, 1]


@pytest.mark.parametrize(
    "environ,variable",
    [
        ({**TORCHRUN, "RANK": "4"}, "RANK"),  # rank outside world
        ({**TORCHRUN, "RANK": "x"}, "RANK"),  # not an integer
        ({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_RANK"),  # outside local world
        ({k: v for k, v in TORCHRUN.items() if k != "WORLD_SIZE"}, "WORLD_SIZE"),
        ({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "MASTER_ADDR"),
        ({**TORCHRUN, "LOCAL_WORLD_SIZE": "5"}, "LOCAL_WORLD_SIZE"),
        ({**SRUN, "SLURM_PROCID": "8"}, "SLURM_PROCID"),
        ({**SRUN, "SLURM_JOB_NODELIST": "gpu[01-", "SLURM_STEP_NODELIST": "gpu[01-"}, "SLURM_STEP_NODELIST"),
        ({**SRUN, "SLURM_TASKS_PER_NODE": "two"}, "SLURM_TASKS_PER_NODE"),
        ({**SRUN, "SLURM_NODEID": "9"}, "SLURM_NODEID"),
    ],
)
def test_inconsistent_variables_are_named(environ, variable):
    with pytest.raises(EnvError) as info:
        detect(environ)
    assert info.value.variable == variable
    assert variable in str(info.value)


def test_slurm_nodelist_is_the_fallback():
    lists = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "MASTER_ADDR")
    env = detect({**{k: v for k, v in SRUN.items() if k not in lists}, "SLURM_NODELIST": "old[3-4]"})
    assert env.master_addr == "old3"


def _random_hostlist(rng) -> str:
    """A list SLURM itself accepts: items of 0-4 bracket groups (ranges, padding, single numbers) with
    literals between them, joined by commas or whitespace."""
    items = []
    for _ in range(rng.randint(1, 3)):
        groups = rng.randint(0, 4)
        name = rng.choice(["n", "gpu", "rack", "a-b", "x"])
        for g in range(groups):
            width = rng.choice([1, 2, 3])
            parts = []
            for _ in range(rng.randint(1, 2)):
                lo = rng.randint(0, 12)
                hi = lo + rng.randint(0, 2)
                parts.append(str(lo).zfill(width) if lo == hi else f"{str(lo).zfill(width)}-{str(hi).zfill(width)}")
            name += f"[{','.join(parts)}]" + (rng.choice(["s", "-n", ""]) if g < groups - 1 else "")
        items.append(name)
    return "".join(item + rng.choice([",", " ", "\t", ", "]) for item in items).rstrip(", \t")


def test_node_lists_expand_as_scontrol_show_hostnames(tmp_path):
    import random
    import shutil
    import subprocess

    if not shutil.which("scontrol"):
        pytest.skip("scontrol is not installed (tests/run.sh installs SLURM)")
    # scontrol show hostnames needs a config file but no controller.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost\nNodeName=localhost\nPartitionName=p Nodes=ALL\n")
    rng = random.Random(0)
    lists = ["alpha beta gamma", "a[1-2]b[1-2]c[1-2]", "a[1-2]b[1-3]c[1-2]d[1-2]", "a[3,1-2]", " a1 ,, b2 "]
    lists += [_random_hostlist(rng) for _ in range(60)]
    checked = 0
    for hostlist in lists:
        r = subprocess.run(
            ["scontrol", "show", "hostnames", hostlist],
            capture_output=True,
            text=True,
            env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"},
        )
        if r.returncode or "Invalid" in r.stdout + r.stderr:
            continue  # e.g. a literal after the last group, which this SLURM refuses; distrain is lenient
        assert expand_nodelist(hostlist) == r.stdout.split(), hostlist
        checked += 1
    assert checked >= 40


# ------------------------------------------------------------------ Kubernetes, TorchX, Ray Train

# What each controller sets in its pod (launch/*.yaml), as docs/pages/launching.md lists it.
POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "PYTHONUNBUFFERED": "0"}
PYTORCHJOB = {  # training-operator v1, the worker pod of a Master + 1 Worker job, nprocPerNode "1"
    **POD,
    "MASTER_ADDR": "distrain-xor-master-0",
    "MASTER_PORT": "23456",
    "WORLD_SIZE": "2",
    "RANK": "1",
    "PET_NNODES": "2",
    "PET_NODE_RANK": "1",
    "PET_NPROC_PER_NODE": "1",
}
TRAINJOB = {  # Trainer v2's torch plugin, node 1 of 2
    **POD,
    "PET_NNODES": "2",
    "PET_NPROC_PER_NODE": "1",
    "PET_NODE_RANK": "1",
    "PET_MASTER_ADDR": "distrain-xor-node-0-0.distrain-xor",
    "PET_MASTER_PORT": "29400",
}
RAY = {  # a Ray Train worker (ray 2.60), rank 1 of 2 on one node
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_WORLD_SIZE": "2",
    "NODE_RANK": "0",
    "MASTER_ADDR": "192.0.2.2",
    "MASTER_PORT": "54359",
    "RAY_RAYLET_PID": "8754",
    "RAY_JOB_ID": "01000000",
}
WORKER_OF_TORCHRUN = {  # what torchrun adds for its worker (rank 1 of 2, one per node)
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "1",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "distrain-xor-node-0-0.distrain-xor",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "none",
}


def test_pytorchjob_one_process_per_pod():
    env = detect(PYTORCHJOB)
    assert (env.source, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (
        "pytorchjob",
        1,
        0,
        2,
        1,
        1,
    )
    assert (env.master_addr, env.master_port, env.launcher) == ("distrain-xor-master-0", 23456, "pytorchjob")
    older = {k: v for k, v in PYTORCHJOB.items() if not k.startswith("PET_")}  # operators before nprocPerNode
    assert detect(older).source == "pytorchjob"
    auto = {**PYTORCHJOB, "PET_NPROC_PER_NODE": "auto"}  # the operator's default: WORLD_SIZE counts pods
    assert detect(auto).world_size == 2


@pytest.mark.parametrize(
    "extra,platform",
    [
        (TRAINJOB, "kubeflow"),  # TrainJob's bare torchrun, and torchrun inside a PyTorchJob pod
        ({**POD, "JOBSET_NAME": "distrain-xor", "JOB_COMPLETION_INDEX": "1"}, "jobset"),
        ({"TORCHX_RANK0_HOST": "localhost", "TORCHX_JOB_ID": "local_cwd://torchx/x"}, "torchx"),
        ({**PYTORCHJOB, "PET_NPROC_PER_NODE": "2", "WORLD_SIZE": "4"}, "kubeflow"),  # torchrun overrides the pod's
    ],
)
def test_torchrun_inside_a_pod_or_torchx_is_torchrun(extra, platform):
    env = detect({**extra, **WORKER_OF_TORCHRUN})
    assert (env.source, env.rank, env.world_size, env.node_rank, env.platform) == ("torchrun", 1, 2, 1, platform)
    assert env.launcher == f"torchrun on {platform}"


def test_ray_train_worker():
    env = detect(RAY)
    assert (env.source, env.rank, env.local_rank, env.world_size, env.local_world_size, env.node_rank) == (
        "ray",
        1,
        1,
        2,
        2,
        0,
    )


def test_one_node_of_one_process_under_pet_is_one_process():
    assert detect({**TRAINJOB, "PET_NNODES": "1", "PET_NODE_RANK": "0"}) == DistEnv(source="single")


@pytest.mark.parametrize(
    "environ,variable,says",
    [
        # PyTorchJob v1 with nprocPerNode 2, run without torchrun: RANK counts pods, WORLD_SIZE pods x 2.
        (
            {**PYTORCHJOB, "PET_NPROC_PER_NODE": "2", "WORLD_SIZE": "4"},
            "WORLD_SIZE",
            "use torchrun inside the pod: torchrun --nnodes=$PET_NNODES --nproc_per_node=$PET_NPROC_PER_NODE",
        ),
        # An older operator (WORLD_SIZE = pods), processes started by hand with LOCAL_WORLD_SIZE=2.
        (
            {**{k: v for k, v in PYTORCHJOB.items() if not k.startswith("PET_")}, "LOCAL_WORLD_SIZE": "2"},
            "WORLD_SIZE",
            "--nnodes=$WORLD_SIZE",
        ),
        # TrainJob's PET_* without torchrun: each pod would train alone.
        (TRAINJOB, "PET_NNODES", "start it with torchrun -m distrain train CONFIG"),
        # PyTorchJob's elastic form without torchrun.
        (
            {**POD, "PET_RDZV_ENDPOINT": "distrain-xor-master-0:23456", "PET_NNODES": "1:3"},
            "PET_NNODES",
            "torchrun reads PET_RDZV_ENDPOINT",
        ),
        # WORLD_SIZE that PET_NNODES contradicts, one process per pod.
        ({**PYTORCHJOB, "WORLD_SIZE": "4"}, "PET_NNODES", "nprocPerNode"),
        # torchrun --standalone inside a pod of a 2-node job: a group of one node, each pod alone.
        (
            {
                **TRAINJOB,
                **WORKER_OF_TORCHRUN,
                "RANK": "0",
                "GROUP_RANK": "0",
                "GROUP_WORLD_SIZE": "1",
                "WORLD_SIZE": "1",
            },
            "PET_NNODES",
            "drop them (torchrun reads PET_NNODES itself)",
        ),
        # Ray without the variables Ray sets.
        ({k: v for k, v in RAY.items() if k != "LOCAL_WORLD_SIZE"}, "LOCAL_WORLD_SIZE", "TorchTrainer"),
    ],
)
def test_launch_traps_are_refused_in_one_line_naming_the_variable(environ, variable, says):
    with pytest.raises(EnvError) as info:
        detect(environ)
    assert info.value.variable == variable
    text = str(info.value)
    assert text.startswith(f"environment variable {variable}:") and says in text
    if variable != "LOCAL_WORLD_SIZE":  # the traps proper: one line, the fix in it
        assert "\n" not in text, text


def test_rank_and_world_size_without_local_rank_outside_a_pod_is_still_refused():
    with pytest.raises(EnvError) as info:
        detect({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    assert info.value.variable == "LOCAL_RANK"
