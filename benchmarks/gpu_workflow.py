#!/usr/bin/env python
"""The whole workflow on CUDA, checked against the same workflow on CPU.

Runs the tiny preset's `snakemake all` twice, each in its own copy of the workflow:

1. GPU run: config/presets/test.yaml + config/presets/cuda.yaml: every GPU rule on CUDA (embed in
   bf16, the transformers captioner on a tiny random InternVL in batches, pretrain and both
   training stages in bf16 with gradient checkpointing and the gradient cache, evaluate,
   search_index);
2. reference run: the same config with every device on the CPU (bf16 autocast too, so that what
   differs is the device; --reference-precision fp32 compares with fp32 instead), with no GPU
   visible (CUDA_VISIBLE_DEVICES=""). It shares the GPU run's answer cache, so that it trains on the
   same captions (the transformers backend computes in fp32 on CPU, and a random captioner's words
   differ between bf16 and fp32) and the models can be compared.

then compares them and writes a JSON summary; the exit status is 1 on any mismatch:

- structure, exactly: the same output files; per file the same rows and columns (Parquet, CSV),
  arrays and shapes (npz), tensors, shapes and dtypes (safetensors), keys (JSON), vectors (FAISS);
- numbers, within tolerances (options): image embeddings (cosine per image), pairs, training
  losses at every logged step, and recalls (the evaluation's summary, plus R@1 and R@5 from the
  per-query rankings, since the tiny galleries of 8 saturate R@10);
- devices: each GPU rule's log must name the device its process computed on: a probe
  (benchmarks/device_probe/sitecustomize.py) adds one line to every log, saying whether the process
  made a CUDA context and how much GPU memory it allocated.

    python benchmarks/gpu_workflow.py                     # on a machine with a GPU
    python benchmarks/gpu_workflow.py --cpu-dry-run --reference-precision fp32
                                                          # both runs on CPU, bf16 against fp32:
                                                          # everything but CUDA, and the bf16 drift
    python benchmarks/gpu_workflow.py --compare-only WORK # compare two finished runs in WORK/gpu, WORK/ref

Without a GPU and without --cpu-dry-run it stops at once with exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
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

from fashionblip2.config import WORKFLOW_FILES  # noqa: E402  (what a copy of the workflow needs)

OUTPUT_ROOTS = ("data", "models", "results")
PROBE = HERE / "device_probe"
# Each GPU rule's logs (rules/*.smk).
GPU_RULE_LOGS = {
    "embed": "logs/embed/*.log",
    "caption": "logs/caption/[0-9]*.log",
    "pretrain": "logs/pretrain/pretrain.log",
    "train_stage1": "logs/train_stage1/*.log",
    "train_stage2": "logs/train_stage2/*.log",
    "evaluate": "logs/evaluate/*.log",
    "search_index": "logs/search_index/*.log",
}
DEVICE_KEYS = [("embedding", "device"), ("training", "device"), ("evaluation", "device")]

# Default tolerances (benchmarks/README.md, "On a GPU"), for a bf16 run on CUDA against a bf16 run
# on CPU. The CPU dry run's bf16-against-fp32 differences bound what rounding alone does on the tiny
# preset: embeddings' cosine >= 0.99997, losses within 0.061, R@1/R@5 within 17.4 points (23 queries
# a set: one query is 4.3 points). So these catch a broken path (a NaN, an untrained or collapsed
# model, a wrong device), not rounding; against an fp32 reference, pass --loss-max-abs-diff 0.1.
TOLERANCES = {
    "embedding_min_cosine": 0.99,
    "pairs_min_agreement": 0.9,
    "loss_max_abs_diff": 0.05,
    "recall_max_abs_diff": 25.0,
}


# --- running --------------------------------------------------------------------------------------


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def overlay(*, model_path: Path, cache: Path, device: str | None, fp32: bool) -> dict[str, Any]:
    """Config on top of test.yaml + cuda.yaml: the shared captioner and cache, and (reference run,
    dry run) every device on the CPU, and (``fp32``) fp32 instead of bf16."""
    out: dict[str, Any] = {
        "annotation": {"cache_dir": str(cache), "caption": {"model_path": str(model_path)}},
    }
    if device:
        for section, key in DEVICE_KEYS:
            out.setdefault(section, {})[key] = device
        out["annotation"]["caption"]["device"] = device
    if fp32:
        out.setdefault("embedding", {})["precision"] = "fp32"
        out.setdefault("training", {})["precision"] = "fp32"
    return out


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    # Rules call `python`: this interpreter's; the library from this checkout; the device probe.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(PROBE), env.get("PYTHONPATH", "")]))
    env["FB2_DEVICE_PROBE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def snakemake_all(workdir: Path, cores: int, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    import yaml

    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--cores",
        str(cores),
        # The greedy scheduler needs no LP solver (PuLP is not among the carried wheels).
        "--scheduler",
        "greedy",
        "all",
        "--configfile",
        "config/presets/test.yaml",
        "config/presets/cuda.yaml",
        "overlay.yaml",
    ]
    log = workdir / "snakemake.log"
    t = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            returncode = 124
    seconds = time.perf_counter() - t
    tail = log.read_text(errors="replace").splitlines()[-25:]
    if returncode != 0:
        print(f"snakemake failed in {workdir} (exit {returncode}); end of {log}:", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
    return {
        "workdir": str(workdir),
        "command": " ".join(command),
        "overlay": yaml.safe_load((workdir / "overlay.yaml").read_text()),
        "returncode": returncode,
        "seconds": seconds,
        "log_tail": tail if returncode != 0 else [],
    }


def kill_tree(proc: subprocess.Popen) -> None:
    """Snakemake and the jobs it started: a job left running would hold the GPU during the
    benchmarks that follow. (Same process group as this script, so that an outer `timeout` reaches
    them all too.)"""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process gone: kill what we can
        children = []
    for child in children:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already ended
            pass
    proc.kill()
    proc.wait()


def prepare(work: Path, name: str, config: dict[str, Any]) -> Path:
    import yaml

    workdir = work / name
    if workdir.exists():
        shutil.rmtree(workdir)
    copy_workflow(workdir)
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


# --- comparing ------------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: Any) -> None:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.items)


def output_files(root: Path) -> set[str]:
    files = set()
    for top in OUTPUT_ROOTS:
        for path in (root / top).rglob("*"):
            if path.is_file() and path.name != ".snakemake_timestamp":
                files.add(path.relative_to(root).as_posix())
    return files


def key_structure(value: Any) -> Any:
    """A JSON value's shape: dict keys (recursively) and list lengths; no values, no value types (a
    run may record a number where the other records null, such as a GPU's peak memory)."""
    if isinstance(value, dict):
        return {k: key_structure(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return f"list[{len(value)}]"
    return "value"


def structure(path: Path) -> Any:
    """What must be equal between the two runs for one file."""
    suffix = path.suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(path)
        return {"rows": meta.metadata.num_rows, "columns": meta.schema_arrow.names}
    if suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k: list(z[k].shape) for k in z.files}
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            return {k: [list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()] for k in sorted(f.keys())}
    if suffix == ".json":
        return key_structure(json.loads(path.read_text()))
    if suffix in (".csv", ".tsv", ".jsonl", ".md", ".tex"):
        lines = path.read_text(errors="replace").splitlines()
        return {"lines": len(lines), "header": lines[0] if lines and suffix in (".csv", ".tsv") else None}
    if suffix == ".faiss":
        import faiss

        index = faiss.read_index(str(path))
        return {"ntotal": index.ntotal, "d": index.d}
    return "exists"


def compare_structure(gpu: Path, ref: Path, checks: Checks) -> None:
    a, b = output_files(gpu), output_files(ref)
    checks.add(
        "same output files",
        a == b,
        {"files": len(a), "only_gpu_run": sorted(a - b)[:20], "only_reference_run": sorted(b - a)[:20]},
    )
    differing = []
    for rel in sorted(a & b):
        sa, sb = structure(gpu / rel), structure(ref / rel)
        if sa != sb:
            differing.append({"file": rel, "gpu_run": sa, "reference_run": sb})
    # A run's own record of its settings differs by design (the device and precision it was given).
    checks.add(
        "same rows, columns, shapes and keys in every file",
        not differing,
        {"files_compared": len(a & b), "differing": differing[:10]},
    )


def compare_embeddings(gpu: Path, ref: Path, checks: Checks, tol: dict[str, float]) -> None:
    import numpy as np

    rel = "data/embeddings/images.npz"
    if not ((gpu / rel).exists() and (ref / rel).exists()):
        checks.add("image embeddings", False, f"{rel} missing")
        return
    with np.load(gpu / rel) as za, np.load(ref / rel) as zb:
        same_ids = za["image_ids"].tolist() == zb["image_ids"].tolist()
        va, vb = za["vectors"].astype(np.float64), zb["vectors"].astype(np.float64)
    if not same_ids or va.shape != vb.shape:
        checks.add("image embeddings", False, "different image ids or shapes")
        return
    cos = (va * vb).sum(1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    detail = {"images": len(cos), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    detail["tolerance"] = f"min cosine >= {tol['embedding_min_cosine']}"
    checks.add("image embeddings (cosine per image)", bool(cos.min() >= tol["embedding_min_cosine"]), detail)


def compare_pairs_and_texts(gpu: Path, ref: Path, checks: Checks, tol: dict[str, float]) -> None:
    import pandas as pd

    pa, pb = (pd.read_parquet(r / "data/pairs/pairs.parquet") for r in (gpu, ref))
    key = ["reference_id", "target_id"]
    same = len(pa.merge(pb[key], on=key)) / max(len(pa), len(pb), 1)
    checks.add(
        "pairs (same reference and partner)",
        same >= tol["pairs_min_agreement"],
        {"pairs": len(pa), "agreement": same, "tolerance": f">= {tol['pairs_min_agreement']}"},
    )
    detail: dict[str, Any] = {}
    for name, column in (("captions", "image_id"), ("modifications", "reference_id")):
        ta, tb = (pd.read_parquet(r / f"data/annotation/{name}.parquet") for r in (gpu, ref))
        keys = [column] if name == "captions" else key
        merged = ta.merge(tb, on=keys, suffixes=("_gpu", "_ref"))
        same = merged["text_gpu"].fillna("<failed>") == merged["text_ref"].fillna("<failed>")
        detail[name] = {
            "rows": len(ta),
            "same_text": float(same.mean()) if len(merged) else 0.0,
            "ok_in_gpu_run": int((ta["status"] == "ok").sum()) if "status" in ta else None,
        }
    flat = {f"{name}_{k}": v for name, d in detail.items() for k, v in d.items()}
    # Informational: the reference run reads the GPU run's captions from the shared cache.
    checks.add("captions and modification texts (shared answer cache)", True, flat)


def read_losses(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare_training(gpu: Path, ref: Path, checks: Checks, tol: dict[str, float]) -> None:
    worst = {"model": None, "step": None, "abs_diff": 0.0}
    per_model = {}
    non_finite = []
    for path in sorted(glob.glob(str(gpu / "models" / "**" / "metrics.jsonl"), recursive=True)):
        rel = Path(path).relative_to(gpu)
        if not (ref / rel).exists():
            continue
        la, lb = read_losses(gpu / rel), read_losses(ref / rel)
        diffs = []
        for x, y in zip(la, lb, strict=False):
            if not (math.isfinite(x["loss"]) and math.isfinite(y["loss"])):
                non_finite.append(f"{rel.parent}: step {x['step']}")
                continue
            d = abs(x["loss"] - y["loss"])
            diffs.append(d)
            if d > worst["abs_diff"]:
                worst = {"model": str(rel.parent), "step": x["step"], "abs_diff": d}
        per_model[str(rel.parent)] = {
            "steps": len(la),
            "first_step_abs_diff": diffs[0] if diffs else None,
            "max_abs_diff": max(diffs) if diffs else None,
            "final_loss_gpu_run": la[-1]["loss"] if la else None,
            "final_loss_reference_run": lb[-1]["loss"] if lb else None,
        }
    ok = bool(per_model) and not non_finite and worst["abs_diff"] <= tol["loss_max_abs_diff"]
    checks.add(
        "training losses (every logged step)",
        ok,
        {
            "models": len(per_model),
            "worst": worst,
            "non_finite": non_finite,
            "tolerance": f"|loss difference| <= {tol['loss_max_abs_diff']}",
            "per_model": per_model,
        },
    )


def recalls(result: Path) -> dict[str, float]:
    """The evaluation summary's numbers, and R@1 and R@5 over all queries from the rankings."""
    import pandas as pd

    out = {k: float(v) for k, v in json.loads(result.read_text())["summary"].items()}
    rankings = result.with_name(result.stem + "_rankings.parquet")
    if rankings.exists():
        ranks = pd.read_parquet(rankings, columns=["target_rank"])["target_rank"]
        for k in (1, 5):
            out[f"R@{k} (rankings)"] = float(100 * (ranks <= k).mean()) if len(ranks) else 0.0
    return out


def same_ranks(a: Path, b: Path) -> float | None:
    import pandas as pd

    if not (a.exists() and b.exists()):
        return None
    ra, rb = (pd.read_parquet(p, columns=["target_rank"])["target_rank"] for p in (a, b))
    return float((ra.to_numpy() == rb.to_numpy()).mean()) if len(ra) == len(rb) and len(ra) else None


def compare_evaluation(gpu: Path, ref: Path, checks: Checks, tol: dict[str, float]) -> None:
    table = {}
    worst = {"result": None, "metric": None, "abs_diff": 0.0}
    for path in sorted((gpu / "results" / "eval").rglob("*.json")):
        rel = path.relative_to(gpu)
        if not (ref / rel).exists():
            continue
        ra, rb = recalls(path), recalls(ref / rel)
        diffs = {k: ra[k] - rb[k] for k in ra if k in rb}
        for k, d in diffs.items():
            if abs(d) > worst["abs_diff"]:
                worst = {"result": str(rel), "metric": k, "abs_diff": abs(d)}
        rankings = rel.with_name(rel.stem + "_rankings.parquet")
        table[str(rel)] = {
            "gpu_run": ra,
            "reference_run": rb,
            "same_target_rank": same_ranks(gpu / rankings, ref / rankings),
        }
    checks.add(
        "recalls (evaluation summaries; R@1, R@5 from the rankings)",
        bool(table) and worst["abs_diff"] <= tol["recall_max_abs_diff"],
        {
            "results": len(table),
            "worst": worst,
            "tolerance": f"|difference| <= {tol['recall_max_abs_diff']} points",
            "per_result": table,
        },
    )


def probe_lines(log: Path) -> list[dict[str, str]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("[device-probe] "):
            fields = {}
            for part in line[len("[device-probe] ") :].split(" "):
                if "=" in part:
                    k, v = part.split("=", 1)
                    fields[k] = v
                elif fields:  # a device name with spaces
                    last = list(fields)[-1]
                    fields[last] += " " + part
            out.append(fields)
    return out


def device_of(fields: dict[str, str]) -> str:
    if fields.get("cuda_initialized") == "True" and float(fields.get("cuda_peak_mib", 0)) > 0:
        return "cuda"
    return "cpu"


def compare_devices(run: Path, expected: str, checks: Checks, label: str) -> None:
    per_rule: dict[str, Any] = {}
    ok = True
    for rule, pattern in GPU_RULE_LOGS.items():
        logs = sorted(glob.glob(str(run / pattern)))
        if not logs:
            per_rule[rule] = "no log"
            ok = False
            continue
        seen = {}
        for log in logs:
            lines = probe_lines(Path(log))
            if not lines:
                seen[Path(log).name] = "no device line"
                ok = False
                continue
            fields = lines[-1]  # the job's own process exits last
            seen[Path(log).name] = {"device": device_of(fields), **fields}
            ok &= device_of(fields) == expected
        per_rule[rule] = seen
    summary = {
        rule: sorted({v["device"] if isinstance(v, dict) else v for v in seen.values()})
        if isinstance(seen, dict)
        else [seen]
        for rule, seen in per_rule.items()
    }
    checks.add(
        f"{label}: every GPU rule computed on {expected} (its log's device line)",
        ok,
        {"devices": summary, "per_rule": per_rule},
    )


def compare(gpu: Path, ref: Path, expected_device: str, tol: dict[str, float]) -> Checks:
    checks = Checks()
    compare_devices(gpu, expected_device, checks, "GPU run")
    compare_devices(ref, "cpu", checks, "reference run")
    compare_structure(gpu, ref, checks)
    compare_embeddings(gpu, ref, checks, tol)
    compare_pairs_and_texts(gpu, ref, checks, tol)
    compare_training(gpu, ref, checks, tol)
    compare_evaluation(gpu, ref, checks, tol)
    return checks


# --- the command ----------------------------------------------------------------------------------


def short(detail: Any) -> str:
    if isinstance(detail, dict):
        keep = {k: v for k, v in detail.items() if not isinstance(v, dict | list)}
        for k in ("worst", "devices"):
            if k in detail:
                keep[k] = detail[k]
        return json.dumps(keep, default=str)[:200]
    return str(detail)[:160]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="both runs on CPU; no GPU needed")
    parser.add_argument("--work", default=None, help="folder for the two runs (default: a new temp folder)")
    parser.add_argument("--cores", type=int, default=min(os.cpu_count() or 2, 8))
    parser.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds for both snakemake runs: the GPU run gets up to 60 %%, the reference run the rest",
    )
    parser.add_argument("--compare-only", action="store_true", help="compare the finished runs in --work")
    parser.add_argument(
        "--reference-precision",
        choices=["same", "fp32"],
        default="same",
        help="the CPU run's precision: the GPU run's (bf16; default) or fp32",
    )
    parser.add_argument("--out", default="benchmarks/out/gpu_workflow.json")
    for name, value in TOLERANCES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=value)
    args = parser.parse_args()
    tol = {name: getattr(args, name) for name in TOLERANCES}

    import torch

    expected = "cpu" if args.cpu_dry_run else "cuda"
    if not args.cpu_dry_run and not args.compare_only and not torch.cuda.is_available():
        print(
            "gpu_workflow.py: no CUDA device here: this check runs the workflow's GPU rules on CUDA. "
            "Use --cpu-dry-run to run both runs on CPU (no GPU check, the comparison only).",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.compare_only and not args.work:
        parser.error("--compare-only needs --work")
    work = Path(args.work or tempfile.mkdtemp(prefix="fb2-gpu-workflow-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    gpu_dir, ref_dir = work / "gpu", work / "ref"
    record: dict[str, Any] = {
        "mode": "cpu dry run (both runs on CPU; the GPU run keeps bf16)" if args.cpu_dry_run else "cuda",
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu_dry_run else "cpu",
        "torch": torch.__version__,
        "work": str(work),
        "reference_precision": args.reference_precision,
        "tolerances": tol,
        "runs": {},
    }
    if not args.compare_only:
        from random_internvl import build_workflow_model

        model = build_workflow_model(work / "tiny-internvl")
        cache = work / "cache"
        if cache.exists():
            shutil.rmtree(cache)
        env = run_env()
        prepare(
            work, "gpu", overlay(model_path=model, cache=cache, device="cpu" if args.cpu_dry_run else None, fp32=False)
        )
        fp32 = args.reference_precision == "fp32"
        prepare(work, "ref", overlay(model_path=model, cache=cache, device="cpu", fp32=fp32))
        gpu_env = dict(env, CUDA_VISIBLE_DEVICES="") if args.cpu_dry_run else env
        print(f"== GPU run ({expected}) in {gpu_dir}", flush=True)
        deadline = time.perf_counter() + args.timeout
        record["runs"]["gpu"] = snakemake_all(gpu_dir, args.cores, 0.6 * args.timeout, gpu_env)
        print(f"   {record['runs']['gpu']['seconds']:.0f} s, exit {record['runs']['gpu']['returncode']}", flush=True)
        if record["runs"]["gpu"]["returncode"] == 0:
            print(f"== reference run (cpu, {'fp32' if fp32 else 'bf16'}) in {ref_dir}", flush=True)
            left = max(1.0, deadline - time.perf_counter())
            record["runs"]["reference"] = snakemake_all(ref_dir, args.cores, left, dict(env, CUDA_VISIBLE_DEVICES=""))
            print(
                f"   {record['runs']['reference']['seconds']:.0f} s, exit {record['runs']['reference']['returncode']}",
                flush=True,
            )
    runs_ok = all(r["returncode"] == 0 for r in record["runs"].values()) and (
        args.compare_only or "reference" in record["runs"]
    )
    if runs_ok:
        checks = compare(gpu_dir, ref_dir, expected, tol)
        record["checks"] = checks.items
        record["ok"] = checks.ok
    else:
        record["checks"] = []
        record["ok"] = False
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    width = max([len(c["check"]) for c in record["checks"]] + [10])
    for name, r in record["runs"].items():
        print(f"{name + ' run':<{width}}  {'ok' if r['returncode'] == 0 else 'FAILED'} ({r['seconds']:.0f} s)")
    for c in record["checks"]:
        print(f"{c['check']:<{width}}  {'ok' if c['ok'] else 'MISMATCH'}  {short(c['detail'])}")
    print(f"{'result':<{width}}  {'ok' if record['ok'] else 'FAILED'}; JSON: {out}")
    sys.exit(0 if record["ok"] else 1)


if __name__ == "__main__":
    main()
