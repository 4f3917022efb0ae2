"""BLIP-2's image-text contrastive similarities from a backbone folder, for scoring (not training):
every image and every text is encoded once and kept, so a score that compares the same image with
many texts (a caption's sentences, a shortlist) costs one forward pass per image."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm
from transformers import Blip2ForImageTextRetrieval

from fashionblip2.model.configuration import load_backbone_config
from fashionblip2.model.pretraining import Blip2ImageTextContrastive
from fashionblip2.model.processing import ImageStore
from fashionblip2.model.tokenization import load_tokenizer, tokenize


class ImageTextModel:
    """``image_text(images, texts)``: BLIP-2's ITC similarity (the best of the 32 query tokens);
    ``image_image(a, b)``: the cosine of the images' mean query embeddings."""

    def __init__(
        self,
        backbone: str | os.PathLike[str],
        tokenizer: str | os.PathLike[str],
        image_paths: dict[str, str],
        *,
        device: torch.device,
        batch_size: int,
        max_text_length: int,
        progress: bool = True,
    ):
        config = load_backbone_config(backbone)
        blip2 = Blip2ForImageTextRetrieval.from_pretrained(str(backbone), config=config, local_files_only=True)
        self.model = Blip2ImageTextContrastive(backbone=blip2).to(device).eval()
        self.tokenizer = load_tokenizer(tokenizer)
        # Pixels are not kept: each image is encoded once and only its embeddings stay.
        self.store = ImageStore(image_paths, config.vision_config.image_size, cache=False)
        self.device, self.batch_size, self.max_text_length = device, batch_size, max_text_length
        self.progress = progress
        self._images: dict[str, torch.Tensor] = {}
        self._texts: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_images(self, image_ids: Sequence[str]) -> None:
        todo = [i for i in dict.fromkeys(image_ids) if i not in self._images]
        steps = range(0, len(todo), self.batch_size)
        for start in tqdm(steps, desc="images", unit="batch", disable=not self.progress or not todo):
            keys = todo[start : start + self.batch_size]
            embeddings = self.model.image_embeddings(self.store.pixels(keys).to(self.device)).float().cpu()
            self._images.update(zip(keys, embeddings, strict=True))

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
        steps = range(0, len(todo), self.batch_size)
        for start in tqdm(steps, desc="texts", unit="batch", disable=not self.progress or not todo):
            batch = todo[start : start + self.batch_size]
            ids, mask = tokenize(self.tokenizer, batch, self.max_text_length)
            embeddings = self.model.text_embeddings(ids.to(self.device), mask.to(self.device)).float().cpu()
            self._texts.update(zip(batch, embeddings, strict=True))

    def image_text(self, image_ids: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        self.encode_images(image_ids)
        self.encode_texts(texts)
        images = torch.stack([self._images[i] for i in image_ids])
        text = torch.stack([self._texts[t] for t in texts])
        return self.model.similarity(images, text).numpy().astype(np.float64)

    def image_image(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        self.encode_images([*a, *b])

        def pooled(ids: Sequence[str]) -> torch.Tensor:
            return torch.nn.functional.normalize(torch.stack([self._images[i] for i in ids]).mean(dim=1), dim=-1)

        return (pooled(a) @ pooled(b).T).numpy().astype(np.float64)
