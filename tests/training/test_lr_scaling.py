"""training.<run>.lr_scaling: the optimiser's learning rate scaled from the batch it was tuned at
(lr_reference_batch_size) to the run's batch, linearly or by the square root; none (the default)
uses lr as given (docs/fidelity.md, row 1)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fashionblip2.training.trainer import METRICS, TrainConfig, make_scheduler, train
from tests.conftest import default_config, train_config

LR = 2e-5  # SPRC's, tuned at batch 128


def scaled(scaling: str, schedule: str = "onecycle", **kw) -> TrainConfig:
    settings = {"batch_size": 512, "lr": LR, "steps": 40, "warmup_steps": 4, "lr_reference_batch_size": 128}
    return train_config("stage2", schedule=schedule, device="cpu", lr_scaling=scaling, **(settings | kw))


def lrs(cfg: TrainConfig, steps: int = 40) -> list[list[float]]:
    """Every group's lr at every step of the schedule (two groups: decayed and exempt)."""
    params = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=cfg.lr)
    sched = make_scheduler(opt, cfg)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_the_default_is_none_and_keeps_lr_as_given():
    config = default_config()["training"]
    assert all(config[run].get("lr_scaling", "none") == "none" for run in ("pretrain", "stage1", "stage2"))
    assert train_config().lr_scaling == "none"
    cfg = scaled("none")
    assert cfg.effective_lr == LR
    # The schedule as before the switch: the optimiser's own lr, untouched.
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = torch.optim.AdamW(params, lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=40, pct_start=4 / 40, div_factor=cfg.onecycle_div_factor
    )
    before = []
    for _ in range(40):
        before.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [row[0] for row in lrs(cfg)] == before


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize(("scaling", "factor"), [("linear", 4.0), ("sqrt", 2.0)])
def test_batch_512_from_128_scales_the_whole_schedule(schedule, scaling, factor):
    """512 / 128 = 4: linear gives 8e-5, sqrt 4e-5, in every group at every step (warm-up, peak, decay)."""
    cfg, plain = scaled(scaling, schedule), scaled("none", schedule)
    assert math.isclose(cfg.effective_lr, factor * LR)
    got, base = lrs(cfg), lrs(plain)
    assert max(max(row) for row in got) == pytest.approx(factor * LR)
    for row, ref in zip(got, base, strict=True):
        assert row == pytest.approx([factor * r for r in ref], rel=1e-9)


def test_the_training_loop_uses_and_logs_the_scaled_lr(tmp_path, caplog):
    x = torch.randn(512, 4)

    def run(scaling: str) -> list[float]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        cfg = scaled(scaling, "cosine", steps=2, warmup_steps=1, checkpoint_every=1)
        train(
            model,
            512,
            lambda idx, step: x[idx],
            lambda m, b: {"loss": m(b).pow(2).mean()},
            cfg,
            tmp_path / scaling,
            progress=False,
        )
        lines = (tmp_path / scaling / METRICS).read_text().splitlines()
        return [json.loads(line)["lr"] for line in lines]

    with caplog.at_level("INFO", logger="fashionblip2.training.trainer"):
        linear = run("linear")
    assert "learning rate 8e-05: 2e-05 at batch 128, scaled (linear) to batch 512" in caplog.text
    assert linear == pytest.approx([4 * lr for lr in run("none")])


def test_old_checkpoints_resume_as_none_and_a_scaling_change_is_refused():
    cfg = scaled("none")
    old = {k: v for k, v in cfg.resume_key().items() if k not in ("lr_scaling", "lr_reference_batch_size")}
    assert cfg.resumes(old | {"device": "cpu"})  # written before the switch: lr as given
    assert not scaled("linear").resumes(old | {"device": "cpu"})
    # Under none the reference batch changes nothing, so it does not block a resume.
    assert scaled("none", lr_reference_batch_size=64).resumes(cfg.resume_key())
    assert not scaled("sqrt").resumes(scaled("linear").resume_key())
    assert not scaled("linear", lr_reference_batch_size=64).resumes(scaled("linear").resume_key())


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled("quadratic")
    with pytest.raises(ValueError, match="lr_reference_batch_size"):
        scaled("linear", lr_reference_batch_size=None)
    with pytest.raises(ValueError, match="lr_reference_batch_size"):
        scaled("sqrt", lr_reference_batch_size=0)
