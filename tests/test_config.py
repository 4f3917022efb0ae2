"""What the workflow decides from its config at parse time: result settings vs run settings, paths."""

from __future__ import annotations

import ast
import copy
import re

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from fashionblip2.config import (
    annotation_answer_settings,
    annotation_job_options,
    check_experiment_names,
    check_paths,
    figure5_caption,
    fraction_variant,
    model_settings,
    path_problems,
    resolved_sources,
    runtime_minutes,
    training_job_options,
    training_result_settings,
    variant_setting,
    variants,
)
from tests.conftest import REPO, variant


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
        "embedding.pretrained: 'models/clip.bin' does not exist (expected a file or folder)",
        "model.backbone: 'models/blip2' does not exist (expected a folder)",
    ]
    with pytest.raises(ValueError, match="the config names paths that are not there"):
        check_paths(config, tmp_path)


def test_runtime_requests_follow_the_work():
    assert runtime_minutes(0, 10, margin=2, startup_min=5) == 5
    assert runtime_minutes(6000, 100, margin=1.5, startup_min=5) == 5 + 2  # 60 s of work, 90 s asked
    assert runtime_minutes(4500 * 18.0, 1, margin=1.5, startup_min=15) == 2040  # the paper's stage 1, stated
    assert runtime_minutes(1, 1e9, margin=1, startup_min=0) == 1


def test_job_options_never_overlap_the_settings_that_change_results(config):
    for stage in ("caption", "modification"):
        answers, run = annotation_answer_settings(config, stage), annotation_job_options(config, stage)
        assert not set(answers) & set(run)
        assert {"backend", "max_words"} <= set(answers) and {"concurrency", "max_failed_fraction"} <= set(run)
    result = training_result_settings(config, "stage2")
    assert result["lr"] == config["training"]["stage2"]["lr"] and "precision" in result
    # Stage 1 and 2 take their seed from experiments.seeds (a path wildcard); training.seed is the
    # backbone pretraining's.
    assert "seed" not in result and training_result_settings(config, "pretrain")["seed"] == config["training"]["seed"]
    assert set(training_job_options(config)) == {"device", "gradient_checkpointing", "cache_image_features"}
    assert not set(result) & set(training_job_options(config))


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
        "fashion200k": {"enabled": True, "root": "synthetic"},
        "deepfashion_mm": {"enabled": True, "root": "download"},
        "fashioniq": {"enabled": True, "root": "/data/fiq", "categories": ["dress"]},
        "catalogue": {"enabled": False, "path": ""},
    }
    assert resolved_sources(sources, "data/synthetic/world", "dl/{source}") == {
        "fashion200k": {"enabled": True, "root": "data/synthetic/world/fashion200k"},
        "deepfashion_mm": {"enabled": True, "root": "dl/deepfashion_mm"},
        "fashioniq": {"enabled": True, "root": "/data/fiq", "categories": ["dress"]},
    }


def test_figure5_fractions_expand_into_named_variants_of_their_base(config):
    experiments = config["experiments"]
    everything = variants(experiments)
    assert fraction_variant("v", 0.25) == "v_facap25" and fraction_variant("v", 1.0) == "v"
    base = experiments["figure5"]["variant"]
    for fraction in experiments["figure5"]["fractions"]:
        name = fraction_variant(base, fraction)
        assert everything[name]["losses"] == experiments["variants"][base]["losses"]
        assert variant_setting(everything[name], "facap_fraction") == fraction
    check_experiment_names(experiments, config["search"]["variant"])


def test_figure5_subsets_train_for_the_full_sets_epochs_by_default(config):
    from fashionblip2.training.runs import Variant

    experiments = config["experiments"]
    name = fraction_variant(experiments["figure5"]["variant"], 0.25)
    subset = Variant.from_spec(variants(experiments)[name])
    assert subset.fraction_budget == "epochs"
    assert subset.stage1_steps(200, used=177, full=706) == 51  # ceil(200 * 177 / 706): the full set's epochs
    assert "as many epochs as the full set" in figure5_caption(experiments)
    steps = copy.deepcopy(experiments)
    steps["figure5"]["budget"] = "steps"
    assert Variant.from_spec(variants(steps)[name]).stage1_steps(200, used=177, full=706) == 200
    assert "as many steps" in figure5_caption(steps)
    assert variant().stage1_steps(200, used=706, full=706) == 200


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


# Keys config.yaml may leave out, and why: the SLURM extras, the GPU count and the threads have a
# meaning when absent (the cluster's default, no GPU, a one-thread rule); a GPU rule's runtime is
# its work at `throughput`; the local-model keys of the shared annotation section mean nothing to
# the modification stage.
OPTIONAL_KEYS = {"cpus_per_task", "slurm_partition", "gpu", "threads"}
COMPUTED_RUNTIMES = {
    "embed", "caption", "pretrain", "train_stage1", "train_stage2", "evaluate", "search_index", "triplet_scores",
}  # fmt: skip
CAPTION_ONLY = {"model_path", "batch_size", "device"}


def schema_keys_missing_from(config: dict) -> list[str]:
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())

    def resolve(node: dict) -> dict:
        return resolve(schema["$defs"][node["$ref"].split("/")[-1]]) if "$ref" in node else node

    missing = []

    def walk(node: dict, value: dict, path: str) -> None:
        for key, sub in resolve(node).get("properties", {}).items():
            where = f"{path}.{key}" if path else key
            if key in value:
                if isinstance(value[key], dict):
                    walk(sub, value[key], where)
                continue
            optional = (
                key in OPTIONAL_KEYS
                or (path.startswith("resources.") and key == "runtime" and path.split(".")[-1] in COMPUTED_RUNTIMES)
                or (path == "annotation.modification" and key in CAPTION_ONLY)
            )
            if not optional:
                missing.append(where)

    walk(schema, config, "")
    return missing


def test_every_setting_has_one_owner_config_yaml():
    """The defaults live in config.yaml only: the schema checks them and holds none (but for the
    fields of user-written list entries, which config.yaml cannot hold), and config.yaml names
    every key, so no script or library default decides a workflow setting."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert schema_keys_missing_from(config) == []
    schema_text = (REPO / "config/schema.yaml").read_text()
    defaults = [line.strip() for line in schema_text.splitlines() if "default:" in line]
    assert defaults == ["kind: {enum: [file, archive, image_list], default: file}"], defaults
    rules = re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "rules").glob("*.smk")), re.M)
    assert sorted(config["resources"]) == sorted(rules)  # every rule's numbers, and only there


def test_the_similarity_scale_is_a_setting_of_multi_head_variants_only(config):
    multi = model_settings(config, {"matching": "multihead"})
    assert multi["similarity_scale"] == config["model"]["similarity_scale"] and multi["num_heads"] > 1
    # One head: mean and sum agree, so editing the key must not retrain the global variants.
    assert "similarity_scale" not in model_settings(config, {"matching": "global"})


def config_keys(node: object) -> set[str]:
    """Every key config.yaml names, at any depth (a setting's name)."""
    if isinstance(node, dict):
        return {str(k) for k in node} | {key for value in node.values() for key in config_keys(value)}
    if isinstance(node, list):
        return {key for value in node for key in config_keys(value)}
    return set()


def library_defaults(keys: set[str]) -> set[str]:
    """Each place the library or a script gives a config key a value of its own: ``X.get("<key>",
    <not None>)`` and a dataclass field named like a key with a default, as "<file>: <what>"."""
    files = sorted((REPO / "fashionblip2").rglob("*.py")) + sorted((REPO / "workflow_scripts").glob("*.py"))
    found = set()
    for path in files:
        name = path.relative_to(REPO).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in keys
                and not (isinstance(node.args[1], ast.Constant) and node.args[1].value is None)
            ):
                found.add(f"{name}: get({node.args[0].value})")
            if isinstance(node, ast.ClassDef) and any("dataclass" in ast.unparse(d) for d in node.decorator_list):
                for field in node.body:
                    if (
                        isinstance(field, ast.AnnAssign)
                        and field.value is not None
                        and isinstance(field.target, ast.Name)
                        and field.target.id in keys
                    ):
                        found.add(f"{name}: {node.name}.{field.target.id}")
    return found


# The only defaults of config keys outside config.yaml, each for a reason that config.yaml cannot
# serve (issue 21, item 5). Nothing else may have one: a new entry here needs a reason of these kinds.
ALLOWED_LIBRARY_DEFAULTS = {
    # Keys whose absence has a meaning (OPTIONAL_KEYS): a rule without `gpu` uses none; a recipe
    # without lr_reference_batch_size (dropped while lr_scaling is none, so that editing it retrains
    # nothing) scales nothing, and one without lr_scaling (a checkpoint's from before it) none.
    "fashionblip2/plan.py: get(gpu)",
    "fashionblip2/training/trainer.py: TrainConfig.lr_reference_batch_size",
    "fashionblip2/training/trainer.py: TrainConfig.lr_scaling",
    # Names that are config keys by coincidence, not settings: jobs counted per rule (named like
    # training.<run> and resources.<rule>), the fields of a result (a download's report, a plan row,
    # a reading report built with the manifest's `strict`), and the SLURM request of one job, filled
    # from resources: and cluster: by the caller.
    "fashionblip2/plan.py: get(pretrain)",
    "fashionblip2/plan.py: get(train_stage1)",
    "fashionblip2/plan.py: get(train_stage2)",
    "fashionblip2/plan.py: Row.backend",
    "fashionblip2/sources/download.py: SourceDownload.files",
    "fashionblip2/sources/download.py: SourceDownload.images",
    "fashionblip2/common/issues.py: InputReport.strict",
    "fashionblip2/common/images.py: ImageCheck.mode",  # a file's PIL mode, as checked: not images.mode
    "fashionblip2/cluster.py: JobRequest.partition",
    "fashionblip2/cluster.py: JobRequest.mem_mb",
    "fashionblip2/cluster.py: JobRequest.gpu_model",
    "fashionblip2/cluster.py: JobRequest.device",
    # The browser's explorer request (its filters: datasets, categories, sources, empty = all) and a
    # released row's optional `scores` entry: what a user asks for and what a file holds, not settings.
    "fashionblip2/browse/data.py: TripletQuery.datasets",
    "fashionblip2/browse/data.py: TripletQuery.categories",
    "fashionblip2/browse/data.py: TripletQuery.sources",
    "fashionblip2/browse/data.py: get(scores)",
    # The fields of a table's numbers: an evaluation file's seed (files written before seeds were a
    # config axis have none: seed 0), a paired difference's test and seed count, an evaluation's files.
    "fashionblip2/results/tables.py: get(seed)",
    "fashionblip2/results/tables.py: Evaluation.files",
    "fashionblip2/results/significance.py: Difference.test",
    "fashionblip2/results/significance.py: Difference.seeds",
}


# Not fixed yet (issue 21, item 5, open): the config-built dataclasses' field defaults and the
# download entries' optional keys. Each fix removes its lines; the test fails on a stale one.
NOT_YET_FIXED: set[str] = set()


def test_no_library_default_for_a_config_setting():
    """config.yaml owns every setting's default: the library reads the key, so a default written
    again in code cannot drift from it (as FashionIQSpec's 60 val triplets had from config's 400)."""
    keys = config_keys(yaml.safe_load((REPO / "config.yaml").read_text()))
    found = library_defaults(keys)
    assert sorted(found - ALLOWED_LIBRARY_DEFAULTS - NOT_YET_FIXED) == []
    assert sorted((ALLOWED_LIBRARY_DEFAULTS | NOT_YET_FIXED) - found) == []  # an entry that no longer applies goes
