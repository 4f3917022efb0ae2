"""What each annotation stage asks, of which backend, and how its shards are cut."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from fashionblip2.annotation.backends import MetadataCaptioner, Request, RulesDiffer, TransformersCaptioner
from fashionblip2.annotation.cache import ResultCache, file_digest
from fashionblip2.annotation.openai_batch import OpenAIBatch
from fashionblip2.annotation.openai_chat import APISettings, OpenAIChat
from fashionblip2.annotation.planted_errors import PlantedErrors
from fashionblip2.annotation.pricing import is_paid
from fashionblip2.annotation.prompts import PromptTemplate
from fashionblip2.annotation.runner import CAPTION_FAILED, Outcome, annotate
from fashionblip2.annotation.validation import check_caption, check_modification
from fashionblip2.common.issues import BadInputError
from fashionblip2.pairing.embedding_file import shard_bounds
from fashionblip2.sources.records import readable_category

STAGES = ("caption", "modification")
BACKENDS = {
    "caption": ("metadata", "openai", "openai-batch", "transformers"),
    "modification": ("rules", "openai", "openai-batch"),
}


def make_backend(stage: str, settings: dict[str, Any], *, batch_state: str | None = None):
    """The stage's backend from its config section (annotation.<stage>, every key present);
    ``batch_state``: where openai-batch records its batches (beside the shard), so that a killed job
    resumes them."""
    name = settings["backend"]
    if name not in BACKENDS[stage]:
        raise BadInputError(f"annotation.{stage}.backend {name!r}: expected one of {', '.join(BACKENDS[stage])}")
    if name == "metadata":
        return MetadataCaptioner()
    if name == "rules":
        planted = settings.get("planted_errors")  # absent from a caption section
        return RulesDiffer(PlantedErrors(**planted) if planted else None)
    if name == "transformers":
        return TransformersCaptioner(
            settings["model_path"],
            max_new_tokens=settings["max_new_tokens"],
            batch_size=settings["batch_size"],
            device=settings["device"],
        )
    api = APISettings(
        base_url=settings["base_url"] or None,
        model=settings["model"],
        api_key_env=settings["api_key_env"],
        concurrency=settings["concurrency"],
        max_retries=settings["max_retries"],
        timeout_s=settings["timeout_s"],
        max_tokens=settings["max_new_tokens"],
        temperature=settings["temperature"],
    )
    with_image = stage == "caption"
    if name == "openai-batch":
        return OpenAIBatch(
            api,
            with_image=with_image,
            poll_s=settings["poll_s"],
            max_wait_s=settings["max_wait_s"],
            state_path=batch_state,
            max_requests=settings["batch_max_requests"],
            max_bytes=int(settings["batch_max_mb"] * 1e6),
        )
    return OpenAIChat(api, with_image=with_image)


def checker(stage: str, settings: dict[str, Any]):
    check = check_caption if stage == "caption" else check_modification
    return lambda text: check(text, settings["max_words"])


def images_to_caption(pairs: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Every image of a pair, once, sorted by id (the order shards are cut in)."""
    ids = pd.unique(pd.concat([pairs["reference_id"], pairs["target_id"]]))
    return manifest.set_index("image_id").loc[sorted(ids)].reset_index()


def caption_requests(images: pd.DataFrame, template: PromptTemplate, settings: dict[str, Any]) -> list[Request]:
    requests = []
    for row in images.itertuples():
        attributes = json.loads(row.attributes) if row.attributes else {}
        messages = template.render(
            category=readable_category(row.category),
            product_text=row.product_text or "none",
            attributes=", ".join(f"{k}: {v}" for k, v in attributes.items()) or "none",
        )
        # The image enters the key by its content, so a moved or renamed file is still a cache hit.
        keyed = {
            "messages": messages,
            "image_sha256": file_digest(row.path),
            "max_new_tokens": settings["max_new_tokens"],
        }
        if is_paid(settings["backend"]):
            keyed["temperature"] = settings["temperature"]
        requests.append(
            Request(
                keyed,
                {
                    "path": row.path,
                    "category": row.category,
                    "product_text": row.product_text,
                    "attributes": attributes,
                },
            )
        )
    return requests


def modification_requests(
    pairs: pd.DataFrame, captions: dict[str, str], template: PromptTemplate, settings: dict[str, Any]
) -> list[Request]:
    requests = []
    for row in pairs.itertuples():
        ref, tgt = captions[row.reference_id], captions[row.target_id]
        keyed = {
            "messages": template.render(
                category=readable_category(row.category), reference_caption=ref, target_caption=tgt
            ),
            "max_new_tokens": settings["max_new_tokens"],
        }
        if is_paid(settings["backend"]):
            keyed["temperature"] = settings["temperature"]
        requests.append(Request(keyed, {"reference_caption": ref, "target_caption": tgt, "category": row.category}))
    return requests


@dataclass
class StagePlan:
    """What one run of a stage asks: the requests with the ids of their items, and the items not
    asked (pairs whose caption failed), which become failed rows."""

    stage: str
    ids: dict[str, list[Any]]
    requests: list[Request]
    skipped: dict[str, list[Any]] = field(default_factory=dict)


OUTCOME_COLUMNS = ["reference_id", "target_id", "image_id", "text", "status", "reason", "cached", "key", "reasked"]


def plan_captions(
    pairs: pd.DataFrame,
    manifest: pd.DataFrame,
    template: PromptTemplate,
    settings: dict[str, Any],
    shard: int = 0,
    shards: int = 1,
) -> StagePlan:
    """Caption the images of ``pairs`` in shard ``shard`` of ``shards`` (cut over the sorted image ids)."""
    items = images_to_caption(pairs, manifest)
    start, end = shard_bounds(len(items), shards, shard)
    items = items.iloc[start:end]
    return StagePlan("caption", {"image_id": items["image_id"].tolist()}, caption_requests(items, template, settings))


def plan_modifications(
    pairs: pd.DataFrame,
    captions: pd.DataFrame,
    template: PromptTemplate,
    settings: dict[str, Any],
    shard: int = 0,
    shards: int = 1,
) -> StagePlan:
    """The modification texts of the pairs in shard ``shard`` of ``shards`` (cut over the pairs sorted
    by ids). A pair with a failed caption is not asked: it becomes a failed row, counted."""
    ok = dict(zip(*captions.loc[captions["status"] == "ok", ["image_id", "text"]].T.to_numpy(), strict=True))
    items = pairs.sort_values(["reference_id", "target_id"]).reset_index(drop=True)
    start, end = shard_bounds(len(items), shards, shard)
    items = items.iloc[start:end]
    has = items["reference_id"].isin(ok) & items["target_id"].isin(ok)
    ids = ("reference_id", "target_id")
    return StagePlan(
        "modification",
        {c: items.loc[has, c].tolist() for c in ids},
        modification_requests(items[has], ok, template, settings),
        {c: items.loc[~has, c].tolist() for c in ids},
    )


def _frame(ids: dict[str, list[Any]], outcomes: list[Outcome]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            **ids,
            "text": [o.text for o in outcomes],
            "status": [o.status for o in outcomes],
            "reason": [o.reason for o in outcomes],
            "cached": [o.cached for o in outcomes],
            "key": [o.key for o in outcomes],
            "reasked": [o.reasked for o in outcomes],
        }
    )


def run_plan(plan: StagePlan, settings: dict[str, Any], cache: ResultCache, backend: Any, **run: Any) -> pd.DataFrame:
    """Ask the plan's questions (through the cache) and return a row per item, asked or skipped.
    ``run``: :func:`~fashionblip2.annotation.runner.annotate`'s keywords (desc, progress, second_chance)."""
    outcomes = annotate(plan.requests, backend, cache, checker(plan.stage, settings), **run)
    frame = _frame(plan.ids, outcomes)
    if plan.skipped and len(next(iter(plan.skipped.values()))):
        n = len(next(iter(plan.skipped.values())))
        skipped = _frame(plan.skipped, [Outcome("", None, "failed", CAPTION_FAILED, False)] * n)
        frame = pd.concat([frame, skipped], ignore_index=True)
    return frame.reindex(columns=[c for c in OUTCOME_COLUMNS if c in frame.columns])
