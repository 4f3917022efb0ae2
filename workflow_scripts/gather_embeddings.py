#!/usr/bin/env python
"""Join the embedding shards into one file and write a report (counts, model, failures).

Example:
    python workflow_scripts/gather_embeddings.py --shards data/embeddings/shards/0.npz data/embeddings/shards/1.npz \\
        --out data/embeddings/images.npz --report data/embeddings/report.json \\
        --model FACap-tiny-ViT --pretrained '' --data synthetic --run-name default
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from fashionblip2.common.io import write_json_atomic  # noqa: E402
from fashionblip2.common.provenance import provenance  # noqa: E402
from fashionblip2.pairing.embedding_file import EmbeddingFile  # noqa: E402
from fashionblip2.workflow_cli import add_provenance_arguments, run_main, setup_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True, help="shard files, in order")
    parser.add_argument("--out", required=True, help="output: all embeddings (.npz)")
    parser.add_argument("--report", required=True, help="output: counts and failures (JSON)")
    parser.add_argument("--model", required=True, help="recorded in the report")
    parser.add_argument("--pretrained", required=True, help="recorded in the report")
    add_provenance_arguments(parser)
    args = parser.parse_args()
    setup_logging()
    merged = EmbeddingFile.concatenate([EmbeddingFile.load(p) for p in args.shards])
    merged.save(args.out)
    report = {
        "embedded": int(len(merged.image_ids)),
        "dim": int(merged.vectors.shape[1]) if merged.vectors.ndim == 2 else 0,
        "shards": len(args.shards),
        "model": args.model,
        "pretrained": args.pretrained or "random init",
        "skipped": int(len(merged.failed_ids)),
        "failures": dict(zip(merged.failed_ids.tolist(), merged.failed_reasons.tolist(), strict=True)),
        "provenance": provenance(args.data, args.run_name),
    }
    write_json_atomic(args.report, report)
    logging.getLogger("gather_embeddings").info(
        "%d embeddings of dimension %d, %d skipped", report["embedded"], report["dim"], report["skipped"]
    )


if __name__ == "__main__":
    run_main(main)
