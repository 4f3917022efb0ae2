"""The configuration of FashionBLIP-2: a BLIP-2 configuration plus adapters and matching heads."""

from __future__ import annotations

import os
from typing import Any

from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, PretrainedConfig

from fashionblip2.common.images import IMAGE_MODES

MATCHING = ("multihead", "global")
# How the multi-head similarity combines the heads' cosines: "per_head", their mean, keeps it in
# [-1, 1] like the global cosine, so one temperature gives both matchings the same logit scale;
# "sum", the behaviour before the option existed, is num_heads times sharper at the same temperature.
SIMILARITY_SCALES = ("per_head", "sum")
# A saved config without the key was written before the option existed, by code that summed.
LEGACY_SIMILARITY_SCALE = "sum"
# The range the learnt temperature is clamped to (FashionBLIP2.temperature, BLIP-2's): a start
# outside it would sit on the clamp, whose gradient is zero, and never move.
TEMPERATURE_RANGE = (0.001, 0.5)


class FashionBLIP2Config(PretrainedConfig):
    model_type = "fashionblip2"

    def __init__(
        self,
        blip2: dict[str, Any] | Blip2Config | None = None,
        adapter_factor: int = 16,
        use_adapters: bool = True,
        matching: str = "multihead",
        num_heads: int = 12,
        head_dim: int = 256,
        init_temperature: float = 0.07,
        max_text_length: int = 128,
        similarity_scale: str = "per_head",
        image_mode: str = "rgb",
        **kwargs: Any,
    ):
        if matching not in MATCHING:
            raise ValueError(f"matching must be one of {MATCHING}, not {matching!r}")
        if similarity_scale not in SIMILARITY_SCALES:
            raise ValueError(f"similarity_scale must be one of {SIMILARITY_SCALES}, not {similarity_scale!r}")
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, not {image_mode!r}")
        low, high = TEMPERATURE_RANGE
        if not low <= init_temperature <= high:
            raise ValueError(
                f"init_temperature must be in [{low}, {high}] (the temperature's clamp), not {init_temperature}"
            )
        if isinstance(blip2, Blip2Config):
            blip2 = blip2.to_dict()
        self.blip2 = blip2 or tiny_blip2_config().to_dict()
        self.adapter_factor = adapter_factor
        self.use_adapters = use_adapters
        self.matching = matching
        self.num_heads = num_heads
        self.head_dim = head_dim
        # The learnable temperature's value when the heads are created (a model built from a BLIP-2
        # backbone); a saved FashionBLIP-2 loads its learnt one over it. ("temperature" is a
        # generation parameter name in transformers.)
        self.init_temperature = init_temperature
        self.max_text_length = max_text_length
        self.similarity_scale = similarity_scale
        # Where images become RGB: "rgb" first, "sprc" after TargetPad (fashionblip2.model.processing).
        # A config without the key was saved before the option, by code that converted first: the
        # default, "rgb", is what it was trained with.
        self.image_mode = image_mode
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> FashionBLIP2Config:
        # New models default to "per_head", but a config.json without the key was saved by the code
        # that summed the heads: its temperature was learnt for summed logits, so it must load as
        # "sum" to reproduce its losses and scores. (save_pretrained always writes the key: it is
        # not a PretrainedConfig attribute, so the diff against the defaults keeps it.)
        # from_pretrained's keyword overrides are applied after this, so they still win.
        config_dict = {"similarity_scale": LEGACY_SIMILARITY_SCALE, **config_dict}
        return super().from_dict(config_dict, **kwargs)

    def blip2_config(self) -> Blip2Config:
        config = Blip2Config.from_dict(self.blip2)
        # The Q-Former must take text for the fused query path (else AttributeError `intermediate`).
        config.qformer_config.use_qformer_text_input = True
        return config


def tiny_blip2_config(vocab_size: int = 1000, image_size: int = 64, num_query_tokens: int = 32) -> Blip2Config:
    """A BLIP-2 small enough for a laptop CPU, initialised to train from scratch.

    transformers' defaults are for loading weights: the vision initializer_range is 1e-10, which
    would make a randomly built encoder a constant; 0.02 is used instead. No Q-Former dropout: a
    model this small trained for a few hundred steps underfits; dropout only slowed it (measured:
    image-text loss 2.26 -> 2.20 after 400 steps, and 15% faster).
    """
    vision = Blip2VisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=16,
        initializer_range=0.02,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        encoder_hidden_size=128,
        cross_attention_frequency=1,
        max_position_embeddings=160,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        use_qformer_text_input=True,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        num_query_tokens=num_query_tokens,
        image_text_hidden_size=64,
    )


def paper_blip2_config(vocab_size: int = 30523) -> Blip2Config:
    """BLIP-2 with ViT-g/14 at 224 px (39 layers, 1408 wide) and a 12-layer, 768-wide Q-Former, as in the paper."""
    vision = Blip2VisionConfig(
        hidden_size=1408,
        intermediate_size=6144,
        num_hidden_layers=39,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=vocab_size,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        encoder_hidden_size=1408,
        cross_attention_frequency=2,
        use_qformer_text_input=True,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        num_query_tokens=32,
        image_text_hidden_size=256,
    )


# Early uploads of the BLIP-2 retrieval checkpoints (Salesforce/blip2-itm-vit-g) name the Q-Former's
# text switch ``qformer_text_input``, a name transformers used before its release. transformers reads
# only ``use_qformer_text_input``: under the old name the Q-Former is built without its text layers, the
# checkpoint's text weights are dropped as unexpected, and the first text input fails with
# ``'Blip2QFormerLayer' object has no attribute 'intermediate'``.
LEGACY_QFORMER_TEXT_KEY = "qformer_text_input"


def map_legacy_blip2_keys(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of a BLIP-2 config dict with ``qformer_text_input`` (top level, ``qformer_config`` or
    ``text_config``) moved to ``qformer_config.use_qformer_text_input``; an explicit
    ``use_qformer_text_input`` wins."""
    out = dict(config_dict)
    sections = {name: dict(out[name]) for name in ("qformer_config", "text_config") if isinstance(out.get(name), dict)}
    out.update(sections)  # copies: the caller's dict stays as it was
    found = [
        holder.pop(LEGACY_QFORMER_TEXT_KEY) for holder in (out, *sections.values()) if LEGACY_QFORMER_TEXT_KEY in holder
    ]
    if found:
        qformer = out["qformer_config"] = sections.get("qformer_config", {})
        qformer.setdefault("use_qformer_text_input", any(bool(v) for v in found))
    return out


def load_backbone_config(path: str | os.PathLike[str]) -> Blip2Config:
    """The BLIP-2 config of a checkpoint folder, for FashionBLIP-2's backbone: legacy keys mapped
    (``map_legacy_blip2_keys``) and the Q-Former's text path on, which the fused query and the caption
    need.

    Give it to ``Blip2ForImageTextRetrieval.from_pretrained(path, config=...)``: the text layers must
    exist when the model is built for the checkpoint's weights to load into them; switching the flag on
    after loading leaves layers without ``intermediate``.
    """
    config_dict, _ = Blip2Config.get_config_dict(str(path), local_files_only=True)
    config = Blip2Config.from_dict(map_legacy_blip2_keys(config_dict))
    config.qformer_config.use_qformer_text_input = True
    return config
