"""Parameter counts of FashionBLIP-2 in the paper's configuration, computed on the meta device
(no weights, no memory): ``python -m fashionblip2.model.count``."""

from __future__ import annotations

import argparse
import json

import torch

from fashionblip2.model.configuration import FashionBLIP2Config, paper_blip2_config
from fashionblip2.model.modeling import UNUSED_BACKBONE_PARTS, FashionBLIP2


def paper_counts(matching: str = "multihead") -> dict[str, dict[str, int]]:
    config = FashionBLIP2Config(
        blip2=paper_blip2_config(), adapter_factor=16, matching=matching, num_heads=12, head_dim=256
    )
    with torch.device("meta"):
        model = FashionBLIP2(config)
    out = {}
    for stage in (1, 2):
        model.set_stage(stage)
        out[f"stage{stage}"] = model.parameter_counts()
    vision = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.vision_model."))
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    unused = sum(p.numel() for n, p in model.named_parameters() if n.startswith(UNUSED_BACKBONE_PARTS))
    out["parts"] = {
        "vision_encoder_with_adapters": vision,
        "adapters": adapters,
        "unused_blip2_heads": unused,
        "matching_heads": sum(
            p.numel() for n, p in model.named_parameters() if n.startswith(("token_mixing", "channel_mixing"))
        ),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--matching", choices=["multihead", "global"], default="multihead")
    args = parser.parse_args()
    counts = paper_counts(args.matching)
    for name, c in counts.items():
        print(f"{name:8s} " + "  ".join(f"{k}: {v / 1e6:,.2f} M" for k, v in c.items()))
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
