"""An automatic score on every triplet (issue 22), from what the workflow already has: the captions,
the catalogue's attributes, the pairing's shortlists and its image-text model. No paid call.

Every score is "higher is better"; a triplet is flagged by a score when it falls below the score's
threshold (``scores.thresholds``) and removed by a FACap filter (``facap.filters``) the same way.

- ``caption_faithfulness``: how well each image agrees with its caption, by the image-text model's
  contrastive similarity (BLIP-2 ITC: the best of its 32 query tokens). Long captions on purpose: a
  caption is cut into sentences and each sentence is scored alone, so nothing is lost past the text
  encoder's window (64-128 tokens; CLIP's is 77) and one wrong sentence is not averaged away. A
  sentence's similarity is standardised against the same sentence's similarity to other images of
  the category (a z-score over ``reference_images`` of them): some sentences ("It is made of
  cotton.") match every image, others none. An image scores its worst sentence; a triplet its worse
  image.
- ``grounding``: the modification text read into claims with the project's lexicon ("is red", "is
  longer") and checked against what is known of both images (their captions and catalogue
  attributes). 0 when a claim contradicts the target or points the wrong way; else the share of
  claims that the target has and the reference lacks (a description of the target alone repeats
  what the reference has too, and scores low); 0 when the text claims nothing checkable.
- ``discriminative``: where the target ranks among its reference's pairing shortlist (the top-k
  other-item neighbours it was drawn from) for the composed query, zero-shot: the candidate's
  similarity to the text plus its similarity to the reference image, each standardised over the
  shortlist. 1 - (rank - 1) / (shortlist - 1): 1 when the target comes first.
- ``form``: 1, or 0 with ``form_issue`` naming the first problem: empty, too short or too long, a
  refusal, a text repeated within itself, a copy of a caption, identical captions, not English.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fashionblip2.annotation.lexicon import find_attributes
from fashionblip2.datasets.filters import failing
from fashionblip2.datasets.scores import SCORES
from fashionblip2.quality.automatic import Claim, read_claims
from fashionblip2.synthetic.attributes import FITS, LENGTHS, SLEEVES

SENTENCES = re.compile(r"(?<=[.!?])\s+")
REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:no|')t|i am unable|i'?m unable|as an ai|cannot (?:help|assist|determine))\b"
)
WORD = re.compile(r"[A-Za-z']+")
# Words an English modification text almost always has; a text with none of them is read as another
# language (the captions and texts here are short: a language model would be overkill).
ENGLISH = frozenset("a an the is are has have with and or of in to it its than more less instead no not".split())


@dataclass(frozen=True)
class FormSettings:
    min_words: int
    max_words: int


def sentences(caption: str) -> list[str]:
    return [s for s in (p.strip() for p in SENTENCES.split(caption or "")) if s]


def form_issue(text: str, reference_caption: str, target_caption: str, settings: FormSettings) -> str:
    """The first form problem of a triplet's text, or "" when there is none."""
    words = WORD.findall(text or "")
    lowered = [w.lower() for w in words]
    if not words:
        return "empty"
    if REFUSAL.search(text.lower()):
        return "refusal"
    if len(words) < settings.min_words:
        return "too_short"
    if len(words) > settings.max_words:
        return "too_long"
    trigrams = list(zip(lowered, lowered[1:], lowered[2:], strict=False))
    if len(trigrams) >= 6 and len(set(trigrams)) <= len(trigrams) / 2:
        return "repeated"
    if text.strip() in {reference_caption.strip(), target_caption.strip()}:
        return "copies_a_caption"
    if reference_caption.strip() == target_caption.strip():
        return "identical_captions"
    if len(words) >= 4 and not ENGLISH & set(lowered):
        return "not_english"
    return ""


# --- grounding ------------------------------------------------------------------------------------

ORDERS: dict[str, Callable[[dict[str, str]], tuple[str, ...]]] = {
    "sleeve": lambda _: tuple(SLEEVES),
    "fit": lambda _: tuple(FITS),
    "length": lambda known: (
        tuple(LENGTHS.get(known.get("garment", ""), ()))
        or tuple(dict.fromkeys(v for values in LENGTHS.values() for v in values))
    ),
}


def known_attributes(caption: str, catalogue: dict[str, str]) -> dict[str, str]:
    """What is known of an image: its caption's attributes, completed by the catalogue's (the caption
    speaks first: it is what the text was written from)."""
    found = find_attributes(" ".join(str(v) for v in catalogue.values())) if catalogue else {}
    return {**found, **find_attributes(caption or "")}


def _rank(attribute: str, known: dict[str, str]) -> int | None:
    order = ORDERS.get(attribute)
    if order is None or attribute not in known:
        return None
    values = order(known)
    return values.index(known[attribute]) if known[attribute] in values else None


def claim_verdict(claim: Claim, reference: dict[str, str], target: dict[str, str]) -> str:
    """'contradicted', 'difference' (the target has it, the reference not), 'shared' or 'unknown'."""
    if claim.value is None:  # relative: "longer", "looser"
        a, b = _rank(claim.attribute, target), _rank(claim.attribute, reference)
        if a is None or b is None:
            return "unknown"
        return "difference" if (a - b) * claim.direction > 0 else "contradicted"
    if claim.attribute not in target:
        return "unknown"
    if target[claim.attribute] != claim.value:
        return "contradicted"
    return "shared" if reference.get(claim.attribute) == claim.value else "difference"


def grounding_score(text: str, reference: dict[str, str], target: dict[str, str]) -> tuple[float, str]:
    """(score in [0, 1], why): see the module's docstring."""
    claims = read_claims(text or "")
    if not claims:
        return 0.0, "no_checkable_claim"
    verdicts = [claim_verdict(c, reference, target) for c in claims]
    if "contradicted" in verdicts:
        return 0.0, "contradicts_the_captions"
    share = verdicts.count("difference") / len(verdicts)
    return share, "" if share == 1.0 else ("describes_the_target" if "shared" in verdicts else "partly_unverified")


# --- the model scores ------------------------------------------------------------------------------


def standardise(matrix: np.ndarray, axis: int) -> np.ndarray:
    mean = matrix.mean(axis=axis, keepdims=True)
    std = matrix.std(axis=axis, keepdims=True)
    return (matrix - mean) / np.where(std > 1e-6, std, 1.0)


def caption_faithfulness(
    caption_ids: list[str],
    captions: list[str],
    categories: list[str],
    image_text: Callable[[list[str], list[str]], np.ndarray],
    reference_images: int,
    seed: int,
) -> np.ndarray:
    """Per image (aligned with ``caption_ids``): its worst sentence's standardised similarity.
    ``image_text(image_ids, texts)`` -> (images, texts) similarities."""
    out = np.zeros(len(caption_ids), dtype=np.float64)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"image_id": caption_ids, "caption": captions, "category": categories})
    for _, group in frame.groupby("category", sort=True):
        ids = group["image_id"].tolist()
        # The comparison images: the category's own (a sample at scale), each image scored against it.
        pool = ids if len(ids) <= reference_images else list(rng.choice(ids, reference_images, replace=False))
        split = [sentences(c) or [c] for c in group["caption"]]
        flat = [s for ss in split for s in ss]
        owner = np.repeat(np.arange(len(ids)), [len(ss) for ss in split])
        pool_sims = image_text(pool, flat)  # (pool, sentences)
        own = image_text(ids, flat)[owner, np.arange(len(flat))]  # each sentence vs its own image
        mean, std = pool_sims.mean(axis=0), pool_sims.std(axis=0)
        z = (own - mean) / np.where(std > 1e-6, std, 1.0)
        worst = pd.Series(z).groupby(owner).min().to_numpy()
        out[group.index.to_numpy()] = worst
    return out


def discriminative_ranks(
    reference_ids: list[str],
    target_ids: list[str],
    texts: list[str],
    shortlists: dict[str, list[str]],
    image_text: Callable[[list[str], list[str]], np.ndarray],
    image_image: Callable[[list[str], list[str]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """(rank of the target in its reference's shortlist, 1 = first; the shortlist's size)."""
    ranks = np.zeros(len(reference_ids), dtype=np.int64)
    sizes = np.zeros(len(reference_ids), dtype=np.int64)
    for i, (ref, tgt, text) in enumerate(zip(reference_ids, target_ids, texts, strict=True)):
        candidates = list(dict.fromkeys([*shortlists.get(ref, []), tgt]))
        score = standardise(image_text(candidates, [text])[:, 0], 0) + standardise(image_image([ref], candidates)[0], 0)
        ranks[i] = 1 + int((score > score[candidates.index(tgt)]).sum())
        sizes[i] = len(candidates)
    return ranks, sizes


def discriminative_score(ranks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.where(sizes > 1, 1.0 - (ranks - 1) / np.maximum(sizes - 1, 1), 1.0)


def catalogue_of(manifest: pd.DataFrame) -> dict[str, dict[str, str]]:
    """image id -> its catalogue attributes and product text (what the source says about it)."""
    out = {}
    for image_id, attributes, product_text in manifest[["image_id", "attributes", "product_text"]].itertuples(
        index=False
    ):
        known = json.loads(attributes) if attributes else {}
        if product_text:
            known["product_text"] = product_text
        out[image_id] = known
    return out


@dataclass(frozen=True)
class ScoreSettings:
    """``scores`` in config, with the pairing settings that rebuild the shortlists."""

    reference_images: int
    seed: int
    form: FormSettings
    top_k: int
    engine: str
    block: int


def dataset_of(source: str) -> str:
    """FashionIQ's pairs are enhFashionIQ's triplets; every other source's are FACap's."""
    return "enhfashioniq" if source == "fashioniq" else "facap"


def score_triplets(
    pairs: pd.DataFrame,
    captions: pd.DataFrame,
    modifications: pd.DataFrame,
    manifest: pd.DataFrame,
    shortlist: dict[str, list[str]],
    model,
    settings: ScoreSettings,
) -> pd.DataFrame:
    """One row per pair with an accepted modification text: ids, texts and every score.
    ``model``: an :class:`~fashionblip2.model.image_text.ImageTextModel` (or anything with its
    ``image_text`` and ``image_image``)."""
    ok = modifications[modifications["status"] == "ok"][["reference_id", "target_id", "text"]]
    triplets = pairs.merge(ok, on=["reference_id", "target_id"], how="inner")
    triplets = triplets.sort_values(["reference_id", "target_id"], ignore_index=True)
    caption = captions[captions["status"] == "ok"].set_index("image_id")["text"]
    triplets["reference_caption"] = triplets["reference_id"].map(caption)
    triplets["target_caption"] = triplets["target_id"].map(caption)
    triplets["dataset"] = triplets["source"].map(dataset_of)

    triplets["form_issue"] = [
        form_issue(r.text, r.reference_caption, r.target_caption, settings.form) for r in triplets.itertuples()
    ]
    triplets["form"] = (triplets["form_issue"] == "").astype(float)

    catalogue = catalogue_of(manifest)
    known = {
        image_id: known_attributes(caption.get(image_id, ""), catalogue.get(image_id, {}))
        for image_id in pd.unique(pd.concat([triplets["reference_id"], triplets["target_id"]]))
    }
    grounded = [grounding_score(r.text, known[r.reference_id], known[r.target_id]) for r in triplets.itertuples()]
    triplets["grounding"] = [g for g, _ in grounded]
    triplets["grounding_issue"] = [why for _, why in grounded]

    images = pd.unique(pd.concat([triplets["reference_id"], triplets["target_id"]]))
    if hasattr(model, "encode_images"):  # every image and text once, behind one progress bar each
        candidates = [c for ref in pd.unique(triplets["reference_id"]) for c in shortlist.get(ref, [])]
        model.encode_images([*images, *candidates])
        model.encode_texts([*triplets["text"], *(s for c in caption[images] for s in sentences(c) or [c])])
    category = manifest.set_index("image_id")["category"]
    per_image = pd.Series(
        caption_faithfulness(
            list(images),
            [caption[i] for i in images],
            [category[i] for i in images],
            model.image_text,
            settings.reference_images,
            settings.seed,
        ),
        index=images,
    )
    triplets["reference_faithfulness"] = triplets["reference_id"].map(per_image)
    triplets["target_faithfulness"] = triplets["target_id"].map(per_image)
    triplets["caption_faithfulness"] = triplets[["reference_faithfulness", "target_faithfulness"]].min(axis=1)

    ranks, sizes = discriminative_ranks(
        triplets["reference_id"].tolist(),
        triplets["target_id"].tolist(),
        triplets["text"].tolist(),
        shortlist,
        model.image_text,
        model.image_image,
    )
    triplets["target_rank"], triplets["shortlist_size"] = ranks, sizes
    triplets["discriminative"] = discriminative_score(ranks, sizes)
    columns = [
        "reference_id",
        "target_id",
        "source",
        "category",
        "dataset",
        "text",
        "reference_caption",
        "target_caption",
        *SCORES,
        "form_issue",
        "grounding_issue",
        "reference_faithfulness",
        "target_faithfulness",
        "target_rank",
        "shortlist_size",
    ]
    return triplets[columns]


def flagged(scores: pd.DataFrame, thresholds: dict[str, float]) -> pd.Series:
    """Whether each triplet falls below any of the thresholds (score name -> threshold): the test
    FACap's filters apply (:func:`fashionblip2.datasets.filters.failing`)."""
    return failing(scores, thresholds).any(axis=1)


def flagged_sample(scores: pd.DataFrame, thresholds: dict[str, float], size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of flagged triplets, with the scores that flag each (``flagged_by``)."""
    below = failing(scores, {name: t for name, t in thresholds.items() if name in scores})
    hit = below.any(axis=1)
    sample = scores[hit].sample(n=min(size, int(hit.sum())), random_state=seed).copy()
    sample["flagged_by"] = [", ".join(below.columns[below.loc[i]]) for i in sample.index]
    return sample
