"""Quality evaluation of modification texts (paper §3.2, Table 2): the per-dataset samples, the
annotators' score files, and the table with inter-annotator agreement.

Three criteria, each scored 1 (worst) to 5 (best) per triplet: faithfulness (the text describes true
changes between reference and target), details (how many differences it names) and saliency (how
few other images would also satisfy it). Items carry opaque ids (``q0001``...) so annotators never
see which dataset a triplet comes from; ``items.csv`` of the sample keeps the mapping.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fashionblip2.common.issues import BadInputError, InputReport
from fashionblip2.datasets.caption_text import join_captions
from fashionblip2.datasets.triplets import read_facap, read_fashioniq_split

CRITERIA = ("faithfulness", "details", "saliency")
SCORES = range(1, 6)
ANNOTATION_COLUMNS = ["item_id", *CRITERIA, "annotator"]
ITEM_COLUMNS = ["item_id", "dataset", "category", "reference_id", "target_id", "text"]
DATASET_NAMES = {"fashioniq": "FashionIQ", "facap": "FACap", "enhfashioniq": "enhFashionIQ"}
# Table 2 as reported (mean ± std over 216 triplets x 3 annotators).
TABLE2_REPORTED = [
    ("FashionIQ", "4.48 ± 0.64", "3.03 ± 0.67", "3.60 ± 0.69"),
    ("FACap", "4.40 ± 0.60", "4.09 ± 0.64", "4.29 ± 0.6"),
]
REPORTED = "reported by the paper"


SAMPLE_ITEMS = "items.csv"


def read_sample(folder: str | os.PathLike[str]) -> pd.DataFrame:
    """The items of a quality sample folder (all columns as text)."""
    return pd.read_csv(Path(folder) / SAMPLE_ITEMS, dtype=str, keep_default_na=False)


class AnnotationError(BadInputError):
    """A score file that cannot be used: names the file and the row."""


@dataclass
class SampledTriplet:
    dataset: str
    category: str
    reference_id: str
    target_id: str
    text: str


def collect_triplets(
    manifest: pd.DataFrame,
    facap_dir: str | os.PathLike[str] | None,
    fashioniq_root: str | os.PathLike[str] | None,
    enhfashioniq_dir: str | os.PathLike[str] | None,
    split: str,
    categories: Sequence[str],
    report: InputReport,
) -> dict[str, list[SampledTriplet]]:
    """Every triplet of each dataset given (None: left out), with the text an annotator reads:
    FACap's and enhFashionIQ's modification text, FashionIQ's two captions joined ("c1 and c2")."""
    available = set(manifest["image_id"])
    out: dict[str, list[SampledTriplet]] = {}
    sets = {}
    if facap_dir is not None:
        sets["facap"] = read_facap(facap_dir, manifest, report)
    if fashioniq_root is not None:
        sets["fashioniq"] = read_fashioniq_split(fashioniq_root, split, categories, available, report)
    if enhfashioniq_dir is not None:
        sets["enhfashioniq"] = read_fashioniq_split(
            enhfashioniq_dir, "val", categories, available, report, source="enhfashioniq"
        )
    for name, triplets in sets.items():
        out[name] = [
            SampledTriplet(name, triplets.category[i], triplets.reference[i], triplets.target[i],
                           triplets.texts[i][0] if len(triplets.texts[i]) == 1 else join_captions(triplets.texts[i]))
            for i in range(len(triplets))
        ]  # fmt: skip
    return out


def stratified_indices(categories: Sequence[str], n: int, seed: int) -> list[int]:
    """``n`` indices drawn without replacement, split over categories in proportion to their sizes
    (largest remainders get the leftover items); everything when there are at most ``n``."""
    if len(categories) <= n:
        return list(range(len(categories)))
    by_category: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        by_category.setdefault(c, []).append(i)
    names = sorted(by_category)
    exact = {c: n * len(by_category[c]) / len(categories) for c in names}
    quota = {c: int(exact[c]) for c in names}
    for c in sorted(names, key=lambda c: (-(exact[c] - quota[c]), c))[: n - sum(quota.values())]:
        quota[c] += 1
    rng = random.Random(seed)
    chosen = [i for c in names for i in rng.sample(by_category[c], quota[c])]
    return sorted(chosen)


def build_sample(triplets: dict[str, list[SampledTriplet]], n: int, seed: int) -> pd.DataFrame:
    """``n`` triplets per dataset (stratified by category), shuffled together under opaque item ids."""
    rows = []
    for dataset in sorted(triplets):
        items = triplets[dataset]
        picked = stratified_indices([t.category for t in items], n, seed + sum(map(ord, dataset)))
        rows += [items[i].__dict__ for i in picked]
    random.Random(seed).shuffle(rows)
    frame = pd.DataFrame(rows, columns=ITEM_COLUMNS[1:])
    frame.insert(0, "item_id", [f"q{i:04d}" for i in range(1, len(frame) + 1)])
    return frame


def annotator_order(item_ids: Sequence[str], annotator: int, seed: int) -> list[str]:
    """Each annotator sees the items in an order of their own (seeded), so fatigue does not line up."""
    order = sorted(item_ids)
    random.Random(f"{seed}:{annotator}").shuffle(order)
    return order


def read_annotations(paths: Sequence[str | os.PathLike[str]], items: pd.DataFrame) -> pd.DataFrame:
    """All score files, validated; any problem raises AnnotationError naming the file and row.

    Every file must have the columns item_id, faithfulness, details, saliency (annotator optional:
    the file name otherwise), one row per item of the sample, each score an integer from 1 to 5.
    """
    if not paths:
        raise AnnotationError("no annotation files given")
    known = set(items["item_id"])
    frames, names = [], set()
    for path in paths:
        path = Path(path)
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                missing = [c for c in ["item_id", *CRITERIA] if c not in header]
                if missing:
                    raise AnnotationError(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
                records, seen = [], {}
                for line, row in enumerate(reader, start=2):
                    item = (row.get("item_id") or "").strip()
                    if item not in known:
                        raise AnnotationError(f"{path}, line {line}: unknown item_id {item!r} (not in the sample)")
                    if item in seen:
                        raise AnnotationError(f"{path}, line {line}: item {item} scored twice (also line {seen[item]})")
                    seen[item] = line
                    record = {"item_id": item}
                    for criterion in CRITERIA:
                        value = (row.get(criterion) or "").strip()
                        if value not in {str(s) for s in SCORES}:
                            what = "not scored" if not value else f"score {value!r} is not an integer from 1 to 5"
                            raise AnnotationError(f"{path}, line {line}: item {item}, {criterion}: {what}")
                        record[criterion] = int(value)
                    record["annotator"] = (row.get("annotator") or "").strip() or path.stem
                    records.append(record)
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not a UTF-8 CSV file ({e})") from e
        unscored = sorted(known - set(seen))
        if unscored:
            raise AnnotationError(
                f"{path}: {len(unscored)} item(s) of the sample not scored, e.g. {', '.join(unscored[:5])}"
            )
        annotators = {r["annotator"] for r in records}
        if len(annotators) != 1:
            raise AnnotationError(f"{path}: one annotator per file, found {sorted(annotators)}")
        name = annotators.pop()
        if name in names:
            raise AnnotationError(f"{path}: annotator {name!r} already has a file")
        names.add(name)
        frames.append(pd.DataFrame(records, columns=ANNOTATION_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def krippendorff_alpha(scores: pd.DataFrame, criterion: str, level: str = "ordinal") -> float:
    """Krippendorff's alpha of one criterion: annotators x items, missing scores allowed."""
    import krippendorff

    matrix = scores.pivot(index="annotator", columns="item_id", values=criterion).astype(float)
    if len(matrix) < 2:
        return float("nan")
    values = matrix.to_numpy()
    if np.nanmin(values) == np.nanmax(values):
        return 1.0  # every score equal: perfect agreement (the formula is 0/0 here)
    return float(krippendorff.alpha(reliability_data=values, level_of_measurement=level))


def mean_std(values: pd.Series) -> str:
    return f"{values.mean():.2f} ± {values.std(ddof=0):.2f}"


def quality_table(items: pd.DataFrame, scores: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2 (mean ± std per dataset and criterion over all items x annotators, with the paper's
    rows marked as reported) and the agreement table (alpha per criterion, all items and per dataset)."""
    merged = scores.merge(items[["item_id", "dataset"]], on="item_id")
    rows = []
    for dataset in [d for d in DATASET_NAMES if d in set(merged["dataset"])]:
        part = merged[merged["dataset"] == dataset]
        rows.append(
            {"Dataset": DATASET_NAMES[dataset], **{c.capitalize(): mean_std(part[c]) for c in CRITERIA},
             "Triplets": part["item_id"].nunique(), "Annotators": part["annotator"].nunique(), "Rows from": origin}
        )  # fmt: skip
    for name, *values in TABLE2_REPORTED:
        rows.append(
            {"Dataset": name, **dict(zip([c.capitalize() for c in CRITERIA], values, strict=True)),
             "Triplets": 216, "Annotators": 3, "Rows from": REPORTED}
        )  # fmt: skip
    agreement = []
    for scope in ["all", *[d for d in DATASET_NAMES if d in set(merged["dataset"])]]:
        part = merged if scope == "all" else merged[merged["dataset"] == scope]
        agreement.append(
            {"Items": "all" if scope == "all" else DATASET_NAMES[scope],
             **{c.capitalize(): round(krippendorff_alpha(part, c), 3) for c in CRITERIA}}
        )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(agreement)
