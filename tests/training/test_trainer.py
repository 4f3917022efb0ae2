import json

import pytest
import torch
import torch.nn.functional as F

from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.training.trainer import TrainConfig, TrainingError, batch_order, make_scheduler, train
from tests.conftest import train_config


class TwoTowers(torch.nn.Module):
    """A tiny contrastive model with dropout, so the RNG matters for resuming."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 8))
        self.b = torch.nn.Linear(8, 8)


def data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x + 0.1 * torch.randn(n, 8, generator=g)


def toy_loss(model, batch):
    x, y = batch
    q, t = F.normalize(model.a(x), dim=-1), F.normalize(model.b(y), dim=-1)
    loss = F.cross_entropy(q @ t.T / 0.1, torch.arange(len(x)))
    return {"loss": loss, "cir": loss.detach()}


def run(out, steps=12, stop_after=None, seed=3, **kw):
    torch.manual_seed(0)
    model = TwoTowers()
    x, y = data()
    cfg = train_config(steps=steps, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=5, seed=seed, **kw)
    result = train(
        model, len(x), lambda idx, step: (x[idx], y[idx]), toy_loss, cfg, out, progress=False, stop_after=stop_after
    )
    return model, result


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    straight, result = run(tmp_path / "a")
    assert result == {"step": 12, "done": True}
    killed, result = run(tmp_path / "b", stop_after=7)  # checkpoint at 5; steps 6-7 are lost with the "kill"
    assert result == {"step": 7, "done": False}
    resumed, result = run(tmp_path / "b")
    assert result["done"]
    for (name, p), (_, q) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    a = (tmp_path / "a/metrics.jsonl").read_text()
    b = (tmp_path / "b/metrics.jsonl").read_text()
    assert a == b and [json.loads(line)["step"] for line in a.splitlines()] == list(range(1, 13))


def test_the_loss_falls(tmp_path):
    run(tmp_path, steps=30)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-5:]) < sum(losses[:5])


def test_a_non_finite_loss_stops_with_a_clear_message(tmp_path):
    calls = []

    def exploding(model, batch):
        calls.append(1)
        parts = toy_loss(model, batch)
        return {**parts, "loss": parts["loss"] * float("nan")} if len(calls) == 4 else parts

    x, y = data()
    cfg = train_config(steps=10, batch_size=8, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 3 \(epoch 0\)"):
        train(TwoTowers(), len(x), lambda idx, step: (x[idx], y[idx]), exploding, cfg, tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2


def test_resuming_with_another_config_is_refused(tmp_path):
    run(tmp_path, steps=5)
    with pytest.raises(TrainingError, match="another training config"):
        run(tmp_path, steps=5, seed=4)


def test_batch_order_depends_only_on_seed_and_epoch():
    a, b = batch_order(50, 8, 1, 0), batch_order(50, 8, 1, 0)
    assert len(a) == 6 and all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not (batch_order(50, 8, 1, 1)[0] == a[0]).all()
    assert sorted(int(i) for batch in a for i in batch) == sorted(set(int(i) for batch in a for i in batch))


def test_warmup_then_cosine():
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, train_config(steps=10, warmup_steps=2, lr=1.0))
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0) and lrs[-1] < 0.05
    assert all(x >= y for x, y in zip(lrs[1:], lrs[2:], strict=False))


def test_trains_fashionblip2_stage_one(tmp_path):
    torch.manual_seed(0)
    model = FashionBLIP2(FashionBLIP2Config())
    model.set_stage(1)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(8, 3, 64, 64, generator=g)
    ids = torch.randint(5, 1000, (8, 6), generator=g)
    mask = torch.ones(8, 6, dtype=torch.long)

    def loss_fn(m, idx):
        return m(pixels[idx], ids[idx], mask[idx], pixels[idx], ids[idx], mask[idx])

    vision_before = model.backbone.vision_model.embeddings.patch_embedding.weight.detach().clone()
    result = train(
        model, 8, lambda idx, step: idx, loss_fn, train_config(steps=3, batch_size=4, lr=1e-3), tmp_path, progress=False
    )
    assert result["done"] and torch.equal(model.backbone.vision_model.embeddings.patch_embedding.weight, vision_before)
    assert {"loss", "cir", "ctr", "lr", "grad_norm"} <= set(
        json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    )


def test_onecycle_starts_at_lr_over_div_factor_as_sprc_sets_it():
    for div in (25.0, 100.0):
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        make_scheduler(
            opt, train_config(steps=100, warmup_steps=5, lr=2e-5, schedule="onecycle", onecycle_div_factor=div)
        )
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-5 / div)


def test_a_checkpoint_from_before_the_optimiser_fields_resumes_with_their_defaults():
    cfg = train_config(steps=10, validate_every=0)
    old = {k: v for k, v in cfg.resume_key().items() if k not in TrainConfig.ADDED_FIELDS} | {"device": "cpu"}
    assert cfg.resumes(old)
    assert not train_config(steps=10, eps=1e-7, validate_every=0).resumes(old)  # it was trained with eps 1e-8
    assert not train_config(steps=11, validate_every=0).resumes(old)
    # It kept no validation curve: a run that validates would continue it half-way.
    assert not train_config(steps=10, validate_every=5).resumes(old)
