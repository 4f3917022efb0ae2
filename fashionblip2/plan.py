"""The bill before it comes (``snakemake --cores 1 plan``): per rule, the jobs the config makes, the
GPU-hours at the stated speeds (``throughput:``), the API requests, tokens and dollars of the paid
annotation backends, and the disk the outputs take.

Before anything has run, the counts come from config: the images each source gives
(``plan.images``), the pairs per image, the shard counts, the variants, the steps. What exists is
used instead, as soon as it exists: the manifest's and the pairs' counts, the very requests the
annotation stages will send (the prompts rendered over the manifest, and over the captions once
they are made), and the pilot's measured answers. Every dollar goes through the one price rule
(:mod:`fashionblip2.annotation.pricing`): what annotate.py estimates before it pays, and what the
pilot reports, are computed the same way.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fashionblip2 import config as cfg
from fashionblip2.annotation.pricing import Prices, cost_usd, is_paid, request_tokens, text_tokens

# Rules whose work is counted in GPU time (the rest run in minutes on a CPU).
STAGES = {
    "caption": "caption",
    "modification": "modification",
    "pilot_caption": "caption",
    "pilot_modification": "modification",
}
MB = 1e6


@dataclass
class Counts:
    """What the workflow's work is proportional to, and where each number came from."""

    images: int  # every manifest image (evaluation and the search index read them all)
    paired: int  # images embedded and paired (pairing.sources; FashionIQ in pairing.fashioniq_splits)
    pairs: int  # one modification text each
    caption_images: int  # images of the pairs, one caption each
    validation_items: int  # FashionIQ val images and queries: what each training validation encodes
    basis: dict[str, str] = field(default_factory=dict)


def stated_counts(config: dict[str, Any]) -> Counts:
    """The counts before the manifest exists: ``plan.images`` of each enabled source."""
    spec = config["plan"]
    enabled = cfg.enabled_sources(config["sources"])
    missing = sorted(set(enabled) - set(spec["images"]))
    if missing:
        raise ValueError(f"plan.images has no entry for the enabled source(s) {', '.join(missing)}")
    images = sum(spec["images"][s]["all"] for s in enabled)
    paired = sum(spec["images"][s]["paired"] for s in enabled if s in config["pairing"]["sources"])
    pairs = round(paired * spec["pairs_per_image"])
    stated = "stated (plan.images)"
    validation = spec["fashioniq_val"]
    basis = {k: stated for k in ("images", "paired", "pairs", "caption_images")}
    basis["validation_items"] = "stated (plan.fashioniq_val)"
    # Every paired image is the reference of its own pair, so each is captioned once.
    return Counts(images, paired, pairs, paired, validation["images"] + validation["queries"], basis)


def measured_counts(config: dict[str, Any], manifest: Any | None, pairs: Any | None) -> Counts:
    """The counts from what exists (DataFrames, or None), the rest as stated."""
    from fashionblip2.sources.manifest import fashioniq_val_images, select_for_pairing

    counts = stated_counts(config)
    if manifest is not None:
        pairing = config["pairing"]
        counts.images = len(manifest)
        counts.paired = len(select_for_pairing(manifest, pairing["sources"], pairing["fashioniq_splits"]))
        counts.pairs = round(counts.paired * config["plan"]["pairs_per_image"])
        counts.caption_images = counts.paired
        counts.basis.update({k: "counted (manifest)" for k in ("images", "paired", "pairs", "caption_images")})
        val_images = fashioniq_val_images(manifest, config["sources"]["fashioniq"]["categories"])
        counts.validation_items = val_images + config["plan"]["fashioniq_val"]["queries"]
        counts.basis["validation_items"] = "images counted (manifest), queries stated (plan.fashioniq_val)"
    if pairs is not None:
        counts.pairs = len(pairs)
        ids = set(pairs["reference_id"]) | set(pairs["target_id"])
        counts.caption_images = len(ids)
        counts.basis.update({"pairs": "counted (pairs)", "caption_images": "counted (pairs)"})
    return counts


# --- jobs ------------------------------------------------------------------------------------------


def evaluated_models(config: dict[str, Any]) -> set[tuple[str, str, int]]:
    """(stage, variant, seed) of every model the tables and figures evaluate: the tables' and Figure
    5's at every seed of experiments.seeds, Figure 6's at the first."""
    ex = config["experiments"]
    seeds = cfg.experiment_seeds(ex)
    models = {("stage1", ex["table3"]["without_finetuning"]), ("stage2", ex["table3"]["with_finetuning"])}
    models |= {("stage2", e[k]) for e in ex["table4"] for k in ("without_facap", "with_facap")}
    models |= {(s, v) for s in ("stage1", "stage2") for v in ex["table5"]}
    models |= {("stage1", name) for _, name in cfg.figure5_variants(ex)}
    if cfg.facap_filters(config["facap"]):  # Table 6: each listed variant and its unfiltered twin
        models |= {(s, n) for s in ("stage1", "stage2") for n in cfg.table6_variants(ex)}
    every_seed = {(s, v, seed) for s, v in models for seed in seeds}
    return every_seed | {(ex["figure6"]["stage"], ex["figure6"]["variant"], seeds[0])}


def trained_models(config: dict[str, Any]) -> dict[str, set[tuple[str, int]]]:
    """The (variant, seed) runs each training stage trains: what is evaluated or searched (the first
    seed's), and the stage-1 model each stage-2 run of a variant trained on FACap starts from."""
    known = cfg.variants(config["experiments"])
    first = cfg.experiment_seeds(config["experiments"])[0]
    models = evaluated_models(config) | {(config["search"]["stage"], config["search"]["variant"], first)}
    stage2 = {(v, seed) for s, v, seed in models if s == "stage2"}
    stage1 = {(v, seed) for s, v, seed in models if s == "stage1"}
    stage1 |= {(v, seed) for v, seed in stage2 if cfg.has_facap_stage(known[v])}
    return {"stage1": stage1, "stage2": stage2}


def synthetic(config: dict[str, Any]) -> bool:
    return any(s.get("root") == "synthetic" for s in cfg.enabled_sources(config["sources"]).values())


def rule_jobs(config: dict[str, Any]) -> dict[str, int]:
    """The jobs of each rule that `snakemake all` runs from nothing, then the pilot's (`snakemake pilot`)."""
    enabled = cfg.enabled_sources(config["sources"])
    shards, annotation_shards = config["embedding"]["shards"], config["annotation"]["shards"]
    automatic = not config["quality"]["annotations"]
    trained = trained_models(config)
    filtered = bool(cfg.facap_filters(config["facap"]))
    jobs = {
        "synthetic_world": int(synthetic(config)),
        "download": sum(1 for s in enabled.values() if s.get("root") == "download"),
        "manifest": 1,
        "embed": shards,
        "gather_embeddings": 1,
        "pair": 1,
        "caption": annotation_shards,
        "gather_captions": 1,
        "modification": annotation_shards,
        "gather_modifications": 1,
        "embed_heldout": int(bool(cfg.heldout_splits(config))),
        "leakage": 1,
        "leakage_report": 1,
        "triplet_scores": 1,
        "facap": 1,
        "facap_filtered": int(filtered),
        "score_validity": int(synthetic(config) or not automatic),
        "score_figures": 1,
        "enhfashioniq": 1,
        "table1": 1,
        "quality_sample": 1,
        "quality_kit": 1,
        # The automatic annotators score the synthetic world; real data waits for people's scores.
        "auto_annotate": int(automatic and synthetic(config)),
        "table2": int(not automatic or synthetic(config)),
        "tokenizer": int(config["model"]["tokenizer"] == "train"),
        "pretrain": int(config["model"]["backbone"] == "train"),
        "train_stage1": len(trained["stage1"]),
        "train_stage2": len(trained["stage2"]),
        "evaluate": len(evaluated_models(config)),
        "search_index": 1,
        "table": 3 + int(filtered),
        "figure5": 1,
        "figure6": 1,
        "all": 1,
        "pilot_pairs": 1,
        "pilot_caption": 1,
        "pilot_modification": 1,
        "pilot": 1,
    }
    return {rule: n for rule, n in jobs.items() if n}


# --- GPU time --------------------------------------------------------------------------------------


def stage1_steps(config: dict[str, Any], variant: str) -> int:
    """A stage-1 run's steps: Figure 5's subsets train for the full set's epochs unless budget: steps."""
    spec = cfg.variants(config["experiments"])[variant]
    steps = config["training"]["stage1"]["steps"]
    fraction = cfg.variant_setting(spec, "facap_fraction")
    if cfg.variant_setting(spec, "fraction_budget") == "steps" or fraction >= 1:
        return steps
    return max(1, math.ceil(steps * fraction))


def job_work_seconds(config: dict[str, Any], counts: Counts, rule: str, jobs: int, pilot_images: int) -> list[float]:
    """Each job's work in seconds at the stated speeds (throughput:), for the rules that state one."""
    speed = config["throughput"]
    if rule == "embed":
        return [counts.paired / jobs / speed["embed_images_per_s"]] * jobs
    if rule == "caption":
        return [counts.caption_images / jobs / speed["caption_images_per_s"]] * jobs
    if rule == "pilot_caption":
        return [pilot_images / speed["caption_images_per_s"]]
    if rule in ("evaluate", "search_index", "triplet_scores"):
        return [counts.images / speed["inference_images_per_s"]] * jobs
    if rule == "pretrain":
        return [cfg.training_seconds(config, "pretrain", config["training"]["pretrain"]["steps"], 0)]
    if rule == "train_stage1":
        return [
            cfg.training_seconds(config, "stage1", stage1_steps(config, v), counts.validation_items)
            for v, _ in sorted(trained_models(config)["stage1"])
        ]
    if rule == "train_stage2":
        stage2 = cfg.training_seconds(config, "stage2", config["training"]["stage2"]["steps"], counts.validation_items)
        return [stage2] * jobs
    return []


def gpus_per_job(config: dict[str, Any], rule: str) -> int:
    return config["resources"][rule].get("gpu", 0) if config["cluster"]["use_gpus"] else 0


# --- API requests and dollars ----------------------------------------------------------------------


@dataclass
class Bill:
    """What one annotation stage asks a backend, and what it costs by the one price rule."""

    backend: str
    model: str
    requests: int  # distinct questions (a question asked by two pairs is asked once)
    input_tokens: int
    output_tokens: int  # at most max_new_tokens each, or the pilot's measured answers
    usd: float
    basis: str  # how the requests and tokens were counted
    cached: int | None = None  # of the requests, already answered in the result cache (None: not known)
    usd_left: float | None = None  # what is left to pay (the cached answers are not paid again)


def bill_requests(
    requests: Iterable[Any], settings: dict[str, Any], prices: Prices, *, with_image: bool, cache: Any | None,
    output_per_request: float | None, basis: str,
) -> Bill:  # fmt: skip
    """The bill of known requests (:class:`~fashionblip2.annotation.backends.Request`): each distinct
    question once, at most ``max_new_tokens`` out (or the pilot's measured average)."""
    from fashionblip2.annotation.cache import request_key

    backend, model = settings["backend"], settings["model"]
    distinct: dict[str, int] = {}
    for r in requests:
        key = request_key(backend, model, r.keyed)
        if key not in distinct:
            distinct[key] = request_tokens(r.keyed["messages"], prices, with_image=with_image)
    out_each = settings["max_new_tokens"] if output_per_request is None else output_per_request
    input_tokens, output_tokens = sum(distinct.values()), round(out_each * len(distinct))
    bill = Bill(
        backend,
        model,
        len(distinct),
        input_tokens,
        output_tokens,
        cost_usd(input_tokens, output_tokens, prices, backend),
        basis,
    )
    if cache is not None:
        left = [tokens for key, tokens in distinct.items() if key not in cache]
        bill.cached = len(distinct) - len(left)
        bill.usd_left = cost_usd(sum(left), round(out_each * len(left)), prices, backend)
    return bill


def bill_estimate(
    n: int, per_request_input: float, settings: dict[str, Any], prices: Prices, *,
    output_per_request: float | None, basis: str,
) -> Bill:  # fmt: skip
    out_each = settings["max_new_tokens"] if output_per_request is None else output_per_request
    input_tokens, output_tokens = round(per_request_input * n), round(out_each * n)
    backend = settings["backend"]
    return Bill(
        backend,
        settings["model"],
        n,
        input_tokens,
        output_tokens,
        cost_usd(input_tokens, output_tokens, prices, backend),
        basis,
    )


def template_tokens(template: Any, prices: Prices, *, with_image: bool, **fill: str) -> int:
    """The tokens of one request of a prompt template filled with ``fill`` (the estimate before the
    data exist)."""
    return request_tokens(template.render(**fill), prices, with_image=with_image)


def caption_estimate_tokens(config: dict[str, Any], template: Any, prices: Prices) -> int:
    """A caption request before the manifest exists: the prompt with plan.product_text_chars of
    product text and attributes."""
    text = "x" * config["plan"]["product_text_chars"]
    return template_tokens(template, prices, with_image=True, category="dress", product_text=text, attributes="")


def modification_estimate_tokens(config: dict[str, Any], template: Any, prices: Prices) -> int:
    """A modification request before the captions exist: the prompt with two captions as long as
    the caption stage allows (max_new_tokens each): at most what it will be."""
    from fashionblip2.annotation.pricing import CHARS_PER_TOKEN

    caption = "x" * (config["annotation"]["caption"]["max_new_tokens"] * CHARS_PER_TOKEN)
    return template_tokens(
        template, prices, with_image=False, category="dress", reference_caption=caption, target_caption=caption
    )


@dataclass
class PilotMeasure:
    """The pilot's measured tokens per request of one stage (its requests and its answers)."""

    requests: int
    input_per_request: float
    output_per_request: float


def pilot_measure(requests: list[Any], answers: list[str | None], prices: Prices, *, with_image: bool) -> PilotMeasure:
    n = max(1, len(requests))
    input_tokens = sum(request_tokens(r.keyed["messages"], prices, with_image=with_image) for r in requests)
    output_tokens = sum(text_tokens(a or "") for a in answers)
    return PilotMeasure(len(requests), input_tokens / n, output_tokens / n)


# --- disk ------------------------------------------------------------------------------------------


def embedding_dim(model: str) -> int:
    """The open_clip architecture's embedding width, from its JSON config (without importing torch)."""
    ours = Path(__file__).resolve().parent / "pairing" / "model_configs" / f"{model}.json"
    if ours.exists():
        return json.loads(ours.read_text())["embed_dim"]
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model_configs" / f"{model}.json"
        if path.exists():
            return json.loads(path.read_text())["embed_dim"]
    raise ValueError(f"embedding.model {model!r}: no open_clip model config of that name")


def disk_mb(config: dict[str, Any], counts: Counts, jobs: dict[str, int]) -> dict[str, float]:
    """Disk taken by each rule's outputs (MB), for the rules whose outputs grow with the data: the
    generated world, the embeddings (float32), the texts (in the shards, the gathered file and the
    result cache), the trained models (plan.disk.model_mb each)."""
    spec = config["plan"]["disk"]
    from fashionblip2.annotation.pricing import CHARS_PER_TOKEN

    def texts_mb(n: int, stage: str) -> float:
        chars = config["annotation"][stage]["max_new_tokens"] * CHARS_PER_TOKEN
        # the shard, the gathered table, and one JSON file in the result cache (text + its envelope)
        return n * (2 * chars + chars + spec["cache_entry_bytes"]) / MB

    out = {
        "synthetic_world": counts.images * spec["image_kb"] * 1e3 / MB if synthetic(config) else 0.0,
        "download": counts.images * spec["image_kb"] * 1e3 / MB if jobs.get("download") else 0.0,
        # the shards and the gathered file
        "embed": 2 * counts.paired * embedding_dim(config["embedding"]["model"]) * 4 / MB,
        "caption": texts_mb(counts.caption_images, "caption"),
        "modification": texts_mb(counts.pairs, "modification"),
        "pretrain": spec["model_mb"] * jobs.get("pretrain", 0),
        "train_stage1": spec["model_mb"] * jobs.get("train_stage1", 0),
        "train_stage2": spec["model_mb"] * jobs.get("train_stage2", 0),
    }
    return {rule: mb for rule, mb in out.items() if mb}


# --- the plan --------------------------------------------------------------------------------------


@dataclass
class Row:
    rule: str
    jobs: int
    gpus_per_job: int = 0
    gpu_hours: float = 0.0  # the work at the stated speed
    gpu_hours_asked: float = 0.0  # what the jobs ask SLURM for (margin and start-up included)
    backend: str = ""
    api_requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float = 0.0
    usd_left: float | None = None
    basis: str = ""
    disk_mb: float = 0.0


def plan_rows(config: dict[str, Any], counts: Counts, bills: dict[str, Bill], pilot_images: int) -> list[Row]:
    jobs = rule_jobs(config)
    disk = disk_mb(config, counts, jobs)
    rows = []
    for rule, n in jobs.items():
        row = Row(rule, n, disk_mb=round(disk.get(rule, 0.0), 1))
        gpus = gpus_per_job(config, rule) if rule in config["resources"] else 0
        work = job_work_seconds(config, counts, rule, n, pilot_images)
        if gpus and work:
            spec = config["throughput"]
            asked_min = [
                config["resources"][rule].get("runtime")
                or cfg.runtime_minutes(s, 1.0, margin=spec["margin"], startup_min=spec["startup_min"])
                for s in work
            ]
            row.gpus_per_job = gpus
            row.gpu_hours = round(gpus * sum(work) / 3600, 2)
            row.gpu_hours_asked = round(gpus * sum(asked_min) / 60, 2)
        if rule in bills:
            bill = bills[rule]
            row.backend = bill.backend
            row.basis = bill.basis
            if is_paid(bill.backend):
                row.api_requests, row.input_tokens, row.output_tokens = (
                    bill.requests,
                    bill.input_tokens,
                    bill.output_tokens,
                )
                row.usd = round(bill.usd, 4)
                row.usd_left = None if bill.usd_left is None else round(bill.usd_left, 4)
        rows.append(row)
    return rows


def totals(rows: list[Row]) -> dict[str, Any]:
    """The full run (`all`) and the pilot apart: the pilot's answers are cached, so the full run's
    bill already holds them (paying for the pilot first moves money, it adds none)."""
    full = [r for r in rows if not r.rule.startswith("pilot")]
    pilot = [r for r in rows if r.rule.startswith("pilot")]

    def total(part: list[Row]) -> dict[str, Any]:
        return {
            "jobs": sum(r.jobs for r in part),
            "gpu_hours": round(sum(r.gpu_hours for r in part), 2),
            "gpu_hours_asked": round(sum(r.gpu_hours_asked for r in part), 2),
            "api_requests": sum(r.api_requests for r in part),
            "usd": round(sum(r.usd for r in part), 4),
            "disk_gb": round(sum(r.disk_mb for r in part) / 1e3, 2),
        }

    return {"all": total(full), "pilot": total(pilot)}


COLUMNS = {
    "rule": "rule",
    "jobs": "jobs",
    "gpus_per_job": "GPUs/job",
    "gpu_hours": "GPU-h (work)",
    "gpu_hours_asked": "GPU-h (asked)",
    "backend": "backend",
    "api_requests": "API requests",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens (at most)",
    "usd": "USD",
    "usd_left": "USD left (not cached)",
    "disk_mb": "disk (MB)",
}


DECIMALS = {"gpu_hours": 2, "gpu_hours_asked": 2, "usd": 4, "usd_left": 4, "disk_mb": 1}


def _cell(key: str, value: Any) -> str:
    if value is None or value == "" or value == 0:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{DECIMALS[key]}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_markdown(rows: list[Row], summary: dict[str, Any], counts: Counts, notes: list[str]) -> str:
    lines = ["# The plan: what this config will cost", ""]
    lines += ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, getattr(row, k)) for k in COLUMNS) + " |")
    lines.append("")
    for name, what in (
        ("all", "`snakemake all`"),
        ("pilot", "`snakemake pilot` (its answers are part of the full run's)"),
    ):
        t = summary[name]
        lines.append(
            f"- **{what}**: {t['jobs']:,} jobs, {t['gpu_hours']:,.2f} GPU-hours of work "
            f"({t['gpu_hours_asked']:,.2f} asked), {t['api_requests']:,} API requests, "
            f"at most ${t['usd']:,.2f}, {t['disk_gb']:,.2f} GB on disk"
        )
    lines += ["", "Counts:", ""]
    for key in ("images", "paired", "pairs", "caption_images"):
        lines.append(f"- {key.replace('_', ' ')}: {getattr(counts, key):,} ({counts.basis[key]})")
    for row in rows:
        if row.api_requests:
            lines.append(f"- {row.rule}: {row.basis}")
    for note in notes:
        lines += ["", note]
    lines.append("")
    return "\n".join(lines)


def plan_document(rows: list[Row], counts: Counts, prices: Prices) -> dict[str, Any]:
    return {
        "rules": [asdict(r) for r in rows],
        "totals": totals(rows),
        "counts": asdict(counts),
        "prices": asdict(prices),
    }


# --- the annotation stages' bills ------------------------------------------------------------------


def _answers(frame: Any, n: int) -> list[str | None]:
    """The answers of the first ``n`` rows of an annotate.py output (the asked rows come first)."""
    return frame["text"].iloc[:n].tolist()


def stage_bills(
    config: dict[str, Any],
    counts: Counts,
    templates: dict[str, Any],
    *,
    manifest: Any | None,
    pairs: Any | None,
    captions: Any | None,
    pilot_pairs: Any | None,
    pilot_captions: Any | None,
    pilot_modifications: Any | None,
    cache: Any | None,
) -> tuple[dict[str, Bill], Prices, int, list[str]]:
    """The bill of each annotation rule (caption, modification and the pilot's), the prices, the images the
    pilot captions, and notes saying how each was counted. The most exact count available wins: the
    requests themselves (built from the data, as annotate.py builds them), else the pilot's measured
    tokens per request, else the prompt filled as config allows."""
    from fashionblip2.annotation.stages import plan_captions, plan_modifications

    prices = Prices.from_config(config["annotation"]["prices"])
    answer = {s: cfg.annotation_answer_settings(config, s) for s in ("caption", "modification")}
    measured: dict[str, PilotMeasure] = {}
    pilot_plans: dict[str, Any] = {}
    if pilot_pairs is not None and manifest is not None:
        pilot_plans["caption"] = plan_captions(pilot_pairs, manifest, templates["caption"], answer["caption"])
        if pilot_captions is not None:
            requests = pilot_plans["caption"].requests
            measured["caption"] = pilot_measure(
                requests, _answers(pilot_captions, len(requests)), prices, with_image=True
            )
            pilot_plans["modification"] = plan_modifications(
                pilot_pairs, pilot_captions, templates["modification"], answer["modification"]
            )
            if pilot_modifications is not None:
                requests = pilot_plans["modification"].requests
                measured["modification"] = pilot_measure(
                    requests, _answers(pilot_modifications, len(requests)), prices, with_image=False
                )
    out_each = {s: (measured[s].output_per_request if s in measured else None) for s in answer}
    out_note = {
        s: "; answers as long as the pilot's (measured)" if s in measured else "; answers of max_new_tokens (at most)"
        for s in answer
    }
    bills: dict[str, Bill] = {}

    def full_bill(stage: str, requests: list | None, built_from: str, n: int, estimate: float, about: str) -> Bill:
        """A stage's bill: from its requests when the data to build them exist, else estimated from
        the pilot's measured requests, or from the prompt."""
        if requests is not None:
            return bill_requests(
                requests,
                answer[stage],
                prices,
                with_image=stage == "caption",
                cache=cache,
                output_per_request=out_each[stage],
                basis=f"the requests themselves ({built_from})" + out_note[stage],
            )
        if stage in measured:
            estimate, about = measured[stage].input_per_request, "the pilot's requests (measured)"
        return bill_estimate(
            n, estimate, answer[stage], prices, output_per_request=out_each[stage], basis=about + out_note[stage]
        )

    # The full run.
    caption_requests = (
        plan_captions(pairs, manifest, templates["caption"], answer["caption"]).requests
        if manifest is not None and pairs is not None
        else None
    )
    bills["caption"] = full_bill(
        "caption",
        caption_requests,
        "manifest, pairs",
        counts.caption_images,
        caption_estimate_tokens(config, templates["caption"], prices),
        "the prompt filled as stated",
    )
    modification_requests = (
        plan_modifications(pairs, captions, templates["modification"], answer["modification"]).requests
        if pairs is not None and captions is not None
        else None
    )
    bills["modification"] = full_bill(
        "modification",
        modification_requests,
        "pairs, captions",
        counts.pairs,
        modification_estimate_tokens(config, templates["modification"], prices),
        "the prompt with two captions of the caption stage's max_new_tokens (at most)",
    )

    # The pilot: a sample of the same questions.
    pilot_n = min(config["pilot"]["pairs"], counts.pairs)
    pilot_images = min(2 * pilot_n, counts.caption_images)
    for rule, stage, n in (("pilot_caption", "caption", pilot_images), ("pilot_modification", "modification", pilot_n)):
        if stage in pilot_plans:
            requests = pilot_plans[stage].requests
            if stage == "caption":
                pilot_images = len(requests)
            bills[rule] = bill_requests(
                requests,
                answer[stage],
                prices,
                with_image=stage == "caption",
                cache=cache,
                output_per_request=out_each[stage],
                basis="the pilot's requests themselves" + out_note[stage],
            )
        else:
            full = bills["caption" if stage == "caption" else "modification"]
            per_request = full.input_tokens / max(1, full.requests)
            bills[rule] = bill_estimate(
                n,
                per_request,
                answer[stage],
                prices,
                output_per_request=out_each[stage],
                basis=f"{n:,} of the full run's requests",
            )
    notes = [
        "Tokens: about 4 characters of a request's chat messages (JSON) each, plus annotation.prices.image_tokens "
        "per image; dollars at annotation.prices (list prices per million tokens), times 0.5 for openai-batch "
        "(the Batch API's half price). The same rule makes annotate.py's estimate before it pays and the pilot's "
        "cost. The provider's bill is the reference; a rejected answer asked once more is not counted.",
        "GPU-hours: the work at the speeds of throughput: (work), and what the jobs ask SLURM for, with its "
        "margin and start-up (asked). Disk: the outputs that grow with the data (plan.disk).",
        "USD left: what the result cache does not hold yet, once the requests themselves are known (the "
        "manifest and pairs for captions, the captions for modification texts); – is nothing left, or not known.",
    ]
    return bills, prices, pilot_images, notes
