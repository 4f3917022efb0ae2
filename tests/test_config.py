"""What the workflow decides from its config at parse time: result settings vs run settings, paths."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from fashionblip2.config import (
    annotation_answer_settings,
    annotation_run_settings,
    check_experiment_names,
    check_paths,
    fraction_variant,
    path_problems,
    resolved_sources,
    runtime_minutes,
    training_result_settings,
    training_run_settings,
    variants,
)
from tests.conftest import REPO


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_the_default_config_names_no_missing_path(config):
    assert path_problems(config, REPO) == []


def test_every_missing_path_is_named_by_its_key(config, tmp_path):
    config = copy.deepcopy(config)
    config["sources"]["fashioniq"]["root"] = "data/raw/fashion-iq-typo"
    config["sources"]["catalogue"] = {"enabled": True, "path": "shop.csv", "name": "shop"}
    config["annotation"]["modification"]["prompt"] = "prompts/nope.yaml"
    config["annotation"]["caption"].update(backend="transformers", model_path="models/vlm")
    config["embedding"]["pretrained"] = "models/clip.bin"
    config["model"]["backbone"] = "models/blip2"
    (tmp_path / "prompts").mkdir()
    for name in ("caption.yaml", "modification.yaml"):
        (tmp_path / "prompts" / name).write_text((REPO / "prompts" / name).read_text())
    (tmp_path / "models").mkdir()
    (tmp_path / "models/vlm").write_text("a file, not the model folder")
    problems = path_problems(config, tmp_path)
    assert problems == [
        "sources.fashioniq.root: 'data/raw/fashion-iq-typo' does not exist (expected a folder)",
        "sources.catalogue.path: 'shop.csv' does not exist (expected a file)",
        "annotation.caption.model_path: 'models/vlm' is not a folder (expected a folder)",
        "annotation.modification.prompt: 'prompts/nope.yaml' does not exist (expected a file)",
        "embedding.pretrained: 'models/clip.bin' does not exist (expected a file)",
        "model.backbone: 'models/blip2' does not exist (expected a folder)",
    ]
    with pytest.raises(ValueError, match="the config names paths that are not there"):
        check_paths(config, tmp_path)


def test_runtime_requests_follow_the_work():
    assert runtime_minutes(0, 10, margin=2, startup_min=5) == 5
    assert runtime_minutes(6000, 100, margin=1.5, startup_min=5) == 5 + 2  # 60 s of work, 90 s asked
    assert runtime_minutes(4500 * 18.0, 1, margin=1.5, startup_min=15) == 2040  # the paper's stage 1, stated
    assert runtime_minutes(1, 1e9, margin=1, startup_min=0) == 1


def test_run_settings_never_overlap_the_settings_that_change_results(config):
    for stage in ("caption", "modification"):
        answers, run = annotation_answer_settings(config, stage), annotation_run_settings(config, stage)
        assert not set(answers) & set(run)
        assert {"backend", "max_words"} <= set(answers) and {"concurrency", "max_failed_fraction"} <= set(run)
    result = training_result_settings(config, "stage2")
    assert result["lr"] == config["training"]["stage2"]["lr"] and {"seed", "precision"} <= set(result)
    assert set(training_run_settings(config)) == {"device", "gradient_checkpointing", "cache_image_features"}
    assert not set(result) & set(training_run_settings(config))


@pytest.mark.parametrize(
    ("stage", "override", "named"),
    [
        ("modification", {"backend": "openai", "model": ""}, "an API backend needs the model name"),
        ("caption", {"backend": "openai-batch", "model": ""}, "an API backend needs the model name"),
        ("caption", {"backend": "transformers", "model_path": ""}, "needs a local model folder"),
    ],
)
def test_the_schema_refuses_a_backend_without_its_model(config, stage, override, named):
    config = copy.deepcopy(config)
    config["annotation"][stage].update(override)
    with pytest.raises(WorkflowError) as error:
        validate(config, str(REPO / "config/schema.yaml"))
    print(error.value)
    assert named in str(error.value)


def test_sources_resolve_to_the_world_the_download_folder_or_the_users_folder():
    sources = {
        "fashion200k": {"root": "synthetic"},
        "deepfashion_mm": {"root": "download"},
        "fashioniq": {"root": "/data/fiq", "categories": ["dress"]},
        "catalogue": {"enabled": False, "path": ""},
    }
    assert resolved_sources(sources, "data/synthetic/world", "dl/{source}") == {
        "fashion200k": {"root": "data/synthetic/world/fashion200k"},
        "deepfashion_mm": {"root": "dl/deepfashion_mm"},
        "fashioniq": {"root": "/data/fiq", "categories": ["dress"]},
    }


def test_figure5_fractions_expand_into_named_variants_of_their_base(config):
    experiments = config["experiments"]
    everything = variants(experiments)
    assert fraction_variant("v", 0.25) == "v_facap25" and fraction_variant("v", 1.0) == "v"
    base = experiments["figure5"]["variant"]
    for fraction in experiments["figure5"]["fractions"]:
        name = fraction_variant(base, fraction)
        assert everything[name]["losses"] == experiments["variants"][base]["losses"]
        assert everything[name].get("facap_fraction", 1.0) == fraction
    check_experiment_names(experiments, config["search"]["variant"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda ex: ex["table5"].append("nope"), "experiments.table5: variant 'nope' is not declared"),
        (lambda ex: ex["figure5"].update(variant="nope"), "experiments.figure5.variant: 'nope' is not in"),
        (lambda ex: ex["table3"].update(without_finetuning="mh_no_facap"), "has facap_fraction 0"),
    ],
)
def test_an_undeclared_or_impossible_variant_is_refused(config, edit, message):
    experiments = copy.deepcopy(config["experiments"])
    edit(experiments)
    with pytest.raises(ValueError, match=message):
        check_experiment_names(experiments, config["search"]["variant"])
