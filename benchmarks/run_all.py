#!/usr/bin/env python
"""Run every benchmark this machine can run and write one JSON file and one Markdown table.

    python benchmarks/run_all.py            # quick sizes (pairing, leakage on 20,000 vectors): a few minutes on 2 cores
    python benchmarks/run_all.py --full     # paper-scale pairing and leakage as well (about 12 more minutes)

Each benchmark runs in its own process and writes its JSON under benchmarks/out/; a benchmark
that fails is reported as failed, and the others still run. The training step runs the paper
configuration on a GPU and the tiny one on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


# Sizes for a smoke run (CI): every benchmark's code path, in seconds.
SMOKE = {
    "pairing": ["--n", "3000", "--groups", "3"],
    "api_concurrency": ["--requests", "32", "--serial-requests", "4", "--concurrency", "8"],
    "embedding": ["--images", "64", "--serial-images", "8", "--workers", "0"],
    "eval_retrieval": ["--gallery", "200", "--queries", "20", "--baseline-queries", "1"],
    "train_step": ["--steps", "1", "--batch-size", "4", "--micro-batch", "2", "--device", "cpu"],
    "leakage": ["--n-facap", "2000", "--n-heldout", "500", "--dim", "64", "--planted", "10", "--repeats", "1"],
}


def benchmarks(full: bool, smoke: bool) -> list[tuple[str, list[str], str]]:
    sizes = {"pairing": [] if full else ["--n", "20000"], "leakage": [] if full else ["--n-facap", "20000"]}
    if smoke:
        sizes = SMOKE
    return [
        (name, [f"{name}.py", *sizes.get(name, [])], f"{name}.json")
        for name in ("pairing", "api_concurrency", "embedding", "eval_retrieval", "train_step", "leakage")
    ]


def headline(name: str, r: dict) -> tuple[str, str]:
    """(the measured figure, the side-by-side ratio) of one benchmark."""
    if name == "pairing":
        best = min(r["results"], key=lambda x: x["seconds"])
        return f"{best['method']}: {best['seconds']:.1f} s for {r['params']['n']:,} vectors", (
            f"{best['x_floor']:.2f}x the matmul floor; {best.get('speedup_vs_numpy', float('nan')):.2f}x NumPy"
        )
    if name == "api_concurrency":
        return f"{r['concurrent_rps']:.0f} requests/s at concurrency {r['concurrency']}", f"{r['speedup']:.1f}x serial"
    if name == "embedding":
        return (
            f"{r['batched_images_per_s']:.0f} images/s ({r['model']}, {r['device']})",
            f"{r['speedup']:.1f}x one by one",
        )
    if name == "eval_retrieval":
        return (
            f"gallery {r['gallery']:,}, {r['queries']:,} queries: {r['encode_once_and_faiss_s']:.1f} s",
            f"{r['speedup']:.0f}x pairwise model scoring",
        )
    if name == "train_step":
        mem = f", {r['peak_gpu_memory_gib']:.1f} GiB" if r.get("peak_gpu_memory_gib") else ""
        return (
            f"{r['config']}, batch {r['batch_size']}: {r['seconds_per_step']:.2f} s/step{mem}",
            f"MFU {100 * r['mfu']:.1f} % of the measured matmul rate",
        )
    if name == "leakage":
        return (
            f"cosine check, {r['params']['n_facap']:,} x {r['params']['n_heldout']:,}: {r['check_seconds']:.1f} s",
            f"{r['x_floor']:.2f}x the GEMM floor; planted found {r['planted_found']}/{r['planted']}",
        )
    return "", ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="paper-scale pairing")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every benchmark runs (CI)")
    parser.add_argument("--only", default="", help="comma-separated subset of benchmark names")
    parser.add_argument("--out-dir", default=str(OUT))
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(filter(None, args.only.split(",")))
    rows, record = (
        [],
        {
            "machine": {
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            },
            "benchmarks": {},
        },
    )
    for name, command, out in benchmarks(args.full, args.smoke):
        if wanted and name not in wanted:
            continue
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / command[0]), *command[1:], "--out", str(out_dir / out)])
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            record["benchmarks"][name] = {"status": "failed", "returncode": proc.returncode}
            rows.append((name, "failed", f"exit status {proc.returncode}", f"{seconds:.0f} s"))
            continue
        result = json.loads((out_dir / out).read_text())
        record["benchmarks"][name] = {"status": "ok", "wall_s": seconds, "result": result}
        rows.append((name, *headline(name, result), f"{seconds:.0f} s"))
    table = ["| benchmark | measured | side by side | wall time |", "|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    (out_dir / "suite.json").write_text(json.dumps(record, indent=2) + "\n")
    (out_dir / "suite.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    if any(r[1] == "failed" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
