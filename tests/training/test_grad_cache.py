"""The gradient cache gives the plain full-batch gradients, with the memory of a micro-batch."""

import pytest
import torch

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.model.configuration import tiny_blip2_config
from fashionblip2.model.pretraining import Blip2ImageTextContrastive
from fashionblip2.training.grad_cache import grad_cache_step
from fashionblip2.training.trainer import train
from tests.conftest import train_config

N = 10


def fashionblip2(dropout: float = 0.0):
    torch.manual_seed(0)
    blip2 = tiny_blip2_config(vocab_size=100, image_size=32)
    blip2.qformer_config.hidden_dropout_prob = dropout
    model = FashionBLIP2(FashionBLIP2Config(blip2=blip2, num_heads=4, head_dim=16))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapter.up." in name:
                p.normal_(0, 0.02)
    model.set_stage(1)
    return model


def cir_batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (N, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[:3, -2:] = 0
    return {
        "reference_pixels": torch.randn(N, 3, 32, 32, generator=g),
        "input_ids": ids,
        "attention_mask": mask,
        "target_pixels": torch.randn(N, 3, 32, 32, generator=g),
        "caption_ids": torch.randint(5, 100, (N, 5), generator=g),
        "caption_mask": torch.ones(N, 5, dtype=torch.long),
    }


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_grads(a, b):
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        # Float32 sums in another order: equal up to rounding, relative to the gradient's size.
        assert (a[name] - b[name]).norm() <= 1e-5 * a[name].norm() + 1e-8, name


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no dropout", "dropout replayed"])
def test_grad_cache_equals_the_full_batch_step(dropout):
    batch = cir_batch()
    plain = fashionblip2(dropout).train()
    torch.manual_seed(5)
    full = plain(**batch)
    full["loss"].backward()
    cached = fashionblip2(dropout).train()
    torch.manual_seed(5)
    parts = grad_cache_step(cached, batch, micro_batch_size=3)  # 3 + 3 + 3 + 1 rows
    if dropout == 0.0:  # with dropout, the loss itself depends on how the RNG is consumed
        assert torch.allclose(parts["loss"], full["loss"].detach(), atol=1e-6)
        assert_same_grads(grads(plain), grads(cached))
    else:
        # With dropout, the gradients must be those of the loss the cache computed: the second pass
        # replays each micro-batch's RNG state and draws the first pass's masks. Reference: the same
        # micro-batches embedded once, with gradients, in the same RNG order.
        reference = fashionblip2(dropout).train()
        torch.manual_seed(5)
        parts_ref = [
            reference.contrastive_embeddings(**{k: v[i : i + 3] for k, v in batch.items()}) for i in (0, 3, 6, 9)
        ]
        loss = reference.contrastive_losses({k: torch.cat([p[k] for p in parts_ref]) for k in parts_ref[0]})["loss"]
        loss.backward()
        assert torch.allclose(parts["loss"], loss.detach(), atol=1e-6)
        assert_same_grads(grads(reference), grads(cached))
        assert not torch.allclose(parts["loss"], full["loss"].detach())  # dropout did act


def test_grad_cache_for_the_pretraining_objective():
    g = torch.Generator().manual_seed(2)
    batch = {
        "pixel_values": torch.randn(N, 3, 32, 32, generator=g),
        "input_ids": torch.randint(5, 100, (N, 6), generator=g),
        "attention_mask": torch.ones(N, 6, dtype=torch.long),
    }

    def model():
        torch.manual_seed(0)
        return Blip2ImageTextContrastive(tiny_blip2_config(vocab_size=100, image_size=32))

    plain, cached = model(), model()
    plain(**batch)["loss"].backward()
    grad_cache_step(cached, batch, micro_batch_size=4)
    assert_same_grads(grads(plain), grads(cached))


def test_trainer_with_micro_batches_reaches_the_same_weights(tmp_path):
    batch = cir_batch()

    def run(micro, out):
        model = fashionblip2()
        cfg = train_config(steps=2, batch_size=N, lr=1e-3, warmup_steps=1, device="cpu", micro_batch_size=micro)
        train(
            model,
            N,
            lambda idx, step: {k: v[idx] for k, v in batch.items()},
            lambda m, b: m(**b),
            cfg,
            out,
            progress=False,
        )
        return model.state_dict()

    plain, cached = run(0, tmp_path / "a"), run(4, tmp_path / "b")
    for name in plain:
        assert torch.allclose(plain[name], cached[name], atol=1e-5, rtol=1e-4), name
