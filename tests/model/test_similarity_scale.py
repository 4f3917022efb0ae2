"""The temperature acts per head: multi-head and global matching start at the same logit scale
(similarity_scale "per_head"), and a config saved before the option existed keeps the summed heads."""

import json
import math

import pytest
import torch

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from tests.model.test_model import batch


def build(**config) -> FashionBLIP2:
    # The same seed, so the multi-head models differ only in similarity_scale.
    torch.manual_seed(0)
    return FashionBLIP2(FashionBLIP2Config(**config)).eval()


def init_logits(model: FashionBLIP2, pixels, ids, mask) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.query_embedding(pixels, ids, mask), model.gallery_embedding(pixels))


def test_global_and_multihead_logits_start_at_the_same_scale():
    pixels, ids, mask = batch(n=6)
    per_head, summed, global_ = build(), build(similarity_scale="sum"), build(matching="global")
    assert per_head.config.similarity_scale == "per_head"  # the default for new models
    assert per_head.heads == summed.heads == 12 and global_.heads == 1
    # The same learnable temperature at init in all three.
    assert torch.equal(per_head.temperature, global_.temperature) and torch.equal(
        per_head.temperature, summed.temperature
    )
    bound = 1 / per_head.temperature.item()

    mh, mh_sum, gl = (init_logits(m, pixels, ids, mask) for m in (per_head, summed, global_))
    # A similarity in [-1, 1] under the temperature: both matchings stay within 1/T ...
    assert mh.abs().max() <= bound * (1 + 1e-5)
    assert gl.abs().max() <= bound * (1 + 1e-5)
    # ... and are of the same order (the untrained heads' cosines are all near 1).
    assert 0.5 < (mh.abs().max() / gl.abs().max()).item() < 2
    # Summing the heads makes the multi-head logits num_heads times sharper, far out of the global range.
    torch.testing.assert_close(mh_sum, 12 * mh, rtol=1e-4, atol=1e-4)
    assert mh_sum.abs().max() > 6 * bound
    # The ranking does not depend on a positive scale, the loss does.
    assert torch.equal(mh_sum.argsort(dim=1, stable=True), mh.argsort(dim=1, stable=True))
    with torch.no_grad():
        losses = [m(pixels, ids, mask, pixels.flip(0), ids, mask)["loss"] for m in (per_head, summed)]
    assert not torch.allclose(losses[0], losses[1])


@pytest.mark.parametrize("scale", ["per_head", "sum"])
def test_similarity_is_the_inner_product_of_the_exports_under_either_scale(scale):
    model = build(similarity_scale=scale)
    pixels, ids, mask = batch()
    with torch.no_grad():
        heads_q = model.heads_of(model.query_tokens_fused(pixels, ids, mask))
        heads_c = model.heads_of(model.candidate_tokens(pixels))
        q, c = model.query_embedding(pixels, ids, mask), model.gallery_embedding(pixels)
        torch.testing.assert_close(model.similarity(heads_q[:, None], heads_c[None]), q @ c.T, atol=1e-5, rtol=1e-5)
        # Exports are unit vectors under per_head (a cosine, like global), sqrt(heads) long under sum.
        expected = 1.0 if scale == "per_head" else 12**0.5
        torch.testing.assert_close(q.norm(dim=1), torch.full((4,), expected), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            model.caption_embedding(ids, mask).norm(dim=1), torch.full((4,), expected), atol=1e-5, rtol=1e-5
        )


def test_a_config_saved_without_the_key_loads_with_the_summed_heads(tmp_path):
    model = build()
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    saved = json.loads(config_file.read_text())
    assert saved["similarity_scale"] == "per_head"  # new models store the key
    assert FashionBLIP2.from_pretrained(tmp_path).config.similarity_scale == "per_head"

    # What the code before the option wrote: the same config without the key.
    del saved["similarity_scale"]
    config_file.write_text(json.dumps(saved))
    old = FashionBLIP2.from_pretrained(tmp_path).eval()
    assert old.config.similarity_scale == "sum"
    pixels, ids, mask = batch()
    with torch.no_grad():
        # Same weights, the heads summed again: the old scores, 12 times the per-head ones.
        old_scores = old.query_embedding(pixels, ids, mask) @ old.gallery_embedding(pixels).T
        new_scores = model.query_embedding(pixels, ids, mask) @ model.gallery_embedding(pixels).T
        torch.testing.assert_close(old_scores, 12 * new_scores, rtol=1e-4, atol=1e-4)
    # An explicit choice still overrides the legacy default.
    assert FashionBLIP2.from_pretrained(tmp_path, similarity_scale="per_head").config.similarity_scale == "per_head"


def test_an_unknown_similarity_scale_is_refused():
    with pytest.raises(ValueError, match="similarity_scale"):
        FashionBLIP2Config(similarity_scale="max")


def test_contrastive_logits_keep_fp32_precision_under_bf16_autocast():
    # Two targets whose similarities to the query differ by 1e-3: bf16 (spacing 2^-8 near 1) would
    # make them equal, and the loss would be exactly ln(2) whatever the model learnt.
    from fashionblip2.model.modeling import contrastive_logits, info_nce

    query = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)
    angle = torch.tensor([0.0447, 0.0])  # cos 0.0447 = 0.999, cos 0 = 1
    target = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)
    temperature = torch.tensor(0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = contrastive_logits(query, target, temperature)
        loss = info_nce(query.repeat(2, 1), target, temperature)
    assert logits.dtype == torch.float32
    assert logits[0, 1] - logits[0, 0] == pytest.approx(0.001 / 0.07, rel=0.02)
    reference = info_nce(query.repeat(2, 1), target, temperature)  # fp32, no autocast
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    assert abs(loss.item() - math.log(2)) > 1e-5  # bf16 logits gave exactly ln(2)
