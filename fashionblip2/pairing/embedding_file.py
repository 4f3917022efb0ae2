"""The embeddings file (npz): image ids aligned with L2-normalised vectors, plus the ids that failed
to decode and why; and how rows split into shards. Kept apart from the CLIP model code so that the
rules that only read or gather embeddings need no torch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fashionblip2.common.io import atomic_path


def shard_bounds(n: int, shards: int, shard: int) -> tuple[int, int]:
    """Rows [start, end) of shard ``shard`` of ``shards`` contiguous, near-equal slices of n rows."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return shard * n // shards, (shard + 1) * n // shards


@dataclass
class EmbeddingFile:
    """What an embeddings file holds: ids aligned with vectors, plus the ids that failed and why."""

    image_ids: np.ndarray
    vectors: np.ndarray
    failed_ids: np.ndarray
    failed_reasons: np.ndarray

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(
                f,
                image_ids=self.image_ids.astype(str),
                vectors=self.vectors.astype(np.float32),
                failed_ids=self.failed_ids.astype(str),
                failed_reasons=self.failed_reasons.astype(str),
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingFile:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["image_ids"], z["vectors"], z["failed_ids"], z["failed_reasons"])

    @classmethod
    def concatenate(cls, parts: list[EmbeddingFile]) -> EmbeddingFile:
        dim = max((p.vectors.shape[1] for p in parts if p.vectors.ndim == 2), default=0)
        return cls(
            np.concatenate([p.image_ids for p in parts]) if parts else np.zeros(0, str),
            np.concatenate([p.vectors.reshape(-1, dim) for p in parts]) if parts else np.zeros((0, 0), np.float32),
            np.concatenate([p.failed_ids for p in parts]) if parts else np.zeros(0, str),
            np.concatenate([p.failed_reasons for p in parts]) if parts else np.zeros(0, str),
        )
