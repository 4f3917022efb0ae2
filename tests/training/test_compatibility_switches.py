"""The switches that restore SPRC's or LAVIS's choices (docs/fidelity.md): each changes what it says
and nothing else, and its default (config.yaml) keeps the project's behaviour."""

from __future__ import annotations

import random

import pytest
import torch

from fashionblip2.config import training_result_settings
from fashionblip2.datasets.caption_text import clean_text, join_captions, random_caption
from fashionblip2.datasets.triplets import Triplets
from fashionblip2.training.trainer import decay_groups, train
from tests.conftest import REPO, default_config, train_config

# --- text.cleanup ----------------------------------------------------------------------------------


def test_the_default_cleanup_leaves_every_text_as_it_was():
    assert default_config()["text"]["cleanup"] == "none"
    data = Triplets(["r"], ["t"], [["Is red.", "has LONG sleeves?"]], ["dress"])
    assert data.training_text(0, None, False, cleanup="none") == join_captions(data.texts[0])
    for seed in range(20):
        drawn = data.training_text(0, random.Random(seed), True, cleanup="none")
        assert drawn == random_caption(data.texts[0], random.Random(seed))


def test_sprc_cleanup_is_lavis_blip_caption_on_the_whole_text():
    # LAVIS BlipCaptionProcessor.pre_caption: lower-case, .!"()*#:;~ -> space, spaces collapsed, stripped.
    assert clean_text('Is "Red" (darker): with a  logo!', "sprc") == "is red darker with a logo"
    assert clean_text("  keeps, commas and ? marks ", "sprc") == "keeps, commas and ? marks"
    long = " ".join(f"w{i}" for i in range(60))
    assert clean_text(long, "sprc").split() == [f"w{i}" for i in range(50)]
    assert clean_text(long, "none") == long
    with pytest.raises(ValueError, match="cleanup"):
        clean_text("x", "lavis")


def test_sprc_cleanup_changes_the_text_only_not_which_text_is_drawn():
    data = Triplets(["r"], ["t"], [["Is red.", "Has long sleeves"]], ["dress"])
    for seed in range(20):
        plain = data.training_text(0, random.Random(seed), True, cleanup="none")
        assert data.training_text(0, random.Random(seed), True, cleanup="sprc") == clean_text(plain, "sprc")
    facap = Triplets(["r"], ["t"], [["Make it Blue."]], ["dress"])
    assert facap.training_text(0, None, False, cleanup="sprc") == "make it blue"


def test_the_rules_pass_the_cleanup_to_training_and_evaluation():
    rules = (REPO / "rules/training.smk").read_text() + (REPO / "rules/evaluation.smk").read_text()
    assert rules.count('text_cleanup=config["text"]["cleanup"]') == 3  # stage 1, stage 2, evaluate
    assert rules.count("--text-cleanup {params.text_cleanup}") == 3


# --- training.weight_decay_exempt ----------------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.temp = torch.nn.Parameter(torch.tensor(0.07))
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_exempt_groups_are_biases_norms_and_scalars_as_lavis():
    model = Tiny()
    (only,) = decay_groups(model, 0.05, "none")
    assert only["weight_decay"] == 0.05 and len(only["params"]) == 5  # every trained parameter, none frozen
    decayed, exempt = decay_groups(model, 0.05, "biases_and_norms")
    assert decayed["weight_decay"] == 0.05 and [id(p) for p in decayed["params"]] == [id(model.proj.weight)]
    names = {id(p): n for n, p in model.named_parameters()}
    assert exempt["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in exempt["params"]) == ["norm.bias", "norm.weight", "proj.bias", "temp"]
    with pytest.raises(ValueError, match="weight_decay_exempt"):
        decay_groups(model, 0.05, "norms")


def test_the_default_is_decay_on_everything_and_a_setting_that_changes_results():
    config = default_config()
    assert config["training"]["weight_decay_exempt"] == "none"
    assert training_result_settings(config, "stage1")["weight_decay_exempt"] == "none"
    assert train_config().weight_decay_exempt == "none"


def one_step(tmp_path, exempt: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with torch.no_grad():
        model[1].bias.fill_(0.5)  # non-zero, so that decay would move it
    x = torch.randn(8, 4)
    cfg = train_config(
        steps=1, batch_size=8, lr=0.1, warmup_steps=1, weight_decay=0.5, device="cpu", weight_decay_exempt=exempt
    )
    train(
        model,
        8,
        lambda idx, step: x[idx],
        lambda m, b: {"loss": m(b).pow(2).mean()},
        cfg,
        tmp_path / exempt,
        progress=False,
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_exempting_changes_the_biases_and_norms_updates_and_nothing_else(tmp_path):
    default, lavis = one_step(tmp_path, "none"), one_step(tmp_path, "biases_and_norms")
    assert torch.equal(default["0.weight"], lavis["0.weight"])  # AdamW's decay is decoupled: same update
    for name in ("0.bias", "1.weight", "1.bias"):
        assert not torch.equal(default[name], lavis[name]), name


def test_the_default_trains_exactly_as_one_adamw_over_all_parameters(tmp_path):
    """'none' is the optimiser as it was before the switch: AdamW(parameters, weight_decay=wd)."""
    default = one_step(tmp_path, "none")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with torch.no_grad():
        model[1].bias.fill_(0.5)
    x = torch.randn(8, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.5)
    model(x).pow(2).mean().backward()
    torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
    opt.step()
    for name, value in model.state_dict().items():
        assert torch.allclose(default[name], value), name
