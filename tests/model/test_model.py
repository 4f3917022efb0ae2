import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import Blip2ForImageTextRetrieval

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.model.configuration import tiny_blip2_config


def batch(n=4, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 64, 64, generator=g)
    ids = torch.randint(5, 1000, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, -2:] = 0  # some padding
    return pixels, ids, mask


@pytest.fixture
def model():
    torch.manual_seed(0)
    return FashionBLIP2(FashionBLIP2Config()).eval()


def perturb_adapters(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter.up." in name:
                p.normal_(0, 0.05)


def test_adapters_are_the_identity_at_init(model):
    plain = FashionBLIP2(FashionBLIP2Config(use_adapters=False)).eval()
    state = {
        (k.replace(".layer.", ".", 1) if "vision_model.encoder.layers." in k else k): v
        for k, v in model.state_dict().items()
        if ".adapter." not in k
    }
    plain.load_state_dict(state)
    pixels, _, _ = batch()
    with torch.no_grad():
        assert torch.equal(model.image_features(pixels), plain.image_features(pixels))
        perturb_adapters(model)
        assert not torch.allclose(model.image_features(pixels), plain.image_features(pixels))


def test_multihead_similarity_is_the_inner_product_of_the_exports(model):
    pixels, ids, mask = batch()
    with torch.no_grad():
        q_tokens = model.query_tokens_fused(pixels, ids, mask)
        c_tokens = model.candidate_tokens(pixels)
        q, c = model.query_embedding(pixels, ids, mask), model.gallery_embedding(pixels)
        assert q.shape == c.shape == (4, 12 * 256)
        # Directly: mix, then the mean over the 12 heads (similarity_scale "per_head", the default) of
        # the cosine of the raw (unnormalised) heads.
        mix = lambda t: model.channel_mixing(model.token_mixing(t.transpose(1, 2)).transpose(1, 2))  # noqa: E731
        direct = torch.stack(
            [F.cosine_similarity(mix(q_tokens)[i : i + 1], mix(c_tokens), dim=-1).mean(-1) for i in range(4)]
        )
        torch.testing.assert_close(q @ c.T, direct, atol=1e-5, rtol=1e-5)
        heads_q, heads_c = model.heads_of(q_tokens), model.heads_of(c_tokens)
        torch.testing.assert_close(model.similarity(heads_q[:, None], heads_c[None]), q @ c.T, atol=1e-5, rtol=1e-5)
        # The caption is compared with every head: again one inner product.
        cap = model.caption_embedding(ids, mask)
        v = F.normalize(model.channel_mixing(model.caption_vector(ids, mask)), dim=-1)
        torch.testing.assert_close(
            q @ cap.T, (heads_q[:, None] * v[None, :, None]).sum(-1).mean(-1), atol=1e-5, rtol=1e-5
        )


def test_global_matching_is_one_cosine():
    torch.manual_seed(1)
    model = FashionBLIP2(FashionBLIP2Config(matching="global")).eval()
    pixels, ids, mask = batch()
    with torch.no_grad():
        q, c = model.query_embedding(pixels, ids, mask), model.gallery_embedding(pixels)
        assert q.shape == (4, 256)
        direct = F.cosine_similarity(
            model.channel_mixing(model.query_tokens_fused(pixels, ids, mask).mean(1))[:, None],
            model.channel_mixing(model.candidate_tokens(pixels).mean(1))[None],
            dim=-1,
        )
        torch.testing.assert_close(q @ c.T, direct, atol=1e-5, rtol=1e-5)


def test_fusion_equals_transformers_image_text_matching_path(model):
    pixels, ids, mask = batch()
    with torch.no_grad():
        ours = model.backbone.itm_head(model.query_tokens_fused(pixels, ids, mask)).mean(dim=1)
        theirs = model.backbone(
            pixel_values=pixels, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True
        ).logits_per_image
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("stage", [1, 2])
def test_only_the_stage_parameters_train(model, stage):
    model.train()
    model.set_stage(stage)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    pixels, ids, mask = batch()
    perturb_adapters(model) if stage == 2 else None
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(pixels, ids, mask, pixels.flip(0), ids, mask)["loss"].backward()
    optimizer.step()
    for name, p in model.named_parameters():
        vision = name.startswith("backbone.vision_model.")
        unused = name.startswith(("backbone.itm_head.", "backbone.vision_projection.", "backbone.text_projection."))
        should_train = not unused and (not vision or (stage == 1 and ".adapter." in name))
        assert p.requires_grad == should_train, name
        if not should_train:
            assert p.grad is None and torch.equal(p, before[name]), name
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(".adapter." in n for n in changed) == (stage == 1)
    assert any(n.startswith("channel_mixing") for n in changed)
    counts = model.parameter_counts()
    assert counts["total"] == counts["trainable"] + counts["frozen"] and counts["frozen"] > 0


def test_save_and_load_round_trip(model, tmp_path):
    perturb_adapters(model)
    model.save_pretrained(tmp_path)
    loaded = FashionBLIP2.from_pretrained(tmp_path).eval()
    pixels, ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(model.query_embedding(pixels, ids, mask), loaded.query_embedding(pixels, ids, mask))
        assert torch.equal(model.gallery_embedding(pixels), loaded.gallery_embedding(pixels))
        assert torch.equal(model.temperature, loaded.temperature)


def test_a_blip2_checkpoint_folder_loads_with_fresh_adapters_and_heads(tmp_path):
    torch.manual_seed(3)
    config = tiny_blip2_config()
    blip2 = Blip2ForImageTextRetrieval(config).eval()
    torch.nn.init.normal_(blip2.query_tokens, std=0.02)
    blip2.save_pretrained(tmp_path)
    model = FashionBLIP2.from_pretrained(tmp_path, matching="global").eval()
    assert model.config.matching == "global"
    pixels, ids, mask = batch()
    with torch.no_grad():
        assert torch.equal(model.image_features(pixels), blip2.vision_model(pixel_values=pixels).last_hidden_state)
        assert torch.equal(model.backbone.query_tokens, blip2.query_tokens)


def test_the_loss_decreases_on_a_fixed_batch(model):
    model.train()
    model.set_stage(1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    pixels, ids, mask = batch(n=8)
    targets = pixels + 0.1 * torch.randn_like(pixels)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(pixels, ids, mask, targets, ids, mask)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_paper_configuration_counts_on_the_meta_device():
    proc = subprocess.run(
        [sys.executable, "-m", "fashionblip2.model.count"], capture_output=True, text=True, check=True
    )
    import json

    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    vision = counts["parts"]["vision_encoder_with_adapters"] - counts["parts"]["adapters"]
    assert 980e6 < vision < 990e6  # ViT-g/14: about 986 M
    # Adapters: 39 layers x (1408 x 88 + 88 + 88 x 1408 + 1408).
    assert counts["parts"]["adapters"] == 39 * (1408 * 88 + 88 + 88 * 1408 + 1408)
    assert counts["parts"]["matching_heads"] == (32 * 12 + 12) + (768 * 256 + 256)
    s1, s2 = counts["stage1"], counts["stage2"]
    assert s1["total"] == s2["total"] and s1["frozen"] == vision + counts["parts"]["unused_blip2_heads"]
    assert s2["trainable"] == s1["trainable"] - counts["parts"]["adapters"]
