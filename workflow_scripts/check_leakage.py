#!/usr/bin/env python
"""Check FACap's images against FashionIQ's val and test images (enhFashionIQ's among them) at three
levels: exact (SHA-256), near-duplicate (dHash Hamming distance, with centre crops) and semantic
(CLIP cosine of the embeddings already computed); and each FACap pair's reference against its target.

Writes every matched pair (both paths, both scores) as CSV and a summary (counts, thresholds, the
leaked image ids) that the facap rule applies. With --action fail, any match stops the run instead.

Example:
    python workflow_scripts/check_leakage.py --manifest data/manifest/images.parquet \\
        --pairs data/pairs/pairs.parquet --embeddings data/embeddings/images.npz data/embeddings/heldout.npz \\
        --facap-sources '["fashion200k", "deepfashion_mm", "catalogue"]' \\
        --settings '{"levels": ["exact", "near_duplicate"], "hash_max_distance": 3, "cosine_min": 0.95,
                     "crop_fractions": [0.04, 0.06, 0.08]}' \\
        --action drop --data synthetic --run-name default \\
        --matches data/leakage/matches.csv --summary data/leakage/leakage.json
"""

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fashionblip2.common.io import atomic_path, write_json_atomic  # noqa: E402
from fashionblip2.common.issues import StopRun  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.datasets.leakage import ACTIONS, LeakageSettings, check_leakage  # noqa: E402
from fashionblip2.pairing.embedding_file import EmbeddingFile  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="the image manifest (Parquet)")
    parser.add_argument("--pairs", required=True, help="the pairs (Parquet): FACap's candidates and enhFashionIQ's")
    parser.add_argument("--embeddings", required=True, nargs="+", help="embedding files (.npz) to read vectors from")
    parser.add_argument("--facap-sources", required=True, help="JSON list: facap.sources")
    parser.add_argument("--settings", required=True, help="JSON: levels, hash_max_distance, cosine_min, crop_fractions")
    parser.add_argument("--action", required=True, choices=ACTIONS, help="fail: any match stops the run")
    add_provenance_arguments(parser)
    parser.add_argument("--matches", required=True, help="output CSV of the matched pairs")
    parser.add_argument("--summary", required=True, help="output JSON: counts, thresholds, leaked ids")
    args = parser.parse_args()
    setup_logging()
    log = logging.getLogger("check_leakage")
    s = json.loads(args.settings)
    settings = LeakageSettings(
        levels=tuple(s["levels"]),
        hash_max_distance=int(s["hash_max_distance"]),
        cosine_min=float(s["cosine_min"]),
        crop_fractions=tuple(float(f) for f in s["crop_fractions"]),
    )
    files = [EmbeddingFile.load(p) for p in args.embeddings]
    embedded = EmbeddingFile.concatenate(files)
    ids, keep = np.unique(embedded.image_ids, return_index=True)  # an image embedded twice: the first
    matches, summary = check_leakage(
        pd.read_parquet(args.manifest),
        pd.read_parquet(args.pairs),
        (ids, embedded.vectors[keep]),
        json.loads(args.facap_sources),
        settings,
    )
    summary = {**summary, "action": args.action, "provenance": provenance(args.data, args.run_name)}
    log.info(
        "%d FACap images vs %d held-out images: %d leaked (%s); %d reference = target pairs",
        summary["facap_images"],
        summary["heldout_images"],
        summary["leaked_images"],
        ", ".join(f"{k} {v}" for k, v in summary["levels"].items()),
        summary["reference_target_pairs"],
    )
    if args.action == "fail" and (summary["leaked_images"] or summary["reference_target_pairs"]):
        for row in matches.head(20).itertuples():
            log.error("%s: %s ~ %s (%s)", row.kind, row.path_a, row.path_b, row.levels)
        raise StopRun(
            f"leakage.action is fail: {summary['leaked_images']} FACap images match a FashionIQ val/test image "
            f"and {summary['reference_target_pairs']} FACap pairs have their target as reference "
            "(set leakage.action to drop or report to build FACap anyway)"
        )
    with atomic_path(args.matches) as tmp:
        matches.to_csv(tmp, index=False)
    write_json_atomic(args.summary, summary)


if __name__ == "__main__":
    run_main(main)
