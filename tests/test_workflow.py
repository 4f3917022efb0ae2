"""The real Snakefile, run by Snakemake on the tiny preset in a temporary copy of the workflow."""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from fashionblip2.config import runtime_minutes, validation_points
from fashionblip2.datasets.scores import SCORES
from tests.conftest import REPO, python_first_env, snakemake, source_settings

# Rules allowed to read the synthetic world's ground truth (evaluation only).
GROUND_TRUTH_READERS: set[str] = {"auto_annotate", "leakage_report", "score_validity"}


@pytest.mark.e2e
def test_tiny_preset_end_to_end_then_nothing_to_do(workflow_copy, server_factory):
    snakemake(workflow_copy, "--cores", "2", "all", "--configfile", "config/presets/test.yaml")
    for tree in ("fashion200k/labels", "deepfashion_mm/labels/shape", "fashioniq/captions"):
        assert (workflow_copy / "data/synthetic/world" / tree).is_dir()
    images = pd.read_parquet(workflow_copy / "data/manifest/images.parquet")
    assert set(images.source) == {"fashion200k", "deepfashion_mm", "fashioniq"}
    assert all((workflow_copy / p).exists() for p in images.path)
    report = json.loads((workflow_copy / "data/manifest/report.json").read_text())
    assert report["provenance"]["data"] == "synthetic" and report["provenance"]["run_name"] == "test"
    assert report["images_kept"] == images.groupby("source").size().to_dict()
    # The test preset's world misses some FashionIQ images: they are reported, not silently dropped.
    issues = pd.read_csv(workflow_copy / "data/manifest/issues.tsv", sep="\t")
    assert report["skipped"] == len(issues) > 0 and set(issues.source) == {"fashioniq"}
    assert (workflow_copy / "logs/manifest/manifest.log").read_text().strip()

    # Pairing: every image paired within its source and category, never with a view of its own item.
    pairs = pd.read_parquet(workflow_copy / "data/pairs/pairs.parquet")
    lookup = images.set_index("image_id")
    ref, tgt = lookup.loc[pairs.reference_id], lookup.loc[pairs.target_id]
    assert len(pairs) > 0 and (ref.item_id.to_numpy() != tgt.item_id.to_numpy()).all()
    assert (ref.category.to_numpy() == tgt.category.to_numpy()).all()
    assert (ref.source.to_numpy() == tgt.source.to_numpy()).all()
    assert set(ref[ref.source == "fashioniq"].split) == {"val"}
    embedded = json.loads((workflow_copy / "data/embeddings/report.json").read_text())
    pair_report = json.loads((workflow_copy / "data/pairs/report.json").read_text())
    assert embedded["embedded"] == pair_report["images"] == len(pairs) + pair_report["unpaired"]
    assert pair_report["choice"].startswith("v2:")  # how partners were drawn, for runs that paid for older pairs
    assert sorted(p.name for p in (workflow_copy / "data/embeddings/shards").iterdir()) == ["0.npz", "1.npz"]

    # Annotation: FACap in its released layout, enhFashionIQ in FashionIQ's format, Table 1, and the cache.
    facap = workflow_copy / "data/facap"
    triplet_files = sorted(facap.glob("cir_triplets/*_train_triplets.json"))
    assert triplet_files and sorted(facap.glob("image_captions/*_train_captions.json"))
    rows = [r for f in triplet_files for r in json.loads(f.read_text())]
    assert rows and all(set(r) == {"candidate", "target", "captions", "scores"} for r in rows)
    assert all(len(r["captions"]) == 1 for r in rows)
    assert all(set(r["scores"]) == set(SCORES) for r in rows)
    card = json.loads((facap / "data_card.json").read_text())
    assert set(card["scores"]) == set(SCORES) and all(card["scores"][s]["definition"] for s in SCORES)
    assert len(pd.read_parquet(facap / "triplets.parquet")) == len(rows)
    assert card["triplets"] == len(rows) and card["caption_backend"]["backend"] == "metadata"
    enh = workflow_copy / "data/enhfashioniq"
    for cat in ("dress", "shirt", "toptee"):
        enh_rows = json.loads((enh / f"captions/cap.{cat}.val.json").read_text())
        assert all(set(r) == {"candidate", "target", "captions", "scores"} for r in enh_rows)
        assert (enh / f"image_splits/split.{cat}.val.json").exists()
    table1 = (workflow_copy / "results/tables/table1.md").read_text()
    assert "reported by the paper" in table1 and "this run (synthetic data)" in table1 and "Tokenisation" in table1

    # The triplet scores (issue 22): every triplet scored, FACap filtered by facap.filters (Table 1 has
    # both), the filter report, the scores measured against the planted errors, and Table 6.
    scores = pd.read_parquet(workflow_copy / "data/scores/triplets.parquet")
    assert set(scores["dataset"]) == {"facap", "enhfashioniq"} and scores[list(SCORES)].notna().all().all()
    filtered = json.loads((workflow_copy / "data/facap_filtered/data_card.json").read_text())
    assert filtered["filters"] == {"grounding": {"keep_at_least": 0.5}, "form": {"keep_at_least": 1.0}}
    assert filtered["triplets"] + filtered["triplets_removed_by_filters"] == card["triplets"]
    assert "FACap (mod. texts, filtered)" in table1
    assert "triplets removed" in (workflow_copy / "results/scores/filters.md").read_text()
    validity = pd.read_csv(workflow_copy / "results/scores/validity.csv")
    assert set(validity["score"]) == set(SCORES) and "planted" in set(validity["label"])
    assert (workflow_copy / "results/scores/flagged.png").stat().st_size > 1000
    table6 = (workflow_copy / "results/tables/table6.md").read_text()
    assert "cir_mh_unfiltered" in table6 and "filtered minus unfiltered" in table6
    unfiltered = json.loads((workflow_copy / "models/stage1/cir_mh_unfiltered/seed0/training.json").read_text())
    assert unfiltered["data"]["facap_triplets"] == card["triplets"] > filtered["triplets"]

    # The leakage check: the planted copies found, the leaked images gone from FACap (leakage.action:
    # drop), and the data card states the paper's claim as checked, with its numbers. The tiny world's
    # recoloured copy is the one missed: it lies at dHash distance 6 > hash_max_distance 3 (a flat
    # 48 px render; README, "Leakage, checked", has each transform's recall); the default world's
    # 12 copies are all found.
    leakage = (workflow_copy / "results/leakage/report.md").read_text()
    planted = yaml.safe_load((workflow_copy / "config/presets/test.yaml").read_text())["synthetic"]["planted_leaks"]
    assert planted == 4 and f"Found **{planted - 1} of {planted}** planted copies" in leakage
    assert re.search(r"\| recolour +\| False ", leakage) and "False positives" in leakage
    matches = pd.read_csv(workflow_copy / "data/leakage/matches.csv")
    assert {"path_a", "path_b", "hash_distance", "cosine", "levels"} <= set(matches.columns)
    summary = json.loads((workflow_copy / "data/leakage/leakage.json").read_text())
    checked = card["leakage"]
    assert checked["action"] == "drop" and checked["leaked_images"] == summary["leaked_images"] >= planted
    assert "distinct from those used in the downstream datasets" in checked["claim"]["paper"]
    claim = checked["claim"]
    assert claim["holds_for_this_release"] and f"{summary['leaked_images']} FACap images match" in claim["checked"]
    released = {x for r in rows for x in (r["candidate"], r["target"])}
    assert checked["triplets_removed"] > 0 and not released & {i.split(":", 1)[1] for i in summary["leaked"]}

    # Quality evaluation: the sample, a kit per annotator, and Table 2 from the automatic annotators.
    items = pd.read_csv(workflow_copy / "results/quality/sample/items.csv")
    assert set(items.dataset) == {"facap", "fashioniq", "enhfashioniq"}
    assert sorted((workflow_copy / "results/quality/kit").glob("annotator_*.html"))
    table2 = (workflow_copy / "results/tables/table2.md").read_text()
    assert "automatic annotators auto-1" in table2 and "Krippendorff" in table2 and "reported by the paper" in table2
    cached = len(list((workflow_copy / "data/cache").rglob("*.json")))
    assert cached > 0

    # Training and evaluation: every table and figure, our rows beside the paper's.
    for n in (3, 4, 5):
        for ext in ("md", "csv", "tex"):
            assert (workflow_copy / f"results/tables/table{n}.{ext}").exists()
        text = (workflow_copy / f"results/tables/table{n}.md").read_text()
        assert "reported by the paper" in text and "this run (synthetic data)" in text and "commit:" in text
    table3 = (workflow_copy / "results/tables/table3.md").read_text()
    assert "chance (random ranking)" in table3 and "TG-CIR †" in table3 and "do not add up in the paper" in table3
    # Every computed number with its interval; the comparisons with their paired tests.
    assert "±" in table3 and "## Differences: paired, on the same queries" in table3
    t5 = pd.read_csv(workflow_copy / "results/tables/table5.csv")
    assert {"no fine-tuning FIQ low", "no fine-tuning FIQ high"} <= set(t5.columns)
    diff5 = pd.read_csv(workflow_copy / "results/tables/table5_differences.csv")
    assert len(diff5) == (2 * 3 + 4) * 2 and {"Avg difference low", "p", "Test"} <= set(diff5.columns)
    # Two seeds: the p-values come from the bootstrap over seeds and queries, not a permutation test.
    assert set(diff5["Test"]) == {"bootstrap over seeds and queries"}
    for fig in ("figure5.png", "figure6.png"):
        assert (workflow_copy / "results/figures" / fig).stat().st_size > 1000
    fig5 = pd.read_csv(workflow_copy / "results/figures/figure5.csv")
    assert fig5["fraction"].tolist() == [0.5, 1.0]
    result = json.loads((workflow_copy / "results/eval/stage2/cir_mh/seed0/fashioniq.json").read_text())
    assert set(result["categories"]) == {"dress", "shirt", "toptee"} and 0 <= result["summary"]["Avg"] <= 100
    assert result["provenance"]["data"] == "synthetic" and result["stage"] == "stage2"
    # Every model once per seed (experiments.seeds: [0, 1]); each run's validation curve ends with the
    # model the evaluate rule scores, and its best point is an evaluation file of its own.
    for seed in (0, 1):
        folder = workflow_copy / f"results/eval/stage2/cir_mh/seed{seed}"
        last = json.loads((folder / "fashioniq.json").read_text())
        assert (last["seed"], last["checkpoint"]) == (seed, "last")
        curve = json.loads((folder / "validation.json").read_text())
        assert curve["points"][-1]["step"] == 2 and [p["step"] for p in curve["points"]] == [1, 2]
        assert curve["points"][-1]["summary"] == pytest.approx(last["summary"])
        best = json.loads((folder / "fashioniq_best.json").read_text())
        assert (best["seed"], best["checkpoint"], best["step"]) == (seed, "best", curve["best_step"])
        assert best["summary"]["Avg"] == max(p["summary"]["Avg"] for p in curve["points"])
    training = json.loads((workflow_copy / "models/stage1/cir_ctr_mh/seed0/training.json").read_text())
    assert training["variant"]["losses"] == ["cir", "ctr"] and training["training"]["steps"] == 3
    assert training["training"]["seed"] == 0
    seed1 = json.loads((workflow_copy / "models/stage1/cir_ctr_mh/seed1/training.json").read_text())
    assert seed1["training"]["seed"] == 1
    half = json.loads((workflow_copy / "models/stage1/cir_ctr_mh_facap50/seed0/training.json").read_text())
    assert half["data"]["used"] == round(half["data"]["facap_triplets"] / 2)
    # Figure 5's subsets train for as many epochs as the full set, not as many steps.
    assert half["training"]["steps"] == math.ceil(3 * half["data"]["used"] / half["data"]["facap_triplets"])
    assert not any((workflow_copy / "checkpoints").rglob("checkpoint.pt"))  # dropped once a run is complete

    # `fashionblip2 search` on the demo outputs.
    reference = images[(images.source == "fashioniq") & (images.split == "val")].path.iloc[0]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fashionblip2.cli",
            "search",
            "--model",
            "models/stage2/cir_mh/seed0",
            "--index",
            "results/index/stage2/cir_mh",
            "--image",
            reference,
            "--text",
            "is red",
            "--top-k",
            "3",
            "--sheet",
            "s.png",
        ],
        cwd=workflow_copy,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 5 and (workflow_copy / "s.png").exists()

    again = snakemake(workflow_copy, "--cores", "2", "all", "--configfile", "config/presets/test.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    check_minimal_reruns(workflow_copy)
    check_runtime_requests(workflow_copy, len(images[images.source != "fashioniq"]) + (images.split == "val").sum())

    # The report: every table and figure as a report item, with its caption.
    snakemake(workflow_copy, "--report", "report.html", "--configfile", "config/presets/test.yaml")
    html = (workflow_copy / "report.html").read_text()
    for item in (
        "table1.md",
        "table2.md",
        "table3.md",
        "table4.md",
        "table5.md",
        "table6.md",
        "validity.md",
        "filters.md",
        "distributions.png",
        "flagged.png",
        "figure5.png",
        "figure6.png",
        "Figure 5: recall",
        "exact, near-duplicate and semantic",
    ):
        assert item in html, item

    # Each table regenerates alone, from the evaluations already there.
    for ext in ("md", "csv", "tex"):
        (workflow_copy / f"results/tables/table5.{ext}").unlink()
    alone = snakemake(
        workflow_copy, "--cores", "2", "results/tables/table5.md", "--configfile", "config/presets/test.yaml"
    )
    assert re.search(r"^table\s+1$", alone.stdout + alone.stderr, flags=re.M)
    assert re.search(r"^total\s+1$", alone.stdout + alone.stderr, flags=re.M)
    assert (workflow_copy / "results/tables/table5.tex").exists()

    # The pilot: a sample of the pairs through the same backends and cache (nothing asked again here).
    snakemake(workflow_copy, "--cores", "2", "pilot", "--configfile", "config/presets/test.yaml")
    pilot = pd.read_csv(workflow_copy / "results/tables/pilot.csv")
    assert len(pilot) == 8 and set(pilot["Verdict"]) <= {"pass", "warn"}
    texts = pd.read_parquet(workflow_copy / "data/pilot/modifications.parquet")
    assert texts.loc[texts["status"] == "ok", "cached"].all()  # answered from the full run's cache
    assert len(list((workflow_copy / "data/cache").rglob("*.json"))) == cached

    # Forcing the annotation stages again makes no model call: every answer comes from the cache.
    # (Last: the rewritten annotation files would make everything downstream stale.)
    snakemake(
        workflow_copy,
        "--cores",
        "2",
        "data/annotation/captions_report.json",
        "data/annotation/modifications_report.json",
        "--configfile",
        "config/presets/test.yaml",
        "--forcerun",
        "caption",
        "modification",
    )
    for name in ("captions_report.json", "modifications_report.json"):
        rep = json.loads((workflow_copy / "data/annotation" / name).read_text())
        assert rep["answered_from_cache"] == rep["ok"] > 0
    assert len(list((workflow_copy / "data/cache").rglob("*.json"))) == cached

    # openai-batch through the workflow, against the loopback server: each shard records its batches.
    server = server_factory()
    batch = {"backend": "openai-batch", "model": "test-llm", "base_url": server.base_url, "poll_s": 0.05}
    (workflow_copy / "batch.yaml").write_text(yaml.safe_dump({"annotation": {"modification": batch}}))
    configs = ["config/presets/test.yaml", "batch.yaml"]
    snakemake(workflow_copy, "--cores", "2", "data/annotation/modifications_report.json", "--configfile", *configs)
    shards = len(list((workflow_copy / "data/annotation/modifications").glob("*.parquet")))
    assert len(list((workflow_copy / "data/annotation/modifications").glob("*.batches.json"))) == shards
    assert len(server.requests("batches")) == shards

    # Every file the runs left is declared by a rule (or is one the workflow keeps between runs).
    declared = declared_paths(workflow_copy, ["all", "pilot"], configs)
    assert undeclared_files(workflow_copy, declared) == []
    # Every log lives in logs/<rule>/ (rules/common.smk's log_file).
    rules = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "rules").glob("*.smk")), re.M))
    assert {p.relative_to(workflow_copy / "logs").parts[0] for p in (workflow_copy / "logs").rglob("*.*")} <= rules
    (workflow_copy / "results/tables/table3_extra.csv").write_text("a file no rule declares\n")
    assert undeclared_files(workflow_copy, declared) == ["results/tables/table3_extra.csv"]


def declared_paths(workdir, targets: list[str], configfiles: list[str]) -> tuple[set[str], list[str]]:
    """The outputs of every job the targets need (Snakemake's summary), and the patterns of the files
    jobs keep between runs that are no outputs (rules/common.smk's *_BATCHES, the result cache)."""
    summary = snakemake(workdir, "--summary", *targets, "--configfile", *configfiles).stdout.splitlines()
    start = next(i for i, line in enumerate(summary) if line.startswith("output_file\t"))
    outputs = {line.split("\t")[0] for line in summary[start + 1 :] if line.strip()}
    common = (REPO / "rules/common.smk").read_text()
    kept = [re.sub(r"\{\w+\}", "*", p) for p in re.findall(r'^\w+_BATCHES = "([^"]+)"$', common, flags=re.M)]
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert kept, "rules/common.smk declares no batch state files: update this test"
    return outputs, [*kept, f"{config['annotation']['cache_dir']}/**"]


def undeclared_files(workdir, declared: tuple[set[str], list[str]]) -> list[str]:
    """Files under data/, results/ and models/ that are neither a declared output, nor inside a
    declared folder, nor a kept file."""
    from fnmatch import fnmatch

    outputs, kept = declared
    out = []
    for root in ("data", "results", "models"):
        for path in sorted((workdir / root).rglob("*")):
            name = path.relative_to(workdir).as_posix()
            if not path.is_file() or name in outputs or any(fnmatch(name, k) for k in kept):
                continue
            if not any(name.startswith(f"{o}/") for o in outputs):
                out.append(name)
    return out


def planned_jobs(workdir, overlay: dict, files: dict | None = None) -> dict[str, int]:
    """The jobs `snakemake -n all` plans after a complete run when the config gets ``overlay``."""
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    out = snakemake(workdir, "-n", "all", "--configfile", "config/presets/test.yaml", "overlay.yaml").stdout
    stats = out.split("Job stats:", 1)[1].split("\ntotal", 1)[0] if "Job stats:" in out else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M) if m[1] != "all"}


DOWNSTREAM_OF_FACAP = {"facap", "facap_filtered", "train_stage1", "train_stage2", "evaluate", "figure5", "figure6",
                       "search_index", "table", "table1", "quality_sample", "quality_kit", "auto_annotate", "table2",
                       "leakage_report", "score_validity"}  # fmt: skip
# The texts reach FACap through the tokenizer, the backbone and the scores (FACap's rows carry them).
DOWNSTREAM_OF_TEXTS = DOWNSTREAM_OF_FACAP | {"tokenizer", "pretrain", "triplet_scores", "enhfashioniq", "score_figures"}


def check_minimal_reruns(workdir) -> None:
    """After a complete run, a one-key edit plans exactly the jobs whose results it changes."""
    test = yaml.safe_load((workdir / "config/presets/test.yaml").read_text())
    stage1, stage2 = test["training"]["stage1"], test["training"]["stage2"]
    # Nothing: how or where a job runs, and the run's label.
    for overlay in (
        {"run_name": "renamed"},
        {"training": {"device": "cpu", "gradient_checkpointing": True}},
        {"resources": {"train_stage1": {"gpu": 2}, "train_stage2": {"gpu": 4}}},
        {"evaluation": {"device": "cpu", "batch_size": 7}},
        {"embedding": {"device": "cpu", "batch_size": 5}},
        {"annotation": {"caption": {"concurrency": 3, "timeout_s": 9, "max_failed_fraction": 0.5}}},
    ):
        assert planned_jobs(workdir, overlay) == {}, overlay
    # Stage 2's learning rate: the seven stage-2 runs (Table 6's unfiltered twin included) and what
    # reads them, nothing upstream.
    # Each of them at both seeds.
    assert planned_jobs(workdir, {"training": {"stage2": {**stage2, "lr": 3e-4}}}) == {
        "train_stage2": 14, "evaluate": 14, "table": 4, "figure6": 1, "search_index": 1,
    }  # fmt: skip
    # Stage 1's: the six stage-1 runs (Figure 5's half and Table 6's twin included), then stage 2 of
    # the five that have one, at both seeds.
    jobs = planned_jobs(workdir, {"training": {"stage1": {**stage1, "lr": 1e-4}}})
    assert jobs["train_stage1"] == 12 and jobs["train_stage2"] == 10 and "pretrain" not in jobs, jobs
    # A third seed: its runs and what averages over seeds; not Figure 6 or the search index (the
    # first seed's models), and nothing already trained.
    assert planned_jobs(workdir, {"experiments": {"seeds": [0, 1, 2]}}) == {
        "train_stage1": 6, "train_stage2": 7, "evaluate": 13, "table": 4, "figure5": 1,
    }  # fmt: skip
    # The backbone's pretraining seed: the backbone and everything trained from it; stage 1 and 2 take
    # their seeds from experiments.seeds.
    jobs = planned_jobs(workdir, {"training": {"seed": 5}})
    assert jobs["pretrain"] == 1 and jobs["train_stage1"] == 12 and "tokenizer" not in jobs, jobs
    # One variant: its own chain, and the one table that shows it.
    cir_global = {"losses": ["cir", "ctr"], "adapters": True, "matching": "global", "label": "+ adapters"}
    assert planned_jobs(workdir, {"experiments": {"variants": {"cir_global": cir_global}}}) == {
        "train_stage1": 2, "train_stage2": 2, "evaluate": 4, "table": 1,
    }  # fmt: skip
    # The multi-head similarity scale: the multi-head variants only (global matching has one head).
    assert planned_jobs(workdir, {"model": {"similarity_scale": "sum"}}) == {
        "train_stage1": 8, "train_stage2": 8, "evaluate": 16, "table": 4, "figure5": 1, "figure6": 1,
        "search_index": 1,
    }  # fmt: skip
    # Where images become RGB: every FashionBLIP-2 run (it is saved in the model), not the backbone's
    # pretraining or the scores, which convert first as LAVIS does.
    assert planned_jobs(workdir, {"images": {"mode": "sprc"}}) == {
        "train_stage1": 12, "train_stage2": 14, "evaluate": 26, "table": 4, "figure5": 1, "figure6": 1,
        "search_index": 1,
    }  # fmt: skip
    # The batch the learning rate was tuned at scales nothing while lr_scaling is none.
    assert planned_jobs(workdir, {"training": {"stage2": {**stage2, "lr_reference_batch_size": 128}}}) == {}
    # A leakage threshold or action: the check and everything after FACap, nothing upstream (no embedding,
    # no annotation) and not enhFashionIQ.
    for overlay in ({"leakage": {"hash_max_distance": 2}}, {"leakage": {"action": "report"}}):
        jobs = planned_jobs(workdir, overlay)
        assert set(jobs) == {"leakage"} | DOWNSTREAM_OF_FACAP, (overlay, jobs)
    # A filter threshold: from the filter onward (the filtered variants' chains), nothing upstream of it:
    # not the scores, not FACap, not Table 6's unfiltered twin.
    jobs = planned_jobs(workdir, {"facap": {"filters": [{"score": "grounding", "min": 0.9}]}})
    assert jobs["facap_filtered"] == 1 and jobs["train_stage1"] == 10, jobs
    assert not set(jobs) & {"triplet_scores", "facap", "pretrain", "enhfashioniq", "leakage"}, jobs
    # A flag threshold of the scores: the validity table and the figures only.
    thresholds = {"caption_faithfulness": -1.0, "grounding": 0.5, "discriminative": 0.25, "form": 1.0}
    assert planned_jobs(workdir, {"scores": {"thresholds": thresholds}}) == {"score_validity": 1, "score_figures": 1}
    # The intervals' draws: the tables and Figure 5, no model.
    assert planned_jobs(workdir, {"evaluation": {"bootstrap": {"samples": 500, "seed": 0}}}) == {
        "table": 4, "figure5": 1,
    }  # fmt: skip
    # Figure 5's budget: its one subset's chain.
    figure5 = {**test["experiments"]["figure5"], "budget": "steps"}
    assert planned_jobs(workdir, {"experiments": {"figure5": figure5}}) == {
        "train_stage1": 2, "evaluate": 2, "figure5": 1,
    }  # fmt: skip
    # The modification prompt: modifications onward, no caption.
    prompt = (workdir / "prompts/modification.yaml").read_text() + "# edited\n"
    jobs = planned_jobs(workdir, {"annotation": {"modification": {"prompt": "edited.yaml"}}}, {"edited.yaml": prompt})
    assert set(jobs) == {"modification", "gather_modifications"} | DOWNSTREAM_OF_TEXTS, jobs
    # The captioner's model: captions onward.
    jobs = planned_jobs(workdir, {"annotation": {"caption": {"backend": "openai", "model": "a-vlm"}}})
    assert set(jobs) == {"caption", "gather_captions", "modification", "gather_modifications"} | DOWNSTREAM_OF_TEXTS
    # A source root: everything from the manifest (the world it was copied from is not remade).
    shutil.copytree(workdir / "data/synthetic/world/fashioniq", workdir / "fashioniq_copy")
    jobs = planned_jobs(workdir, {"sources": {"fashioniq": {"root": "fashioniq_copy"}}})
    assert "manifest" in jobs and "synthetic_world" not in jobs and jobs["embed"] == 2, jobs
    # A path that is not there stops the run when it is parsed, also after a complete run.
    for overlay, named in (
        ({"annotation": {"caption": {"prompt": "prompts/gone.yaml"}}}, "annotation.caption.prompt: 'prompts/gone"),
        ({"model": {"backbone": "models/blip2-typo"}}, "model.backbone: 'models/blip2-typo' does not exist"),
        ({"sources": {"fashioniq": {"root": "data/raw/fiq"}}}, "sources.fashioniq.root: 'data/raw/fiq' does not"),
    ):
        (workdir / "overlay.yaml").write_text(yaml.safe_dump(overlay))
        proc = snakemake(workdir, "-n", "all", "--configfile", "config/presets/test.yaml", "overlay.yaml", check=False)
        assert proc.returncode != 0 and named in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    (workdir / "overlay.yaml").unlink()


def check_runtime_requests(workdir, embedded: int) -> None:
    """Each GPU job asks for the time its work takes at the stated speed (config `throughput`)."""
    preset = yaml.safe_load((workdir / "config/presets/test.yaml").read_text())
    speeds = yaml.safe_load((workdir / "config.yaml").read_text())["throughput"]
    out = snakemake(workdir, "-n", "all", "--configfile", "config/presets/test.yaml", "--forcerun", "embed",
                    "train_stage1").stdout  # fmt: skip
    asked = {}
    for block in out.split("\nrule ")[1:]:
        rule, runtime = block.split(":", 1)[0], re.search(r"runtime=(\d+)", block)
        if runtime:
            asked.setdefault(rule, set()).add(int(runtime.group(1)))
    timed = lambda seconds: runtime_minutes(seconds, 1, margin=speeds["margin"], startup_min=speeds["startup_min"])  # noqa: E731
    shards = [embedded // 2, embedded - embedded // 2]  # the tiny preset's two shards
    assert asked["embed"] == {timed(n / speeds["embed_images_per_s"]) for n in shards}
    # Stage 1's steps and its FashionIQ-val validations (validate_every 2 of 3 steps: at 2 and 3),
    # each encoding the val gallery and queries.
    stage1 = preset["training"]["stage1"]
    images = pd.read_parquet(workdir / "data/manifest/images.parquet")
    triplets = pd.read_parquet(workdir / "data/manifest/fashioniq_triplets.parquet")
    items = ((images.source == "fashioniq") & (images.split == "val")).sum() + (triplets.split == "val").sum()
    assert validation_points(stage1["steps"], stage1["validate_every"]) == 2
    work = stage1["steps"] * speeds["train_s_per_step"]["stage1"] + 2 * items / speeds["inference_images_per_s"]
    assert asked["train_stage1"] == {timed(work)}


@pytest.mark.e2e
def test_a_killed_training_job_resumes_from_its_checkpoint(workflow_copy):
    """Kill Snakemake (and its job) in the middle of stage 1; the rerun resumes from the checkpoint and
    ends with the same weights as a run that was never interrupted."""
    (workflow_copy / "long.yaml").write_text(
        "training:\n  stage1: {steps: 400, batch_size: 4, lr: 5.0e-4, warmup_steps: 1, checkpoint_every: 5,"
        " validate_every: 100}\n"
    )
    args = ["--cores", "2", "models/stage1/cir_mh/seed0", "--configfile", "config/presets/test.yaml", "long.yaml"]
    env = python_first_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workflow_copy,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = workflow_copy / "checkpoints/stage1/cir_mh/seed0/metrics.jsonl"
    try:
        deadline = time.monotonic() + 600
        # Past the first validation point (step 100), so that the resumed run must keep it, not add it again.
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 130):
            assert proc.poll() is None, "snakemake ended before it could be killed"
            assert time.monotonic() < deadline, "stage 1 never started"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (workflow_copy / "models/stage1/cir_mh/seed0/model.safetensors").exists()
    snakemake(workflow_copy, "--unlock", *args[2:])
    snakemake(workflow_copy, *args, "--rerun-incomplete")
    log = (workflow_copy / "logs/train_stage1/cir_mh_seed0.log").read_text()
    assert re.search(r"resuming from \S+checkpoint.pt at step [1-9]\d* of 400", log)
    steps = [json.loads(line)["step"] for line in (workflow_copy / "models/stage1/cir_mh/seed0/metrics.jsonl").open()]
    assert steps == list(range(1, 401))
    resumed = (workflow_copy / "models/stage1/cir_mh/seed0/model.safetensors").read_bytes()
    curve_file = workflow_copy / "results/eval/stage1/cir_mh/seed0/validation.json"
    killed_curve = json.loads(curve_file.read_text())
    snakemake(workflow_copy, *args, "--forcerun", "train_stage1")
    assert "resuming" not in (workflow_copy / "logs/train_stage1/cir_mh_seed0.log").read_text()
    assert (workflow_copy / "models/stage1/cir_mh/seed0/model.safetensors").read_bytes() == resumed
    # The validation curve too: one point per 100 steps, none twice, the same whether killed or not.
    curve = json.loads(curve_file.read_text())
    assert [p["step"] for p in curve["points"]] == [100, 200, 300, 400]
    assert [p["summary"] for p in killed_curve["points"]] == [p["summary"] for p in curve["points"]]


def test_lint_is_clean(workflow_copy):
    proc = snakemake(workflow_copy, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("manifest:\n  verify_imagez: decode\n", "'verify_imagez' was unexpected"),
        ("synthetic:\n  fashion200k:\n    items_per_category: lots\n", "['fashion200k']['items_per_category']"),
        ("sources:\n  catalogue:\n    enabled: true\n    path: ''\n", "['catalogue']['path']"),
        ("annotation:\n  modification:\n    prompt: p.yaml\n", "annotation.modification.prompt: 'p.yaml' does not"),
        ("annotation:\n  caption:\n    backend: transformers\n    model_path: vlm\n", "annotation.caption.model_path"),
        ("annotation:\n  modification:\n    backend: openai\n    model: ''\n", "an API backend needs the model name"),
    ],
)
def test_bad_config_stops_the_run_naming_the_key(workflow_copy, override, named):
    (workflow_copy / "bad.yaml").write_text(override)
    proc = snakemake(workflow_copy, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr
    assert not (workflow_copy / "data").exists()


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.mark.parametrize("preset", sorted(p.name for p in (REPO / "config/presets").glob("*.yaml")))
def test_presets_validate(preset):
    config = deep_merge(
        yaml.safe_load((REPO / "config.yaml").read_text()),
        yaml.safe_load((REPO / "config/presets" / preset).read_text()),
    )
    validate(config, str(REPO / "config/schema.yaml"))


def test_only_evaluation_rules_read_the_ground_truth():
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", smk.read_text(), flags=re.M):
            inputs = re.search(r"^    input:\n((?:        .*\n)+)", body, flags=re.M)
            if inputs and "GROUND_TRUTH" in inputs.group(1):
                assert name in GROUND_TRUTH_READERS, f"rule {name} ({smk.name}) reads the ground truth"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "workflow_scripts").glob("*.py")))
def test_workflow_scripts_run_by_hand(script):
    proc = subprocess.run(
        [sys.executable, REPO / "workflow_scripts" / script, "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout and "Example" in proc.stdout


def test_a_bad_source_root_fails_with_a_clear_message(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            REPO / "workflow_scripts/build_manifest.py",
            "--sources",
            json.dumps(source_settings(fashion200k=str(tmp_path))),
            "--images",
            str(tmp_path / "i.parquet"),
            "--triplets",
            str(tmp_path / "t.parquet"),
            "--report",
            str(tmp_path / "r.json"),
            "--issues",
            str(tmp_path / "x.tsv"),
            "--verify",
            "exists",
            "--threads",
            "1",
            "--run-name",
            "test",
            "--data",
            "real",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "check sources.fashion200k.root" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_table2_on_real_data_needs_score_files_and_says_so(workflow_copy, shared_fashioniq):
    real = {"sources": {"fashion200k": {"enabled": False}, "deepfashion_mm": {"enabled": False},
                        "fashioniq": {"root": str(shared_fashioniq)}}}  # fmt: skip
    (workflow_copy / "real.yaml").write_text(yaml.safe_dump(real))
    everything = snakemake(workflow_copy, "-n", "all", "--configfile", "real.yaml")
    assert "rule quality_kit:" in everything.stdout and "rule table2:" not in everything.stdout  # the kit, for people
    table2 = snakemake(workflow_copy, "-n", "results/tables/table2.md", "--configfile", "real.yaml", check=False)
    assert table2.returncode != 0 and "list their exported CSVs in quality.annotations" in table2.stdout + table2.stderr
