"""The cluster preflight: SLURM's own description of partitions and nodes, and requests checked
against it (the real cluster's answers are in tests/test_slurm.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from fashionblip2.cluster import (
    ClusterOffer,
    JobRequest,
    cancel_and_wait,
    device_conflicts,
    live_jobs,
    parse_gres,
    parse_nodes,
    parse_partitions,
    preflight,
    request_problems,
    run_key,
    runtime_problem,
    slurm_minutes,
)

# As printed by `scontrol -o show partition` / `show node` (SLURM 22.05, Debian 12), shortened.
PARTITIONS = """\
PartitionName=cpu AllowGroups=ALL Default=YES QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=1-00:00:00 MinNodes=0 Nodes=vm State=UP TotalCPUs=2 TRES=cpu=2,mem=16000M,node=1,billing=2
PartitionName=gpu AllowGroups=ALL Default=NO QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 Nodes=g[01-02] State=UP TotalCPUs=64
"""  # noqa: E501
NODES = """\
NodeName=vm Arch=x86_64 CoresPerSocket=1  CPUAlloc=0 CPUEfctv=2 CPUTot=2 CPULoad=1.23 Gres=(null) NodeAddr=vm OS=Linux 6.1 #1 SMP PREEMPT_DYNAMIC @0  RealMemory=16000 AllocMem=0 Partitions=cpu  State=IDLE
NodeName=g01 Arch=x86_64 CPUTot=32 Gres=gpu:a100:4(S:0-1) RealMemory=512000 Partitions=gpu State=IDLE
NodeName=g02 Arch=x86_64 CPUTot=32 Gres=gpu:a100:2,gpu:v100:2 RealMemory=256000 Partitions=gpu State=IDLE
"""  # noqa: E501


@pytest.fixture
def offer() -> ClusterOffer:
    return ClusterOffer(parse_partitions(PARTITIONS), parse_nodes(NODES))


def test_slurm_descriptions_are_read(offer):
    assert slurm_minutes("1-00:00:00") == 1440 and slurm_minutes("02:30:00") == 150 and slurm_minutes("45") == 45
    assert slurm_minutes("UNLIMITED") is None and slurm_minutes("10:30") == 11
    assert parse_gres("gpu:a100:4(S:0-1)") == {"a100": 4} and parse_gres("gpu:2") == {"": 2}
    assert parse_gres("(null)") == {} and parse_gres("gpu:a100:2,gpu:v100:1") == {"a100": 2, "v100": 1}
    assert offer.default_partition().name == "cpu" and offer.partitions["cpu"].max_time_min == 1440
    assert [(n.name, n.cpus, n.memory_mb, n.partitions) for n in offer.nodes][0] == ("vm", 2, 16000, ["cpu"])
    assert offer.nodes[2].gpu_count(None) == 4 and offer.nodes[2].gpu_count("v100") == 2


def test_requests_the_cluster_can_run_pass(offer):
    fine = [
        JobRequest("manifest", None, runtime_min=60, mem_mb=8000, cpus=2),
        JobRequest("train_stage1", "gpu", runtime_min=2880, mem_mb=128000, cpus=16, gpus=4, gpu_model="a100"),
    ]
    assert request_problems(fine, offer) == []
    preflight(fine, offer)


def test_each_impossible_request_is_named_with_its_limit(offer):
    problems = request_problems(
        [
            JobRequest("embed", None, runtime_min=60, mem_mb=2000, cpus=1, gpus=1),
            JobRequest("pretrain", None, runtime_min=1500, mem_mb=32000, cpus=1),
            JobRequest("caption", "gpu", runtime_min=60, mem_mb=8000, cpus=8, gpus=3, gpu_model="v100"),
            JobRequest("evaluate", "a100q", runtime_min=60, mem_mb=8000),
        ],
        offer,
    )
    assert problems == [
        "rule embed: asks for 1 GPUs (gpus), but the largest usable node of partition 'cpu' has 0",
        "rule pretrain: runtime 1500 min, but partition 'cpu' allows 1440 min (MaxTime)",
        "rule pretrain: asks for 32000 MB of memory (mem_mb), but the largest usable node of partition 'cpu' has 16000",
        "rule caption: asks for 3 v100 GPUs (gpus) (cluster.gpu_model), but the largest usable node of partition "
        "'gpu' has 2",
        "rule evaluate: partition 'a100q' does not exist (partitions: cpu, gpu)",
    ]
    with pytest.raises(RuntimeError, match="nothing was submitted:\n  rule embed: asks for 1 GPUs"):
        preflight([JobRequest("embed", None, gpus=1)], offer)


def test_the_preflight_message_has_its_rule_lines_sorted(offer):
    with pytest.raises(RuntimeError) as refused:
        preflight([JobRequest("train", None, gpus=1), JobRequest("embed", None, gpus=1), JobRequest("b", "x")], offer)
    lines = str(refused.value).splitlines()[1:-1]
    assert [line.split()[1].rstrip(":") for line in lines] == ["b", "embed", "train"]


def test_a_runtime_known_only_at_submission_is_checked_against_maxtime(offer):
    assert runtime_problem(JobRequest("embed", None, runtime_min=1440), offer) is None
    assert runtime_problem(JobRequest("embed", "gpu", runtime_min=10**6), offer) is None  # UNLIMITED
    assert runtime_problem(JobRequest("embed", None, runtime_min=1441), offer) == (
        "rule embed: runtime 1441 min, but partition 'cpu' allows 1440 min (MaxTime)"
    )


def test_down_drained_and_failed_nodes_are_not_counted():
    nodes = NODES.replace("Partitions=gpu State=IDLE\nNodeName=g02", "Partitions=gpu State=DOWN*\nNodeName=g02")
    offer = ClusterOffer(parse_partitions(PARTITIONS), parse_nodes(nodes))
    assert [n.usable for n in offer.nodes] == [True, False, True]
    # 4 A100s: only g01 has them, and it is down.
    assert request_problems([JobRequest("x", "gpu", gpus=4, gpu_model="a100")], offer) == [
        "rule x: asks for 4 a100 GPUs (gpus) (cluster.gpu_model), but the largest usable node of partition 'gpu' has 2"
    ]
    for state in ("IDLE+DRAIN", "MIXED+DRAIN", "DOWN+NOT_RESPONDING", "FAIL", "ALLOCATED+FAILING"):
        gone = ClusterOffer(parse_partitions(PARTITIONS), parse_nodes(NODES.replace("State=IDLE", f"State={state}")))
        assert request_problems([JobRequest("m", None)], gone) == [
            f"rule m: partition 'cpu' has no usable nodes (vm: {state})"
        ]


def test_a_cuda_device_without_a_gpu_is_refused_naming_both_keys(offer):
    config = {"cluster": {"use_gpus": False}, "training": {"device": "cuda:1"}, "evaluation": {"device": "auto"}}
    keys = {"training.device": ["pretrain"], "evaluation.device": ["evaluate"]}
    assert device_conflicts(config, keys) == [
        "training.device is 'cuda:1', but cluster.use_gpus is false (no job asks for a GPU): set training.device to "
        "auto or cpu, or cluster.use_gpus to true"
    ]
    assert device_conflicts({**config, "cluster": {"use_gpus": True}}, keys) == []
    request = JobRequest("caption", "gpu", mem_mb=1000, device_key="annotation.caption.device", device="cuda")
    assert request_problems([request], offer) == [
        "rule caption: annotation.caption.device is 'cuda', but resources.caption.gpu asks for no GPU (set the "
        "device to auto or cpu, or give the rule a GPU)"
    ]


class FakeSlurm:
    """squeue and scancel answering from a job table: a cancelled job stays COMPLETING for one more
    look, as SLURM keeps it until its processes are gone."""

    def __init__(self, jobs: list[str]) -> None:
        self.jobs = [line.split("|") for line in jobs]
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **_) -> subprocess.CompletedProcess:
        self.calls.append(args)
        if args[0] == "scancel":
            for job in self.jobs:
                if job[0] in args[1:]:
                    job[2] = "COMPLETING"
            return subprocess.CompletedProcess(args, 0, "", "")
        out = "".join("|".join(job) + "\n" for job in self.jobs)
        for job in self.jobs:
            if job[2] == "COMPLETING":
                job[2] = "CANCELLED"
        return subprocess.CompletedProcess(args, 0, out, "")


def test_a_rerun_finds_and_cancels_only_its_folders_leftover_jobs(tmp_path):
    key = run_key(tmp_path)
    assert key == run_key(tmp_path / ".") and key != run_key(tmp_path / "other") and key.startswith("facap-")
    slurm = FakeSlurm(
        [
            f"11|{key}_old|RUNNING|rule_pretrain",
            f"12|{key}_old|PENDING|rule_tokenizer",
            f"13|{key}_old|COMPLETED|rule_manifest",
            f"14|{key}_new|RUNNING|rule_embed_wildcards_0",
            f"15|{run_key(tmp_path / 'other')}_x|RUNNING|rule_pretrain",
        ]
    )
    leftovers = live_jobs(key, f"{key}_new", run=slurm)
    assert [(j.job_id, j.rule) for j in leftovers] == [("11", "pretrain"), ("12", "tokenizer")]
    assert [j.job_id for j in cancel_and_wait(key, f"{key}_new", poll_s=0, run=slurm)] == ["11", "12"]
    assert ["scancel", "11", "12"] in slurm.calls
    assert live_jobs(key, f"{key}_new", run=slurm) == []  # gone only after COMPLETING
    assert sum(c[0] == "squeue" for c in slurm.calls) >= 3


def test_a_request_no_single_node_can_hold_is_refused(offer):
    assert request_problems([JobRequest("x", "gpu", mem_mb=300000, gpus=4, gpu_model="a100")], offer) == []
    # 2 V100s exist only on g02 (256 GB): with 300 GB they fit nowhere, though each alone fits somewhere.
    assert request_problems([JobRequest("x", "gpu", mem_mb=300000, gpus=2, gpu_model="v100")], offer) == [
        "rule x: no single usable node of partition 'gpu' has all it asks for (1 CPUs, 300000 MB, 2 v100 GPUs); "
        "its nodes: g01 (32 CPUs, 512000 MB, a100:4); g02 (32 CPUs, 256000 MB, a100:2, v100:2)"
    ]


def test_the_readme_lists_the_workflows_local_rules():
    """The README's cluster section says which rules run in the Snakemake process: exactly those the
    rule files declare local (some only with an API backend)."""
    root = Path(__file__).resolve().parents[1]
    declared = set()
    for rules in (root / "rules").glob("*.smk"):
        for block in re.findall(r"localrules:\n((?:[ \t]+\w+,\n)+)", rules.read_text()):
            declared |= set(re.findall(r"(\w+),", block))
    readme = (root / "README.md").read_text()
    paragraph = readme[readme.index("These are local rules") : readme.index("goes through `sbatch`")]
    listed = set(re.findall(r"`(\w+)`", paragraph)) - {"gather_embeddings"}  # named as not local
    assert declared and listed == declared
