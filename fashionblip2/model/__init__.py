"""FashionBLIP-2 (paper §4): BLIP-2 with vision adapters, Q-Former fusion and multi-head matching."""

from fashionblip2.model.configuration import FashionBLIP2Config
from fashionblip2.model.modeling import FashionBLIP2, info_nce

__all__ = ["FashionBLIP2", "FashionBLIP2Config", "info_nce"]
