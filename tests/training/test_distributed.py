"""Data-parallel training (2 CPU processes, gloo) gives the single-process result: the contrastive
negatives are gathered across ranks, and the gradients average to the global batch's; with the
gradient cache too (each rank re-embedding its own micro-batches)."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.model.configuration import tiny_blip2_config
from fashionblip2.training.trainer import train
from tests.conftest import train_config

N, BATCH = 16, 8
# Weights after 3 AdamW steps of lr 1e-3 agree to 5 % of one step: Adam divides each coordinate's
# update by its own gradient scale, so the float summation-order noise of a near-zero gradient (an
# embedding row of a rare token) moves that coordinate by a visible fraction of the step. The other
# parameters agree to about 1e-6.
ATOL = 5e-5


def data():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(N, 3, 32, 32, generator=g),
        torch.randint(5, 100, (N, 6), generator=g),
        torch.randn(N, 3, 32, 32, generator=g),
        torch.randint(5, 100, (N, 6), generator=g),
    )


def build():
    torch.manual_seed(0)
    config = FashionBLIP2Config(blip2=tiny_blip2_config(vocab_size=100, image_size=32), num_heads=4, head_dim=16)
    model = FashionBLIP2(config)
    with torch.no_grad():  # adapters away from zero, so that their gradients are not trivial
        for name, p in model.named_parameters():
            if ".adapter.up." in name:
                p.normal_(0, 0.02)
    model.set_stage(1)
    return model


def run(out_dir, micro_batch_size: int = 0) -> tuple[dict[str, torch.Tensor], list[int]]:
    ref, ids, tgt, cap = data()
    mask = torch.ones_like(ids)
    seen = []

    def make_batch(idx, step):
        seen.append(len(idx))
        return (ref[idx], ids[idx], mask[idx], tgt[idx], cap[idx], mask[idx])

    def loss_fn(m, b):
        return m(*b)

    model = build()
    if micro_batch_size:  # the gradient cache takes dict batches
        names = ("reference_pixels", "input_ids", "attention_mask", "target_pixels", "caption_ids", "caption_mask")
        plain = make_batch
        make_batch = lambda idx, step: dict(zip(names, plain(idx, step), strict=True))  # noqa: E731
    cfg = train_config(
        steps=3, batch_size=BATCH, lr=1e-3, warmup_steps=1, device="cpu", checkpoint_every=10,
        micro_batch_size=micro_batch_size,
    )  # fmt: skip
    train(model, N, make_batch, loss_fn, cfg, out_dir, progress=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, seen


def _worker(rank: int, world: int, port: int, out_dir: str, result_path: str, micro_batch_size: int = 0) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    state, seen = run(out_dir, micro_batch_size)
    assert torch.distributed.get_world_size() == world
    if rank == 0:
        torch.save({"state": state, "seen": seen}, result_path)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    if not torch.distributed.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    single, seen = run(tmp_path / "single")
    assert seen == [BATCH] * 3
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "ddp"), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    result = torch.load(tmp_path / "ddp.pt")
    assert result["seen"] == [BATCH // 2] * 3  # each rank built half of each global batch
    ddp = result["state"]
    changed = 0
    for name, value in single.items():
        assert torch.allclose(ddp[name], value, atol=ATOL, rtol=1e-4), name
        changed += not torch.equal(value, build().state_dict()[name])
    assert changed > 10  # the run trained something
    # Rank 0 alone wrote the metrics: one line per step.
    assert len((tmp_path / "ddp/metrics.jsonl").read_text().splitlines()) == 3


def test_the_gradient_cache_under_two_gloo_processes_matches_one_process_with_the_whole_batch(tmp_path):
    """Batch 8 over 2 ranks, each embedding its 4 in micro-batches of 2: the same weights as one
    process computing the plain loss on all 8 (the negatives are the global batch in both)."""
    if not torch.distributed.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend")
    single, _ = run(tmp_path / "single")
    args = (2, free_port(), str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"), 2)
    mp.spawn(_worker, args=args, nprocs=2, join=True)
    result = torch.load(tmp_path / "ddp.pt")
    assert result["seen"] == [BATCH // 2] * 3
    changed = 0
    for name, value in single.items():
        assert torch.allclose(result["state"][name], value, atol=ATOL, rtol=1e-4), name
        changed += not torch.equal(value, build().state_dict()[name])
    assert changed > 10
