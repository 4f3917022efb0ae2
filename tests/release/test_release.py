"""The release folders (workflow_scripts/make_release.py, as the release rule calls it): FACap as Parquet
shards that `datasets.load_dataset` reads offline, and each model folder that
`FashionBLIP2.from_pretrained` loads with the same outputs as the trained one, each with its card.

Built from small hand-made inputs in the workflow's own formats (FACap written by the assembly code,
the result tables by the results code), so the tests need no finished run; one more test builds
from the finished run of this checkout when there is one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fashionblip2.common.issues import BadInputError
from fashionblip2.datasets.assembly import write_facap
from fashionblip2.datasets.scores import SCORES, score_card
from fashionblip2.model import FashionBLIP2, FashionBLIP2Config
from fashionblip2.model.configuration import tiny_blip2_config
from fashionblip2.model.processing import CLIP_MEAN, CLIP_STD, ImageStore, normalise, target_pad
from fashionblip2.model.tokenization import load_tokenizer, tokenize, train_word_level
from fashionblip2.release import dataset as release_dataset
from fashionblip2.release import model as release_model
from fashionblip2.results import tables as et
from fashionblip2.results.writing import TableFiles, write_table
from tests.conftest import REPO
from tests.results.test_tables import write_eval

SCRIPT = REPO / "workflow_scripts" / "make_release.py"
IMAGE_SIZE = 48  # not the tiny config's default: the processor config must read the model's own
CLAIM = "12 candidate FACap images compared with 7 FashionIQ val/test images: 1 FACap image matches one"
COMMIT = "0123456789ab"
TEXTS = ["is red and has long sleeves", "is shorter", "is blue with a v-neck", "has stripes", "is a skirt"]
# (stage, variant, dataset) -> write_eval's base (its Avg is base + 6): cir_ctr_mh is Table 3's row
# without fine-tuning, cir_mh the row with it; mh_no_facap has no stage 1 (Table 4's "without FACap").
BASES = {
    ("stage1", "cir_mh", "fashioniq"): 10,
    ("stage1", "cir_mh", "enhfashioniq"): 12,
    ("stage1", "cir_ctr_mh", "fashioniq"): 11,
    ("stage1", "cir_ctr_mh", "enhfashioniq"): 13,
    ("stage2", "cir_mh", "fashioniq"): 30,
    ("stage2", "cir_mh", "enhfashioniq"): 25,
    ("stage2", "cir_ctr_mh", "fashioniq"): 31,
    ("stage2", "cir_ctr_mh", "enhfashioniq"): 26,
    ("stage2", "mh_no_facap", "fashioniq"): 20,
    ("stage2", "mh_no_facap", "enhfashioniq"): 15,
}
SPECS = {
    "cir_mh": {"losses": ["cir"], "adapters": True, "matching": "multihead"},
    "cir_ctr_mh": {"losses": ["cir", "ctr"], "adapters": True, "matching": "multihead"},
}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n", 2)[1])


def write_facap_folder(root: Path) -> tuple[Path, pd.DataFrame, dict[str, str]]:
    """FACap written by the assembly code, a manifest naming its images and the sources' folders:
    one Fashion200k image is stored outside its source folder (its path must not be published)."""
    ids = [f"fashion200k:{k}_0" for k in range(6)]
    triplets = pd.DataFrame(
        {
            "reference_id": ids[:5],
            "target_id": ids[1:6],
            "source": "fashion200k",
            "category": ["dress", "dress", "dress", "skirt", "skirt"],
            "text": TEXTS,
            "reference_caption": [f"caption of {i}" for i in ids[:5]],
            "target_caption": [f"caption of {i}" for i in ids[1:6]],
            "caption_faithfulness": [-1.5, 0.25, 0.5, 1.0, -0.75],
            "grounding": [1.0, 0.0, 0.5, 1.0, 1.0],
            "discriminative": [0.9, 0.1, 0.5, 0.3, 0.7],
            "form": [1.0, 1.0, 0.0, 1.0, 1.0],
        }
    )
    card = {
        "dataset": "facap",
        "caption_backend": {"backend": "openai", "model": "gpt-4o-mini", "model_path": ""},
        "modification_backend": {"backend": "rules", "model": "gpt-4o-mini"},
        "pairs_without_an_accepted_modification_text": 2,
        "leakage": {
            "action": "drop",
            "claim": {
                "checked": CLAIM,
                "holds_for_candidates": False,
                "holds_for_this_release": True,
                "paper": "no information leakage",
            },
            "leaked_images": 1,
            "levels_checked": ["exact", "near_duplicate"],
            "thresholds": {"hash_max_distance": 3},
            "triplets_removed": 1,
        },
        "provenance": {"commit": COMMIT, "data": "synthetic", "package_version": "0.1.0", "run_name": "tiny"},
        "scores": score_card(triplets, list(SCORES)),
    }
    write_facap(triplets, list(SCORES), card, root / "data" / "facap")
    source = root / "raw" / "fashion200k"
    paths = [str(source / "women" / "dress" / f"{k}" / f"{k}_0.jpeg") for k in range(5)]
    paths.append(str(root / "elsewhere" / "5_0.jpeg"))
    manifest = pd.DataFrame({"image_id": ids, "path": paths, "source": "fashion200k"})
    manifest.to_parquet(root / "images.parquet")
    return root / "data" / "facap", triplets, {"fashion200k": str(source)}


def save_model(folder: Path, name: str, stage: str, seed: int) -> FashionBLIP2:
    """A trained-looking model folder: weights (adapters and heads drawn, so outputs depend on
    them), the tokenizer and training.json, as the training script writes them."""
    torch.manual_seed(seed)
    model = FashionBLIP2(FashionBLIP2Config(blip2=tiny_blip2_config(image_size=IMAGE_SIZE), max_text_length=16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.eval().save_pretrained(folder)
    train_word_level(TEXTS, vocab_size=60, max_length=16).save_pretrained(folder)
    start = f"models/stage1/{name}" if stage == "stage2" and name != "mh_no_facap" else "models/backbone"
    data = (
        {"fashioniq_train_triplets": 285, "skipped": {"fashioniq": {"skipped: triplet image missing": 15}}}
        if stage == "stage2"
        else {"facap_triplets": 4, "fraction": 1.0, "used": 4, "skipped": {}}  # FACap (5) after its filters
    )
    record = {
        "name": name,
        "stage": stage,
        "start": start,
        "data": data,
        "variant": {**SPECS.get(name, SPECS["cir_mh"]), "facap_filtered": True, "facap_fraction": 1.0},
        "training": {"steps": 100, "batch_size": 32, "lr": 0.0002, "precision": "fp32", "seed": 0},
        "parameters": {"total": 10, "trainable": 4, "frozen": 6},
        "provenance": {"commit": COMMIT, "data": "synthetic", "package_version": "0.1.0", "run_name": "tiny"},
    }
    (folder / "training.json").write_text(json.dumps(record))
    (folder / "metrics.jsonl").write_text("{}\n")  # training's log: not released
    return model


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run in miniature: FACap, a manifest, the models and Tables 3-5 (written by the
    results code from evaluation files, so their columns are the workflow's)."""
    root = tmp_path_factory.mktemp("run")
    write_facap_folder(root)
    for stage, name, seed in (("stage1", "cir_mh", 1), ("stage2", "cir_mh", 2), ("stage2", "mh_no_facap", 3)):
        folder = root / "models" / stage / name
        folder.mkdir(parents=True)
        save_model(folder, name, stage, seed)
    written = [write_eval(root / "eval", *key, base) for key, base in BASES.items()]
    results, rankings = zip(*written, strict=True)
    evals = et.Evaluations.load(results, rankings, et.Bootstrap(samples=100, seed=0))
    origin = "this run (synthetic data)"
    frames = {
        "table3": et.table3(evals, {"without_finetuning": "cir_ctr_mh", "with_finetuning": "cir_mh"}, origin),
        "table4": et.table4(
            evals, [{"model": "FashionBLIP-2", "without_facap": "mh_no_facap", "with_facap": "cir_mh"}], origin
        ),
        "table5": et.table5(evals, ["cir_mh", "cir_ctr_mh"], SPECS, origin),
    }
    for name, frame in frames.items():
        write_table(
            frame, TableFiles(str(root / "tables" / f"{name}.md"), str(root / "tables" / f"{name}.csv")), name, []
        )
    return root


def release_command(root: Path, out: Path, models: list[str], stage1: list[str], namespace: str = "") -> list[str]:
    return [
        sys.executable,
        str(SCRIPT),
        "--facap",
        str(root / "data" / "facap"),
        "--manifest",
        str(root / "images.parquet"),
        "--source-roots",
        json.dumps({"fashion200k": str(root / "raw" / "fashion200k")}),
        "--models",
        *[str(root / "models" / m) for m in models],
        "--stage1-models",
        *[str(root / "models" / m) for m in stage1],
        "--tables",
        *[str(root / "tables" / f"table{n}.csv") for n in (3, 4, 5)],
        "--namespace",
        namespace,
        "--facap-out",
        str(out / "facap"),
        "--model-out",
        str(out / "model"),
    ]


@pytest.fixture(scope="module")
def release(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release")
    done = subprocess.run(
        release_command(run, out, ["stage2/cir_mh", "stage2/mh_no_facap"], ["stage1/cir_mh"], "fashion-lab"),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return out


def load_offline(folder: Path, home: Path) -> dict:
    """`datasets.load_dataset(folder)` as a user without network would run it: a fresh process,
    offline, with an empty cache of its own."""
    code = (
        "import json, sys, datasets\n"
        "d = datasets.load_dataset(sys.argv[1])\n"
        "train = d['train']\n"
        "print(json.dumps({'splits': list(d), 'features': {k: str(v) for k, v in train.features.items()},"
        " 'rows': train.to_list()}))\n"
    )
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(home),
        "HF_DATASETS_CACHE": str(home / "datasets"),
    }
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_facap_loads_offline_with_its_rows_references_and_scores(run, tmp_path):
    facap, triplets, roots = write_facap_folder(tmp_path / "in")
    prepared = release_dataset.prepare_facap(facap, pd.read_parquet(tmp_path / "in" / "images.parquet"), roots)
    written = release_dataset.write_facap_release(prepared, tmp_path / "facap", "", shard_rows=2)
    names = [f"data/train-0000{k}-of-00003.parquet" for k in range(3)]
    assert written.rows == 5 and written.shards == names
    assert sorted(str(p.relative_to(tmp_path / "facap")) for p in (tmp_path / "facap").rglob("*") if p.is_file()) == [
        "README.md",
        *names,
    ]

    loaded = load_offline(tmp_path / "facap", tmp_path / "hf")
    assert loaded["splits"] == ["train"]
    assert list(loaded["features"]) == [*release_dataset.IDENTITY_COLUMNS, *SCORES]
    assert {loaded["features"][s] for s in SCORES} == {"Value('float64')"}
    rows = loaded["rows"]
    assert [r["reference_id"] for r in rows] == list(triplets["reference_id"])  # every row, in order
    assert [r["modification_text"] for r in rows] == TEXTS
    for s in SCORES:
        assert [r[s] for r in rows] == list(triplets[s])
    # Images as references only: the path inside the source's own layout, never the local one.
    assert rows[0]["reference_path"] == "women/dress/0/0_0.jpeg"
    assert rows[4]["target_path"] is None  # stored outside its source's folder
    assert not any("bytes" in str(v) for v in loaded["features"].values())


def test_the_dataset_card_header_parses_and_tells_scores_leakage_and_provenance(tmp_path):
    facap, triplets, roots = write_facap_folder(tmp_path / "in")
    prepared = release_dataset.prepare_facap(facap, pd.read_parquet(tmp_path / "in" / "images.parquet"), roots)
    release_dataset.write_facap_release(prepared, tmp_path / "facap", "fashion-lab")
    card = (tmp_path / "facap" / "README.md").read_text()
    header = front_matter(card)
    assert header["license"] == "other" and header["license_name"] == release_dataset.LICENSE_NAME
    assert header["task_categories"] == ["image-to-image", "text-to-image"]
    assert header["size_categories"] == ["n<1K"] and "synthetic" in header["tags"]
    assert header["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert header["dataset_info"]["splits"][0]["num_examples"] == 5
    assert (
        header["dataset_info"]["download_size"] == (tmp_path / "facap/data/train-00000-of-00001.parquet").stat().st_size
    )
    assert CLAIM in card and "holds for this release | yes" in card
    scores = score_card(triplets, list(SCORES))
    for name, entry in scores.items():
        assert entry["definition"] in card
        assert f"| {name} | {entry['definition']} | {entry['mean']:g} |" in card
    assert "Synthetic data" in card and COMMIT in card and "| config run | tiny |" in card
    assert "not included" in card and "do not allow re-distributing" in card
    assert "(model `gpt-4o-mini`)" in card  # an API backend names its model; the offline differ does not
    assert "`rules` (the offline differ" in card
    assert "hf upload fashion-lab/facap release/facap --repo-type dataset --exclude .snakemake_timestamp" in card


def test_the_model_loads_from_the_release_with_the_same_outputs(run, release):
    original, released = run / "models" / "stage2" / "cir_mh", release / "model" / "cir_mh"
    assert sorted(p.name for p in released.iterdir()) == sorted(
        [
            "README.md",
            "config.json",
            "model.safetensors",
            "preprocessor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "training.json",
        ]
    )
    a, b = FashionBLIP2.from_pretrained(original).eval(), FashionBLIP2.from_pretrained(released).eval()
    tokenizer = load_tokenizer(released)
    ids, mask = tokenize(tokenizer, TEXTS[:3], 16)
    assert torch.equal(ids, tokenize(load_tokenizer(original), TEXTS[:3], 16)[0])
    pixels = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.query_embedding(pixels, ids, mask), b.query_embedding(pixels, ids, mask))
        assert torch.equal(a.gallery_embedding(pixels), b.gallery_embedding(pixels))
        assert torch.equal(a.caption_embedding(ids, mask), b.caption_embedding(ids, mask))


def test_the_processor_config_reproduces_the_training_pixels(release, tmp_path):
    """transformers' CLIP processor, read from the release, gives the pixels training used: exactly
    where the centre crop's margin is even; shifted by one pixel where it is odd (training's
    torchvision crop rounds half to even, transformers' floors), as the card says. A long image is
    padded first (target_pad), the step no transformers processor has."""
    from transformers import AutoImageProcessor

    folder = release / "model" / "cir_mh"
    config = json.loads((folder / "preprocessor_config.json").read_text())
    assert config["crop_size"] == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert config["image_mean"] == list(CLIP_MEAN) and config["image_std"] == list(CLIP_STD)
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    rng = np.random.default_rng(0)
    exact = 0
    for k, (w, h) in enumerate([(100, 100), (90, 102), (120, 100), (90, 111), (60, 150), (150, 70)]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        ours = ImageStore({"x": str(path)}, IMAGE_SIZE, cache=False).pixels(["x"])
        image = Image.open(path).convert("RGB")
        if max(w, h) / min(w, h) >= config["target_pad_ratio"]:
            image = target_pad(image, IMAGE_SIZE)
        theirs = torch.as_tensor(np.asarray(processor(images=image, return_tensors="np")["pixel_values"]))
        # The short side to the size (the long one truncated), then the crop at the floored offset.
        iw, ih = image.size
        nw, nh = (IMAGE_SIZE, int(IMAGE_SIZE * ih / iw)) if iw <= ih else (int(IMAGE_SIZE * iw / ih), IMAGE_SIZE)
        left, top = (nw - IMAGE_SIZE) // 2, (nh - IMAGE_SIZE) // 2
        floored = image.resize((nw, nh), Image.BICUBIC).crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
        assert torch.equal(theirs, normalise(torch.from_numpy(np.asarray(floored).copy()).permute(2, 0, 1)[None]))
        if (nw - IMAGE_SIZE) % 2 == 0 and (nh - IMAGE_SIZE) % 2 == 0:
            assert torch.equal(theirs, ours), (w, h)
            exact += 1
    assert exact == 4  # (100, 100), (90, 102) and the two padded ones


def test_the_model_card_has_the_variants_rows_training_data_and_loading(run, release):
    card = (release / "model" / "cir_mh" / "README.md").read_text()
    header = front_matter(card)
    assert header["library_name"] == "fashionblip2" and header["license"] == "other"
    assert header["datasets"] == ["fashion-lab/facap"]
    assert {"fashion", "composed-image-retrieval", "synthetic"} <= set(header["tags"])
    table3 = pd.read_csv(run / "tables" / "table3.csv")
    row = table3[table3["Model"] == "FashionBLIP-2 (cir_mh)"].iloc[0]
    assert f"| Avg | {round(row['Avg'], 2):g} | [{round(row['Avg low'], 2):g}, {round(row['Avg high'], 2):g}] |" in card
    assert "**table4**" in card and "**table5**" in card
    # Stage 2 only: Table 5's columns before fine-tuning belong to the stage-1 model.
    assert "w/ fine-tuning FIQ" in card and "no fine-tuning" not in card
    # What each stage read: stage 1, 4 of FACap's 5 triplets (its filters removed one); stage 2, FashionIQ.
    assert "Stage 1, FACap after the workflow's `facap.filters`: 4 of this release's 5 triplets; 4 used" in card
    assert "fashioniq train triplets 285; fashioniq skipped: triplet image missing (15)" in card
    assert "FashionBLIP2.from_pretrained(folder)" in card and "preprocessor_config.json" in card
    assert "hf upload fashion-lab/fashionblip2-cir_mh release/model/cir_mh --exclude .snakemake_timestamp" in card
    no_facap = (release / "model" / "mh_no_facap" / "README.md").read_text()
    assert "Stage 1: none" in no_facap and "**table4**" in no_facap and "**table3**" not in no_facap


def test_rows_are_those_of_the_variant_at_its_stage(run):
    tables = {n: pd.read_csv(run / "tables" / f"{n}.csv") for n in ("table3", "table4", "table5")}
    # cir_ctr_mh is Table 3's row without fine-tuning: at stage 2 only Table 5's fine-tuned columns count.
    stage2 = release_model.variant_rows(tables, "cir_ctr_mh", "stage2")
    assert [r.table for r in stage2] == ["table5"]
    assert [m[0] for m in stage2[0].metrics] == ["w/ fine-tuning FIQ", "w/ fine-tuning enhFIQ"]
    stage1 = release_model.variant_rows(tables, "cir_ctr_mh", "stage1")
    assert [r.table for r in stage1] == ["table3", "table5"]
    avg = next(m for m in stage1[0].metrics if m[0] == "Avg")
    assert avg[1] == pytest.approx(BASES["stage1", "cir_ctr_mh", "fashioniq"] + 6) and avg[2] < avg[1] < avg[3]
    assert avg[4] == pytest.approx(37.5)  # Table 3's chance row, beside the number
    # A name matches whole: "mh" is not "cir_mh", "cir_mh" not Table 6's "cir_mh_unfiltered".
    assert not release_model.variant_rows(tables, "mh", "stage2")
    twin = pd.DataFrame(
        {
            "Variant": ["cir_mh_unfiltered"],
            "FACap": ["unfiltered"],
            **{f"w/ fine-tuning FIQ{b}": [50.0] for b in ("", " low", " high")},
            "Rows from": ["this run (synthetic data)"],
        }
    )
    assert not release_model.variant_rows({"table6": twin}, "cir_mh", "stage2")
    assert release_model.variant_rows({"table6": twin}, "cir_mh_unfiltered", "stage2")[0].labels == {
        "Variant": "cir_mh_unfiltered",
        "FACap": "unfiltered",
    }


def test_a_missing_source_folder_or_image_is_named(tmp_path):
    facap, _, roots = write_facap_folder(tmp_path)
    manifest = pd.read_parquet(tmp_path / "images.parquet")
    with pytest.raises(BadInputError, match="no source folder given for FACap's source.s. fashion200k"):
        release_dataset.prepare_facap(facap, manifest, {"deepfashion_mm": "elsewhere"})
    with pytest.raises(BadInputError, match=r"1 FACap image\(s\) are not in the manifest \(e.g. fashion200k:5_0\)"):
        release_dataset.prepare_facap(facap, manifest.iloc[:-1], roots)


def test_a_missing_table_row_is_named(run, tmp_path):
    folder = tmp_path / "models" / "stage2" / "cir_global"
    folder.mkdir(parents=True)
    save_model(folder, "cir_global", "stage2", 4)
    tables = {n: pd.read_csv(run / "tables" / f"{n}.csv") for n in ("table3", "table4", "table5")}
    with pytest.raises(BadInputError, match=r"table3, table4, table5 names variant 'cir_global' at stage2"):
        release_model.prepare_model(folder, tables, None, "", 5)


def test_a_missing_model_folder_is_named_and_nothing_is_written(run, tmp_path):
    done = subprocess.run(
        release_command(run, tmp_path, ["stage2/cir_mh", "stage2/cir_global"], []),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 2
    assert f"{run / 'models' / 'stage2' / 'cir_global'}: model folder not found" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "facap").exists() and not (tmp_path / "model").exists()  # checked before writing
    for missing in ("model.safetensors", "tokenizer_config.json"):
        broken = tmp_path / "broken" / missing
        broken.parent.mkdir(exist_ok=True)
        save_model(broken, "cir_mh", "stage2", 5)
        (broken / missing).unlink()
        with pytest.raises(BadInputError, match=f"{broken}/{missing} is missing"):
            release_model.model_files(broken)


def test_writing_is_atomic(run, tmp_path, monkeypatch):
    """A job killed or failing while it writes leaves the previous release as it was, and no
    half-written folder (Snakemake removes a failed job's outputs; a user's copy must not be half new)."""
    facap, _, roots = write_facap_folder(tmp_path / "in")
    prepared = release_dataset.prepare_facap(facap, pd.read_parquet(tmp_path / "in" / "images.parquet"), roots)
    out = tmp_path / "release"
    (out / "facap").mkdir(parents=True)
    (out / "facap" / "README.md").write_text("the previous release")
    calls = []

    def failing_write(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        return original_write(table, where, **kwargs)

    original_write = release_dataset.pq.write_table
    monkeypatch.setattr(release_dataset.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        release_dataset.write_facap_release(prepared, out / "facap", "", shard_rows=2)
    assert [p.name for p in out.iterdir()] == ["facap"]  # the temporary folder is gone
    assert [p.name for p in (out / "facap").iterdir()] == ["README.md"]
    assert (out / "facap" / "README.md").read_text() == "the previous release"

    tables = {n: pd.read_csv(run / "tables" / f"{n}.csv") for n in ("table3", "table4", "table5")}
    model = release_model.prepare_model(run / "models" / "stage2" / "cir_mh", tables, None, "", 5)
    (out / "model" / "cir_mh").mkdir(parents=True)
    monkeypatch.setattr(release_model.shutil, "copyfile", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        release_model.write_model_release(model, out / "model" / "cir_mh")
    assert [p.name for p in (out / "model").iterdir()] == ["cir_mh"] and not any((out / "model" / "cir_mh").iterdir())


def test_the_finished_run_of_this_checkout_releases(tmp_path):
    """The real files of a finished embedded-default run (skipped without one): its tables' layout,
    its FACap and its model, as the release rule reads them."""
    needed = [REPO / p for p in ("data/facap/triplets.parquet", "models/stage2/cir_mh/seed0/training.json")]
    needed += [REPO / f"results/tables/table{n}.csv" for n in (3, 4, 5)]
    if not all(p.exists() for p in needed):
        pytest.skip("no finished embedded-default run in this checkout (snakemake --cores 2 all)")
    world = REPO / "data" / "synthetic" / "world"
    roots = {s: str(world / s) for s in ("fashion200k", "deepfashion_mm", "fashioniq")}
    tables = {n: pd.read_csv(REPO / f"results/tables/{n}.csv") for n in ("table3", "table4", "table5")}
    manifest = pd.read_parquet(REPO / "data/manifest/images.parquet", columns=["image_id", "path", "source"])
    prepared = release_dataset.prepare_facap(REPO / "data" / "facap", manifest, roots)
    written = release_dataset.write_facap_release(prepared, tmp_path / "facap", "")
    assert written.rows == len(pd.read_parquet(REPO / "data/facap/triplets.parquet"))
    assert load_offline(tmp_path / "facap", tmp_path / "hf")["rows"][0]["reference_path"] is not None
    model = release_model.prepare_model(
        REPO / "models/stage2/cir_mh/seed0", tables, REPO / "models/stage1/cir_mh/seed0", "", written.rows
    )
    release_model.write_model_release(model, tmp_path / "cir_mh")
    assert [r.table for r in release_model.variant_rows(tables, "cir_mh", "stage2")] == ["table3", "table4", "table5"]
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a = FashionBLIP2.from_pretrained(REPO / "models/stage2/cir_mh/seed0").eval()
    b = FashionBLIP2.from_pretrained(tmp_path / "cir_mh").eval()
    with torch.no_grad():
        assert torch.equal(a.gallery_embedding(pixels), b.gallery_embedding(pixels))
