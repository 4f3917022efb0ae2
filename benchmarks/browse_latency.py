#!/usr/bin/env python
"""``fashionblip2 browse``'s speed: a composed query against its search floor, and the explorer's
first page over a paper-size table, side by side in one run.

Query latency: a gallery of 6,346 vectors (FashionIQ val's size; random unit vectors of the
model's dimension in the app's FAISS flat index), on ``--threads`` CPU threads after warm-up.
Timed, alternating, on the same queries:

- the query as the app answers it (``fashionblip2.browse.search.run_query``): the reference's
  image features from the app's cache (a reference is encoded once, when first used), the text
  tokenised and fused with them in the Q-Former, the heads exported, the index searched, the
  result items built;
- the floor: the index search alone, with the same query vectors.

The reference's first (uncached) image encoding is timed too, for the record. The model is a
run's (``--model``, default models/stage2/cir_mh/seed0 when it exists) or random weights at the tiny or
the paper size (``--config``; speed does not depend on the weights).

Explorer: a run folder written in a temporary directory with a synthetic FACap of 227,680 rows
(texts, captions, the four scores, flags in the score table, enhFashionIQ rows), read by the app
as ``fashionblip2 browse`` reads a run (startup: parquet, merge, the search arrays), then its
first page through the HTTP endpoint (Starlette's TestClient): unfiltered, then filtered by
dataset, category, words and a score range and sorted by a score, then that filter's next page.

    python benchmarks/browse_latency.py                       # the run's model (or tiny), 227,680 rows
    python benchmarks/browse_latency.py --config paper        # paper-size random model on CPU (5 GB)
    python benchmarks/browse_latency.py --config paper --device cuda
    python benchmarks/browse_latency.py --queries 20 --rows 20000   # a quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from _report import report  # noqa: E402
from PIL import Image  # noqa: E402

from fashionblip2.browse.search import LoadedModel, Reference, run_query  # noqa: E402

FASHIONIQ_VAL_GALLERY = 6_346  # FashionIQ val's gallery (the eval_retrieval benchmark's size)
PAPER_FACAP = 227_680
COLOURS = ["red", "blue", "green", "black", "white", "beige", "navy", "grey", "pink", "brown", "yellow", "purple"]
GARMENTS = ["dress", "shirt", "top", "skirt", "pants", "jacket"]
CHANGES = [
    "has shorter sleeves",
    "has long sleeves",
    "is longer",
    "is shorter",
    "has a v-neck",
    "is made of denim",
    "has a floral pattern",
    "is sleeveless",
    "has no pattern",
    "is more fitted",
    "is looser",
    "has stripes",
]
LOCAL_MODEL = Path(__file__).resolve().parents[1] / "models/stage2/cir_mh/seed0"


def modification_texts(rng: np.random.Generator, n: int) -> list[str]:
    """FACap-like texts: a colour change and one to three other changes."""
    out = []
    for _ in range(n):
        a, b = rng.choice(COLOURS, 2, replace=False)
        garment = rng.choice(GARMENTS)
        changes = rng.choice(CHANGES, int(rng.integers(1, 4)), replace=False)
        out.append(f"The {garment} is {a} instead of {b}, " + ", ".join(changes) + ".")
    return out


def build_model(config: str, texts: list[str]):
    """(model, tokenizer, name): the run's model, or random weights at the tiny or paper size with a
    word-level tokenizer of the benchmark's texts."""
    from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
    from fashionblip2.model.configuration import paper_blip2_config, tiny_blip2_config
    from fashionblip2.model.tokenization import load_tokenizer, train_word_level

    if config not in ("tiny", "paper"):
        return FashionBLIP2.from_pretrained(config).eval(), load_tokenizer(config), config
    paper = config == "paper"
    blip2 = paper_blip2_config() if paper else tiny_blip2_config()
    model = FashionBLIP2(
        FashionBLIP2Config(blip2=blip2, num_heads=12, head_dim=256, max_text_length=128 if paper else 32)
    ).eval()
    tokenizer = train_word_level(texts, blip2.qformer_config.vocab_size, model.config.max_text_length)
    name = "paper size (ViT-g/14, Q-Former 768 x 12), random" if paper else "tiny, random"
    return model, tokenizer, name


def percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "mean": float(np.mean(ms))}


def query_latency(args: argparse.Namespace, rng: np.random.Generator) -> dict:
    import faiss

    texts = modification_texts(rng, args.warmup + args.queries)
    model, tokenizer, name = build_model(args.config, texts)
    dim = model.heads * model.config.head_dim
    vectors = rng.standard_normal((args.gallery, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    ids = [f"gallery:{i}" for i in range(args.gallery)]
    device = torch.device(args.device)
    model = model.to(device)
    loaded = LoadedModel("benchmark", model, tokenizer, index, ids, device)
    size = loaded.image_size
    picture = Image.fromarray(rng.integers(0, 256, (size + 37, size, 3), dtype=np.uint8))
    reference = Reference("id:reference", "reference", lambda: picture)

    start = time.perf_counter()
    loaded.features(reference.key, reference.load)  # what the app does on a reference's first query
    image_ms = 1000 * (time.perf_counter() - start)
    for text in texts[: args.warmup]:
        run_query([loaded], reference, text, args.k, ids[0])
    query_ms, floor_ms = [], []
    for text in texts[args.warmup :]:
        start = time.perf_counter()
        run_query([loaded], reference, text, args.k, None)
        query_ms.append(1000 * (time.perf_counter() - start))
        vector = loaded.encode(loaded.features(reference.key, reference.load), text)
        start = time.perf_counter()
        loaded.search(vector, args.k)
        floor_ms.append(1000 * (time.perf_counter() - start))
    return {
        "model": name,
        "device": str(device),
        "dim": dim,
        "max_text_length": model.config.max_text_length,
        "image_size": size,
        "first_image_encoding_ms": image_ms,
        "query_ms": percentiles(query_ms),
        "floor_ms": percentiles(floor_ms),
        "query_runs_ms": query_ms,
    }


def synthetic_run(root: Path, rows: int, rng: np.random.Generator) -> None:
    """A run folder the app can open: a manifest, a FACap of ``rows`` triplets and its score table."""
    images = 20_000
    categories = np.array(GARMENTS)
    manifest = pd.DataFrame(
        {
            "image_id": [f"fashion200k:{i}" for i in range(images)],
            "path": [f"data/images/{i // 1000}/{i}.jpeg" for i in range(images)],
            "source": "fashion200k",
            "category": categories[np.arange(images) % len(categories)],
            "split": "all",
        }
    )
    (root / "data/manifest").mkdir(parents=True)
    manifest.to_parquet(root / "data/manifest/images.parquet")
    ref, tgt = rng.integers(0, images, rows), rng.integers(0, images, rows)
    texts = modification_texts(rng, 2_000)  # repeated: building 227,680 distinct texts would time the benchmark
    captions = [f"A {c} {g} with a floral pattern. It has short sleeves." for c in COLOURS for g in GARMENTS]
    facap = pd.DataFrame(
        {
            "reference_id": manifest["image_id"].to_numpy()[ref],
            "target_id": manifest["image_id"].to_numpy()[tgt],
            "source": "fashion200k",
            "category": categories[ref % len(categories)],
            "text": np.array(texts)[rng.integers(0, len(texts), rows)],
            "reference_caption": np.array(captions)[rng.integers(0, len(captions), rows)],
            "target_caption": np.array(captions)[rng.integers(0, len(captions), rows)],
            "caption_faithfulness": rng.standard_normal(rows),
            "grounding": rng.choice([0.0, 0.5, 0.8, 1.0], rows),
            "discriminative": rng.random(rows),
            "form": rng.choice([0.0, 1.0], rows, p=[0.03, 0.97]),
        }
    ).drop_duplicates(["reference_id", "target_id"])
    (root / "data/facap").mkdir(parents=True)
    facap.to_parquet(root / "data/facap/triplets.parquet")
    scores = facap.assign(
        dataset="facap",
        form_issue=np.where(facap["form"] == 0, "copies_a_caption", ""),
        grounding_issue=np.where(facap["grounding"] == 0, "contradicts_the_captions", ""),
    )
    enh = scores.head(6_000).assign(dataset="enhfashioniq", source="fashioniq")
    (root / "data/scores").mkdir(parents=True)
    pd.concat([scores, enh], ignore_index=True).to_parquet(root / "data/scores/triplets.parquet")


def explorer(args: argparse.Namespace, rng: np.random.Generator) -> dict:
    from starlette.testclient import TestClient

    from fashionblip2.browse.app import Run, create_app

    filtered = {
        "dataset": "facap",
        "category": "dress",
        "q": "red sleeves",
        "min_grounding": "0.5",
        "sort": "discriminative",
        "order": "desc",
        "size": "50",
    }
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_run(Path(tmp), args.rows, rng)
        start = time.perf_counter()
        run = Run(tmp, torch.device("cpu"))
        startup = time.perf_counter() - start
        client = TestClient(create_app(run))

        def timed(params: dict) -> tuple[float, dict]:
            start = time.perf_counter()
            response = client.get("/api/triplets", params=params)
            elapsed = time.perf_counter() - start
            assert response.status_code == 200, response.text
            return elapsed, response.json()

        first, page = timed({"size": "50"})
        first_filtered, filtered_page = timed(filtered)
        next_page, _ = timed({**filtered, "page": "1"})
        return {
            "rows": len(run.triplets),
            "startup_seconds": startup,
            "first_page_seconds": first,
            "first_page_rows": len(page["rows"]),
            "first_filtered_page_seconds": first_filtered,
            "filtered_total": filtered_page["total"],
            "filter": filtered,
            "next_filtered_page_seconds": next_page,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config",
        default=str(LOCAL_MODEL) if LOCAL_MODEL.is_dir() else "tiny",
        help="a FashionBLIP-2 folder, or tiny / paper (random weights)",
    )
    parser.add_argument("--gallery", type=int, default=FASHIONIQ_VAL_GALLERY)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the model runs (the search is FAISS on the CPU)")
    parser.add_argument("--rows", type=int, default=PAPER_FACAP, help="the explorer's synthetic FACap")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/out/browse_latency.json")
    args = parser.parse_args()

    import faiss
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    rng = np.random.default_rng(args.seed)
    query = query_latency(args, rng)
    table = explorer(args, rng)
    q, f = query["query_ms"], query["floor_ms"]
    record = {
        "params": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            # a machine shared with other work slows either side: the load says how much to trust a run
            "load_average_at_start": load_at_start,
        },
        "query": query,
        "x_floor_p50": q["p50"] / f["p50"],
        "x_floor_p95": q["p95"] / f["p95"],
        "target_p95_ms": 100.0,
        "explorer": table,
        "target_first_page_seconds": 1.0,
    }
    report(
        [
            (
                "model",
                f"{query['model']} on {query['device']} ({query['dim']}-d exports, "
                f"{query['max_text_length']} text tokens at most)",
            ),
            ("gallery", f"{args.gallery:,} vectors, FAISS flat inner product, top {args.k}, {args.threads} threads"),
            ("machine load at start (1-minute average)", f"{load_at_start:.2f} on {os.cpu_count()} CPUs"),
            ("first image encoding (once per reference)", f"{query['first_image_encoding_ms']:.1f} ms"),
            (f"query: text + fusion + search, {args.queries} runs", f"p50 {q['p50']:.2f} ms, p95 {q['p95']:.2f} ms"),
            ("floor: the search alone", f"p50 {f['p50']:.3f} ms, p95 {f['p95']:.3f} ms"),
            (
                "ratio",
                f"{record['x_floor_p50']:.1f}x the floor at p50, {record['x_floor_p95']:.1f}x at p95 "
                f"(target: p95 <= 100 ms)",
            ),
            (f"explorer startup ({table['rows']:,} rows)", f"{table['startup_seconds']:.2f} s"),
            ("first page, unfiltered (HTTP)", f"{1000 * table['first_page_seconds']:.0f} ms (target <= 1 s)"),
            (
                "first page, filtered and sorted",
                f"{1000 * table['first_filtered_page_seconds']:.0f} ms ({table['filtered_total']:,} rows)",
            ),
            ("its next page (cached order)", f"{1000 * table['next_filtered_page_seconds']:.0f} ms"),
        ],
        record,
        args.out,
    )


if __name__ == "__main__":
    main()
