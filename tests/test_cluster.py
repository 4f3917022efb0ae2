"""The cluster preflight: SLURM's own description of partitions and nodes, and requests checked
against it (the real cluster's answers are in tests/test_slurm.py)."""

from __future__ import annotations

import pytest

from fashionblip2.cluster import (
    ClusterOffer,
    JobRequest,
    parse_gres,
    parse_nodes,
    parse_partitions,
    preflight,
    request_problems,
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
        "rule embed: asks for 1 GPUs (gpus), but the largest node of partition 'cpu' has 0",
        "rule pretrain: runtime 1500 min, but partition 'cpu' allows 1440 min",
        "rule pretrain: asks for 32000 MB of memory (mem_mb), but the largest node of partition 'cpu' has 16000",
        "rule caption: asks for 3 v100 GPUs (gpus), but the largest node of partition 'gpu' has 2",
        "rule evaluate: partition 'a100q' does not exist (partitions: cpu, gpu)",
    ]
    with pytest.raises(RuntimeError, match="nothing was submitted:\n  rule embed: asks for 1 GPUs"):
        preflight([JobRequest("embed", None, gpus=1)], offer)


def test_a_request_no_single_node_can_hold_is_refused(offer):
    assert request_problems([JobRequest("x", "gpu", mem_mb=300000, gpus=4, gpu_model="a100")], offer) == []
    # 2 V100s exist only on g02 (256 GB): with 300 GB they fit nowhere, though each alone fits somewhere.
    assert request_problems([JobRequest("x", "gpu", mem_mb=300000, gpus=2, gpu_model="v100")], offer) == [
        "rule x: no single node of partition 'gpu' has all it asks for"
    ]
