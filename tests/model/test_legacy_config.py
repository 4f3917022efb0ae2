"""BLIP-2 checkpoint folders whose config uses the legacy ``qformer_text_input`` key (early uploads of
Salesforce/blip2-itm-vit-g) build a backbone with the Q-Former's text layers, and their weights load."""

from __future__ import annotations

import json

import torch
from transformers import Blip2ForImageTextRetrieval

from fashionblip2.model.configuration import (
    LEGACY_QFORMER_TEXT_KEY,
    load_backbone_config,
    map_legacy_blip2_keys,
    tiny_blip2_config,
)
from fashionblip2.model.modeling import FashionBLIP2, qformer_text_cls


def _legacy(config_dict: dict) -> dict:
    """The config as the early uploads have it: the old key in the Q-Former config, not the new one."""
    qformer = dict(config_dict["qformer_config"])
    qformer.pop("use_qformer_text_input", None)
    qformer[LEGACY_QFORMER_TEXT_KEY] = True
    return {**config_dict, "qformer_config": qformer}


def _has_text_layers(backbone: Blip2ForImageTextRetrieval) -> bool:
    return all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in backbone.qformer.encoder.layer)


def test_the_legacy_key_is_mapped_and_the_model_builds_with_qformer_text_layers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_legacy(tiny_blip2_config().to_dict())))
    config = load_backbone_config(tmp_path)
    assert config.qformer_config.use_qformer_text_input is True
    assert not hasattr(config.qformer_config, LEGACY_QFORMER_TEXT_KEY)  # not carried into saved configs
    assert _has_text_layers(Blip2ForImageTextRetrieval(config))


def test_a_legacy_checkpoint_loads_its_text_weights(tmp_path):
    torch.manual_seed(0)
    saved = Blip2ForImageTextRetrieval(tiny_blip2_config()).eval()
    saved.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(_legacy(json.loads(config_file.read_text()))))
    loaded = Blip2ForImageTextRetrieval.from_pretrained(
        tmp_path, config=load_backbone_config(tmp_path), local_files_only=True
    ).eval()
    assert _has_text_layers(loaded)
    ids = torch.tensor([[101, 7, 8, 9, 102]])
    with torch.no_grad():
        assert torch.equal(
            qformer_text_cls(loaded, ids, torch.ones_like(ids)), qformer_text_cls(saved, ids, torch.ones_like(ids))
        )


def test_mapping_rules():
    assert map_legacy_blip2_keys({"qformer_config": {"qformer_text_input": False}}) == {
        "qformer_config": {"use_qformer_text_input": False}
    }
    # The key at the top level or in text_config counts too; the explicit new key wins; the input is not changed.
    original = {"text_config": {"qformer_text_input": True}, "qformer_config": {"use_qformer_text_input": False}}
    assert map_legacy_blip2_keys(original) == {"text_config": {}, "qformer_config": {"use_qformer_text_input": False}}
    assert original["text_config"] == {"qformer_text_input": True}
    assert map_legacy_blip2_keys({"qformer_text_input": True}) == {"qformer_config": {"use_qformer_text_input": True}}
    assert map_legacy_blip2_keys({"num_query_tokens": 32}) == {"num_query_tokens": 32}


def test_fashionblip2_from_a_legacy_checkpoint_folder(tmp_path):
    torch.manual_seed(0)
    Blip2ForImageTextRetrieval(tiny_blip2_config()).save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(_legacy(json.loads(config_file.read_text()))))
    model = FashionBLIP2.from_pretrained(tmp_path)
    assert _has_text_layers(model.backbone)
