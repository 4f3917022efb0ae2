"""The tiny preset's `all` through SLURM against the same run with local execution, side by side.

    sudo .venv/bin/python benchmarks/slurm_profile.py                 # small-cluster flags vs local
    sudo .venv/bin/python benchmarks/slurm_profile.py --also-profile  # + the profile's own polling

It starts the project's single-node SLURM cluster (tests/support/slurm_cluster.py: munge,
slurmctld, slurmd from Debian's packages, as root, stopped by PID at the end) and runs, each in its
own fresh copy of the workflow:

- local: `snakemake --cores N all` on the tiny preset (the baseline);
- slurm, small-cluster flags: `snakemake --profile slurm all` with
  `--slurm-init-seconds-before-status-checks 2 --seconds-between-status-checks 2` (README, "Status
  checks"), every job through sbatch (`cluster.use_gpus: false`: the test cluster's GPUs are fake);
- with --also-profile, the same with the profile's own setting (the first status check 40 s after a
  submission, for a shared cluster).

It prints wall time, jobs, the ratio to local, and whether every compared output is byte-identical
to the local run's, and writes benchmarks/out/slurm_profile.json.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from _report import report  # noqa: E402

from fashionblip2.config import WORKFLOW_FILES  # noqa: E402  (what a copy of the workflow needs)
from tests.support.slurm_cluster import SlurmCluster, missing_requirements  # noqa: E402

PRESET = "config/presets/test.yaml"
SMALL_CLUSTER = ["--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2"]
# Without accounting (the test cluster has none) the plugin polls squeue; the account is not guessed.
NO_ACCOUNTING = ["--slurm-status-command", "squeue", "--slurm-no-account"]
# Outputs whose bytes do not depend on the executor (reports and logs carry times).
COMPARED = ("data/facap", "data/enhfashioniq", "models", "results/eval", "results/tables")


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    (dest / "cpu.yaml").write_text("cluster: {use_gpus: false}\n")
    return dest


def run_env(cluster: SlurmCluster | None) -> dict[str, str]:
    env = dict(cluster.env if cluster else os.environ)
    # Rules (and the jobs SLURM starts, which inherit this) call `python`: this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def timed_run(workdir: Path, args: list[str], env: dict[str, str], timeout_s: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "snakemake", "all", "--configfile", PRESET, "cpu.yaml", *args]
    start = time.monotonic()
    # The SLURM executor can wait for ever on a broken cluster: a hard limit.
    proc = subprocess.run(
        ["timeout", "-k", "10", str(timeout_s), *cmd], cwd=workdir, env=env, capture_output=True, text=True
    )
    seconds = time.monotonic() - start
    (workdir / "benchmark_run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}) in {workdir}:\n{proc.stderr[-4000:]}")
    done = [line for line in proc.stderr.splitlines() if "steps (100%) done" in line]
    return {"seconds": round(seconds, 1), "jobs": done[-1].split(" of ")[1].split()[0] if done else "?"}


def digest(root: Path) -> dict[str, str]:
    out = {}
    for top in COMPARED:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and "report" not in path.name:
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=2, help="the local run's --cores")
    parser.add_argument("--also-profile", action="store_true", help="also run with the profile's own polling")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run at most")
    parser.add_argument("--out", default="benchmarks/out/slurm_profile.json")
    args = parser.parse_args()
    if (why := missing_requirements()) is not None:
        raise SystemExit(f"no SLURM cluster can start here: {why}")

    root = Path(tempfile.mkdtemp(prefix="slurm_profile_"))
    runs: dict[str, dict[str, Any]] = {}
    cluster = SlurmCluster(root / "cluster")
    try:
        cluster.start()
        local = copy_workflow(root / "local")
        runs["local"] = timed_run(local, ["--cores", str(args.cores)], run_env(None), args.timeout)
        expected = digest(local)
        variants = {"slurm, small-cluster flags": SMALL_CLUSTER}
        if args.also_profile:
            variants["slurm, the profile's polling"] = []
        for i, (name, flags) in enumerate(variants.items()):
            workdir = copy_workflow(root / f"slurm{i}")
            runs[name] = timed_run(
                workdir, ["--profile", "slurm", *NO_ACCOUNTING, *flags], run_env(cluster), args.timeout
            )
            runs[name]["identical_to_local"] = digest(workdir) == expected
    finally:
        cluster.stop()
    base = runs["local"]["seconds"]
    rows = [("run", "wall s | jobs | x local | outputs as local")]
    for name, r in runs.items():
        same = "-" if name == "local" else str(r["identical_to_local"])
        rows.append((name, f"{r['seconds']:.1f} | {r['jobs']} | {r['seconds'] / base:.2f} | {same}"))
    record = {
        "preset": PRESET,
        "target": "all",
        "local_cores": args.cores,
        "cpus": os.cpu_count(),
        "compared_files": len(expected),
        "runs": {k: {**v, "x_local": round(v["seconds"] / base, 2)} for k, v in runs.items()},
    }
    report(rows, record, args.out)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
