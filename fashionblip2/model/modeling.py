"""FashionBLIP-2 on transformers' BLIP-2 retrieval model.

- Query: the reference image's features and the modification text fused in the Q-Former (the
  text follows the 32 query tokens; only the queries cross-attend to the image), the first 32
  outputs kept. Candidate: the image through the Q-Former queries alone. Caption (for CTR): the
  Q-Former text path's [CLS] output.
- Adapters in every vision encoder layer, ``h + W_u GELU(W_d h)``, W_u zero-initialised so that
  training starts from the pretrained function; the encoder's own weights stay frozen.
- Matching: ``multihead`` mixes the 32 tokens into 12 (token mixing) and 768 channels into 256
  (channel mixing), the same weights for query and candidate; the similarity is the mean of the 12
  heads' cosines (``similarity_scale="per_head"``; ``"sum"``, their sum, is the older behaviour),
  which is the inner product of the 12 L2-normalised heads, each scaled by 1/sqrt(12), concatenated,
  so a gallery is encoded once and searched by inner product. ``global``: the mean token, one cosine.
- One learnable temperature divides the similarity in the loss; it starts at the config's
  ``init_temperature`` when the heads are created (a model built from a BLIP-2 backbone: stage 1, or
  stage 2 without FACap), and a saved FashionBLIP-2 (stage 2 after stage 1) keeps its learnt one.
  No backbone temperature is read: transformers' ``Blip2ForImageTextRetrieval`` has no such
  parameter (so a checkpoint's learnt ITC temperature, if it holds one, is not loaded), and the
  embedded default's pretraining saves the backbone alone. The mean keeps the multi-head
  similarity in [-1, 1] like the global cosine, so both matchings start at the same logit scale
  and can reach the same ones; the sum would make multi-head logits num_heads times sharper.
- The caption is one vector; every query head is compared with it, so CTR's similarity is again
  the inner product of the exported query with the caption's vector repeated per head.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2ForImageTextRetrieval, PreTrainedModel

from fashionblip2.model.configuration import TEMPERATURE_RANGE, FashionBLIP2Config, load_backbone_config
from fashionblip2.model.gather import gather_with_grad

# BLIP-2 retrieval heads that FashionBLIP-2 does not use (it has its own matching heads).
UNUSED_BACKBONE_PARTS = ("backbone.itm_head.", "backbone.vision_projection.", "backbone.text_projection.")


class Adapter(nn.Module):
    """``x + W_u GELU(W_d x)`` with a bottleneck of width ``dim // factor``; identity at init."""

    def __init__(self, dim: int, factor: int):
        super().__init__()
        self.down = nn.Linear(dim, max(1, dim // factor))
        self.up = nn.Linear(max(1, dim // factor), dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class AdaptedLayer(nn.Module):
    """A vision encoder layer followed by its adapter."""

    def __init__(self, layer: nn.Module, adapter: Adapter):
        super().__init__()
        self.layer = layer
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)


class FashionBLIP2(PreTrainedModel):
    config_class = FashionBLIP2Config
    supports_gradient_checkpointing = True
    base_model_prefix = "fashionblip2"
    main_input_name = "pixel_values"

    def __init__(self, config: FashionBLIP2Config, backbone: Blip2ForImageTextRetrieval | None = None):
        super().__init__(config)
        blip2_config = config.blip2_config()
        self.backbone = backbone if backbone is not None else _random_backbone(blip2_config)
        vision_width = blip2_config.vision_config.hidden_size
        q_width = blip2_config.qformer_config.hidden_size
        self.num_query_tokens = blip2_config.num_query_tokens
        if config.use_adapters:
            layers = self.backbone.vision_model.encoder.layers
            for i, layer in enumerate(layers):
                layers[i] = AdaptedLayer(layer, Adapter(vision_width, config.adapter_factor))
        heads = config.num_heads if config.matching == "multihead" else 1
        self.token_mixing = nn.Linear(self.num_query_tokens, heads) if config.matching == "multihead" else None
        self.channel_mixing = nn.Linear(q_width, config.head_dim)
        self.log_temperature = nn.Parameter(torch.tensor(float(config.init_temperature)).log())
        self.heads = heads
        self.post_init()  # transformers' bookkeeping (tied weights, ...); init_weights re-draws nothing

    # --- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *args, **kwargs) -> FashionBLIP2:
        """A saved FashionBLIP-2, or a BLIP-2 retrieval checkpoint in Hugging Face format (e.g.
        ``Salesforce/blip2-itm-vit-g`` downloaded to a folder), which gets fresh adapters and heads.
        Only local folders are read: ``local_files_only`` is always on."""
        kwargs["local_files_only"] = True
        model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
        if model_type == FashionBLIP2Config.model_type:
            return super().from_pretrained(path, *args, **kwargs)
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in FashionBLIP2Config().to_dict() and k != "blip2"}
        # The config is read first so that early uploads' legacy `qformer_text_input` key builds the
        # Q-Former's text layers before the weights load (else they are dropped as unexpected).
        kwargs.setdefault("config", load_backbone_config(path))
        backbone = Blip2ForImageTextRetrieval.from_pretrained(path, *args, **kwargs)
        backbone.config.qformer_config.use_qformer_text_input = True
        config = FashionBLIP2Config(blip2=backbone.config, **overrides)
        return cls(config, backbone=backbone)

    def init_weights(self) -> None:
        # Every module is initialised by its constructor (BLIP-2's own init, zero-init adapters) or
        # loaded from a checkpoint; transformers' generic pass would draw them again.
        try:
            self.tie_weights(recompute_mapping=False)
        except TypeError:  # transformers releases before the recompute_mapping argument
            self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        return None

    # --- encoders ------------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone.vision_model(pixel_values=pixel_values).last_hidden_state

    @property
    def image_encoder_frozen(self) -> bool:
        """True when no vision parameter trains: its outputs can then be computed once and reused."""
        return not any(p.requires_grad for p in self.backbone.vision_model.parameters())

    def _image(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        if image_embeds is not None:
            return image_embeds
        if pixel_values is None:
            raise ValueError("give pixel_values or image_embeds")
        return self.image_features(pixel_values)

    def candidate_tokens(
        self, pixel_values: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Candidate side: the 32 query tokens after the Q-Former, without text. (B, 32, d_q)."""
        image = self._image(pixel_values, image_embeds)
        queries = self.backbone.query_tokens.expand(image.shape[0], -1, -1)
        return self.backbone.qformer(query_embeds=queries, encoder_hidden_states=image).last_hidden_state

    def query_tokens_fused(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Query side: reference image + modification text fused in the Q-Former. (B, 32, d_q)."""
        image = self._image(pixel_values, image_embeds)
        queries = self.backbone.query_tokens.expand(image.shape[0], -1, -1)
        embeds = self.backbone.embeddings(input_ids=input_ids, query_embeds=queries)
        mask = torch.cat(
            [torch.ones(queries.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device), attention_mask],
            dim=1,
        )
        out = self.backbone.qformer(
            query_embeds=embeds, query_length=queries.shape[1], attention_mask=mask, encoder_hidden_states=image
        ).last_hidden_state
        return out[:, : queries.shape[1]]

    def caption_vector(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text side (CTR): the Q-Former text path's [CLS] output. (B, d_q)."""
        return qformer_text_cls(self.backbone, input_ids, attention_mask)

    # --- matching ----------------------------------------------------------------------------------

    def heads_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 32, d_q) -> (B, heads, d_c), each head L2-normalised."""
        if self.token_mixing is not None:
            mixed = self.token_mixing(tokens.transpose(1, 2)).transpose(1, 2)  # mix tokens: 32 -> 12
        else:
            mixed = tokens.mean(dim=1, keepdim=True)
        return F.normalize(self.channel_mixing(mixed), dim=-1)

    @property
    def head_scale(self) -> float:
        """The factor on every exported head: 1/sqrt(heads) under ``per_head``, so the inner product
        of two exports is the mean of the heads' cosines, on the global cosine's scale; 1 under
        ``sum``. Scaling the exports (rather than the loss alone) keeps the one similarity of the
        loss, the FAISS search and ``fashionblip2 search``'s printed scores the same."""
        return self.heads**-0.5 if self.config.similarity_scale == "per_head" else 1.0

    def export(self, heads: torch.Tensor) -> torch.Tensor:
        """Heads scaled and concatenated: the similarity of a query and a candidate is their inner product."""
        return heads.flatten(1) * self.head_scale

    def query_embedding(self, pixel_values, input_ids, attention_mask, image_embeds=None) -> torch.Tensor:
        return self.export(
            self.heads_of(self.query_tokens_fused(pixel_values, input_ids, attention_mask, image_embeds))
        )

    def gallery_embedding(self, pixel_values=None, image_embeds=None) -> torch.Tensor:
        return self.export(self.heads_of(self.candidate_tokens(pixel_values, image_embeds)))

    def caption_embedding(self, input_ids, attention_mask) -> torch.Tensor:
        """The caption's unit vector repeated per head, in the exported layout."""
        v = F.normalize(self.channel_mixing(self.caption_vector(input_ids, attention_mask)), dim=-1)
        return self.export(v.unsqueeze(1).expand(-1, self.heads, -1))

    def similarity(self, query_heads: torch.Tensor, candidate_heads: torch.Tensor) -> torch.Tensor:
        """The heads' cosines combined as the config says (mean or sum), computed head by head (for
        checks): equal to the inner product of the exports."""
        cosines = (query_heads * candidate_heads).sum(-1)
        return cosines.mean(-1) if self.config.similarity_scale == "per_head" else cosines.sum(-1)

    def logits(self, query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss's logits of exported embeddings: every query against every target."""
        return contrastive_logits(query, target, self.temperature)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(*TEMPERATURE_RANGE)

    # --- training ----------------------------------------------------------------------------------

    def contrastive_embeddings(
        self,
        reference_pixels=None,
        input_ids=None,
        attention_mask=None,
        target_pixels=None,
        caption_ids=None,
        caption_mask=None,
        reference_embeds=None,
        target_embeds=None,
    ) -> dict[str, torch.Tensor]:
        """The exported query, target (and caption) embeddings of a batch: what the losses compare."""
        out = {
            "query": self.query_embedding(reference_pixels, input_ids, attention_mask, reference_embeds),
            "target": self.gallery_embedding(target_pixels, target_embeds),
        }
        if caption_ids is not None:
            out["caption"] = self.caption_embedding(caption_ids, caption_mask)
        return out

    def contrastive_losses(self, embeddings: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """L_CIR (query vs target image) and, with captions, L_CTR (query vs target caption).
        Under data parallelism the negatives are the whole global batch (see fashionblip2.model.gather)."""
        query = gather_with_grad(embeddings["query"])
        losses = {"cir": info_nce(query, gather_with_grad(embeddings["target"]), self.temperature)}
        if "caption" in embeddings:
            losses["ctr"] = info_nce(query, gather_with_grad(embeddings["caption"]), self.temperature)
        losses["loss"] = sum(losses.values())
        return losses

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The training losses of a batch; arguments as :meth:`contrastive_embeddings` (``*_embeds``:
        image-encoder outputs computed beforehand for a frozen encoder, instead of pixels)."""
        return self.contrastive_losses(self.contrastive_embeddings(*args, **kwargs))

    def set_stage(self, stage: int) -> None:
        """Stage 1 (FACap): everything trains but the image encoder's own weights (adapters train).
        Stage 2 (FashionIQ fine-tuning): the image encoder and its adapters are frozen.
        BLIP-2's own retrieval heads, unused here, never train."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, not {stage}")
        for name, p in self.named_parameters():
            in_vision = name.startswith("backbone.vision_model.")
            unused = name.startswith(UNUSED_BACKBONE_PARTS)
            p.requires_grad = not unused and (not in_vision or (stage == 1 and ".adapter." in name))

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}


def contrastive_logits(query: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Similarities (inner products of exports) over the temperature, in fp32 whatever autocast says:
    bf16 keeps about 3 significant digits, and the in-batch similarities of a young model differ by
    less, which made every logit equal (a loss of exactly ln(batch)). (len(query), len(target))."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        return query.float() @ target.float().T / temperature.float()


def info_nce(query: torch.Tensor, target: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row i's positive is column i."""
    logits = contrastive_logits(query, target, temperature)
    return F.cross_entropy(logits, torch.arange(len(query), device=query.device))


def qformer_text_cls(backbone: Blip2ForImageTextRetrieval, input_ids, attention_mask) -> torch.Tensor:
    """The Q-Former text path's [CLS] output (no queries, no image). (B, d_q)."""
    embeds = backbone.embeddings(input_ids=input_ids)
    out = backbone.qformer(query_embeds=embeds, query_length=0, attention_mask=attention_mask)
    return out.last_hidden_state[:, 0]


def _random_backbone(config) -> Blip2ForImageTextRetrieval:
    """A randomly initialised BLIP-2, with the query tokens drawn (transformers starts them at zero)."""
    backbone = Blip2ForImageTextRetrieval(config)
    nn.init.normal_(backbone.query_tokens, std=0.02)
    return backbone
