"""Validation during training (SPRC's best-on-val numbers): the switch changes nothing but the curve,
a killed run keeps one whole curve, the last point is the evaluate rule's evaluation of the saved
model, the best point is the earliest of the highest Avg, and train_model.py writes it in the
evaluate rule's format."""

import json
import random
import runpy
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from fashionblip2.common.issues import InputReport
from fashionblip2.config import resolved_sources
from fashionblip2.datasets.triplets import read_fashioniq_split, read_gallery
from fashionblip2.evaluation.retrieval import encode_gallery, evaluate_queries
from fashionblip2.model import FashionBLIP2
from fashionblip2.model.configuration import tiny_blip2_config
from fashionblip2.model.pretraining import Blip2ImageTextContrastive
from fashionblip2.model.processing import ImageStore
from fashionblip2.model.tokenization import train_word_level
from fashionblip2.results.tables import Bootstrap, Evaluations
from fashionblip2.sources.manifest import build_manifest, manifest_paths
from fashionblip2.synthetic import WorldSpec, generate_world
from fashionblip2.training.runs import build_model, save_run, train_cir
from fashionblip2.training.trainer import VALIDATION, TrainingError, read_validation, train
from fashionblip2.training.validation import (
    FashionIQValidator,
    select_best,
    validation_curve,
    write_validation_outputs,
)
from tests.conftest import REPO, TINY_SPEC, merged, model_settings, source_settings, train_config, variant
from tests.training.test_trainer import TwoTowers, data, toy_loss

CATEGORIES = ["dress", "shirt", "toptee"]
SETTINGS = model_settings(num_heads=4, head_dim=32, max_text_length=16)
JOB_OPTIONS = {"device": "cpu", "gradient_checkpointing": False, "cache_image_features": True}
# Galleries of 30: R@10 is not always 100 (its chance level is 33), so the curve moves.
SPEC = merged(
    TINY_SPEC,
    {"fashioniq": {"images": {"train": 8, "val": 30, "test": 2}, "triplets": {"train": 6, "val": 6, "test": 1}}},
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic FashionIQ, its manifest, a tokenizer and an untrained tiny BLIP-2 backbone."""
    root = tmp_path_factory.mktemp("validation")
    generate_world(WorldSpec.from_dict(SPEC), root / "world", root / "truth.parquet", progress=False)
    manifest = build_manifest(
        resolved_sources(source_settings(fashioniq="synthetic"), root / "world"), progress=False
    ).images
    manifest.to_parquet(root / "manifest.parquet", index=False)
    fashioniq = root / "world" / "fashioniq"
    texts = [
        caption
        for path in sorted((fashioniq / "captions").glob("*.json"))
        for entry in json.loads(path.read_text())
        for caption in entry["captions"]
    ]
    tokenizer = train_word_level(texts, 200, 16)
    torch.manual_seed(0)
    backbone = Blip2ImageTextContrastive(tiny_blip2_config(vocab_size=len(tokenizer), image_size=40))
    backbone.save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    available = set(manifest["image_id"])
    train_data = read_fashioniq_split(fashioniq, "train", CATEGORIES, available, InputReport())
    return {
        "root": root,
        "fashioniq": fashioniq,
        "manifest": manifest,
        "store": ImageStore(manifest_paths(manifest), 40),
        "tokenizer": tokenizer,
        "backbone": root / "backbone",
        "train": train_data,
    }


def validator(world, batch_size=5):
    return FashionIQValidator.from_fashioniq(
        world["fashioniq"],
        CATEGORIES,
        world["manifest"],
        world["store"],
        world["tokenizer"],
        batch_size,
        text_cleanup="none",
    )


def run_stage1(world, folder, validate=None, stop_after=None, steps=4, validate_every=1):
    """Stage 1 (adapters train: the gallery side changes between points) on FashionIQ train."""
    torch.manual_seed(0)
    model = build_model(world["backbone"], variant(losses=["cir"]), SETTINGS, stage=1)
    cfg = train_config(
        steps=steps, batch_size=4, lr=1e-3, warmup_steps=1, device="cpu", checkpoint_every=2, seed=5,
        validate_every=validate_every,
    )  # fmt: skip
    result = train_cir(
        model,
        world["train"],
        world["store"],
        world["tokenizer"],
        cfg,
        folder,
        with_captions=False,
        randomise=True,
        text_cleanup="none",
        progress=False,
        stop_after=stop_after,
        validate=validate,
    )
    return model, result


def test_validating_every_step_leaves_the_weights_and_metrics_bit_identical(world, tmp_path):
    plain, _ = run_stage1(world, tmp_path / "plain")
    validated, _ = run_stage1(world, tmp_path / "validated", validate=validator(world))
    for (name, p), q in zip(plain.state_dict().items(), validated.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert (tmp_path / "plain/metrics.jsonl").read_text() == (tmp_path / "validated/metrics.jsonl").read_text()
    assert not (tmp_path / f"plain/{VALIDATION}").exists()
    points = read_validation(tmp_path / "validated")
    metrics = [json.loads(line) for line in (tmp_path / "validated/metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points] == [1, 2, 3, 4]
    assert [p["epoch"] for p in points] == [m["epoch"] for m in metrics]  # the epoch as metrics.jsonl counts it
    ranks = [pd.read_parquet(tmp_path / f"validated/validation/step-{s}.parquet")["target_rank"] for s in range(1, 5)]
    assert any(not ranks[0].equals(r) for r in ranks[1:])  # the points differ: the model is validated as it trains
    assert all((tmp_path / f"validated/validation/step-{s}.parquet").exists() for s in range(1, 5))


def test_a_validator_that_draws_randomness_and_flips_modes_changes_nothing(tmp_path):
    """A toy model with dropout (the RNG matters): the validator draws from every RNG and leaves
    the model in train mode; the trainer puts all back."""
    x, y = data()
    seen_modes = []

    def noisy(model, step):
        seen_modes.append((model.training, torch.is_grad_enabled()))
        random.random(), np.random.rand(), torch.rand(3)
        model.train()
        return {"summary": {"Avg": float(step)}}

    def run(out, validate):
        torch.manual_seed(0)
        model = TwoTowers()
        cfg = train_config(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, checkpoint_every=4, seed=3, validate_every=2)
        train(model, len(x), lambda idx, step: (x[idx], y[idx]), toy_loss, cfg, out, progress=False, validate=validate)
        return model

    a, b = run(tmp_path / "a", None), run(tmp_path / "b", noisy)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert seen_modes == [(False, False)] * 3
    assert [p["step"] for p in read_validation(tmp_path / "b")] == [2, 4, 6]


def test_a_killed_run_resumes_to_the_same_curve_without_duplicates(world, tmp_path):
    validate = validator(world)
    run_stage1(world, tmp_path / "a", validate=validate)
    # Killed after step 3: the checkpoint is step 2's; step 3's point was written and is dropped.
    run_stage1(world, tmp_path / "b", validate=validate, stop_after=3)
    assert [p["step"] for p in read_validation(tmp_path / "b")] == [1, 2, 3]
    run_stage1(world, tmp_path / "b", validate=validate)
    assert (tmp_path / f"a/{VALIDATION}").read_text() == (tmp_path / f"b/{VALIDATION}").read_text()
    assert [p["step"] for p in read_validation(tmp_path / "b")] == [1, 2, 3, 4]
    for step in range(1, 5):
        a, b = (pd.read_parquet(tmp_path / f"{r}/validation/step-{step}.parquet") for r in "ab")
        pd.testing.assert_frame_equal(a, b)


def test_a_checkpoint_without_its_curve_or_with_another_cadence_is_not_resumed(world, tmp_path):
    run_stage1(world, tmp_path / "a", stop_after=2)  # trained without validation: no curve
    with pytest.raises(TrainingError, match="holds points at steps"):
        run_stage1(world, tmp_path / "a", validate=validator(world))
    run_stage1(world, tmp_path / "b", validate=validator(world), stop_after=2)
    with pytest.raises(TrainingError, match="another training config"):
        run_stage1(world, tmp_path / "b", validate=validator(world), validate_every=2)


def test_validate_every_zero_gives_one_point_after_the_last_step(world, tmp_path):
    run_stage1(world, tmp_path, validate=validator(world), steps=3, validate_every=0)
    assert [p["step"] for p in read_validation(tmp_path)] == [3]


def test_the_last_point_is_the_evaluate_rules_evaluation_of_the_saved_model(world, tmp_path):
    batch_size = 5
    model, _ = run_stage1(world, tmp_path / "ck", validate=validator(world, batch_size))
    last = read_validation(tmp_path / "ck")[-1]
    last_rankings = pd.read_parquet(tmp_path / "ck/validation/step-4.parquet")
    save_run(model.cpu(), world["tokenizer"], tmp_path / "model", tmp_path / "ck", {"stage": "stage1"})
    # What evaluate_model.py does with the saved folder.
    saved = FashionBLIP2.from_pretrained(tmp_path / "model").eval()
    available = set(world["manifest"]["image_id"])
    galleries = {c: read_gallery(world["fashioniq"], c, "val", available, InputReport()) for c in CATEGORIES}
    device = torch.device("cpu")
    vectors = {c: encode_gallery(saved, world["store"], keys, device, batch_size) for c, keys in galleries.items()}
    fiq = read_fashioniq_split(world["fashioniq"], "val", CATEGORIES, available, InputReport())
    results, rankings = evaluate_queries(
        saved, world["store"], world["tokenizer"], fiq, galleries, vectors, device, text_cleanup="none"
    )
    assert {k: last[k] for k in ("categories", "summary", "chance")} == json.loads(json.dumps(results))
    pd.testing.assert_frame_equal(last_rankings, pd.read_parquet(_roundtrip(rankings, tmp_path)))
    assert rankings["target_rank"].max() > 10  # the hits are not all trivially true


def _roundtrip(frame: pd.DataFrame, tmp_path) -> str:
    path = tmp_path / "evaluate_rankings.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def point(step: int, avg: float) -> dict:
    return {"step": step, "epoch": 0, "categories": {}, "summary": {"Avg": avg}, "chance": {}}


def test_select_best_is_the_earliest_of_the_highest_avg():
    points = [point(4, 30.0), point(1, 10.0), point(2, 30.0), point(3, 20.0), point(5, float("nan"))]
    assert select_best(points)["step"] == 2
    assert select_best([point(1, 5.0), point(2, 5.0)])["step"] == 1
    assert select_best([point(1, float("nan")), point(2, 1.0)])["step"] == 2
    with pytest.raises(ValueError, match="finite"):
        select_best([point(1, float("nan"))])
    curve = validation_curve(points, variant="v", stage="stage2", seed=1)
    assert (curve["best_step"], curve["last_step"], curve["selected_by"]) == (2, 5, "Avg on FashionIQ val")
    assert [p["step"] for p in curve["points"]] == [1, 2, 3, 4, 5]


def test_the_outputs_need_the_best_points_rankings(world, tmp_path):
    run_stage1(world, tmp_path / "ck", validate=validator(world), steps=2)
    best = select_best(read_validation(tmp_path / "ck"))["step"]
    (tmp_path / f"ck/validation/step-{best}.parquet").unlink()
    kwargs = dict(model="m", variant="v", stage="stage1", seed=0, skipped={}, provenance={})
    with pytest.raises(FileNotFoundError, match="rankings are missing"):
        write_validation_outputs(tmp_path / "ck", tmp_path / "c.json", tmp_path / "b.json", tmp_path / "b.pq", **kwargs)
    assert not (tmp_path / "c.json").exists() and not (tmp_path / "b.json").exists()


def run_script(name: str, argv: list[str]) -> None:
    """A workflow script in this process (as its rule runs it), its thread setting undone after."""
    threads, saved = torch.get_num_threads(), sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(REPO / "workflow_scripts" / name), run_name="__main__")
    finally:
        sys.argv = saved
        torch.set_num_threads(threads)


def test_train_model_writes_the_curve_and_the_best_point_in_the_evaluate_format(world, tmp_path):
    root, out = world["root"], tmp_path / "out"
    common = ["--manifest", str(root / "manifest.parquet"), "--fashioniq-root", str(world["fashioniq"])]
    common += ["--categories", json.dumps(CATEGORIES), "--text-cleanup", "none", "--threads", "1"]
    common += ["--data", "synthetic", "--run-name", "test"]
    recipe = {k: v for k, v in train_config("stage2").__dict__.items() if k not in ("device", "seed")}
    recipe |= {"steps": 3, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2, "validate_every": 2}
    run_script(
        "train_model.py",
        [
            *["--stage", "stage2", "--variant", "cir_mh", "--seed", "7"],
            *["--spec", json.dumps({"losses": ["cir"], "adapters": True, "matching": "multihead"})],
            *["--model-settings", json.dumps(SETTINGS.__dict__)],
            *["--start", str(world["backbone"]), "--tokenizer", str(world["backbone"])],
            *common,
            *["--recipe", json.dumps(recipe)],
            *["--job-options", json.dumps(JOB_OPTIONS)],
            *["--checkpoints", str(tmp_path / "ck"), "--validation-batch-size", "5"],
            *["--validation-curve", str(out / "validation.json")],
            *["--best-out", str(out / "best.json"), str(out / "best_rankings.parquet")],
            *["--out", str(tmp_path / "model")],
        ],
    )
    training = json.loads((tmp_path / "model/training.json").read_text())
    assert training["training"]["seed"] == 7 and training["training"]["validate_every"] == 2
    curve = json.loads((out / "validation.json").read_text())
    assert [p["step"] for p in curve["points"]] == [2, 3] and curve["last_step"] == 3
    assert (curve["seed"], curve["stage"], curve["variant"]) == (7, "stage2", "cir_mh")
    assert training["validation"] == {k: curve[k] for k in ("selected_by", "best_step", "last_step")}
    assert not (tmp_path / "ck").exists()  # the checkpoint folder went with save_run, as before

    run_script(
        "evaluate_model.py",
        [
            *["--model", str(tmp_path / "model"), "--device", "cpu", "--batch-size", "5"],
            *common,
            *["--fashioniq-out", str(out / "last.json"), str(out / "last_rankings.parquet")],
        ],
    )
    best, last = (json.loads((out / f"{n}.json").read_text()) for n in ("best", "last"))
    assert set(last) <= set(best) and set(best) - set(last) <= {"step", "selected_on", "seed", "checkpoint"}
    assert set(best["categories"]) == set(last["categories"]) and set(best["summary"]) == set(last["summary"])
    assert best["categories"]["dress"].keys() == last["categories"]["dress"].keys()
    assert (best["seed"], best["checkpoint"], best["selected_on"]) == (7, "best", "fashioniq val")
    assert best["step"] == curve["best_step"] and (best["dataset"], best["stage"]) == ("fashioniq", "stage2")
    assert best["skipped"] == last["skipped"] and best["chance"] == last["chance"]
    best_rankings, last_rankings = (pd.read_parquet(out / f"{n}_rankings.parquet") for n in ("best", "last"))
    assert (best_rankings.dtypes == last_rankings.dtypes).all() and list(best_rankings) == list(last_rankings)
    # The last point is the evaluate rule's evaluation of the saved (last) model.
    assert curve["points"][-1]["categories"] == last["categories"]
    # The results tables read it (Evaluations.load checks its query counts against its rankings).
    evals = Evaluations.load(
        [out / "best.json", out / "last.json"],
        [out / "best_rankings.parquet", out / "last_rankings.parquet"],
        Bootstrap(samples=50, seed=0),
    )
    loaded = [e.result for e in evals.items.values()]
    assert any(r.get("checkpoint") == "best" and r["step"] == best["step"] for r in loaded)
