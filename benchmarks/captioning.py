#!/usr/bin/env python
"""Captioning throughput of the project's ``transformers`` caption backend on an InternVL of the
paper's size (random weights, nothing downloaded): images per second at several batch sizes,
peak GPU memory, and the ratio to the paper's rate.

The paper captioned 227,680 images in 41 A100-hours: 1.54 images per GPU-second. The target is
at least 10 times that on one GPU.

    python benchmarks/captioning.py                                   # paper size (~8 B) on CUDA
    python benchmarks/captioning.py --batch-sizes 32,128,256 --batches 2
    python benchmarks/captioning.py --size tiny --device cpu --batch-sizes 1,4   # CPU dry run

What is timed is the backend's own ``generate`` (the code path of the caption rule): reading the
JPEGs, InternVL's processor (chat template, 448 px tiles), batched greedy generation with left
padding, decoding. Images are synthetic 448 x 448 JPEGs (one tile, 256 image tokens each); the
prompt is the project's caption prompt (prompts/caption.yaml).

Every image gets exactly ``--max-new-tokens`` new tokens (128, the paper's setting): a random model
may emit the end-of-turn token at any step, and a batch that stops early would flatter the rate.
The model's generation_config gets ``min_new_tokens = max_new_tokens`` (the backend passes only
max_new_tokens and do_sample=False, so generate() takes the rest from generation_config): the
end token's logit is masked until the last step. The length of every generated batch is checked.

``--load memory`` (default for paper) hands the model built on the GPU to the backend object
directly (the attributes its __init__ sets), skipping a 16 GB save and reload that would time
nothing of captioning; ``--load folder`` saves the model (bf16 safetensors on GPU) and loads it
through the backend's __init__, as a user's run does.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _report import report  # noqa: E402
from PIL import Image  # noqa: E402
from random_internvl import SIZES, build, parameter_count, save  # noqa: E402

from fashionblip2.annotation.backends import Request, TransformersCaptioner  # noqa: E402
from fashionblip2.annotation.prompts import PromptTemplate  # noqa: E402

# The paper's rate (FACap, §3.1): 227,680 images captioned in 41 A100-hours.
PAPER_IMAGES = 227_680
PAPER_GPU_HOURS = 41
PAPER_IMAGES_PER_S = round(PAPER_IMAGES / (PAPER_GPU_HOURS * 3600), 2)  # 1.54
TARGET_RATIO = 10.0
MODEL_SHAPES = {"paper": "InternVL3-8B-hf shapes", "tiny": "tiny"}
PROMPT = HERE.parent / "prompts" / "caption.yaml"
# Product texts of different lengths, so that batches are padded (on the left) as real ones are.
PRODUCT_TEXTS = [
    "Floral midi dress",
    "Women's slim-fit cotton shirt with long sleeves and a point collar, machine washable",
    "Knitted top",
    "Relaxed linen-blend maxi dress with a V-neck, short sleeves, side pockets and a tie belt at the waist",
]


def gpu_required(message: str) -> None:
    print(f"captioning.py: {message}", file=sys.stderr)
    sys.exit(2)


def make_images(folder: Path, n: int, side: int, seed: int = 0) -> list[str]:
    """``n`` smooth random colour images (low-resolution noise upsampled), saved as JPEGs: they decode
    and compress like photos, unlike per-pixel noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (14, 14, 3), dtype=np.uint8))
        path = folder / f"{i:04d}.jpg"
        small.resize((side, side), Image.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def requests_for(paths: list[str], n: int) -> list[Request]:
    template = PromptTemplate.load(PROMPT)
    out = []
    for i in range(n):
        messages = template.render(
            category="dress", product_text=PRODUCT_TEXTS[i % len(PRODUCT_TEXTS)], attributes="colour: red"
        )
        out.append(Request({"messages": messages}, {"path": paths[i % len(paths)]}))
    return out


def in_memory_captioner(
    model, processor, name: str, device: torch.device, max_new_tokens: int, batch_size: int
) -> TransformersCaptioner:
    """The backend object around a model already on ``device``: the attributes its __init__ sets, so
    that its generate() (the timed code) runs unchanged. tests/test_benchmarks.py runs this path and
    the folder path on the tiny model, so a change to those attributes fails there first."""
    captioner = TransformersCaptioner.__new__(TransformersCaptioner)
    captioner.model = name
    captioner.device = device
    captioner.processor = processor
    captioner.net = model
    captioner.max_new_tokens = max_new_tokens
    captioner.batch_size = batch_size
    return captioner


class GenerateProbe:
    """Wraps the model's generate() to record each batch's new-token count (the backend keeps the
    output tensor to itself), its padded input length and the image tokens per image."""

    def __init__(self, net) -> None:
        self.original = net.generate
        self.image_token_id = net.config.image_token_id
        self.new_tokens: list[int] = []
        self.prompt_tokens: list[int] = []
        self.image_tokens: list[float] = []
        net.generate = self

    def __call__(self, *args: Any, **kwargs: Any):
        out = self.original(*args, **kwargs)
        ids = kwargs["input_ids"]
        self.new_tokens.append(out.shape[1] - ids.shape[1])
        self.prompt_tokens.append(ids.shape[1])
        self.image_tokens.append(float((ids == self.image_token_id).sum(1).float().mean()))
        return out


def count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.1f} M"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_captioner(args: argparse.Namespace, device: torch.device, work: Path) -> tuple[TransformersCaptioner, int]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # what the backend loads in
    model, processor = build(args.size, device=device, dtype=dtype, seed=args.seed)
    parameters = parameter_count(model)
    name = f"internvl-random-{args.size}"
    if args.load == "memory":
        return in_memory_captioner(model, processor, name, device, args.max_new_tokens, 1), parameters
    folder = save(work / name, model, processor)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return TransformersCaptioner(str(folder), max_new_tokens=args.max_new_tokens, device=str(device)), parameters


def run_size(captioner: TransformersCaptioner, requests: list[Request], batch_size: int, device: torch.device):
    captioner.batch_size = batch_size
    texts: dict[int, str | None] = {}
    errors = []

    def on_result(i: int, text: str | None, error: str | None) -> None:
        texts[i] = text
        if error:
            errors.append(error)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    captioner.generate(requests, on_result)
    sync(device)
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak, texts, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="paper")
    parser.add_argument("--device", default="cuda", help="cuda (default; fails without a GPU) or cpu (tiny only)")
    parser.add_argument(
        "--batch-sizes", default=None, help="comma-separated; default 16,64,128,256 (paper), 1,4 (tiny)"
    )
    parser.add_argument("--batches", type=int, default=2, help="timed batches per batch size")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument(
        "--load", choices=["memory", "folder"], default=None, help="default: memory (paper), folder (tiny)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="folder for the images and a saved model (default: a temp folder)")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds: start no further batch size after this (the JSON is written after each size anyway)",
    )
    parser.add_argument("--out", default="benchmarks/out/captioning.json")
    args = parser.parse_args()
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        gpu_required(
            "no CUDA device here: this benchmark measures GPU captioning. For a CPU dry run: --size tiny --device cpu"
        )
    if args.size == "paper" and device.type != "cuda":
        gpu_required("--size paper (8 B parameters) needs a CUDA GPU; on CPU use --size tiny")
    args.load = args.load or ("memory" if args.size == "paper" else "folder")
    default_sizes = "16,64,128,256" if args.size == "paper" else "1,4"
    batch_sizes = [int(b) for b in (args.batch_sizes or default_sizes).split(",")]

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        paths = make_images(work / "images", min(64, max(batch_sizes) * args.batches), args.image_size, args.seed)
        t = time.perf_counter()
        captioner, parameters = make_captioner(args, device, work)
        build_s = time.perf_counter() - t
        net = captioner.net
        # Exactly max_new_tokens per image: the end token is masked until then (see the docstring).
        net.generation_config.min_new_tokens = args.max_new_tokens
        probe = GenerateProbe(net)

        # Warm-up (kernels, allocator, the processor's first call): one small batch, a few tokens.
        captioner.max_new_tokens = net.generation_config.min_new_tokens = 4
        run_size(captioner, requests_for(paths, batch_sizes[0]), batch_sizes[0], device)
        captioner.max_new_tokens = net.generation_config.min_new_tokens = args.max_new_tokens
        for seen in (probe.new_tokens, probe.prompt_tokens, probe.image_tokens):
            seen.clear()

        context = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "size": args.size,
            "model": f"InternVLForConditionalGeneration, random weights ({MODEL_SHAPES[args.size]})",
            "parameters": parameters,
            "dtype": "bfloat16" if device.type == "cuda" else "float32",
            "attention": net.config._attn_implementation,
            "load": args.load,
            "build_seconds": build_s,
            "image_size": args.image_size,
            "max_new_tokens": args.max_new_tokens,
            "forced_new_tokens": "generation_config.min_new_tokens = max_new_tokens (end token masked)",
            "batches_per_size": args.batches,
        }
        results: list[dict[str, Any]] = []
        for bs in batch_sizes:
            if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
                results.append({"batch_size": bs, "status": "skipped (time budget)"})
                continue
            requests = requests_for(paths, bs * args.batches)
            try:
                seconds, peak, texts, errors = run_size(captioner, requests, bs, device)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                results.append({"batch_size": bs, "status": "out of memory"})
                continue
            results.append(
                {
                    "batch_size": bs,
                    "status": "ok",
                    "images": len(requests),
                    "seconds": seconds,
                    "images_per_s": len(requests) / seconds,
                    "new_tokens_per_s": len(requests) * args.max_new_tokens / seconds,
                    "peak_gpu_memory_gib": peak,
                    "captions": sum(1 for v in texts.values() if v),
                    "errors": len(errors),
                }
            )
            # Written after every size: a run stopped at a time limit still leaves what it measured.
            write_json(summarise(context, results, probe, complete=False), args.out)
    record = summarise(context, results, probe, complete=True)
    if record["best"] is None:
        print("captioning.py: no batch size ran to the end (out of memory or time)", file=sys.stderr)
        write_json(record, args.out)
        sys.exit(1)
    if not record["every_batch_had_max_new_tokens"]:
        print("captioning.py: some batch did not generate max_new_tokens tokens", file=sys.stderr)
    report(table(record), record, args.out)
    if not record["every_batch_had_max_new_tokens"]:
        sys.exit(1)


def summarise(context: dict[str, Any], results: list[dict[str, Any]], probe: GenerateProbe, complete: bool):
    ok = [r for r in results if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["images_per_s"]) if ok else None
    ratio = best["images_per_s"] / PAPER_IMAGES_PER_S if best else None
    return {
        **context,
        "complete": complete,
        "image_tokens_per_image": float(np.mean(probe.image_tokens)) if probe.image_tokens else None,
        "input_tokens_per_image_padded": float(np.mean(probe.prompt_tokens)) if probe.prompt_tokens else None,
        "every_batch_had_max_new_tokens": bool(probe.new_tokens)
        and all(n == context["max_new_tokens"] for n in probe.new_tokens),
        "results": results,
        "best": {"batch_size": best["batch_size"], "images_per_s": best["images_per_s"]} if best else None,
        "paper_images_per_s": PAPER_IMAGES_PER_S,
        "paper_rate_source": f"{PAPER_IMAGES:,} images in {PAPER_GPU_HOURS} A100-hours",
        "ratio_to_paper": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio is not None and ratio >= TARGET_RATIO,
    }


def table(record: dict[str, Any]) -> list[tuple[str, str]]:
    exact = record["every_batch_had_max_new_tokens"]
    rows = [
        ("device", record["device"]),
        (
            "model",
            f"InternVL ({record['size']}), random weights, {count(record['parameters'])} parameters, {record['dtype']}",
        ),
        ("through", f"the transformers caption backend (load: {record['load']})"),
        (
            "new tokens per image",
            f"{record['max_new_tokens']}, forced (checked on every batch: {'yes' if exact else 'NO'})",
        ),
        ("image tokens per image", f"{record['image_tokens_per_image']:.0f}"),
    ]
    for r in record["results"]:
        if r["status"] != "ok":
            rows.append((f"batch {r['batch_size']}", r["status"]))
            continue
        mem = f", peak {r['peak_gpu_memory_gib']:.1f} GiB" if r["peak_gpu_memory_gib"] is not None else ""
        rate = f"{r['images_per_s']:.2f} images/s ({r['new_tokens_per_s']:.0f} new tokens/s"
        rows.append((f"batch {r['batch_size']}", f"{rate}, {r['images']} images{mem})"))
    best = record["best"]
    rows += [
        ("best", f"{best['images_per_s']:.2f} images/s at batch {best['batch_size']}"),
        ("paper's rate", f"{PAPER_IMAGES_PER_S} images/s per GPU ({record['paper_rate_source']})"),
        ("ratio", f"{record['ratio_to_paper']:.2f}x the paper's rate (target {TARGET_RATIO:.0f}x)"),
    ]
    return rows


def write_json(record: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
