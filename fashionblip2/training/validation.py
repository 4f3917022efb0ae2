"""FashionIQ-val validation during training, and the choice of the best point (SPRC's numbers).

SPRC evaluates on FashionIQ val after every epoch and reports its best epoch, chosen on the set it
reports on; this project reports the last checkpoint (the evaluate rule) and, beside it, that best
point. :class:`FashionIQValidator` is the ``validate`` callable of
:func:`fashionblip2.training.trainer.train`: it runs the evaluate rule's protocol
(``workflow_scripts/evaluate_model.py``: each category's val gallery encoded by the model as it is
now, the queries ranked by :func:`~fashionblip2.evaluation.retrieval.evaluate_queries`), so the
curve's last point is what the evaluate rule computes for the saved model. :func:`select_best`
picks a point; :func:`write_validation_outputs` writes the curve and the best point, the latter in
the evaluate rule's format, from the points the trainer kept in the checkpoint folder.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from fashionblip2.common.io import write_json_atomic, write_parquet_atomic
from fashionblip2.common.issues import InputReport
from fashionblip2.datasets.triplets import Triplets, read_fashioniq_split, read_gallery
from fashionblip2.evaluation.retrieval import encode_gallery, evaluate_queries
from fashionblip2.model.processing import ImageStore
from fashionblip2.training.trainer import VALIDATION_RANKINGS, read_validation

log = logging.getLogger(__name__)
SELECTED_BY = "Avg on FashionIQ val"
SELECTED_ON = "fashioniq val"


class FashionIQValidator:
    """``validate(model, step)`` for the trainer: the evaluate rule's FashionIQ protocol on the val
    triplets ``data`` against the per-category ``galleries``. The gallery is encoded again at every
    point (in stage 1 the image side trains). ``batch_size``: the gallery's encoding batch, the
    evaluate rule's (``evaluation.batch_size``), so that the last point repeats its numbers to the
    bit; the queries are encoded in ``evaluate_queries``'s own batches, as there. The model is
    encoded on the device it is on (the trainer's, this rank's under torchrun).

    ``skipped``: what reading the val split skipped (``{"queries": ..., "gallery": ...}``, as the
    evaluate rule records it); :meth:`from_fashioniq` fills it."""

    def __init__(
        self,
        store: ImageStore,
        tokenizer,
        data: Triplets,
        galleries: dict[str, list[str]],
        batch_size: int,
        *,
        text_cleanup: str,
        skipped: dict[str, Any] | None = None,
        progress: bool = False,
    ):
        self.store = store
        self.tokenizer = tokenizer
        self.data = data
        self.galleries = galleries
        self.batch_size = batch_size
        self.text_cleanup = text_cleanup
        self.skipped = skipped or {"queries": {}, "gallery": {}}
        self.progress = progress

    @classmethod
    def from_fashioniq(
        cls,
        root: str | os.PathLike[str],
        categories: Sequence[str],
        manifest: pd.DataFrame,
        store: ImageStore,
        tokenizer,
        batch_size: int,
        *,
        text_cleanup: str,
        progress: bool = False,
    ) -> FashionIQValidator:
        """The val split of the FashionIQ folder ``root`` and its galleries, read as the evaluate rule
        reads them (images missing from the manifest skipped and counted)."""
        available = set(manifest["image_id"])
        gallery_report, report = InputReport(), InputReport()
        galleries = {c: read_gallery(root, c, "val", available, gallery_report) for c in categories}
        data = read_fashioniq_split(root, "val", list(categories), available, report)
        if not len(data):
            raise ValueError(f"{root}: no FashionIQ val triplet of {list(categories)} to validate on")
        skipped = {"queries": report.summary(), "gallery": gallery_report.summary()}
        return cls(
            store, tokenizer, data, galleries, batch_size, text_cleanup=text_cleanup, skipped=skipped, progress=progress
        )

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, Any]:
        """The point at ``step``: ``categories``, ``summary``, ``chance`` (as the evaluate rule's JSON)
        and ``rankings`` (its per-query DataFrame). Leaves the model in eval mode (the trainer
        restores its modes)."""
        started = time.perf_counter()
        device = next(model.parameters()).device
        model.eval()
        vectors = {
            c: encode_gallery(model, self.store, keys, device, self.batch_size, progress=self.progress)
            for c, keys in self.galleries.items()
        }
        results, rankings = evaluate_queries(
            model,
            self.store,
            self.tokenizer,
            self.data,
            self.galleries,
            vectors,
            device,
            progress=self.progress,
            text_cleanup=self.text_cleanup,
        )
        log.info(
            "FashionIQ val at step %d: Avg %.2f (%d queries, %.1f s)",
            step,
            results["summary"].get("Avg", float("nan")),
            len(rankings),
            time.perf_counter() - started,
        )
        return {**results, "rankings": rankings}


def _avg(point: dict[str, Any]) -> float:
    value = point["summary"].get("Avg", float("nan"))
    return float("nan") if value is None else float(value)


def select_best(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The point of highest ``summary["Avg"]``; the earliest step among equal ones (SPRC keeps a
    checkpoint only on a strictly better average recall). A point without a finite Avg is never
    chosen."""
    best = None
    for point in sorted(points, key=lambda p: p["step"]):
        avg = _avg(point)
        if math.isfinite(avg) and (best is None or avg > _avg(best)):
            best = point
    if best is None:
        raise ValueError(f"no validation point with a finite Avg among {len(points)}: nothing to select")
    return best


def validation_curve(points: Sequence[dict[str, Any]], *, variant: str, stage: str, seed: int) -> dict[str, Any]:
    """The curve's JSON: every point (step, epoch, per-category recalls, summary), the best and the
    last step, how the best was chosen, and which run it is."""
    if not points:
        raise ValueError("no validation point: the run kept no curve")
    points = sorted(points, key=lambda p: p["step"])
    best = select_best(points)
    return {
        "dataset": "fashioniq",
        "split": "val",
        "variant": variant,
        "stage": stage,
        "seed": seed,
        "selected_by": SELECTED_BY,
        "best_step": best["step"],
        "last_step": points[-1]["step"],
        "chance": points[-1]["chance"],
        "points": [
            {"step": p["step"], "epoch": p["epoch"], "categories": p["categories"], "summary": p["summary"]}
            for p in points
        ],
    }


def best_evaluation(
    point: dict[str, Any],
    *,
    model: str,
    variant: str,
    stage: str,
    seed: int,
    skipped: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """The best point as the evaluate rule writes an evaluation (``fashioniq.json``'s keys), plus
    ``seed``, ``checkpoint: "best"``, its ``step`` and ``selected_on``. ``model``: the run's model
    folder (which holds the last weights, not these: the best point's weights are not kept)."""
    return {
        "categories": point["categories"],
        "summary": point["summary"],
        "chance": point["chance"],
        "dataset": "fashioniq",
        "model": model,
        "variant": variant,
        "stage": stage,
        "seed": seed,
        "checkpoint": "best",
        "step": point["step"],
        "selected_on": SELECTED_ON,
        "skipped": skipped,
        "provenance": provenance,
    }


def write_validation_outputs(
    checkpoint_dir: str | os.PathLike[str],
    curve_path: str | os.PathLike[str],
    best_path: str | os.PathLike[str],
    best_rankings_path: str | os.PathLike[str],
    *,
    model: str,
    variant: str,
    stage: str,
    seed: int,
    skipped: dict[str, Any],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Write the curve and the best point (its JSON and its rankings, a copy of the point's
    ``validation/step-<N>.parquet``) from the points kept in ``checkpoint_dir``; each file
    atomically, the rankings before the JSON that describes them. Returns the curve."""
    folder = Path(checkpoint_dir)
    points = read_validation(folder)
    curve = validation_curve(points, variant=variant, stage=stage, seed=seed)
    best = next(p for p in points if p["step"] == curve["best_step"])
    rankings_path = folder / VALIDATION_RANKINGS / f"step-{best['step']}.parquet"
    if not rankings_path.exists():
        raise FileNotFoundError(f"{rankings_path}: the best point's rankings are missing from the checkpoint folder")
    rankings = pd.read_parquet(rankings_path)
    write_parquet_atomic(best_rankings_path, rankings)
    write_json_atomic(
        best_path,
        best_evaluation(
            best, model=model, variant=variant, stage=stage, seed=seed, skipped=skipped, provenance=provenance
        ),
    )
    write_json_atomic(curve_path, curve)
    log.info(
        "validation: best Avg %.2f at step %d of %d (last point: Avg %.2f)",
        _avg(best),
        best["step"],
        curve["last_step"],
        _avg(next(p for p in points if p["step"] == curve["last_step"])),
    )
    return curve
