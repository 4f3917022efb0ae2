"""`snakemake --profile slurm` through a real single-node SLURM cluster (started by the test).

Under CI (`CI=true`, where .ci/run installs slurmctld, slurmd and munge) a cluster that cannot
start fails the test with the reason; elsewhere the test is skipped with the reason.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fashionblip2.cluster import run_key
from tests.conftest import python_first_env, require_service, snakemake
from tests.support.slurm_cluster import SlurmCluster, missing_requirements

TARGET = "results/tables/table1.md"
# The dataset half before the backbone (FACap's rows carry the backbone's triplet scores).
BEFORE_BACKBONE = "data/leakage/leakage.json data/annotation/modifications.parquet"
BACKBONE = "models/backbone"
# Outputs whose bytes must not depend on the executor (reports carry times, so they are left out).
COMPARED = [
    "data/manifest/images.parquet",
    "data/embeddings/images.npz",
    "data/pairs/pairs.parquet",
    "data/annotation/captions.parquet",
    "data/annotation/modifications.parquet",
    "data/facap/cir_triplets",
    "results/tables/table1.csv",
]
# Jobs that SLURM runs for BEFORE_BACKBONE; the gather steps and Table 1 are local rules (seconds of
# work each), and so is `modification` here, whose backend is an API (a loopback server): API jobs
# run where the internet is. After the backbone, Table 1 submits the scores, FACap and its filter.
SUBMITTED = ["synthetic_world", "manifest", "embed", "gather_embeddings", "embed_heldout", "pair", "leakage", "caption"]
AFTER_BACKBONE = ["triplet_scores", "facap", "facap_filtered"]
# Rules the tiny preset gives a GPU: they go to the GPU partition and ask for one.
GPU_RULES = {"embed", "embed_heldout", "pretrain", "triplet_scores"}


def started_cluster(root: Path, gpus: int = 2) -> SlurmCluster:
    require_service(missing_requirements())
    cluster = SlurmCluster(root, gpus=gpus)
    try:
        cluster.start()
    except Exception as error:  # noqa: BLE001 - the reason is the message
        cluster.stop()
        require_service(f"a SLURM cluster could not start here: {error}")
    return cluster


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    cluster = started_cluster(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


@pytest.fixture
def cpu_only_cluster(tmp_path_factory):
    """The same single-node cluster with no GPU at all (no gres)."""
    cluster = started_cluster(tmp_path_factory.mktemp("slurm"), gpus=0)
    yield cluster
    cluster.stop()


def profile_args(target: str, *configfiles: str) -> list[str]:
    """`snakemake --profile slurm <target>` on the tiny preset, polling every second (targets
    separated by spaces)."""
    return [
        sys.executable, "-m", "snakemake", "--profile", "slurm", *target.split(),
        "--configfile", "config/presets/test.yaml", *configfiles,
        # Without SLURM accounting, job states come from squeue (finished jobs stay MinJobAge = 600 s).
        "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "1", "--slurm-no-account", "--latency-wait", "5",
    ]  # fmt: skip


def run_profile(cluster: SlurmCluster, workdir: Path, target: str, *configfiles: str) -> subprocess.CompletedProcess:
    """`snakemake --profile slurm <target>` on the tiny preset, with the test cluster's environment."""
    # Jobs inherit this environment: the project's python first on PATH, and the cluster's config.
    env = python_first_env(cluster.env, cluster.bin)
    # The SLURM executor can wait forever on a broken cluster: a hard limit keeps CI moving.
    return subprocess.run(
        ["timeout", "-k", "10", "480", *profile_args(target, *configfiles)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )


def kill_during_training(cluster: SlurmCluster, workdir: Path, *configfiles: str) -> None:
    """Start `--profile slurm models/backbone` and SIGKILL Snakemake (by its PID) once the pretrain
    job holds its checkpoint folder: the job goes on running in SLURM, as after a lost SSH session."""
    env = python_first_env(cluster.env, cluster.bin)
    log = (workdir / "killed_run.log").open("w")
    proc = subprocess.Popen(profile_args(BACKBONE, *configfiles), cwd=workdir, env=env, stdout=log, stderr=log)
    lock = workdir / "checkpoints/backbone/holder.json"
    deadline = time.monotonic() + 300
    try:
        while not lock.exists():
            assert proc.poll() is None, (workdir / "killed_run.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "pretrain never started"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def submitted_jobs(cluster: SlurmCluster) -> list[dict[str, str]]:
    """SLURM's own records of the jobs it was given (Snakemake puts the rule in the job's comment)."""
    env = python_first_env(cluster.env, cluster.bin)
    shown = subprocess.run(["scontrol", "-o", "show", "job"], env=env, capture_output=True, text=True, check=True)
    jobs = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in shown.stdout.splitlines()]
    return [j for j in jobs if j]  # "No jobs in the system" is no job


def digest(root: Path, relative: str) -> dict[str, str]:
    path = root / relative
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def copy_workflow(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("data", "results", "logs", ".snakemake"))
    return dest


@pytest.mark.e2e
def test_profile_slurm_runs_the_jobs_through_sbatch_with_the_local_outputs(
    slurm_cluster, workflow_copy, tmp_path, server_factory
):
    """The dataset half through sbatch, then pretraining killed mid-run (Snakemake SIGKILLed, its job
    left in SLURM) and rerun at once: the rerun cancels the leftover job before it submits its own,
    the two never overlap; then Table 1 (the scores, FACap); every output, metrics.jsonl included, is
    the local run's."""
    api = {"backend": "openai", "model": "test-llm", "base_url": server_factory().base_url, "concurrency": 4}
    overlay = {
        "cluster": {"partition": "cpu", "gpu_partition": "gpu"},
        "annotation": {"modification": api},
        # About 30 s of pretraining (20 steps/s here), with checkpoints to resume from: still running
        # when the rerun looks (a leftover that finished first has its output adopted, README).
        "training": {"pretrain": {"steps": 600, "checkpoint_every": 50}},
    }
    (workflow_copy / "cluster.yaml").write_text(yaml.safe_dump(overlay))
    on_slurm = copy_workflow(workflow_copy, tmp_path / "on_slurm")
    proc = run_profile(slurm_cluster, on_slurm, BEFORE_BACKBONE, "cluster.yaml")
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{slurm_cluster.logs_tail()}"

    # SLURM's own records: the jobs it ran.
    jobs = submitted_jobs(slurm_cluster)
    shown = "\n".join(map(str, jobs))
    rule_of = {j["JobId"]: j["Comment"].removeprefix("rule_").split("_wildcards_")[0] for j in jobs}
    assert sorted(set(rule_of.values())) == sorted(SUBMITTED), shown
    assert all(j["JobState"] == "COMPLETED" for j in jobs), shown
    completed = slurm_cluster.completed_jobs()  # the job-completion log, written by slurmctld
    assert {r["JobId"] for r in completed} == set(rule_of) and {r["JobState"] for r in completed} == {"COMPLETED"}
    for job in jobs:
        gpu_rule = rule_of[job["JobId"]] in GPU_RULES
        assert job["Partition"] == ("gpu" if gpu_rule else "cpu"), job
        assert ("gpu:1" in job.get("TresPerJob", "")) == gpu_rule, job
    assert sorted((on_slurm / "logs/slurm").rglob("*.log")), "SLURM job logs go to logs/slurm"
    # Every job carries the folder's run key in its name.
    assert all(j["JobName"].startswith(f"{run_key(on_slurm)}_") for j in jobs), shown
    logs = "".join(p.read_text() for p in (on_slurm / "logs/slurm").rglob("*.log"))
    assert "never awaited" not in logs

    # Killed during pretraining, unlocked, rerun at once.
    kill_during_training(slurm_cluster, on_slurm, "cluster.yaml")
    unlock = python_first_env(slurm_cluster.env, slurm_cluster.bin)
    subprocess.run([*profile_args(BACKBONE, "cluster.yaml"), "--unlock"], cwd=on_slurm, env=unlock, check=True)
    rerun = run_profile(slurm_cluster, on_slurm, BACKBONE, "cluster.yaml")
    assert rerun.returncode == 0, f"{rerun.stdout[-3000:]}\n{rerun.stderr[-6000:]}\n{slurm_cluster.logs_tail()}"
    assert "Cancelling the live SLURM jobs an earlier run in this folder left" in rerun.stderr
    pretrain = sorted(
        (j for j in submitted_jobs(slurm_cluster) if j["Comment"] == "rule_pretrain"), key=lambda j: int(j["JobId"])
    )
    shown = "\n".join(map(str, pretrain))
    assert [j["JobState"] for j in pretrain] == ["CANCELLED", "COMPLETED"], shown
    assert pretrain[0]["EndTime"] <= pretrain[1]["StartTime"], shown  # never two jobs on one folder
    assert not (on_slurm / "checkpoints").exists()  # no checkpoint folder left, empty or not

    # Then Table 1: the triplet scores (a GPU job), FACap and the filtered FACap through sbatch.
    table1 = run_profile(slurm_cluster, on_slurm, TARGET, "cluster.yaml")
    assert table1.returncode == 0, f"{table1.stdout[-3000:]}\n{table1.stderr[-6000:]}\n{slurm_cluster.logs_tail()}"
    after = [j for j in submitted_jobs(slurm_cluster) if j["Comment"].removeprefix("rule_") in AFTER_BACKBONE]
    assert sorted(j["Comment"].removeprefix("rule_") for j in after) == sorted(AFTER_BACKBONE), after
    assert all(j["JobState"] == "COMPLETED" for j in after), after
    scores = next(j for j in after if j["Comment"] == "rule_triplet_scores")
    assert scores["Partition"] == "gpu" and "gpu:1" in scores.get("TresPerJob", ""), scores

    # The same outputs as a local run of the same targets.
    local = copy_workflow(workflow_copy, tmp_path / "local")
    snakemake(local, "--cores", "2", TARGET, BACKBONE, "--configfile", "config/presets/test.yaml", "cluster.yaml")
    for relative in [*COMPARED, BACKBONE]:
        assert digest(on_slurm, relative) == digest(local, relative), relative
    assert f"{BACKBONE}/metrics.jsonl" in digest(on_slurm, BACKBONE)
    # Nothing left to do under either executor.
    dry = snakemake(on_slurm, "-n", TARGET, BACKBONE, "--configfile", "config/presets/test.yaml", "cluster.yaml")
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.e2e
def test_a_cluster_that_cannot_run_a_job_says_so_before_anything_is_submitted(cpu_only_cluster, workflow_copy):
    """No GPU anywhere: the tiny preset's `embed` (one GPU) is named with the limit before any sbatch;
    with cluster.use_gpus false the same target runs, every job on CPUs."""
    target = "data/embeddings/images.npz"
    (workflow_copy / "cluster.yaml").write_text(
        yaml.safe_dump({"cluster": {"partition": "cpu", "gpu_partition": "gpu"}})
    )
    refused = run_profile(cpu_only_cluster, workflow_copy, target, "cluster.yaml")
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "nothing was submitted" in output, output[-4000:]
    assert "rule embed: asks for 1 GPUs (gpus), but the largest usable node of partition 'gpu' has 0" in output
    assert "File " not in output  # the message alone, no traceback lines
    assert submitted_jobs(cpu_only_cluster) == []

    # A combination that can never run is refused when the workflow is parsed, naming both keys.
    (workflow_copy / "cpu.yaml").write_text(yaml.safe_dump({"cluster": {"use_gpus": False}}))
    (workflow_copy / "cuda.yaml").write_text(yaml.safe_dump({"training": {"device": "cuda"}}))
    impossible = run_profile(cpu_only_cluster, workflow_copy, target, "cluster.yaml", "cpu.yaml", "cuda.yaml")
    output = impossible.stdout + impossible.stderr
    assert impossible.returncode != 0 and "training.device is 'cuda', but cluster.use_gpus is false" in output
    assert submitted_jobs(cpu_only_cluster) == []

    # A drained node runs no new job: a request only it could meet is refused, not left pending.
    drain = ["scontrol", "update", f"NodeName={cpu_only_cluster.host}"]
    env = python_first_env(cpu_only_cluster.env, cpu_only_cluster.bin)
    subprocess.run([*drain, "State=DRAIN", "Reason=test"], env=env, check=True)
    try:
        drained = run_profile(cpu_only_cluster, workflow_copy, target, "cluster.yaml", "cpu.yaml")
    finally:
        subprocess.run([*drain, "State=RESUME"], env=env, check=True)
    output = drained.stdout + drained.stderr
    assert drained.returncode != 0 and "partition 'cpu' has no usable nodes" in output, output[-4000:]
    assert submitted_jobs(cpu_only_cluster) == []

    # A runtime computed from inputs (embed counts its shard's images) is over the short partition's
    # MaxTime: on a fresh run it is known only when the job is submitted, and the run stops there.
    (workflow_copy / "short.yaml").write_text(yaml.safe_dump({"resources": {"embed": {"slurm_partition": "short"}}}))
    too_long = run_profile(cpu_only_cluster, workflow_copy, target, "cluster.yaml", "cpu.yaml", "short.yaml")
    output = too_long.stdout + too_long.stderr
    assert too_long.returncode != 0, output[-4000:]
    assert "rule embed: runtime 6 min, but partition 'short' allows 1 min (MaxTime)" in output, output[-4000:]
    jobs = submitted_jobs(cpu_only_cluster)
    assert not [j for j in jobs if j["JobState"] == "PENDING"], jobs
    assert not [j for j in jobs if j["Comment"].startswith("rule_embed")], jobs

    # Without the short partition the same target runs, every job on CPUs.
    ran = run_profile(cpu_only_cluster, workflow_copy, target, "cluster.yaml", "cpu.yaml")
    assert ran.returncode == 0, f"{ran.stdout[-3000:]}\n{ran.stderr[-6000:]}\n{cpu_only_cluster.logs_tail()}"
    jobs = submitted_jobs(cpu_only_cluster)
    embeds = [j for j in jobs if j["Comment"].startswith("rule_embed_")]
    assert len(embeds) == 2 and all(j["Partition"] == "cpu" and "gpu" not in j.get("TresPerJob", "") for j in embeds)
    assert all(j["JobState"] == "COMPLETED" for j in jobs)
