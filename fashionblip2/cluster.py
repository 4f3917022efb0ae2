"""A cluster preflight: does SLURM offer what each job will ask for, before anything is submitted?

`sbatch` refuses a job it can never run (a GPU where no node has one, more memory than any node,
a runtime over the partition's limit), Snakemake's profile retries it, and the run ends pointing at
an empty log. The workflow calls :func:`preflight` when a cluster run starts: it reads the
partitions and nodes with ``scontrol`` and stops with one message naming each rule, its request
and the limit it exceeds.

Standard library only: the Snakefile imports it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobRequest:
    """What one rule's jobs ask SLURM for (the largest of them)."""

    rule: str
    partition: str | None = None  # None: the cluster's default partition
    runtime_min: int = 0
    mem_mb: int = 0
    cpus: int = 1
    gpus: int = 0
    gpu_model: str | None = None


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    partitions: list[str]
    gpus: dict[str, int] = field(default_factory=dict)  # gpu type ("" when untyped) -> count

    def gpu_count(self, model: str | None) -> int:
        return self.gpus.get(model, 0) if model else sum(self.gpus.values())


@dataclass
class Partition:
    name: str
    default: bool
    max_time_min: int | None  # None: no limit
    up: bool


@dataclass
class ClusterOffer:
    partitions: dict[str, Partition]
    nodes: list[Node]

    def default_partition(self) -> Partition | None:
        return next((p for p in self.partitions.values() if p.default), None)


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def slurm_minutes(text: str) -> int | None:
    """SLURM's time format ([days-]hours:minutes:seconds, minutes, UNLIMITED) in minutes; None: no limit."""
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if len(parts) == 1:
        hours, minutes, seconds = 0, parts[0], 0
    elif len(parts) == 2:
        hours, minutes, seconds = 0, parts[0], parts[1]
    else:
        hours, minutes, seconds = parts[-3:]
    return (int(days) if days else 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def parse_gres(text: str) -> dict[str, int]:
    """``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:1`` or ``(null)`` -> {type: count}."""
    out: dict[str, int] = {}
    for item in text.split(","):
        item = re.sub(r"\(.*?\)", "", item).strip()
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        kind, count = (parts[1], parts[2]) if len(parts) >= 3 else ("", parts[1])
        out[kind] = out.get(kind, 0) + int(count)
    return out


def parse_partitions(text: str) -> dict[str, Partition]:
    """The output of ``scontrol -o show partition``."""
    out = {}
    for line in text.splitlines():
        f = _fields(line)
        if "PartitionName" in f:
            out[f["PartitionName"]] = Partition(
                f["PartitionName"],
                f.get("Default") == "YES",
                slurm_minutes(f.get("MaxTime", "")),
                f.get("State") == "UP",
            )
    return out


def parse_nodes(text: str) -> list[Node]:
    """The output of ``scontrol -o show node``."""
    out = []
    for line in text.splitlines():
        f = _fields(line)
        if "NodeName" in f:
            out.append(
                Node(
                    f["NodeName"],
                    int(f.get("CPUTot", 0)),
                    int(f.get("RealMemory", 0)),
                    [p for p in f.get("Partitions", "").split(",") if p],
                    parse_gres(f.get("Gres", "")),
                )
            )
    return out


def read_cluster(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> ClusterOffer:
    """What the cluster offers, read with ``scontrol`` (raises RuntimeError if it cannot be asked)."""

    def scontrol(*args: str) -> str:
        try:
            result = run(["scontrol", "-o", *args], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"cannot ask SLURM what it offers (scontrol {' '.join(args)}): {e}") from e
        if result.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    return ClusterOffer(parse_partitions(scontrol("show", "partition")), parse_nodes(scontrol("show", "node")))


def request_problems(requests: Iterable[JobRequest], offer: ClusterOffer) -> list[str]:
    """One line per request that no node of its partition can ever run, naming the limit."""
    problems = []
    for r in requests:
        partition = offer.partitions.get(r.partition) if r.partition else offer.default_partition()
        where = f"partition {r.partition!r}" if r.partition else "the default partition"
        if partition is None:
            known = ", ".join(sorted(offer.partitions)) or "none"
            problems.append(f"rule {r.rule}: {where} does not exist (partitions: {known})")
            continue
        if not partition.up:
            problems.append(f"rule {r.rule}: partition {partition.name!r} is not up")
        if partition.max_time_min is not None and r.runtime_min > partition.max_time_min:
            problems.append(
                f"rule {r.rule}: runtime {r.runtime_min} min, but partition {partition.name!r} allows "
                f"{partition.max_time_min} min"
            )
        nodes = [n for n in offer.nodes if partition.name in n.partitions]
        if not nodes:
            problems.append(f"rule {r.rule}: partition {partition.name!r} has no nodes")
            continue
        checks = [
            ("mem_mb", r.mem_mb, lambda n: n.memory_mb, "MB of memory"),
            ("cpus", r.cpus, lambda n: n.cpus, "CPUs"),
            ("gpus", r.gpus, lambda n, model=r.gpu_model: n.gpu_count(model), f"{r.gpu_model or ''} GPUs".strip()),
        ]
        for key, asked, offered, unit in checks:
            best = max(offered(n) for n in nodes)
            if asked > best:
                problems.append(
                    f"rule {r.rule}: asks for {asked} {unit} ({key}), but the largest node of partition "
                    f"{partition.name!r} has {best}"
                )
        fits = [n for n in nodes if n.memory_mb >= r.mem_mb and n.cpus >= r.cpus and n.gpu_count(r.gpu_model) >= r.gpus]
        if not fits and not any(p.startswith(f"rule {r.rule}: asks") for p in problems):
            problems.append(f"rule {r.rule}: no single node of partition {partition.name!r} has all it asks for")
    return problems


def preflight(requests: Iterable[JobRequest], offer: ClusterOffer | None = None) -> None:
    """Stop (RuntimeError) with every request the cluster can never run, before anything is submitted."""
    requests = list(requests)
    problems = request_problems(requests, offer or read_cluster())
    if problems:
        raise RuntimeError(
            "the cluster cannot run these jobs, so nothing was submitted:\n  "
            + "\n  ".join(problems)
            + "\nChange resources.<rule> or cluster: in the config (cluster.use_gpus: false runs every GPU rule "
            "on CPUs)."
        )
