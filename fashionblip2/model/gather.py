"""The gathering of embeddings across data-parallel ranks, for the contrastive losses: with it the
in-batch negatives are the whole global batch (see fashionblip2.training.distributed for how the
gradients then come out as one process's)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(t: torch.Tensor) -> torch.Tensor:
    """All ranks' rows of ``t``, in rank order, differentiable; ``t`` itself outside a process group."""
    if world()[1] == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t.contiguous()), dim=0)
