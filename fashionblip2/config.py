"""What the workflow decides from its config when it is parsed, before any job starts.

- Which settings change a job's result. Only those are a rule's ``params``: Snakemake reruns a job
  whose params change, so a setting that only changes *how* a job runs (the device, the number of
  GPUs, concurrency, timeouts, the run's label) must not be one, or an edit would retrain models
  and re-annotate datasets for nothing. Those reach the scripts through the shell command instead.
- Whether every path the config names exists, so that a typo stops the run at once, naming the
  config key, and never after a GPU job has started.

Standard library only: the Snakefile imports it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from fashionblip2.annotation.pricing import is_paid

# annotation.<stage>: the keys that change the answers (they also make the cache key).
ANNOTATION_ANSWER_KEYS = ("backend", "model", "model_path", "max_new_tokens", "max_words", "temperature")
# training: shared keys that change a trained model (besides the run's own section).
TRAINING_RESULT_KEYS = ("seed", "precision", "weight_decay_exempt")
# training: shared keys that change how a model is trained, not what comes out.
TRAINING_RUNTIME_KEYS = ("device", "gradient_checkpointing", "cache_image_features")


def pick(section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: section[k] for k in keys if k in section}


def drop(section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in keys}


def as_json(value: Any) -> str:
    """The one JSON form of a setting in params and shell commands (sorted keys: stable params)."""
    return json.dumps(value, sort_keys=True)


def annotation_answer_settings(config: dict[str, Any], stage: str) -> dict[str, Any]:
    section = config["annotation"][stage]
    settings = pick(section, ANNOTATION_ANSWER_KEYS)
    # The planted errors change the rules differ's answers only: under an API backend, editing them
    # must not replan the paid stage and everything trained on it.
    if section["backend"] == "rules" and "planted_errors" in section:
        settings["planted_errors"] = section["planted_errors"]
    return settings


def annotation_job_options(config: dict[str, Any], stage: str) -> dict[str, Any]:
    return drop(config["annotation"][stage], ANNOTATION_ANSWER_KEYS + ("prompt", "planted_errors"))


def training_result_settings(config: dict[str, Any], run: str) -> dict[str, Any]:
    """A training run's own section (steps, lr, ...) with the shared keys that change its result.
    training.seed is the backbone pretraining's: stage 1 and 2 take theirs from experiments.seeds
    (a path wildcard, so editing training.seed leaves every variant's model alone)."""
    shared = pick(config["training"], TRAINING_RESULT_KEYS)
    if run != "pretrain":
        shared.pop("seed", None)
    own = dict(config["training"][run])
    if own["lr_scaling"] == "none":  # the reference batch scales nothing: editing it retrains nothing
        own.pop("lr_reference_batch_size", None)
    return {**own, **shared}


def validation_points(steps: int, every: int) -> int:
    """How many times a training run evaluates on FashionIQ val: every ``every`` steps (0: never
    during the run) and after the last step, which may be one of those."""
    during = steps // every if every else 0
    return during + (0 if every and steps % every == 0 else 1)


def training_seconds(config: dict[str, Any], run: str, steps: int, validation_items: int) -> float:
    """A training run's work at the stated throughput: its steps, and for stage 1 and 2 its
    validations, each encoding FashionIQ val's gallery and queries (``validation_items``)."""
    speed = config["throughput"]
    seconds = steps * speed["train_s_per_step"][run]
    if run != "pretrain":
        points = validation_points(steps, config["training"][run]["validate_every"])
        seconds += points * validation_items / speed["inference_images_per_s"]
    return seconds


def experiment_seeds(experiments: dict[str, Any]) -> list[int]:
    """experiments.seeds: every variant is trained once per seed; the first names the models that
    Figure 6, the search index and the release use."""
    return list(experiments["seeds"])


MODEL_SETTING_KEYS = (
    "adapter_factor",
    "num_heads",
    "head_dim",
    "max_text_length",
    "similarity_scale",
    "init_temperature",
)


def model_settings(config: dict[str, Any], variant: dict[str, Any]) -> dict[str, Any]:
    """The FashionBLIP-2 head settings a variant's training run builds its model with (model.<key>).
    How the heads' cosines combine means nothing to global matching (one head): left out there, so
    that editing it reruns only the multi-head variants."""
    settings = pick(config["model"], MODEL_SETTING_KEYS) | {"image_mode": config["images"]["mode"]}
    if variant["matching"] == "global":
        settings.pop("similarity_scale", None)
    return settings


def training_job_options(config: dict[str, Any]) -> dict[str, Any]:
    return pick(config["training"], TRAINING_RUNTIME_KEYS)


def runtime_minutes(work: float, per_second: float, *, margin: float, startup_min: float) -> int:
    """A job's runtime request (minutes): its work at the stated speed, times a safety margin, plus
    the time to start (loading a model, reading the inputs)."""
    return max(1, math.ceil(startup_min + margin * work / per_second / 60))


def uses_api(config: dict[str, Any], stage: str) -> bool:
    """Whether a stage calls a paid API (its jobs need the internet): the one predicate, in pricing."""
    return is_paid(config["annotation"][stage]["backend"])


# --- paths ----------------------------------------------------------------------------------------

GENERATED_ROOTS = ("synthetic", "download")


def configured_paths(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every path the config names that must exist before a run: (config key, path, "file"|"folder")."""
    out: list[tuple[str, str, str]] = []
    for name, spec in config["sources"].items():
        if not spec["enabled"]:
            continue
        if name == "catalogue":
            out.append(("sources.catalogue.path", spec["path"], "file"))
        elif spec.get("root") not in GENERATED_ROOTS:
            out.append((f"sources.{name}.root", spec["root"], "folder"))
    for stage in ("caption", "modification"):
        section = config["annotation"][stage]
        out.append((f"annotation.{stage}.prompt", section["prompt"], "file"))
        if section["backend"] == "transformers":
            out.append((f"annotation.{stage}.model_path", section["model_path"], "folder"))
    if config["embedding"].get("pretrained"):
        out.append(("embedding.pretrained", config["embedding"]["pretrained"], "file or folder"))
    for key in ("backbone", "tokenizer"):
        if config["model"][key] != "train":
            out.append((f"model.{key}", config["model"][key], "folder"))
    for i, path in enumerate(config["quality"]["annotations"]):
        out.append((f"quality.annotations[{i}]", path, "file or folder"))
    return out


def path_problems(config: dict[str, Any], root: str | os.PathLike[str] = ".") -> list[str]:
    """One line per configured path that is missing or of the wrong kind, naming the config key."""
    problems = []
    for key, path, kind in configured_paths(config):
        full = os.path.join(root, path) if path else ""
        ok = {
            "file": os.path.isfile(full),
            "folder": os.path.isdir(full),
            "file or folder": os.path.exists(full),
        }[kind]
        if not ok:
            what = "is empty" if not path else ("does not exist" if not os.path.exists(full) else f"is not a {kind}")
            problems.append(f"{key}: {path!r} {what} (expected a {kind})")
    return problems


def check_paths(config: dict[str, Any], root: str | os.PathLike[str] = ".") -> None:
    """Stop with every bad path at once (ValueError), before the first job starts."""
    problems = path_problems(config, root)
    if problems:
        raise ValueError("the config names paths that are not there:\n  " + "\n  ".join(problems))


# --- sources ----------------------------------------------------------------------------------------


def enabled_sources(sources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in sources.items() if spec["enabled"]}


def heldout_splits(config: dict[str, Any]) -> list[str]:
    """The FashionIQ evaluation splits (val, test) that pairing does not embed: the leakage check
    embeds them once, with the same model (their only pass; pairing's vectors are reused)."""
    fiq = config["sources"]["fashioniq"]
    if not fiq["enabled"]:
        return []
    paired = config["pairing"]["fashioniq_splits"] if "fashioniq" in config["pairing"]["sources"] else []
    return [s for s in ("val", "test") if s in fiq["splits"] and s not in paired]


def source_root(name: str, root: str, synthetic_world: str | os.PathLike[str], downloads: str) -> str:
    """Where a source's files are: the generated world, the download folder (``downloads`` has a
    ``{source}`` field), or the user's own folder."""
    if root == "synthetic":
        return os.path.join(synthetic_world, name)
    if root == "download":
        return downloads.format(source=name)
    return root


def resolved_sources(
    sources: dict[str, dict[str, Any]],
    synthetic_world: str | os.PathLike[str],
    downloads: str = "data/downloaded/{source}",
) -> dict[str, dict[str, Any]]:
    """The enabled sources with their "synthetic" and "download" roots replaced by folders."""
    out = {}
    for name, spec in enabled_sources(sources).items():
        spec = dict(spec)
        if "root" in spec:
            spec["root"] = source_root(name, spec["root"], synthetic_world, downloads)
        out[name] = spec
    return out


# What a copy of the workflow needs to run (the library is imported from the checkout): the tests'
# and the GPU check's workflow copies.
WORKFLOW_FILES = (
    "Snakefile",
    "config.yaml",
    "config",
    "rules",
    "envs",
    "workflow_scripts",
    "prompts",
    "report",
    "slurm",
)


# --- the experiment grid ----------------------------------------------------------------------------


# The optional keys of an experiment variant, a user-written entry of experiments.variants that
# config.yaml cannot hold defaults for (the schema requires the others): their one default. Not
# filled into the config, so that a variant's params, and its trained models, stay as written.
VARIANT_DEFAULTS: dict[str, Any] = {
    "facap_fraction": 1.0,
    "fraction_budget": "epochs",
    "facap_filtered": True,  # stage 1 on the filtered FACap when facap.filters is set
    "label": "",
}


def variant_setting(spec: dict[str, Any], key: str) -> Any:
    """A variant's setting: as declared, or its default when the variant leaves it out."""
    return spec[key] if key in spec else VARIANT_DEFAULTS[key]


def fraction_variant(base: str, fraction: float) -> str:
    """Figure 5's subsets are variants of the base one, named by the percentage of FACap they see."""
    return base if fraction == 1 else f"{base}_facap{round(100 * fraction)}"


def facap_filters(facap: dict[str, Any]) -> dict[str, float]:
    """facap.filters (a list of {score, min}) as score -> the least value kept; a score listed twice
    is a mistake, not a second threshold."""
    filters: dict[str, float] = {}
    for entry in facap["filters"]:
        if entry["score"] in filters:
            raise ValueError(f"facap.filters lists {entry['score']!r} twice")
        filters[entry["score"]] = float(entry["min"])
    return filters


def unfiltered_variant(base: str) -> str:
    """Table 6's comparison: the variant trained on the unfiltered FACap."""
    return f"{base}_unfiltered"


def table6_variants(experiments: dict[str, Any]) -> list[str]:
    """The variants Table 6 compares, each beside its unfiltered twin (both stages are evaluated)."""
    return [name for v in experiments["table6"]["variants"] for name in (v, unfiltered_variant(v))]


def figure5_variants(experiments: dict[str, Any]) -> list[tuple[float, str]]:
    spec = experiments["figure5"]
    return [(f, fraction_variant(spec["variant"], f)) for f in sorted(spec["fractions"])]


def variants(experiments: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every variant: those declared in experiments.variants, plus Figure 5's fractions of its base and
    Table 6's unfiltered twins."""
    declared = experiments["variants"]
    base = experiments["figure5"]["variant"]
    out = dict(declared)
    for fraction, name in figure5_variants(experiments):
        if base not in declared:
            raise ValueError(f"experiments.figure5.variant: {base!r} is not in experiments.variants")
        budget = experiments["figure5"]["budget"]
        out.setdefault(name, {**declared[base], "facap_fraction": fraction, "fraction_budget": budget})
    for name in experiments["table6"]["variants"]:
        if name not in declared:
            raise ValueError(f"experiments.table6.variants: {name!r} is not in experiments.variants")
        out.setdefault(unfiltered_variant(name), {**declared[name], "facap_filtered": False})
    return out


def figure5_caption(experiments: dict[str, Any]) -> str:
    """What Figure 5's subsets trained for, said under the figure."""
    if experiments["figure5"]["budget"] == "epochs":
        return (
            "Each subset trains for as many epochs as the full set (stage-1 steps scaled by the fraction), "
            "so a point differs from the next only in the data it has seen."
        )
    return "Each subset trains for as many steps as the full set (smaller subsets are seen more often)."


def has_facap_stage(spec: dict[str, Any]) -> bool:
    return variant_setting(spec, "facap_fraction") > 0


def check_experiment_names(experiments: dict[str, Any], search_variant: str) -> None:
    """Every variant a table, figure or the search names must be declared; a variant trained without
    FACap has no stage-1 model, so it cannot be a row "without fine-tuning"."""
    known = variants(experiments)
    used = {
        "table3": [experiments["table3"]["without_finetuning"], experiments["table3"]["with_finetuning"]],
        "table4": [e[k] for e in experiments["table4"] for k in ("without_facap", "with_facap")],
        "table5": list(experiments["table5"]),
        "figure6": [experiments["figure6"]["variant"]],
        "search": [search_variant],
    }
    for where, listed in used.items():
        for name in listed:
            if name not in known:
                raise ValueError(f"experiments.{where}: variant {name!r} is not declared in experiments.variants")
    for name in [
        experiments["table3"]["without_finetuning"],
        *experiments["table5"],
        *experiments["table6"]["variants"],
    ]:
        if not has_facap_stage(known[name]):
            raise ValueError(f"variant {name!r} has facap_fraction 0: it has no model without fine-tuning to evaluate")
