"""A cluster preflight: does SLURM offer what each job will ask for, before anything is submitted?

`sbatch` refuses some jobs it can never run (a GPU where no node has one, more memory than any
node), Snakemake's profile retries them, and the run ends pointing at an empty log; others it
accepts and leaves PENDING for ever (a runtime over the partition's MaxTime where EnforcePartLimits
is unset, a request only a DOWN node could meet). The workflow calls :func:`preflight` when a
cluster run starts: it reads the partitions and nodes with ``scontrol`` and stops with one message
naming each rule, its request and the limit it exceeds. Runtimes computed from a job's inputs are
checked again when the job is submitted (:func:`runtime_problem`).

It also knows the workflow's own jobs (:func:`run_key`, :func:`live_jobs`): a rerun after a kill
finds the jobs its killed predecessor left in SLURM before it submits anything.

Standard library only: the Snakefile imports it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Node states (scontrol's State=, e.g. IDLE+DRAIN, DOWN*) whose node runs no new job: a request only
# such a node could meet would wait in the queue for ever (ReqNodeNotAvail).
UNUSABLE_NODE_STATES = ("DOWN", "DRAIN", "FAIL")
# Job states after which a job holds nothing (squeue's %T); every other state is live.
FINISHED_JOB_STATES = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
     "REVOKED", "TIMEOUT"}
)  # fmt: skip


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
    # The device setting of the rule's step (e.g. training.device) and its value: a CUDA device in a
    # job that asks for no GPU fails on every attempt, so it is refused before submission.
    device_key: str | None = None
    device: str = ""

    def describe(self) -> str:
        gpus = f", {self.gpus} {self.gpu_model + ' ' if self.gpu_model else ''}GPUs" if self.gpus else ""
        return f"{self.cpus} CPUs, {self.mem_mb} MB{gpus}"


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    partitions: list[str]
    gpus: dict[str, int] = field(default_factory=dict)  # gpu type ("" when untyped) -> count
    state: str = "IDLE"

    def gpu_count(self, model: str | None) -> int:
        return self.gpus.get(model, 0) if model else sum(self.gpus.values())

    @property
    def usable(self) -> bool:
        flags = self.state.upper().replace("*", "").replace("~", "").split("+")
        return not any(flag.startswith(bad) for flag in flags for bad in UNUSABLE_NODE_STATES)

    def describe(self) -> str:
        gpus = ", ".join(f"{kind or 'gpu'}:{n}" for kind, n in sorted(self.gpus.items())) or "no GPUs"
        return f"{self.name} ({self.cpus} CPUs, {self.memory_mb} MB, {gpus})"


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
                    f.get("State", "IDLE"),
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


def partition_of(r: JobRequest, offer: ClusterOffer) -> Partition | None:
    return offer.partitions.get(r.partition) if r.partition else offer.default_partition()


def runtime_problem(r: JobRequest, offer: ClusterOffer) -> str | None:
    """The runtime against the partition's MaxTime (also checked when a job is submitted)."""
    partition = partition_of(r, offer)
    if partition is not None and partition.max_time_min is not None and r.runtime_min > partition.max_time_min:
        return (
            f"rule {r.rule}: runtime {r.runtime_min} min, but partition {partition.name!r} allows "
            f"{partition.max_time_min} min (MaxTime)"
        )
    return None


def request_problems(requests: Iterable[JobRequest], offer: ClusterOffer) -> list[str]:
    """One line per request that no usable node of its partition can ever run, naming the limit."""
    problems = []
    for r in requests:
        partition = partition_of(r, offer)
        where = f"partition {r.partition!r}" if r.partition else "the default partition"
        if partition is None:
            known = ", ".join(sorted(offer.partitions)) or "none"
            problems.append(f"rule {r.rule}: {where} does not exist (partitions: {known})")
            continue
        if r.device.startswith("cuda") and r.gpus == 0:
            problems.append(
                f"rule {r.rule}: {r.device_key} is {r.device!r}, but resources.{r.rule}.gpu asks for no GPU "
                "(set the device to auto or cpu, or give the rule a GPU)"
            )
        if not partition.up:
            problems.append(f"rule {r.rule}: partition {partition.name!r} is not up")
        if (problem := runtime_problem(r, offer)) is not None:
            problems.append(problem)
        members = [n for n in offer.nodes if partition.name in n.partitions]
        nodes = [n for n in members if n.usable]
        if not nodes:
            down = ", ".join(f"{n.name}: {n.state}" for n in members)
            problems.append(
                f"rule {r.rule}: partition {partition.name!r} has no usable nodes" + (f" ({down})" if down else "")
            )
            continue
        checks = [
            ("mem_mb", r.mem_mb, lambda n: n.memory_mb, "MB of memory"),
            ("cpus", r.cpus, lambda n: n.cpus, "CPUs"),
            ("gpus", r.gpus, lambda n, model=r.gpu_model: n.gpu_count(model), f"{r.gpu_model or ''} GPUs".strip()),
        ]
        short = False
        for key, asked, offered, unit in checks:
            best = max(offered(n) for n in nodes)
            if asked > best:
                short = True
                model = " (cluster.gpu_model)" if key == "gpus" and r.gpu_model else ""
                problems.append(
                    f"rule {r.rule}: asks for {asked} {unit} ({key}){model}, but the largest usable node of "
                    f"partition {partition.name!r} has {best}"
                )
        fits = [n for n in nodes if n.memory_mb >= r.mem_mb and n.cpus >= r.cpus and n.gpu_count(r.gpu_model) >= r.gpus]
        if not fits and not short:
            problems.append(
                f"rule {r.rule}: no single usable node of partition {partition.name!r} has all it asks for "
                f"({r.describe()}); its nodes: {'; '.join(n.describe() for n in nodes)}"
            )
    return problems


def preflight(requests: Iterable[JobRequest], offer: ClusterOffer | None = None) -> None:
    """Stop (RuntimeError) with every request the cluster can never run, before anything is submitted."""
    requests = list(requests)
    problems = request_problems(requests, offer or read_cluster())
    if problems:
        raise RuntimeError(
            "the cluster cannot run these jobs, so nothing was submitted:\n  "
            + "\n  ".join(sorted(problems))
            + "\nChange resources.<rule> or cluster: in the config (cluster.use_gpus: false runs every GPU rule "
            "on CPUs)."
        )


def stop_hook(check: Callable[[], str | None], error: type[Exception]) -> Callable[..., None]:
    """A Snakemake onstart hook that raises ``error(message)`` when `check` returns a message.
    Snakemake prints an exception that passed through a Snakefile with those lines as a traceback;
    raised here, outside any Snakefile, it prints as the message alone."""

    def hook(log: object = None) -> None:
        message = check()
        if message:
            raise error(message)

    return hook


def device_conflicts(config: dict, device_rules: dict[str, list[str]]) -> list[str]:
    """Settings that can never run together, named by both keys (checked when the workflow is parsed,
    so that no job is submitted, and retried, only to fail the same way): a CUDA device where
    cluster.use_gpus says there are no GPUs."""
    if config["cluster"]["use_gpus"]:
        return []
    problems = []
    for key in device_rules:
        section, _, name = key.rpartition(".")
        value = str(_lookup(config, section).get(name, ""))
        if value.startswith("cuda"):
            problems.append(
                f"{key} is {value!r}, but cluster.use_gpus is false (no job asks for a GPU): set {key} to auto or "
                "cpu, or cluster.use_gpus to true"
            )
    return problems


def _lookup(config: dict, dotted: str) -> dict:
    for part in dotted.split("."):
        config = config[part]
    return config


# --- the workflow's own jobs: a rerun after a kill must not race the jobs its predecessor left ---------


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    name: str
    state: str
    comment: str  # Snakemake's: rule_<rule>[_wildcards_<...>]

    @property
    def rule(self) -> str:
        return self.comment.removeprefix("rule_").split("_wildcards_")[0]

    def describe(self) -> str:
        return f"job {self.job_id} (rule {self.rule}, {self.state})"


def run_key(workdir: str | Path) -> str:
    """A tag for the SLURM jobs of the workflow in `workdir` (their job names start with it): one
    working directory, one key, so a rerun there recognises its predecessor's jobs."""
    digest = hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:12]
    return f"facap-{digest}"


SQUEUE_FORMAT = "%i|%j|%T|%k"


def parse_squeue(text: str) -> list[SlurmJob]:
    """``squeue -h -o '%i|%j|%T|%k'`` lines."""
    jobs = []
    for line in text.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) == 4:
            jobs.append(SlurmJob(*parts))
    return jobs


def live_jobs(
    key: str, exclude_name: str | None = None, run: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> list[SlurmJob]:
    """This user's jobs tagged with `key` that SLURM still holds (pending, running, completing),
    except those named `exclude_name` (the current run's own)."""
    try:
        result = run(["squeue", "--me", "-h", "-o", SQUEUE_FORMAT], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"cannot ask SLURM for this workflow's jobs (squeue): {e}") from e
    if result.returncode != 0:
        raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
    return [
        j
        for j in parse_squeue(result.stdout)
        if j.name.startswith(f"{key}_") and j.name != exclude_name and j.state not in FINISHED_JOB_STATES
    ]


def cancel_and_wait(
    key: str,
    exclude_name: str | None = None,
    timeout_s: float = 600,
    poll_s: float = 2,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> list[SlurmJob]:
    """Cancel the live jobs tagged `key` and return once SLURM holds none of them (a cancelled job
    stays COMPLETING until its processes are gone: only then may a rerun write where it wrote)."""
    leftovers = live_jobs(key, exclude_name, run)
    if not leftovers:
        return []
    result = run(["scancel", *(j.job_id for j in leftovers)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"scancel failed: {result.stderr.strip()}")
    deadline = time.monotonic() + timeout_s
    ids = {j.job_id for j in leftovers}
    while remaining := [j for j in live_jobs(key, exclude_name, run) if j.job_id in ids]:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"cancelled, but still live after {timeout_s:.0f} s: {', '.join(j.describe() for j in remaining)}"
            )
        time.sleep(poll_s)
    return leftovers
