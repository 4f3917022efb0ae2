#!/usr/bin/env python
"""Embedding throughput of the `embed` stage (open_clip image encoder over image files): images
per second with the configured batch and loader workers, next to one image at a time, in one run.

    python benchmarks/embedding.py                       # FACap-tiny-ViT, 1,024 JPEGs of 64 px
    python benchmarks/embedding.py --model ViT-B-32 --size 224 --images 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fashionblip2.pairing.embedding import embed_images, load_image_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="FACap-tiny-ViT")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--serial-images", type=int, default=64, help="images embedded one at a time (baseline)")
    parser.add_argument("--out", default="benchmarks/out/embedding.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, preprocess = load_image_encoder(args.model, device="auto")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.images):
            p = Path(tmp) / f"{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (args.size, args.size, 3), dtype=np.uint8)).save(p, quality=90)
            paths.append(str(p))
        embed_images(paths[:8], model, preprocess, batch_size=8, progress=False)  # warm-up
        t = time.perf_counter()
        embed_images(paths[: args.serial_images], model, preprocess, batch_size=1, workers=0, progress=False)
        serial = args.serial_images / (time.perf_counter() - t)
        t = time.perf_counter()
        result = embed_images(
            paths, model, preprocess, batch_size=args.batch_size, workers=args.workers, progress=False
        )
        batched = args.images / (time.perf_counter() - t)
    assert len(result.vectors) == args.images
    device = str(next(model.parameters()).device)
    print(f"embedding {args.images} images of {args.size} px with {args.model} on {device}")
    print(f"{'mode':36} {'images/s':>9} {'x serial':>9}")
    print(f"{'one at a time':36} {serial:9.1f} {1.0:9.2f}")
    print(f"{f'batch {args.batch_size}, {args.workers} loader workers':36} {batched:9.1f} {batched / serial:9.2f}")
    record = {
        "benchmark": "embedding",
        "model": args.model,
        "device": device,
        "images": args.images,
        "size": args.size,
        "serial_images_per_s": serial,
        "batched_images_per_s": batched,
        "speedup": batched / serial,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
