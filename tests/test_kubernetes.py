"""Kubernetes and TorchX launch contracts, emulated as their controllers set them: two "pods", each in its
own network namespace (its own address, host name and /etc/hosts, as pods have), each running its command
exactly as the shipped manifest says (launch/pytorchjob.yaml, pytorchjob_torchrun.yaml, trainjob.yaml,
jobset.yaml; TorchX's own dist.ddp component), with the variables the controller sets and its `$(VAR)`
expansion. Each ends with bitwise the weights of `torchrun --nproc_per_node=2`; a pod's process SIGKILLed
mid-run, then every pod started again (the controller's restart: PyTorchJob's restartPolicy OnFailure,
JobSet's failurePolicy), resumes from the newest checkpoint and ends bitwise equal too. The traps are refused:
exit 2, one line, nothing written.

The pods need root and network namespaces (`ip netns`); in CI (CI set) their absence fails the tests.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.runs import PYTHON, REPO, assert_bitwise, clean_env, newest_weights, records, run_cli

ARGS = ["trainer.epochs=10", "log.plots=false"]  # xor10_torchrun's, appended to each pod's command
KILL_ARGS = ["checkpoint.every_epochs=2"]  # a checkpoint every 40 steps: the kill at step 130 resumes from 120
SUBNET = "10.78.0"  # the pods' bridge (tests/slurm_cluster uses 10.77.0)
PODS = ("dtpod0", "dtpod1")


# ---------------------------------------------------------------------- the controllers, emulated


def _expand(word: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of `$(VAR)` in a container's command from the container's environment."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), word)


def _manifest(name: str) -> dict:
    return yaml.safe_load((REPO / "launch" / name).read_text())


POD_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def pytorchjob_pods(manifest: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """(host name, command, environment) of each pod, as training-operator v1's setPodEnv sets them."""
    job = _manifest(manifest)
    name, spec = job["metadata"]["name"], job["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    total = sum(r["replicas"] for r in replicas.values())
    nproc = spec.get("nprocPerNode", "auto")
    master = replicas["Master"]["template"]["spec"]["containers"][0]
    port = next(p["containerPort"] for p in master["ports"] if p["name"] == "pytorchjob-port")
    pods = []
    for rtype in ("Master", "Worker"):
        for index in range(replicas[rtype]["replicas"]):
            rank = index + (1 if rtype == "Worker" else 0)
            env = {
                **POD_ENV,
                "PYTHONUNBUFFERED": "0",
                "MASTER_ADDR": f"{name}-master-0",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(total * (int(nproc) if nproc.isdigit() else 1)),
                "RANK": str(rank),
                "PET_NPROC_PER_NODE": nproc,
                "PET_NODE_RANK": str(rank),
                "PET_NNODES": str(total),
            }
            container = replicas[rtype]["template"]["spec"]["containers"][0]
            pods.append((f"{name}-{rtype.lower()}-{index}", [_expand(w, env) for w in container["command"]], env))
    return pods


def trainjob_pods(manifest: str = "trainjob.yaml") -> list[tuple[str, list[str], dict[str, str]]]:
    """Trainer v2's torch plugin: PET_* for the bare torchrun of each node's pod (a JobSet underneath)."""
    job = _manifest(manifest)
    name, trainer = job["metadata"]["name"], job["spec"]["trainer"]
    pods = []
    for index in range(trainer["numNodes"]):
        env = {
            **POD_ENV,
            "PET_NNODES": str(trainer["numNodes"]),
            "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
            "PET_NODE_RANK": str(index),
            "PET_MASTER_ADDR": f"{name}-node-0-0.{name}",
            "PET_MASTER_PORT": "29400",
            "JOB_COMPLETION_INDEX": str(index),
            "JOBSET_NAME": name,
        }
        pods.append((f"{name}-node-0-{index}.{name}", [_expand(w, env) for w in trainer["command"]], env))
    return pods


def jobset_pods(manifest: str = "jobset.yaml") -> list[tuple[str, list[str], dict[str, str]]]:
    """JobSet's Indexed Job: JOB_COMPLETION_INDEX per pod, host names <jobset>-<job>-<index>-<pod>.<subdomain>."""
    jobset = _manifest(manifest)
    name, spec = jobset["metadata"]["name"], jobset["spec"]
    replicated = spec["replicatedJobs"][0]
    job = replicated["template"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    pods = []
    for index in range(job["parallelism"]):
        env = {
            **POD_ENV,
            "JOB_COMPLETION_INDEX": str(index),
            "JOBSET_NAME": name,
            "REPLICATED_JOB_NAME": replicated["name"],
        }
        host = f"{name}-{replicated['name']}-0-{index}.{spec['network']['subdomain']}"
        pods.append((host, [_expand(w, env) for w in container["command"]], env))
    return pods


def torchx_pods() -> list[tuple[str, list[str], dict[str, str]]]:
    """TorchX's dist.ddp (`torchx run -s kubernetes dist.ddp -j 2x1 -m distrain -- train xor ...`, as
    launch/torchx.sh runs it), each replica's command made by TorchX's own component and macros as its
    Kubernetes scheduler does: node 0 meets at TORCHX_RANK0_HOST=localhost, node 1 at node 0's host name."""
    pytest.importorskip("torchx")  # a safety net: the test extra installs torchx
    from torchx.components.dist import ddp
    from torchx.specs import macros

    app = ddp("train", "xor", "run.dir=/shared/runs/xor", m="distrain", j="2x1")
    role = app.roles[0]
    host0 = "distrain-xor-distrain-0.distrain-xor"
    pods = []
    for replica in range(role.num_replicas):
        rank0_env = "TORCHX_RANK0_HOST" if replica == 0 else f"VC_{role.name.upper()}_0_HOSTS"
        values = macros.Values(img_root="", app_id="distrain-xor", replica_id=str(replica), rank0_env=rank0_env)
        applied = values.apply(role)
        env = {**POD_ENV, **applied.env, rank0_env: "localhost" if replica == 0 else host0}
        host = host0 if replica == 0 else f"distrain-xor-distrain-{replica}.distrain-xor"
        pods.append((host, [applied.entrypoint, *applied.args], env))
    return pods


CONTRACTS = {
    "pytorchjob": lambda: pytorchjob_pods("pytorchjob.yaml"),
    "pytorchjob_torchrun": lambda: pytorchjob_pods("pytorchjob_torchrun.yaml"),
    "trainjob": trainjob_pods,
    "jobset": jobset_pods,
    "torchx": torchx_pods,
}
HEADERS = {
    "pytorchjob": "| pytorchjob | 2 process(es)",
    "pytorchjob_torchrun": "| torchrun on kubeflow | 2 process(es)",
    "trainjob": "| torchrun on kubeflow | 2 process(es)",
    "jobset": "| torchrun on jobset | 2 process(es)",
    "torchx": "| torchrun on torchx | 2 process(es)",
}


# ---------------------------------------------------------------------------- the pods, for real


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip") or not shutil.which("nsenter") or not shutil.which("unshare"):
        return "the ip, nsenter or unshare command is missing"
    if subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
        return "network namespaces are not available"
    return None


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, capture_output=True)


@pytest.fixture(scope="module")
def pods():
    """Two network namespaces on a bridge, 10.78.0.10 and 10.78.0.11: the pods' network."""
    problem = _missing()
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the pods cannot start: {problem}")
        pytest.skip(problem)
    _sh("ip", "link", "add", "dtpodbr", "type", "bridge")
    _sh("ip", "addr", "replace", f"{SUBNET}.1/24", "dev", "dtpodbr")
    _sh("ip", "link", "set", "dtpodbr", "up")
    for n, ns in enumerate(PODS):
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", f"dtpveth{n}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        _sh("ip", "link", "set", f"dtpveth{n}", "master", "dtpodbr", "up")
        _sh("ip", "-n", ns, "addr", "replace", f"{SUBNET}.1{n}/24", "dev", "eth0")
        _sh("ip", "-n", ns, "link", "set", "eth0", "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        yield
    finally:
        for ns in PODS:
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                _sh("kill", "-9", pid)
            _sh("ip", "netns", "del", ns)
        _sh("ip", "link", "del", "dtpodbr")


def run_pods(
    contract: str, tmp_path: Path, extra: list[str], timeout: float = 240
) -> list[subprocess.CompletedProcess]:
    """Start every pod of `contract` at once, each in its namespace with its host name and a hosts file
    naming the pods; the volume /shared is `tmp_path/shared`. Returns each pod's result."""
    specs = CONTRACTS[contract]()
    assert len(specs) == 2
    hosts = tmp_path / "hosts"
    names = [host for host, _, _ in specs]
    lines = ["127.0.0.1 localhost"]
    for n, host in enumerate(names):
        short = host.split(".")[0]
        aliases = {host, short}
        if contract.startswith("pytorchjob") and n == 0:
            aliases.add("distrain-xor-master-0")  # the master's service
        lines.append(f"{SUBNET}.1{n} {' '.join(sorted(aliases))}")
    hosts.write_text("\n".join(lines) + "\n")
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    procs = []
    for n, (host, command, pod_env) in enumerate(specs):
        words = [w.replace("/shared", str(shared)) for w in command] + extra
        if words[0] == "bash":  # TorchX's `bash -c "torchrun ..."`: the arguments join its one command
            words = ["bash", "-c", " ".join([words[2], *map(shlex.quote, extra)])]
        env = clean_env(**pod_env, PATH=f"{Path(PYTHON).parent}:{os.environ['PATH']}")
        env["PYTHONPATH"] = f"{REPO}:{REPO / 'tests'}"
        wrapper = f'mount --bind {hosts} /etc/hosts && hostname {host.split(".")[0]} && exec "$@"'
        cmd = [
            "nsenter",
            f"--net=/run/netns/{PODS[n]}",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            wrapper,
            "sh",
            *words,
        ]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
            raise AssertionError(f"{contract}: the pods timed out after {timeout}s") from None
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return results


def _shown(results) -> str:
    return "\n".join(f"--- pod {n} (exit {r.returncode}):\n{r.stdout[-3000:]}" for n, r in enumerate(results))


def test_pods_commands_are_the_manifests():
    """What the emulation runs is what the files say (their commands, with $(VAR) expanded)."""
    (_, master, _), (_, worker, env) = pytorchjob_pods("pytorchjob.yaml")
    assert master == worker == ["python", "-m", "distrain", "train", "xor", "run.dir=/shared/runs/xor"]
    (_, torchrun, _), _ = pytorchjob_pods("pytorchjob_torchrun.yaml")
    assert torchrun[:6] == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--node_rank=0",
        "--master_addr=distrain-xor-master-0",
        "--master_port=23456",
    ]
    _, (_, node1, _) = jobset_pods()
    assert "--node_rank=1" in node1
    assert trainjob_pods()[1][1][:3] == ["torchrun", "-m", "distrain"]


@pytest.mark.slow
@pytest.mark.xdist_group("xor10")
@pytest.mark.parametrize("contract", list(CONTRACTS))
def test_two_pods_train_as_torchrun(contract, tmp_path, pods, xor10_torchrun):
    results = run_pods(contract, tmp_path, ARGS)
    assert all(r.returncode == 0 for r in results), _shown(results)
    assert HEADERS[contract] in results[0].stdout, _shown(results)
    run_dir = tmp_path / "shared" / "runs" / "xor"
    assert_bitwise(newest_weights(run_dir), newest_weights(xor10_torchrun))


@pytest.mark.slow
@pytest.mark.xdist_group("xor10")
@pytest.mark.parametrize("contract", ["pytorchjob", "trainjob"])
def test_a_pods_process_killed_then_the_controllers_restart_resumes_bitwise(contract, tmp_path, pods, xor10_torchrun):
    marker = tmp_path / "killed"
    kill = f"callbacks=[{{name: 'helpers.kill_callback:KillOnce', args: {{step: 130, rank: 1, marker: '{marker}'}}}}]"
    first = run_pods(contract, tmp_path, [*ARGS, *KILL_ARGS, kill])
    assert marker.exists() and all(r.returncode != 0 for r in first), _shown(first)
    assert "lost rank 1" in first[0].stdout, _shown(first)  # the survivor's one line
    # The controller starts every failed pod again, with the same command and variables.
    again = run_pods(contract, tmp_path, [*ARGS, *KILL_ARGS, kill])
    assert all(r.returncode == 0 for r in again), _shown(again)
    assert "resum" in again[0].stdout.lower(), _shown(again)
    run_dir = tmp_path / "shared" / "runs" / "xor"
    assert_bitwise(newest_weights(run_dir), newest_weights(xor10_torchrun))
    assert [r["epoch"] for r in records(run_dir, "test")] == list(range(10))


# ----------------------------------------------------------------------------------- the traps


@pytest.mark.parametrize(
    "pod_env,variable",
    [
        # PyTorchJob with nprocPerNode 2 and the process started directly: RANK counts pods.
        (pytorchjob_pods("pytorchjob.yaml")[1][2] | {"PET_NPROC_PER_NODE": "2", "WORLD_SIZE": "4"}, "WORLD_SIZE"),
        # TrainJob's PET_* without torchrun.
        (trainjob_pods()[1][2], "PET_NNODES"),
    ],
)
def test_traps_exit_2_in_one_line_and_write_nothing(pod_env, variable, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli("train", "xor", f"run.dir={run_dir}", env=clean_env(**pod_env))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    # Each pod's process says it (with its rank: no launcher elects one printer here).
    assert len(lines) == 1 and re.match(rf"(\[rank \d\] )?distrain: error: environment variable {variable}:", lines[0])
    assert "torchrun" in lines[0] and not result.stdout
    assert not run_dir.exists()
