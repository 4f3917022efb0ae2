"""model.init_temperature (FashionBLIP2Config.init_temperature): the learnable temperature's start
when the heads are created, and nothing else (docs/fidelity.md, rows 2 and 9)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Blip2ForImageTextRetrieval

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.model.configuration import tiny_blip2_config
from tests.model.test_model import batch


def build(**config) -> FashionBLIP2:
    torch.manual_seed(0)  # the same draws: models that differ in their config only
    return FashionBLIP2(FashionBLIP2Config(**config)).eval()


def embeddings_and_logits(model: FashionBLIP2):
    pixels, ids, mask = batch(n=6)
    with torch.no_grad():
        q, t = model.query_embedding(pixels, ids, mask), model.gallery_embedding(pixels.flip(0))
        return q, t, model.logits(q, t), model(pixels, ids, mask, pixels.flip(0), ids, mask)["loss"]


def test_it_sets_the_logit_scale_and_nothing_else():
    default, warmer = build(), build(init_temperature=0.14)
    assert default.config.init_temperature == 0.07  # the default: BLIP-2's
    assert math.isclose(default.temperature.item(), 0.07, rel_tol=1e-6)
    assert math.isclose(warmer.temperature.item(), 0.14, rel_tol=1e-6)
    a, b = default.state_dict(), warmer.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["log_temperature"]
    (qa, ta, la, lossa), (qb, tb, lb, lossb) = embeddings_and_logits(default), embeddings_and_logits(warmer)
    assert torch.equal(qa, qb) and torch.equal(ta, tb)  # the embeddings (and so retrieval) are the same
    torch.testing.assert_close(la, 2 * lb)  # the logits are half as sharp
    assert not torch.isclose(lossa, lossb)


def test_sum_at_tau_is_per_head_at_tau_over_the_heads():
    """Row 9: summing the 12 heads' cosines at temperature t gives the logits (and loss) of their mean
    at t / 12, so init_temperature 0.07 / 12 starts per_head where sum starts at 0.07."""
    summed, per_head = build(similarity_scale="sum"), build(init_temperature=0.07 / 12)
    *_, logits_sum, loss_sum = embeddings_and_logits(summed)
    *_, logits_mean, loss_mean = embeddings_and_logits(per_head)
    torch.testing.assert_close(logits_sum, logits_mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss_sum, loss_mean, rtol=1e-4, atol=1e-4)


def test_it_applies_when_the_heads_are_created_not_to_a_saved_model(tmp_path):
    """Stage 1 (and stage 2 without FACap) builds from a BLIP-2 folder: the setting starts the
    temperature. Stage 2 after stage 1 loads the stage-1 model: its learnt temperature is kept."""
    Blip2ForImageTextRetrieval(tiny_blip2_config()).save_pretrained(tmp_path / "blip2")
    stage1 = FashionBLIP2.from_pretrained(tmp_path / "blip2", init_temperature=0.2)
    assert stage1.config.init_temperature == 0.2
    assert math.isclose(stage1.temperature.item(), 0.2, rel_tol=1e-6)
    with torch.no_grad():
        stage1.log_temperature.fill_(math.log(0.03))  # what training learnt
    stage1.save_pretrained(tmp_path / "stage1")
    stage2 = FashionBLIP2.from_pretrained(tmp_path / "stage1")
    assert stage2.config.init_temperature == 0.2  # recorded ...
    assert math.isclose(stage2.temperature.item(), 0.03, rel_tol=1e-6)  # ... but the learnt one is loaded


@pytest.mark.parametrize("value", [0.0, 0.0005, 0.6, -0.07])
def test_a_start_outside_the_clamp_is_refused(value):
    # The temperature is clamped to [0.001, 0.5]: a start outside would sit on the clamp, never learn.
    with pytest.raises(ValueError, match="init_temperature"):
        FashionBLIP2Config(init_temperature=value)
    FashionBLIP2Config(init_temperature=0.5)
    FashionBLIP2Config(init_temperature=0.001)
