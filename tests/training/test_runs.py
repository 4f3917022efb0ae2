"""Training runs and retrieval with tiny models: stage settings, the frozen-encoder feature cache,
exact resume of a killed run, pretraining checkpoints, evaluation, and the search command."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fashionblip2.cli import main as cli_main
from fashionblip2.datasets.triplets import Triplets
from fashionblip2.evaluation.retrieval import encode_gallery, evaluate_queries, save_index, target_ranks
from fashionblip2.model.configuration import tiny_blip2_config
from fashionblip2.model.pretraining import Blip2ImageTextContrastive
from fashionblip2.model.processing import ImageStore
from fashionblip2.model.tokenization import train_word_level
from fashionblip2.training.runs import (
    LOCK,
    CheckpointBusy,
    ImageFeatureCache,
    build_model,
    hold_checkpoints,
    save_run,
    train_backbone,
    train_cir,
)
from tests.conftest import model_settings, train_config, variant

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "black": (10, 10, 10)}
SHAPES = ["dress", "shirt"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Eight small images (4 colours x 2 shapes), their texts, a tokenizer and a pretrained tiny BLIP-2."""
    root = tmp_path_factory.mktemp("exp")
    paths, texts = {}, {}
    for colour, rgb in COLOURS.items():
        for shape in SHAPES:
            key = f"{colour}_{shape}"
            image = Image.new("RGB", (32, 32), "white")
            box = (8, 4, 24, 28) if shape == "dress" else (4, 8, 28, 20)
            image.paste(rgb, box)
            image.save(root / f"{key}.png")
            paths[key], texts[key] = str(root / f"{key}.png"), f"a {colour} {shape}"
    tokenizer = train_word_level([*texts.values(), "is red instead of blue", "is darker"], 64, 16)
    store = ImageStore(paths, 32)
    backbone = Blip2ImageTextContrastive(tiny_blip2_config(vocab_size=len(tokenizer), image_size=32))
    keys = list(paths)
    cfg = train_config(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, device="cpu", checkpoint_every=10)
    train_backbone(
        backbone, keys, [texts[k] for k in keys], store, tokenizer, cfg, root / "ck", max_text_length=16, progress=False
    )
    save_run(backbone, tokenizer, root / "backbone", root / "ck", {"stage": "pretrain"})
    return {"root": root, "paths": paths, "store": store, "tokenizer": tokenizer, "backbone": root / "backbone"}


def triplets(n=8):
    keys = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    ref = [keys[i % len(keys)] for i in range(n)]
    tgt = [keys[(i + 2) % len(keys)] for i in range(n)]
    return Triplets(
        ref,
        tgt,
        [[f"is {t.split('_')[0]}", "is different"] for t in tgt],
        [k.split("_")[1] for k in tgt],
        [f"a {t.replace('_', ' ')}" for t in tgt],
    )


SETTINGS = model_settings(num_heads=4, head_dim=32, max_text_length=16)


def test_pretrained_backbone_is_a_blip2_checkpoint_and_stage_one_adds_fresh_adapters(world):
    config = json.loads((world["backbone"] / "config.json").read_text())
    assert config["model_type"] != "fashionblip2" and (world["backbone"] / "tokenizer_config.json").exists()
    model = build_model(world["backbone"], variant(), SETTINGS, stage=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(".adapter." in n for n in trainable)
    assert not any(n.startswith("backbone.vision_model.") and ".adapter." not in n for n in trainable)
    assert not model.image_encoder_frozen
    no_adapters = build_model(world["backbone"], variant(adapters=False, matching="global"), SETTINGS, stage=1)
    assert no_adapters.image_encoder_frozen and no_adapters.heads == 1


def test_feature_cache_gives_the_encoder_output(world):
    model = build_model(world["backbone"], variant(adapters=False), SETTINGS, stage=1)
    cache = ImageFeatureCache(model, world["store"], batch_size=3)
    keys = ["red_dress", "blue_shirt", "red_dress"]
    with torch.no_grad():
        direct = model.image_features(world["store"].pixels(keys))
    assert torch.allclose(cache(keys, torch.device("cpu")), direct, atol=1e-6)


@pytest.mark.parametrize(
    "variant", [variant(), variant(adapters=False, losses=["cir"])], ids=["adapters+ctr", "frozen"]
)
def test_a_killed_run_resumes_to_the_same_model(world, tmp_path, variant):
    data = triplets()
    cfg = train_config(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, device="cpu", checkpoint_every=1, seed=5)

    def run(folder, stop_after=None):
        torch.manual_seed(0)
        model = build_model(world["backbone"], variant, SETTINGS, stage=1)
        train_cir(
            model,
            data,
            world["store"],
            world["tokenizer"],
            cfg,
            folder,
            with_captions="ctr" in variant.losses,
            randomise=True,
            text_cleanup="none",
            progress=False,
            stop_after=stop_after,
        )
        return model

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)  # killed after step 2: only the checkpoint survives
    resumed = run(tmp_path / "b")
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert (tmp_path / "a/metrics.jsonl").read_text() == (tmp_path / "b/metrics.jsonl").read_text()


def test_stage_two_freezes_the_encoder_and_adapters_and_keeps_the_stage_one_weights(world, tmp_path):
    model = build_model(world["backbone"], variant(), SETTINGS, stage=1)
    cfg = train_config(steps=2, batch_size=4, lr=1e-2, warmup_steps=1, device="cpu")
    train_cir(
        model,
        triplets(),
        world["store"],
        world["tokenizer"],
        cfg,
        tmp_path / "ck",
        with_captions=True,
        randomise=False,
        text_cleanup="none",
        progress=False,
    )
    save_run(model, world["tokenizer"], tmp_path / "s1", tmp_path / "ck", {"stage": "stage1"})
    assert not (tmp_path / "ck").exists() and (tmp_path / "s1/metrics.jsonl").exists()
    stage2 = build_model(tmp_path / "s1", variant(), SETTINGS, stage=2)
    assert stage2.image_encoder_frozen
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), stage2.state_dict().values(), strict=True)
    )
    with pytest.raises(ValueError, match="CTR needs target captions"):
        fiq = triplets()
        fiq.target_caption = None
        train_cir(
            stage2,
            fiq,
            world["store"],
            world["tokenizer"],
            cfg,
            tmp_path / "ck2",
            with_captions=True,
            randomise=True,
            text_cleanup="none",
            progress=False,
        )


def test_target_ranks_match_a_full_sort():
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((50, 8)), rng.standard_normal((30, 8))
    targets = rng.integers(0, 30, 50)
    order = np.argsort(-(q @ g.T), axis=1)
    expected = [int(np.where(order[i] == targets[i])[0][0]) + 1 for i in range(50)]
    assert target_ranks(q, g, targets).tolist() == expected


def test_evaluation_reports_recall_chance_and_rankings(world):
    model = build_model(world["backbone"], variant(), SETTINGS, stage=1).eval()
    data = triplets()
    galleries = {s: [k for k in world["paths"] if k.endswith(s)] for s in SHAPES}
    data.target.append("nowhere")  # a target outside its gallery is counted, not scored
    data.reference.append("red_dress")
    data.texts.append(["x", "y"])
    data.category.append("dress")
    device = torch.device("cpu")
    vectors = {c: encode_gallery(model, world["store"], keys, device) for c, keys in galleries.items()}
    results, rankings = evaluate_queries(
        model, world["store"], world["tokenizer"], data, galleries, vectors, device, text_cleanup="none"
    )
    dress = results["categories"]["dress"]
    assert dress["gallery"] == 4 and dress["target_not_in_gallery"] == 1 and dress["queries"] == 4
    assert dress["chance R@10"] == 100.0  # a gallery of 4: any ranking finds the target in the top 10
    assert results["summary"]["mean R@10"] == 100.0 and len(rankings) == 8
    assert set(rankings.columns) >= {"reference", "target", "text", "top", "target_rank"}
    assert rankings["target_rank"].between(1, 4).all()
    assert rankings["text"].iloc[0] == "Is blue and is different"  # ref red_dress, target blue_dress


def test_search_command_prints_top_k_and_draws_a_sheet(world, tmp_path, capsys):
    model = build_model(world["backbone"], variant(), SETTINGS, stage=1)
    save_run(model, world["tokenizer"], tmp_path / "model", tmp_path / "nock", {"stage": "stage1"})
    keys = list(world["paths"])
    vectors = encode_gallery(model, world["store"], keys, torch.device("cpu"))
    save_index(vectors, keys, [world["paths"][k] for k in keys], tmp_path / "index")
    argv = [
        "search",
        "--model",
        str(tmp_path / "model"),
        "--index",
        str(tmp_path / "index"),
        "--image",
        world["paths"]["red_dress"],
        "--text",
        "is blue",
        "--top-k",
        "3",
        "--sheet",
        str(tmp_path / "sheet.png"),
        "--device",
        "cpu",
    ]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "image_id"] and len(lines) == 5
    assert all(line.split()[2] in keys for line in lines[1:4])
    scores = [float(line.split()[1]) for line in lines[1:4]]
    assert scores == sorted(scores, reverse=True)
    assert Image.open(tmp_path / "sheet.png").size[0] > 300
    assert cli_main(argv[:4] + [str(tmp_path / "nothing")] + argv[5:]) == 2


def test_console_script_is_installed():
    proc = subprocess.run(
        [sys.executable, "-m", "fashionblip2.cli", "search", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--sheet" in proc.stdout


def test_a_checkpoint_folder_held_by_a_live_run_is_refused_and_a_dead_holders_is_taken_over(world, tmp_path):
    """A second run never writes a folder another live run holds (the holder: a real process here,
    stopped by its PID); once the holder is gone its lock is stale and the folder is taken over."""
    folder = tmp_path / "ck"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid}))
        with pytest.raises(CheckpointBusy, match=f"held by another live run .*pid {holder.pid}"):
            hold_checkpoints(folder)
    finally:
        holder.kill()
        holder.wait()
    hold_checkpoints(folder)  # stale now: taken over
    assert json.loads((folder / LOCK).read_text())["pid"] == os.getpid()
    # Held by this run, then removed under it (as a racing run's save_run did): nothing is saved
    # without its metrics.
    (folder / "metrics.jsonl").write_text("{}\n")
    model = build_model(world["backbone"], variant(), SETTINGS, stage=1)
    shutil.rmtree(folder)
    with pytest.raises(CheckpointBusy, match="metrics.jsonl is missing"):
        save_run(model, world["tokenizer"], tmp_path / "model", folder, {"stage": "stage1"})
    assert not (tmp_path / "model").exists()
    hold_checkpoints(folder)  # still this run's: it takes the folder again, writes, saves
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    save_run(model, world["tokenizer"], tmp_path / "model", folder, {"stage": "stage1"})
    assert (tmp_path / "model/metrics.jsonl").read_text() == '{"step": 1}\n' and not folder.exists()
