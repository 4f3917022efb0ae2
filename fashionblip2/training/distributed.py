"""Data-parallel training helpers (``torchrun``): the process group, and the averaging of gradients
for the gradient cache. The gathering of embeddings across ranks, which makes the in-batch negatives
of the contrastive losses the whole global batch, belongs to the losses (fashionblip2.model.gather).

Every rank gathers every rank's embeddings (with their autograd graph) and computes the same full
loss. The backward pass of the gather sums the gradients that reach each rank's embeddings, so a
rank's local parameters receive ``world_size`` times their share; DDP then averages over ranks,
which leaves exactly the single-process gradient of the global batch (tested with gloo).

With the gradient cache (fashionblip2.training.grad_cache) the same holds: the loss on the cached embeddings
gathers them across ranks, its backward pass scatters each rank's share of the embedding gradients
back to it (times ``world_size``), each rank re-embeds its own micro-batches, and
:func:`average_gradients` then plays DDP's part (tested with gloo against one process).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from fashionblip2.model.gather import world


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    # Rank 0 validates on FashionIQ val while the others wait at a barrier: at paper scale one
    # validation re-encodes ~21k images, which can outlast the default 10-minute collective timeout.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    return device


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks in one collective (what DDP does after its own backward pass).
    Parameters without a gradient are left alone: every rank runs the same graph, so they agree."""
    _, world_size = world()
    grads = [p.grad for p in params if p.grad is not None]
    if world_size == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
