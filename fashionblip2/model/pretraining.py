"""A "general-domain pretrained" BLIP-2 for the embedded default.

The paper starts from BLIP-2 pretrained on web image-text pairs. Nothing may be downloaded here, so
the workflow makes that starting point itself: a tiny BLIP-2 trained from scratch with BLIP-2's own
image-text contrastive objective (ITC) on the general images and their product texts. ITC as in
BLIP-2: the 32 query outputs and the text's [CLS] are projected and L2-normalised; the image-text
similarity is the best of the 32 query similarities; symmetric InfoNCE with a learnable temperature.
The result is saved as a plain ``Blip2ForImageTextRetrieval`` folder, the format of the released
checkpoints, so every later stage loads it exactly as it would load ``Salesforce/blip2-itm-vit-g``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2Config, Blip2ForImageTextRetrieval

from fashionblip2.model.gather import gather_with_grad
from fashionblip2.model.modeling import _random_backbone, qformer_text_cls


class Blip2ImageTextContrastive(nn.Module):
    supports_gradient_checkpointing = True

    def __init__(
        self,
        config: Blip2Config | None = None,
        backbone: Blip2ForImageTextRetrieval | None = None,
        init_temperature: float = 0.07,
    ):
        super().__init__()
        if backbone is None:
            if config is None:
                raise ValueError("give a BLIP-2 config or a backbone")
            config.qformer_config.use_qformer_text_input = True
            backbone = _random_backbone(config)
        self.backbone = backbone
        self.log_temperature = nn.Parameter(torch.tensor(float(init_temperature)).log())

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(0.001, 0.5)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 32, e): the query outputs, projected and normalised."""
        image = self.backbone.vision_model(pixel_values=pixel_values).last_hidden_state
        queries = self.backbone.query_tokens.expand(image.shape[0], -1, -1)
        out = self.backbone.qformer(query_embeds=queries, encoder_hidden_states=image).last_hidden_state
        return F.normalize(self.backbone.vision_projection(out), dim=-1)

    def text_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, e): the text's [CLS], projected and normalised."""
        cls = qformer_text_cls(self.backbone, input_ids, attention_mask)
        return F.normalize(self.backbone.text_projection(cls), dim=-1)

    def similarity(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B_image, B_text): the best query's cosine, as BLIP-2's ITC."""
        return torch.einsum("iqe,te->itq", image, text).amax(dim=-1)

    def contrastive_embeddings(self, pixel_values, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        return {"image": self.image_embeddings(pixel_values), "text": self.text_embeddings(input_ids, attention_mask)}

    def contrastive_losses(self, embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sim = self.similarity(gather_with_grad(embeddings["image"]), gather_with_grad(embeddings["text"]))
        logits = sim / self.temperature
        labels = torch.arange(len(logits), device=logits.device)
        i2t, t2i = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
        return {"loss": (i2t + t2i) / 2, "i2t": i2t, "t2i": t2i}

    def forward(self, pixel_values, input_ids, attention_mask) -> dict[str, torch.Tensor]:
        return self.contrastive_losses(self.contrastive_embeddings(pixel_values, input_ids, attention_mask))

    def save_pretrained(self, path, **kwargs) -> None:
        self.backbone.save_pretrained(path, **kwargs)
