"""CLIP image embeddings with open_clip (paper §3.1, "Image pairing").

The model is an open_clip architecture name (``ViT-L-14``, or one of the small configs shipped in
``fashionblip2/pairing/model_configs``) and optionally a checkpoint on local disk: a weights file, or
a folder as open_clip's Hub repositories are laid out (``open_clip_model.safetensors`` or
``open_clip_pytorch_model.bin``, perhaps with ``open_clip_config.json``), loaded by open_clip's own
checkpoint code. Pretrained tags such as ``laion2b_s34b_b79k`` are refused: weights are never
downloaded by this code.

OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain ``ViT-L-14`` uses GELU and loads
them without complaint (same parameters), giving worse embeddings. Such weights are recognised and a
warning names the ``-quickgelu`` architecture to use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import zipfile
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
# The weights files of an open_clip Hub repository, in the order open_clip itself prefers them.
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Entries of a state dict taken from OpenAI's TorchScript release (open_clip drops them when it builds
# a model from one: model.build_model_from_openai_state_dict).
OPENAI_JIT_ENTRIES = ("input_resolution", "context_length", "vocab_size")
log = logging.getLogger(__name__)


def resolve_pretrained(pretrained: str | os.PathLike[str]) -> Path:
    """The weights file that ``embedding.pretrained`` names: the file itself, or the weights file in an
    open_clip Hub-style folder (``HUB_WEIGHT_FILES``, safetensors first)."""
    path = Path(pretrained)
    if path.is_dir():
        for name in HUB_WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise BadInputError(
            f"embedding.pretrained {str(pretrained)!r} is a folder without open_clip weights: expected "
            f"{' or '.join(HUB_WEIGHT_FILES)} in it (an open_clip Hub repository, e.g. "
            "timm/vit_large_patch14_clip_224.openai, downloaded to a folder)"
        )
    if not path.is_file():
        raise BadInputError(
            f"embedding.pretrained {str(pretrained)!r} is not a file or folder: give the path of a downloaded "
            "checkpoint (this workflow never downloads weights)"
        )
    if _is_torchscript(path):
        # OpenAI's own release (e.g. ViT-L-14.pt) is a TorchScript archive, which open_clip reads only with
        # weights_only=False (arbitrary code); torch's refusal would not say what to get instead.
        raise BadInputError(
            f"embedding.pretrained {str(pretrained)!r} is a TorchScript archive (OpenAI's own CLIP release), "
            "which is not loaded here: use the open_clip-format copy of the same weights, e.g. the folder of "
            "timm/vit_large_patch14_clip_224.openai, with embedding.model ViT-L-14-quickgelu"
        )
    return path


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding constants.pkl, as torch.load tests it)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _tensor_dtypes(weights: Path) -> dict[str, torch.dtype]:
    """Each tensor's dtype in a weights file, without reading the tensors (safetensors header, or a
    memory-mapped torch file)."""
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            return {k: f.get_slice(k).get_dtype() for k in f.keys()}
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format torch file (mmap needs one): read it whole
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        return {}
    return {k.removeprefix("module."): v.dtype for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def quickgelu_evidence(weights: Path) -> str | None:
    """Why the weights in ``weights`` look trained with QuickGELU (OpenAI's CLIP), or None.

    The parameters of a QuickGELU model and a GELU one are the same, so the evidence is indirect:
    - an ``open_clip_config.json`` beside the weights that sets ``quick_gelu`` (open_clip's Hub
      repositories of OpenAI's weights, timm/*.openai, do);
    - the entries OpenAI's TorchScript release adds (``OPENAI_JIT_ENTRIES``);
    - OpenAI's storage: the projections (``visual.proj``, ``text_projection``) in float16 while the layer
      norms stay float32 (what OpenAI's ``convert_weights`` leaves; open_clip saves one dtype).
    """
    config_file = weights.parent / "open_clip_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("model_cfg", config).get("quick_gelu"):
            return f"{config_file} sets quick_gelu"
    try:
        dtypes = {k: _SAFETENSORS_DTYPES.get(v, v) for k, v in _tensor_dtypes(weights).items()}
    except Exception as e:  # noqa: BLE001 - only a warning rests on this; open_clip's load reports a bad file
        log.debug("could not read the tensor dtypes of %s: %s", weights, e)
        return None
    jit_entries = [k for k in OPENAI_JIT_ENTRIES if k in dtypes]
    if jit_entries:
        return f"it holds {', '.join(jit_entries)}, as OpenAI's TorchScript release does"
    projections = [dtypes.get(k) for k in ("visual.proj", "text_projection")]
    if all(p == torch.float16 for p in projections) and dtypes.get("ln_final.weight") == torch.float32:
        return "its projections are float16 and its layer norms float32, as OpenAI stores its CLIP weights"
    return None


def warn_if_quickgelu_mismatch(model_name: str, weights: Path) -> None:
    """Warn when OpenAI-style weights go into an architecture without QuickGELU: they load, silently
    giving worse embeddings."""
    import open_clip

    if "quickgelu" in model_name.lower() or (open_clip.get_model_config(model_name) or {}).get("quick_gelu"):
        return
    evidence = quickgelu_evidence(weights)
    if evidence:
        suggestion = f"{model_name}-quickgelu"
        fix = (
            f"set embedding.model to {suggestion!r}"
            if suggestion in open_clip.list_models()
            else "use an embedding.model with QuickGELU (a '-quickgelu' architecture)"
        )
        log.warning(
            "embedding.pretrained %s looks like OpenAI's CLIP weights (%s), which were trained with QuickGELU, "
            "but embedding.model %r uses GELU: the embeddings will be worse; %s",
            weights,
            evidence,
            model_name,
            fix,
        )


def load_image_encoder(model_name: str, pretrained: str | os.PathLike[str] | None = None, device: str = "auto"):
    """(model, preprocess) from open_clip; ``pretrained`` is a local weights file, an open_clip Hub-style
    folder, or empty for random init."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if model_name not in open_clip.list_models():
        raise BadInputError(
            f"embedding.model {model_name!r} is not an open_clip architecture; "
            f"built-in ones include ViT-B-32, ViT-L-14; ours: {sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}"
        )
    weights = None
    if pretrained:
        weights = resolve_pretrained(pretrained)
        warn_if_quickgelu_mismatch(model_name, weights)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(weights) if weights else None, device=resolve_device(device, "embedding.device")
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
