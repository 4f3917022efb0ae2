#!/usr/bin/env python
"""Pairing at paper scale: the project's exact pairing against FAISS and a plain NumPy baseline.

Pairs synthetic L2-normalised vectors (default: 227,680 x 768 in 6 categories, the size of
FACap's image pool) exactly as the `pair` rule does: top-20 among other items' images in the
same category (float64 re-scored, so that it is the same for every engine), one partner drawn at
random from it as a set. Prints, in one run:

- seconds and peak memory (RSS) of the project's pairing (`blocked` engine), of FAISS
  `IndexFlatIP` exact search (`faiss` engine), and of a NumPy chunked matmul + argpartition baseline;
- the floor: FLOPs of all the within-category products (2 n^2 d per category) over this machine's
  float32 matrix-multiply rate, measured in the same run;
- whether the three methods chose the same partners.

Each method runs in its own process, so that its peak memory is its own. Writes JSON.

    python benchmarks/pairing.py                      # paper scale, about 10 minutes on 2 cores
    python benchmarks/pairing.py --n 20000 --out benchmarks/out/pairing-small.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAPER_N, PAPER_DIM, PAPER_GROUPS = 227_680, 768, 6


def make_data(n: int, dim: int, groups: int, seed: int):
    """Clustered unit vectors (like image embeddings), items of 1-3 views, split into categories."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 200), dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):  # chunks keep the float32 generation's temporaries small
        end = min(start + 65536, n)
        x[start:end] = centres[rng.integers(len(centres), size=end - start)]
        x[start:end] += 1.5 * rng.standard_normal((end - start, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    item = np.cumsum(rng.random(n) < 0.5)  # a new item starts with probability 1/2: 1-3 views mostly
    category = np.minimum((np.arange(n) * groups) // n, groups - 1)
    return x, item, category


def pairs_project(x, item, category, top_k, seed, engine):
    import pandas as pd

    from fashionblip2.pairing.topk import pair_groups

    images = pd.DataFrame(
        {"image_id": [f"img{i:07d}" for i in range(len(x))], "source": "bench", "category": category, "item_id": item}
    )
    pairs, _ = pair_groups(images, x, top_k=top_k, seed=seed, engine=engine, progress=False)
    return dict(zip(pairs.reference_id, pairs.target_id, strict=True))


def pairs_numpy(x, item, category, top_k, seed, chunk=2048, margin=8, rescore_rows=256):
    """The plain way: per category, chunks of queries times all, same-item entries masked, argpartition.

    Then the project's canonical rule, written out independently: the top_k + margin shortlist
    re-scored in float64 (exact products, NumPy's fixed-order sum over the last axis), the top-k by
    (score desc, index asc), and the partner drawn from it sorted by index (= image id here).
    Unlike the project, it does not check whether a near-tie straddles the shortlist's end.
    """
    from fashionblip2.pairing.topk import draw_rank

    out = {}
    for c in np.unique(category):
        rows = np.nonzero(category == c)[0]
        xs, its = x[rows], item[rows]
        kk = min(top_k + margin, len(rows) - 1)
        for start in range(0, len(rows), chunk):
            end = min(start + chunk, len(rows))
            sims = xs[start:end] @ xs.T
            sims[its[start:end, None] == its[None, :]] = -np.inf
            part = np.argpartition(-sims, kk, axis=1)[:, :kk]
            s64 = np.empty(part.shape)
            for r0 in range(0, end - start, rescore_rows):
                r1 = min(r0 + rescore_rows, end - start)
                q = xs[start + r0 : start + r1, None, :].astype(np.float64)
                s64[r0:r1] = (xs[part[r0:r1]].astype(np.float64) * q).sum(axis=-1)
            s64[its[part] == its[start:end, None]] = -np.inf
            order = np.lexsort((part, -s64), axis=1)[:, :top_k]
            top = np.sort(np.take_along_axis(part, order, 1), axis=1)
            for q in range(end - start):
                ref = f"img{rows[start + q]:07d}"
                out[ref] = f"img{rows[top[q, draw_rank(seed, ref, top_k)]]:07d}"
    return out


def worker(method: str, args: dict, queue) -> None:
    x, item, category = make_data(args["n"], args["dim"], args["groups"], args["seed"])
    import pandas  # noqa: F401  (imports are not part of the timing)

    import fashionblip2.pairing.topk  # noqa: F401

    t0 = time.perf_counter()
    if method == "numpy":
        pairs = pairs_numpy(x, item, category, args["top_k"], args["seed"])
    else:
        pairs = pairs_project(x, item, category, args["top_k"], args["seed"], method)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # hash() of str is salted per process; the digests must compare across processes.
    digest = hashlib.sha256(json.dumps(sorted(pairs.items())).encode()).hexdigest()
    queue.put({"method": method, "seconds": seconds, "peak_rss_mb": peak_mb, "pairs": len(pairs), "digest": digest})


def run_isolated(method: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=worker, args=(method, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def matmul_rate(dim: int, size: int = 4096, repeats: int = 5) -> float:
    """Best float32 matrix-multiply rate (FLOP/s) of NumPy's BLAS on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, dim), dtype=np.float32)
    b = rng.standard_normal((size, dim), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    np.matmul(a, b.T, out=out)
    best = min(_timed(lambda: np.matmul(a, b.T, out=out)) for _ in range(repeats))
    return 2 * size * size * dim / best


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=PAPER_N, help="vectors (default: FACap's 227,680 images)")
    parser.add_argument("--dim", type=int, default=PAPER_DIM)
    parser.add_argument("--groups", type=int, default=PAPER_GROUPS, help="categories")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="blocked,faiss,numpy", help="comma-separated subset")
    parser.add_argument("--out", default="benchmarks/out/pairing.json")
    args = parser.parse_args()
    params = {k: getattr(args, k) for k in ("n", "dim", "groups", "top_k", "seed")}

    _, _, category = make_data(min(args.n, 10), args.dim, 1, 0)  # warm imports only
    group_sizes = np.bincount(np.minimum((np.arange(args.n) * args.groups) // args.n, args.groups - 1))
    flops = float(sum(2.0 * int(g) ** 2 * args.dim for g in group_sizes))
    rate = matmul_rate(args.dim)
    floor = flops / rate

    results = [run_isolated(m, params) for m in args.methods.split(",")]
    by = {r["method"]: r for r in results}
    names = {
        "blocked": "project (blocked, symmetric)",
        "faiss": "FAISS IndexFlatIP",
        "numpy": "NumPy matmul + argpartition",
    }
    print(f"\npairing {args.n:,} x {args.dim} in {args.groups} categories, top-{args.top_k}")
    print(f"float32 matmul rate: {rate / 1e9:.1f} GFLOP/s; all-pairs products: {flops / 1e12:.2f} TFLOP")
    print(f"floor = products / rate = {floor:.1f} s")
    print(f"{'method':32} {'seconds':>9} {'x floor':>8} {'peak RSS MB':>12} {'numpy / this':>13}")
    for r in results:
        speedup = by["numpy"]["seconds"] / r["seconds"] if "numpy" in by else float("nan")
        row = f"{names[r['method']]:32} {r['seconds']:9.1f} {r['seconds'] / floor:8.2f}"
        print(f"{row} {r['peak_rss_mb']:12.0f} {speedup:13.2f}")
    agree = len({r["digest"] for r in results}) == 1
    print(f"all methods chose the same partners: {agree}")

    record = {
        "benchmark": "pairing",
        "params": params,
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "matmul_gflops": rate / 1e9,
        "tflop_all_pairs": flops / 1e12,
        "floor_seconds": floor,
        "results": [{k: v for k, v in r.items() if k != "digest"} | {"x_floor": r["seconds"] / floor} for r in results],
        "same_partners": agree,
    }
    if "numpy" in by:
        for r in record["results"]:
            r["speedup_vs_numpy"] = by["numpy"]["seconds"] / r["seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
