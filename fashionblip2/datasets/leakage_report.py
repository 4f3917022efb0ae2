"""results/leakage/report.md: the leakage check's counts and thresholds, what the data card did with
them, and on the synthetic world how many planted copies it found (from the ground truth, which only
this report reads) and its false positives."""

from __future__ import annotations

import os

import pandas as pd

from fashionblip2.datasets.leakage import LEVELS, PAPER_CLAIM, perceptual_hashes, variant_distance

GARMENT_COLUMNS = ("garment", "colour", "colour2", "pattern", "sleeve", "length", "neckline", "fit", "fabric")


def planted_recall(
    matches: pd.DataFrame, truth: pd.DataFrame, world: str, crop_fractions: list[float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each planted copy with whether the check matched it to its original (and how; a missed copy's
    hash distance is measured here, from its two files), and every held-out match that is no planted
    copy (the false positives), each marked whether the two garments are the same by the ground truth
    (identical attributes)."""
    norm = lambda p: os.path.normpath(os.path.join(world, p))  # noqa: E731
    truth = truth.assign(full_path=truth["path"].map(norm))
    planted = truth[truth["planted_from"].fillna("") != ""].assign(original=lambda t: t["planted_from"].map(norm))
    held = matches[matches["kind"] == "heldout"].assign(
        a=lambda m: m["path_a"].map(os.path.normpath), b=lambda m: m["path_b"].map(os.path.normpath)
    )
    found = held.set_index(["a", "b"])
    rows = []
    for r in planted.itertuples():
        key = (r.full_path, r.original)
        hit = found.loc[[key]] if key in found.index else None
        rows.append(
            {
                "copy": r.full_path,
                "original": r.original,
                "transform": r.planted_transform,
                "found": hit is not None,
                "levels": hit["levels"].iloc[0] if hit is not None else "",
                "hash_distance": int(hit["hash_distance"].iloc[0])
                if hit is not None
                else int(variant_distance(perceptual_hashes([key[0]]), perceptual_hashes([key[1]], crop_fractions))[0]),
                "cosine": float(hit["cosine"].iloc[0]) if hit is not None else None,
            }
        )
    planted_keys = set(zip(planted["full_path"], planted["original"], strict=True))
    false = held[[(a, b) not in planted_keys for a, b in zip(held["a"], held["b"], strict=True)]]
    garment = truth.set_index("full_path")[list(GARMENT_COLUMNS)].astype(str)
    same = [
        a in garment.index and b in garment.index and (garment.loc[a] == garment.loc[b]).all()
        for a, b in zip(false["a"], false["b"], strict=True)
    ]
    false = false.assign(same_garment=same).drop(columns=["a", "b"])
    return pd.DataFrame(rows), false


def leakage_report(
    summary: dict, card: dict, matches: pd.DataFrame, truth: pd.DataFrame | None, world: str, matches_path: str
) -> str:
    t = summary["thresholds"]
    lines = [
        "# Leakage: FACap's images against FashionIQ's evaluation images",
        "",
        f'The paper (§3.1): "{PAPER_CLAIM}". Stated there, checked here:',
        "",
        f"> {card['claim']['checked']}.",
        "",
        f"Holds for the candidates: **{'yes' if card['claim']['holds_for_candidates'] else 'no'}**; "
        f"for this release of FACap: **{'yes' if card['claim']['holds_for_this_release'] else 'no'}** "
        f"(leakage.action: {card['action']}).",
        "",
        "## Thresholds",
        "",
        "| level | how | threshold | checked |",
        "|---|---|---|---|",
        f"| exact | SHA-256 of the file | equal | {'yes' if 'exact' in summary['levels_checked'] else 'no'} |",
        f"| near_duplicate | dHash (64 bits), held-out images also at centre crops "
        f"{', '.join(f'{f:g}' for f in t['crop_fractions']) or 'none'} | Hamming <= {t['hash_max_distance']} | "
        f"{'yes' if 'near_duplicate' in summary['levels_checked'] else 'no'} |",
        f"| semantic | CLIP cosine of the pairing embeddings | >= {t['cosine_min']} | "
        f"{'yes' if 'semantic' in summary['levels_checked'] else 'no'} |",
        "",
        "## Counts",
        "",
        "| | count |",
        "|---|---|",
        f"| FACap candidate images (every image of a pair of facap.sources) | {summary['facap_images']} |",
        f"| FashionIQ val images | {summary['heldout_by_split']['val']} |",
        f"| FashionIQ test images | {summary['heldout_by_split']['test']} |",
        f"| enhFashionIQ images (among val) | {summary['enhfashioniq_images']} |",
        f"| images without an embedding (FACap, held-out): match at no semantic level | "
        f"{summary['without_embedding']['facap']}, {summary['without_embedding']['heldout']} |",
        f"| matched pairs | {summary['matched_pairs']} |",
        *[f"| matched pairs, {lv} | {summary['levels'][lv]} |" for lv in LEVELS if lv in summary["levels_checked"]],
        *[f"| matched pairs with {k} | {v} |" for k, v in summary["matched_pairs_by_heldout_set"].items()],
        f"| leaked FACap images | {summary['leaked_images']} |",
        f"| FACap pairs whose target is its reference | {summary['reference_target_pairs']} |",
        f"| triplets touching a leaked image | {card['triplets_touching_leaked_images']} |",
        f"| triplets whose target is its reference (not counted above) | {card['triplets_reference_is_target']} |",
        f"| triplets removed from FACap | {card['triplets_removed']} |",
        "",
        f"Every matched pair, with both paths and both scores: {matches_path}.",
    ]
    if truth is not None:
        planted, false = planted_recall(matches, truth, world, t["crop_fractions"])
        n_found = int(planted["found"].sum()) if len(planted) else 0
        lines += [
            "",
            "## Planted copies (the synthetic world's ground truth)",
            "",
            f"Found **{n_found} of {len(planted)}** planted copies of FashionIQ val images.",
            "",
        ]
        if len(planted):
            lines += [planted.to_markdown(index=False), ""]
        same = int(false["same_garment"].sum()) if len(false) else 0
        lines += [
            f"False positives: **{len(false)}** matched pairs are no planted copy "
            f"({false['image_a'].nunique() if len(false) else 0} FACap images); {same} of them pair two garments "
            "that the ground truth says are the same (identical attributes: the synthetic world draws from a "
            "small attribute space and renders flat pictures, which a 64-bit hash tells apart poorly).",
            "",
        ]
        if len(false):
            shown = false[["image_a", "image_b", "levels", "hash_distance", "cosine", "same_garment"]]
            lines += [shown.head(50).to_markdown(index=False), ""]
            if len(false) > 50:
                lines += [f"... and {len(false) - 50} more in {matches_path}.", ""]
    return "\n".join(lines) + "\n"
