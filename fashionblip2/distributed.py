"""Data-parallel training helpers (``torchrun``): the process group, and the gathering of embeddings
across ranks so that the in-batch negatives of the contrastive losses are the whole global batch.

Every rank gathers every rank's embeddings (with their autograd graph) and computes the same full
loss. The backward pass of the gather sums the gradients that reach each rank's embeddings, so a
rank's local parameters receive ``world_size`` times their share; DDP then averages over ranks,
which leaves exactly the single-process gradient of the global batch (tested with gloo).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); returns this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``t``, in rank order, differentiable; ``t`` itself outside a process group."""
    if world()[1] == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)
