"""How well the automatic triplet scores find wrong triplets (issue 22): each score is measured
against labels that come from the synthetic world's ground truth, never from the scores themselves.

Labels, per triplet (reference image, target image, modification text):

- ``planted_error``: the kind of wrong text the offline differ wrote on purpose for this pair
  (:mod:`fashionblip2.annotation.planted_errors`), "" for none. It is re-derived, not read from a
  side file: ``RulesDiffer(planted).answer(...)`` is run on the triplet's two captions, and its kind
  counts only when the modification backend is "rules" and the answer is the stored text (a text
  from another backend, or edited since, was not planted by this differ).
- ``wrong_modification``: the text makes a claim that is false of the target by the ground truth
  (:func:`~fashionblip2.quality.automatic.holds`), or none of its claims is a true difference from
  the reference (a text that claims nothing checkable is wrong too: it names no change), or an error
  was planted (a ``target_only`` text can happen to name a true difference).
- ``wrong_caption``: the lexicon's reading (:func:`~fashionblip2.annotation.lexicon.find_attributes`)
  of the reference's or the target's long caption contradicts that image's true attributes. A caption
  colour is right when it is the true colour or the second colour; the garment is ignored (the
  lexicon's garment words are coarser than the world's: "top" for a "toptee"); an attribute the image
  does not have (no sleeves on trousers) is not checked, because a caption may describe another worn
  garment. The lexicon reads the first value of each attribute only, so a wrong second colour is
  missed: the count is a lower bound.
- ``wrong``: either of the two.

Measures, for each score (higher = better; a triplet is *flagged* when its score is below the
score's threshold) and each label:

- ROC AUC of ``-score`` predicting the label: the probability that a wrong triplet scores lower
  than a right one, ties counted one half (the Mann-Whitney rank formula, tied ranks averaged);
- its 95 % percentile bootstrap interval: triplets resampled with replacement, ``samples`` times,
  from ``numpy.random.default_rng(seed)`` (the same resamples for every label of one score);
- precision and recall of "flagged" at the threshold.

They are computed over every triplet given, not a sample. A triplet with a missing (NaN) score is
left out of that score's rows only. The AUC and its interval are NaN when the label has no positives
or no negatives; precision is NaN when nothing is flagged, recall when there is no positive.

And against Table 2's ratings (:mod:`fashionblip2.quality.table2`): the Spearman correlation (with
a bootstrap 95 % interval over items) between each score and each criterion averaged over the
annotators, on the quality sample's items that have a score row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from fashionblip2.annotation.backends import RulesDiffer
from fashionblip2.annotation.lexicon import find_attributes
from fashionblip2.annotation.planted_errors import KINDS, PlantedErrors
from fashionblip2.common.issues import BadInputError
from fashionblip2.quality.automatic import Claim, holds, is_difference, read_claims, truth_by_image
from fashionblip2.quality.table2 import CRITERIA

# "planted": the errors the offline differ made on purpose (what a modification score must find);
# the others also count the errors the captions passed on, which only the truth can see.
LABELS = ("wrong", "wrong_modification", "wrong_caption", "planted")
KEYS = ("reference_id", "target_id")
TRIPLET_COLUMNS = (*KEYS, "category", "text", "reference_caption", "target_caption")
LABEL_COLUMNS = [
    *KEYS,
    "planted_error",
    "false_claims",
    "true_differences",
    "reference_caption_wrong",
    "target_caption_wrong",
    "caption_errors",
    "wrong_modification",
    "wrong_caption",
    "wrong",
    "planted",
]
VALIDITY_COLUMNS = [
    "score",
    "label",
    "n",
    "positives",
    "auc",
    "auc_low",
    "auc_high",
    "threshold",
    "flagged",
    "precision",
    "recall",
]
CORRELATION_COLUMNS = ["score", "criterion", "n", "spearman", "spearman_low", "spearman_high", "items_without_score"]
# Resamples are ranked a block at a time: a (samples x triplets) matrix of a large release would not
# fit in memory at once, and the result does not depend on the block size.
_BLOCK_CELLS = 4_000_000


class ScoreValidityError(BadInputError):
    """An input the measurement cannot use (a missing column, an image without ground truth)."""


def _join_keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    # FashionIQ and enhFashionIQ share their pairs (enhFashionIQ rewrites the texts of FashionIQ's
    # val triplets), so a pair alone may name two triplets: the dataset tells them apart when known.
    return [*KEYS, "dataset"] if "dataset" in a.columns and "dataset" in b.columns else list(KEYS)


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ScoreValidityError(f"{what}: missing column(s) {', '.join(missing)} (has {list(frame.columns)})")


# --- labels from the ground truth ------------------------------------------------------------------


def _describe(claim: Claim) -> str:
    return f"{claim.attribute} {claim.value}" if claim.value is not None else f"{claim.attribute} {claim.direction:+d}"


def _known(value: object) -> bool:
    # The truth has None / NaN for an attribute the garment does not have (sleeves of trousers).
    return isinstance(value, str) and value != ""


def caption_contradictions(caption: str, image: Mapping[str, object]) -> list[str]:
    """What the lexicon reads in ``caption`` that contradicts the image's true attributes, as
    ``"<attribute>: caption <value>, truth <value>"`` (empty when the caption is right as far as read)."""
    out = []
    for attribute, value in find_attributes(caption).items():
        if attribute == "garment" or not _known(image.get(attribute)):
            continue
        right = (image.get("colour"), image.get("colour2")) if attribute == "colour" else (image.get(attribute),)
        if value not in right:
            out.append(f"{attribute}: caption {value}, truth {image.get(attribute)}")
    return out


def _truth_of(images: dict[str, dict], image_id: str, known_ids: set[str], where: str) -> dict:
    image = images.get(image_id)
    if image is None:
        why = "no ground-truth row for it" if image_id in known_ids else "it is not in the manifest"
        raise ScoreValidityError(f"{where}: image {image_id} has no ground truth ({why}; is this the synthetic world?)")
    return image


def truth_labels(
    triplets: pd.DataFrame,
    truth: pd.DataFrame,
    manifest: pd.DataFrame,
    planted: PlantedErrors | None,
    modification_backend: str,
) -> pd.DataFrame:
    """The ground-truth labels of every triplet (see the module docstring), one row per triplet in
    the order given: the keys (and ``dataset`` when given), the labels and what they were found from
    (``false_claims``: the text's claims false of the target; ``true_differences``: how many of its
    claims are true differences; ``caption_errors``: which caption attributes contradict the truth)."""
    _require(triplets, TRIPLET_COLUMNS, "triplets")
    images = truth_by_image(truth, manifest)
    known_ids = set(manifest["image_id"])
    # Only the rules differ plants errors; any other backend's texts are taken as written.
    differ = RulesDiffer(planted) if modification_backend == "rules" else None
    rows = []
    for n, row in enumerate(triplets[list(TRIPLET_COLUMNS)].itertuples(index=False)):
        where = f"triplet {n} ({row.reference_id} -> {row.target_id})"
        reference = _truth_of(images, row.reference_id, known_ids, where)
        target = _truth_of(images, row.target_id, known_ids, where)
        claims = read_claims(row.text)
        false = [c for c in claims if not holds(c, target, reference)]
        differences = [c for c in claims if holds(c, target, reference) and is_difference(c, reference)]
        kind = ""
        if differ is not None:
            text, _, applied = differ.answer(row.reference_caption, row.target_caption, row.category)
            kind = applied if applied and text == row.text else ""
        reference_errors = caption_contradictions(row.reference_caption, reference)
        target_errors = caption_contradictions(row.target_caption, target)
        wrong_modification = bool(false) or not differences or kind != ""
        wrong_caption = bool(reference_errors or target_errors)
        rows.append(
            {
                "reference_id": row.reference_id,
                "target_id": row.target_id,
                "planted_error": kind,
                "false_claims": "; ".join(map(_describe, false)),
                "true_differences": len(differences),
                "reference_caption_wrong": bool(reference_errors),
                "target_caption_wrong": bool(target_errors),
                "caption_errors": "; ".join(
                    [f"reference {e}" for e in reference_errors] + [f"target {e}" for e in target_errors]
                ),
                "wrong_modification": wrong_modification,
                "wrong_caption": wrong_caption,
                "wrong": wrong_modification or wrong_caption,
                "planted": kind != "",
            }
        )
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS)
    if "dataset" in triplets.columns:
        labels.insert(2, "dataset", triplets["dataset"].to_numpy())
    return labels


# --- rank statistics and the bootstrap --------------------------------------------------------------


def _auc_rows(predictor: np.ndarray, label: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``predictor`` (higher = more likely positive) for the same row of
    ``label``: (rank sum of the positives - its minimum) / (positives x negatives), ties averaged."""
    ranks = rankdata(predictor, axis=1)
    positives = label.sum(axis=1).astype(float)
    negatives = label.shape[1] - positives
    rank_sum = (ranks * label).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)


def roc_auc(predictor: Sequence[float] | np.ndarray, label: Sequence[bool] | np.ndarray) -> float:
    """ROC AUC of ``predictor`` (higher = more likely positive) for the boolean ``label``; NaN when
    the label has no positives or no negatives."""
    x = np.asarray(predictor, dtype=float)[None, :]
    y = np.asarray(label, dtype=bool)[None, :]
    return float(_auc_rows(x, y)[0])


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: Pearson's r of the (tie-averaged) ranks; NaN for a constant row."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    denominator = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / denominator
    return np.where(denominator > 0, rho, np.nan)


def _resamples(n: int, samples: int, seed: int) -> np.ndarray:
    """``samples`` bootstrap resamples of ``n`` rows (indices), from ``default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n)) if n else np.zeros((samples, 0), int)


def _bootstrap(statistic, x: np.ndarray, y: np.ndarray, resamples: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of ``statistic`` over the resamples (NaN ones, a resample with no
    positive say, left out; NaN when none is left)."""
    if resamples.shape[1] == 0:
        return float("nan"), float("nan")
    block = max(1, _BLOCK_CELLS // resamples.shape[1])
    values = np.concatenate(
        [statistic(x[resamples[i : i + block]], y[resamples[i : i + block]]) for i in range(0, len(resamples), block)]
    )
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _scores_of(scores: pd.DataFrame, score_columns: Sequence[str]) -> None:
    _require(scores, [*KEYS, *score_columns], "scores")
    if not score_columns:
        raise ScoreValidityError("no score columns given")


# --- the two tables ---------------------------------------------------------------------------------


def validity_table(
    scores: pd.DataFrame,
    labels: pd.DataFrame,
    score_columns: Sequence[str],
    thresholds: Mapping[str, float],
    samples: int,
    seed: int,
) -> pd.DataFrame:
    """One row per (score, label): n, positives, ROC AUC of ``-score`` with its bootstrap 95 %
    interval, and precision / recall of "score < threshold" (see the module docstring)."""
    _scores_of(scores, score_columns)
    _require(labels, [*KEYS, *LABELS], "labels")
    unknown = [c for c in score_columns if c not in thresholds]
    if unknown:
        raise ScoreValidityError(f"no threshold for score column(s) {', '.join(unknown)} (thresholds: {thresholds})")
    keys = _join_keys(scores, labels)
    try:
        joined = scores[[*keys, *score_columns]].merge(
            labels[[*keys, *LABELS]], on=keys, how="left", validate="one_to_one", indicator=True
        )
    except pd.errors.MergeError as e:
        raise ScoreValidityError(f"scores and labels must have one row per triplet ({', '.join(keys)}): {e}") from e
    unlabelled = joined[joined["_merge"] != "both"]
    if len(unlabelled):
        first = unlabelled.iloc[0]
        raise ScoreValidityError(
            f"{len(unlabelled)} scored triplet(s) have no label, e.g. {first['reference_id']} -> {first['target_id']}"
        )
    rows = []
    for column in score_columns:
        score = pd.to_numeric(joined[column], errors="coerce").to_numpy(dtype=float)
        valid = ~np.isnan(score)
        score = score[valid]
        threshold = float(thresholds[column])
        flagged = score < threshold
        # The same resamples for every label of this score, drawn afresh per score so that a score's
        # interval does not depend on which other columns are measured with it.
        resamples = _resamples(len(score), samples, seed)
        for label_name in LABELS:
            label = joined[label_name].to_numpy(dtype=bool)[valid]
            positives, negatives = int(label.sum()), int((~label).sum())
            auc, low, high = float("nan"), float("nan"), float("nan")
            if positives and negatives:
                auc = roc_auc(-score, label)
                low, high = _bootstrap(_auc_rows, -score, label, resamples)
            true_flags = int((flagged & label).sum())
            rows.append(
                {
                    "score": column,
                    "label": label_name,
                    "n": len(score),
                    "positives": positives,
                    "auc": auc,
                    "auc_low": low,
                    "auc_high": high,
                    "threshold": threshold,
                    "flagged": int(flagged.sum()),
                    "precision": true_flags / flagged.sum() if flagged.any() else float("nan"),
                    "recall": true_flags / positives if positives else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=VALIDITY_COLUMNS)


def rating_correlations(
    scores: pd.DataFrame,
    items: pd.DataFrame,
    ratings: pd.DataFrame,
    score_columns: Sequence[str],
    samples: int,
    seed: int,
) -> pd.DataFrame:
    """One row per (score, criterion): Spearman's rho between the score and the criterion averaged
    over the annotators, with its 95 % percentile bootstrap interval over items, on the sample's items
    joined to the scores by (reference_id, target_id; and dataset when both have it).

    Items without a score row (FashionIQ's own triplets, say) are left out; their count is the
    ``items_without_score`` column (the same on every row) and ``attrs["items_without_score"]``."""
    _scores_of(scores, score_columns)
    _require(items, ["item_id", *KEYS], "items")
    _require(ratings, ["item_id", *CRITERIA], "ratings")
    unknown = sorted(set(ratings["item_id"]) - set(items["item_id"]))
    if unknown:
        raise ScoreValidityError(f"ratings of item(s) not in the sample: {', '.join(unknown[:5])}")
    mean = ratings.groupby("item_id")[list(CRITERIA)].mean().reset_index()
    rated = items.merge(mean, on="item_id", how="inner")
    keys = _join_keys(rated, scores)
    if scores.duplicated(keys).any():
        raise ScoreValidityError(f"scores: more than one row for a triplet ({', '.join(keys)})")
    joined = rated.merge(scores[[*keys, *score_columns]], on=keys, how="left", indicator=True)
    without = int((joined["_merge"] != "both").sum())
    joined = joined[joined["_merge"] == "both"]
    rows = []
    for column in score_columns:
        score = pd.to_numeric(joined[column], errors="coerce").to_numpy(dtype=float)
        valid = ~np.isnan(score)
        resamples = _resamples(int(valid.sum()), samples, seed)
        for criterion in CRITERIA:
            rating = joined[criterion].to_numpy(dtype=float)[valid]
            x = score[valid]
            rho = float(_spearman_rows(x[None, :], rating[None, :])[0]) if len(x) > 1 else float("nan")
            low, high = _bootstrap(_spearman_rows, x, rating, resamples) if len(x) > 1 else (float("nan"),) * 2
            rows.append(
                {
                    "score": column,
                    "criterion": criterion,
                    "n": len(x),
                    "spearman": rho,
                    "spearman_low": low,
                    "spearman_high": high,
                    "items_without_score": without,
                }
            )
    out = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    out.attrs["items_without_score"] = without
    return out


# --- the report -------------------------------------------------------------------------------------


def _number(value: float, decimals: int = 2) -> str:
    return "–" if pd.isna(value) else f"{value:.{decimals}f}"


def _with_interval(value: float, low: float, high: float) -> str:
    if pd.isna(value):
        return "–"
    return f"{value:.2f} [{_number(low)}, {_number(high)}]"


def _by_attribute(labels: pd.DataFrame) -> str:
    """How often each attribute is what a wrong caption gets wrong (from ``caption_errors``)."""
    found = labels["caption_errors"].str.findall(r"(?:reference|target) (\w+):").explode().dropna()
    counts = found.value_counts()
    return ", ".join(f"{attribute} {k}" for attribute, k in counts.items()) or "none"


def to_markdown(
    validity: pd.DataFrame,
    labels: pd.DataFrame,
    provenance: str,
    samples: int,
    seed: int,
    correlations: pd.DataFrame | None = None,
) -> str:
    """The report (results/scores/validity.md): the label counts, the validity table and, when the
    quality sample's ratings were given, the correlations, each with how its numbers were computed."""
    n = len(labels)
    planted = labels["planted_error"].value_counts()
    by_dataset = (
        ", ".join(f"{d} {k}" for d, k in labels["dataset"].value_counts().sort_index().items())
        if "dataset" in labels.columns
        else ""
    )
    lines = [
        "# Triplet scores against the synthetic world's ground truth",
        "",
        provenance,
        "",
        "## Labels",
        "",
        f"{n} triplets{f' ({by_dataset})' if by_dataset else ''}, every one scored and labelled (no sample). "
        "The labels come from the ground truth, never from the scores:",
        "",
        "- **wrong_modification**: the text makes a claim false of the target, or none of its claims is a true "
        "difference from the reference, or the offline differ planted an error in it (re-derived from the two "
        "captions, the seed and the rates in config; counted only where its text is the stored one);",
        "- **wrong_caption**: the lexicon's reading of the reference's or the target's caption contradicts that "
        "image's true attributes (colour right if the true colour or the second colour; garment ignored; only the "
        "first value of each attribute is read, so this is a lower bound);",
        "- **wrong**: either.",
        "",
        "| | triplets |",
        "|---|---|",
        *[f"| planted error: {kind} | {int(planted.get(kind, 0))} |" for kind in KINDS],
        f"| planted error, any kind | {int((labels['planted_error'] != '').sum())} |",
        f"| wrong modification text (planted or not) | {int(labels['wrong_modification'].sum())} |",
        f"| wrong reference caption | {int(labels['reference_caption_wrong'].sum())} |",
        f"| wrong target caption | {int(labels['target_caption_wrong'].sum())} |",
        f"| wrong caption (either) | {int(labels['wrong_caption'].sum())} |",
        f"| wrong (either label) | {int(labels['wrong'].sum())} |",
        "",
        f"Contradicted caption attributes (a triplet counts once per caption and attribute): {_by_attribute(labels)}.",
        "",
        "## How well each score finds the wrong triplets",
        "",
        "| score | label | n | positives | AUC [95 % CI] | threshold | flagged | precision | recall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in validity.itertuples(index=False):
        lines.append(
            f"| {r.score} | {r.label} | {r.n} | {r.positives} | {_with_interval(r.auc, r.auc_low, r.auc_high)} | "
            f"{r.threshold:g} | {r.flagged} | {_number(r.precision)} | {_number(r.recall)} |"
        )
    lines += [
        "",
        "- AUC: the ROC AUC of minus the score predicting the label, i.e. the chance that a wrong triplet scores "
        "lower than a right one (ties count one half; Mann-Whitney rank formula, tied ranks averaged); 0.5 is "
        "chance, 1 a perfect score. Triplets without a value of the score are left out of its rows (n).",
        f"- 95 % CI: percentile bootstrap, triplets resampled with replacement {samples} times "
        f"(numpy default_rng, seed {seed}).",
        "- flagged: triplets whose score is below the threshold; precision: the share of flagged triplets that "
        "are wrong by the label; recall: the share of wrong triplets that are flagged.",
        "- '–': not defined (a label with no positives or no negatives, nothing flagged).",
    ]
    if correlations is not None:
        lines += ["", *correlation_lines(correlations, samples, seed)]
    return "\n".join(lines) + "\n"


def correlation_lines(correlations: pd.DataFrame, samples: int, seed: int) -> list[str]:
    """The report's section on the scores against Table 2's ratings (people's, or the automatic
    annotators' on the synthetic world)."""
    without = int(correlations.attrs.get("items_without_score", correlations["items_without_score"].max()))
    out = [
        "## Scores against Table 2's ratings",
        "",
        "| score | criterion | n | Spearman [95 % CI] |",
        "|---|---|---|---|",
        *[
            f"| {r.score} | {r.criterion} | {r.n} | {_with_interval(r.spearman, r.spearman_low, r.spearman_high)} |"
            for r in correlations.itertuples(index=False)
        ],
        "",
        "- Spearman's rho between the score and the criterion (1 worst - 5 best) averaged over the annotators, "
        "on the quality sample's items joined to the scores by their triplet; a positive rho means the score "
        "agrees with the raters.",
        f"- 95 % CI: percentile bootstrap, items resampled with replacement {samples} times "
        f"(numpy default_rng, seed {seed}).",
        f"- {without} sampled item(s) have no score row (FashionIQ's own triplets are not scored) and are left out.",
    ]
    return out


def ratings_markdown(correlations: pd.DataFrame, provenance: str, samples: int, seed: int) -> str:
    """The report on real data, where no ground truth exists: the scores against people's ratings."""
    lines = [
        "# Triplet scores against people's ratings",
        "",
        provenance,
        "",
        "Real data: no ground truth, so no AUC; the scores are compared with the ratings of Table 2's sample "
        "(quality.annotations).",
        "",
        *correlation_lines(correlations, samples, seed),
    ]
    return "\n".join(lines) + "\n"
