"""Where and how a job computes: its device, its seeds, its CPU threads. One function each, for
every stage (embedding, training, evaluation, search)."""

from __future__ import annotations

import random

import numpy as np
import torch

from fashionblip2.common.issues import BadInputError


def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; a CUDA device asked for on a machine without
    one is a clear error naming the config ``key`` (not a failure deep inside the first kernel)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"{key} is {name!r} but no CUDA device is available here; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch: fresh adapters and heads are drawn when a model is built, and
    batches are drawn in training; the same config must give the same weights."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Use the threads the job was given (Snakemake's ``threads``), not every core of the node."""
    if threads:
        torch.set_num_threads(threads)
