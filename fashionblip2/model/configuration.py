"""The configuration of FashionBLIP-2: a BLIP-2 configuration plus adapters and matching heads."""

from __future__ import annotations

from typing import Any

from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, PretrainedConfig

MATCHING = ("multihead", "global")


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
        **kwargs: Any,
    ):
        if matching not in MATCHING:
            raise ValueError(f"matching must be one of {MATCHING}, not {matching!r}")
        if isinstance(blip2, Blip2Config):
            blip2 = blip2.to_dict()
        self.blip2 = blip2 or tiny_blip2_config().to_dict()
        self.adapter_factor = adapter_factor
        self.use_adapters = use_adapters
        self.matching = matching
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.init_temperature = init_temperature  # "temperature" is a generation parameter name in transformers
        self.max_text_length = max_text_length
        super().__init__(**kwargs)

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
