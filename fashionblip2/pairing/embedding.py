"""CLIP image embeddings with open_clip (paper §3.1, "Image pairing").

The model is an open_clip architecture name (``ViT-L-14``, or one of the small configs shipped in
``fashionblip2/pairing/model_configs``) and optionally a checkpoint *file* on local disk, loaded by
open_clip's own checkpoint code. Pretrained tags such as ``laion2b_s34b_b79k`` are refused:
weights are never downloaded by this code.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fashionblip2.common.images import load_rgb
from fashionblip2.common.issues import BadInputError
from fashionblip2.common.runtime import resolve_device

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
log = logging.getLogger(__name__)


def load_image_encoder(model_name: str, pretrained: str | os.PathLike[str] | None = None, device: str = "auto"):
    """(model, preprocess) from open_clip; ``pretrained`` is a local checkpoint file or empty for random init."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if model_name not in open_clip.list_models():
        raise BadInputError(
            f"embedding.model {model_name!r} is not an open_clip architecture; "
            f"built-in ones include ViT-B-32, ViT-L-14; ours: {sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}"
        )
    if pretrained:
        if not Path(pretrained).is_file():
            raise BadInputError(
                f"embedding.pretrained {str(pretrained)!r} is not a file: give the path of a downloaded checkpoint "
                "(this workflow never downloads weights)"
            )
        pretrained = str(pretrained)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained or None, device=resolve_device(device, "embedding.device")
    )
    model.eval()
    return model, preprocess


class ImageFiles(Dataset):
    """Images by path, decoded as RGB and preprocessed; a file that fails to decode yields its error."""

    def __init__(self, paths: list[str], transform):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(load_rgb(self.paths[i])), ""
        except Exception as e:  # noqa: BLE001 - any decode failure of one file must not stop the others
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch):
    ok = [(i, x) for i, x, _ in batch if x is not None]
    failed = [(i, err) for i, x, err in batch if x is None]
    indices = torch.tensor([i for i, _ in ok], dtype=torch.int64)
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return indices, pixels, failed


@dataclass
class EmbeddingResult:
    """L2-normalised float32 vectors of the images that decoded, and the reasons of those that did not."""

    indices: np.ndarray
    vectors: np.ndarray
    failures: dict[int, str] = field(default_factory=dict)


@torch.no_grad()
def embed_images(
    paths: list[str],
    model,
    preprocess,
    *,
    batch_size: int = 64,
    workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
) -> EmbeddingResult:
    device = next(model.parameters()).device
    loader = DataLoader(
        ImageFiles(paths, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    indices, vectors, failures = [], [], {}
    with tqdm(total=len(paths), desc="embedding images", unit="img", disable=not progress) as bar:
        for idx, pixels, failed in loader:
            failures.update(failed)
            if pixels is not None:
                with autocast:
                    features = model.encode_image(pixels.to(device, non_blocking=True))
                vectors.append(F.normalize(features.float(), dim=-1).cpu().numpy())
                indices.append(idx.numpy())
            bar.update(len(idx) + len(failed))
    dim = model.visual.output_dim if hasattr(model.visual, "output_dim") else 0
    return EmbeddingResult(
        indices=np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        vectors=np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32),
        failures=failures,
    )
