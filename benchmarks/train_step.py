#!/usr/bin/env python
"""One FashionBLIP-2 training step at the paper's contrastive batch: seconds per step, samples per
second, peak GPU memory, and model FLOPs utilisation (MFU) against the bf16 matrix-multiply rate
measured in the same run.

On a GPU it builds the paper configuration with random weights (ViT-g/14 at 224 px with adapters
factor 16, Q-Former 12 x 768, 12 heads of 256, 128 text tokens; nothing downloaded) and runs stage-1
steps (L_CIR + L_CTR, adapters and Q-Former training) at batch 512 in bf16 autocast, with gradient
checkpointing and the gradient cache (micro-batches). On CPU it runs the same code on the tiny
configuration, so CI exercises it.

    python benchmarks/train_step.py                       # paper config on CUDA, tiny on CPU
    python benchmarks/train_step.py --batch-size 512 --micro-batch 128 --steps 3

Model FLOPs are counted by PyTorch's FlopCounterMode on a plain forward and backward (no
recomputation), scaled to the batch; the cache's extra forward and checkpointing's recomputation
are overhead, as MFU is usually defined.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _report import report  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config  # noqa: E402
from fashionblip2.model.configuration import paper_blip2_config, tiny_blip2_config  # noqa: E402
from fashionblip2.training.grad_cache import grad_cache_step  # noqa: E402


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Measured dense matmul FLOP/s (the MFU denominator), best of a few timed runs."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(3):
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - t))
    return best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(paper: bool, device: torch.device) -> FashionBLIP2:
    if paper:
        config = FashionBLIP2Config(blip2=paper_blip2_config(), num_heads=12, head_dim=256, max_text_length=128)
    else:
        config = FashionBLIP2Config(blip2=tiny_blip2_config(), num_heads=12, head_dim=256, max_text_length=32)
    with torch.device(device):
        model = FashionBLIP2(config)
    model.set_stage(1)
    return model.train()


def random_batch(model: FashionBLIP2, n: int, text_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    size = model.config.blip2_config().vision_config.image_size
    vocab = model.config.blip2_config().qformer_config.vocab_size
    g = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(5, vocab, (n, text_len), device=device, generator=g)
    return {
        "reference_pixels": torch.randn(n, 3, size, size, device=device, generator=g),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "target_pixels": torch.randn(n, 3, size, size, device=device, generator=g),
        "caption_ids": ids.flip(0),
        "caption_mask": torch.ones_like(ids),
    }


def model_flops_per_sample(model: FashionBLIP2, text_len: int, device: torch.device, autocast) -> float:
    n = 4
    batch = random_batch(model, n, text_len, device)
    with FlopCounterMode(display=False) as counter:
        with autocast:
            loss = model(**batch)["loss"]
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", choices=["auto", "paper", "tiny"], default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 512 on GPU, 16 on CPU")
    parser.add_argument("--micro-batch", type=int, default=None, help="default: 128 on GPU, 4 on CPU; 0: no cache")
    parser.add_argument("--text-length", type=int, default=None, help="default: 128 (paper), 32 (tiny)")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument(
        "--frozen-bf16", action="store_true", help="keep the frozen image-encoder weights in bf16 (GPU): no casts"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile each image-encoder layer")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, after one warm-up step")
    parser.add_argument("--out", default="benchmarks/out/train_step.json")
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    paper = args.config == "paper" or (args.config == "auto" and gpu)
    batch_size = args.batch_size or (512 if gpu else 16)
    micro = args.micro_batch if args.micro_batch is not None else (128 if gpu else 4)
    text_len = args.text_length or (128 if paper else 32)
    dtype = torch.bfloat16 if gpu else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu)

    rate = matmul_rate(device, dtype, 8192 if gpu else 1024, 20 if gpu else 3)
    model = build(paper, device)
    counts = model.parameter_counts()
    flops_sample = model_flops_per_sample(model, text_len, device, autocast)
    if args.frozen_bf16 and gpu:
        for p in model.backbone.vision_model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    if args.compile:
        for layer in model.backbone.vision_model.encoder.layers:
            (layer.layer if hasattr(layer, "layer") else layer).compile()
    if not args.no_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), weight_decay=0.05)
    batch = random_batch(model, batch_size, text_len, device)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        if micro and micro < batch_size:
            parts = grad_cache_step(model, batch, micro, autocast)
        else:
            with autocast:
                parts = model(**batch)
            parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return float(parts["loss"])

    step()  # warm-up: allocator, kernels, optimizer state
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    losses = [step() for _ in range(args.steps)]
    sync(device)
    seconds = (time.perf_counter() - t) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None
    result = {
        "device": torch.cuda.get_device_name(device) if gpu else "cpu",
        "config": "paper (ViT-g/14, Q-Former 768, 12 heads x 256)" if paper else "tiny",
        "parameters": counts,
        "batch_size": batch_size,
        "micro_batch": micro,
        "text_length": text_len,
        "gradient_checkpointing": not args.no_checkpointing,
        "frozen_encoder_bf16": bool(args.frozen_bf16 and gpu),
        "compiled_encoder_layers": args.compile,
        "attention": model.backbone.config.vision_config._attn_implementation,
        "precision": "bf16 autocast" if gpu else "fp32",
        "seconds_per_step": seconds,
        "samples_per_second": batch_size / seconds,
        "peak_gpu_memory_gib": peak,
        "model_tflop_per_step": flops_sample * batch_size / 1e12,
        "measured_matmul_tflops": rate / 1e12,
        "mfu": flops_sample * batch_size / seconds / rate,
        "losses": losses,
    }
    rows = [
        ("device", result["device"]),
        ("config", result["config"]),
        ("batch / micro-batch", f"{batch_size} / {micro or batch_size}"),
        ("seconds per step", f"{seconds:.3f}"),
        ("samples per second", f"{batch_size / seconds:.1f}"),
        ("peak GPU memory", f"{peak:.1f} GiB" if peak is not None else "n/a (CPU)"),
        ("model TFLOP per step", f"{result['model_tflop_per_step']:.2f}"),
        ("measured matmul rate", f"{rate / 1e12:.1f} TFLOP/s ({'bf16' if gpu else 'fp32'})"),
        ("MFU", f"{100 * result['mfu']:.1f} %"),
    ]
    report(rows, result, args.out)


if __name__ == "__main__":
    main()
