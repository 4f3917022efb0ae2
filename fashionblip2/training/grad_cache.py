"""Gradient cache for contrastive losses (Gao et al., 2021): the in-batch negatives of a batch of
any size, with the memory of one micro-batch.

1. Embed the whole batch without gradients, micro-batch by micro-batch (keeping each one's RNG
   state, so that dropout draws the same masks again in step 3).
2. Compute the loss on those embeddings as leaf tensors and back-propagate to them: the gradient of
   the loss with respect to every embedding (and to the loss's own parameters, the temperature).
3. Re-embed each micro-batch with gradients and back-propagate the cached embedding gradients.
The parameter gradients equal those of the plain full-batch step (tested to float32 tolerance);
the cost is one extra forward pass.

The model provides ``contrastive_embeddings(**batch) -> dict`` and ``contrastive_losses(dict)``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def _rows(batch: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: (v[start:stop] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _batch_size(batch: dict[str, Any]) -> int:
    sizes = {len(v) for v in batch.values() if isinstance(v, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"batch tensors disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    micro_batch_size: int,
    autocast: contextlib.AbstractContextManager | None = None,
) -> dict[str, torch.Tensor]:
    """Accumulate the full batch's parameter gradients into ``.grad``; return the (detached) losses.
    A non-finite loss returns before step 3, leaving the caller to stop."""
    autocast = autocast or contextlib.nullcontext()
    n = _batch_size(batch)
    bounds = [(i, min(i + micro_batch_size, n)) for i in range(0, n, micro_batch_size)]
    device = next(model.parameters()).device
    states, parts = [], []
    with torch.no_grad():
        for start, stop in bounds:
            states.append(_rng_state(device))
            with autocast:
                parts.append(model.contrastive_embeddings(**_rows(batch, start, stop)))
    cached = {k: torch.cat([p[k] for p in parts]).detach().float().requires_grad_() for k in parts[0]}
    with autocast:
        losses = model.contrastive_losses(cached)
    if not torch.isfinite(losses["loss"]):
        return {k: v.detach() for k, v in losses.items()}
    losses["loss"].backward()
    for (start, stop), state in zip(bounds, states, strict=True):
        _set_rng_state(state, device)
        with autocast:
            again = model.contrastive_embeddings(**_rows(batch, start, stop))
        keys = list(again)
        torch.autograd.backward([again[k].float() for k in keys], [cached[k].grad[start:stop] for k in keys])
    return {k: v.detach() for k, v in losses.items()}
