"""FACap as the Hugging Face Hub loads a dataset: ``data/train-0000k-of-0000n.parquet`` shards and a
``README.md`` dataset card whose YAML header names them (``configs``) and their columns
(``dataset_info``), so ``datasets.load_dataset("release/facap")`` reads the folder as it is, offline.

A row is a triplet: both images as references (the workflow's id and the file's path inside its
source dataset, never the pixels: Fashion200k's, DeepFashion-MultiModal's and FashionIQ's terms do
not let us re-distribute their images), category, source, the modification text, both captions and
the four triplet scores. Everything else the card says comes from FACap's ``data_card.json``: the
backends, the scores' definitions and distributions, the leakage check and the provenance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fashionblip2.common.io import atomic_directory
from fashionblip2.common.issues import BadInputError
from fashionblip2.datasets.assembly import read_released
from fashionblip2.datasets.scores import SCORES
from fashionblip2.release import (
    DATASET_REPO,
    PLACEHOLDER_NAMESPACE,
    PROVENANCE_KEYS,
    front_matter,
    hub_id,
    markdown_table,
    number,
    provenance_table,
    require,
    upload_command,
)

SPLIT = "train"  # FACap is a training set: its one split
DATA_DIR = "data"
# Shards by rows, not bytes: paper-scale FACap, 227,680 triplets, makes 3 shards. At an estimated
# 1.5 kB a row (two captions of a few hundred characters; the embedded default's rows are 0.5 kB in
# memory, 0.1 kB in Parquet) that is about 340 MB in memory, tens of MB per shard on disk.
SHARD_ROWS = 100_000
# Row groups of a few MB: the Hub's viewer reads one group per page it shows.
ROW_GROUP_ROWS = 10_000

# The released columns (from FACap's triplet table), in order, and what the card says of each.
IDENTITY_COLUMNS = {
    "reference_id": "the reference image's id in the workflow, `<source>:<id in the source>`",
    "reference_path": "the reference image's file, relative to its source dataset's folder in the "
    "dataset's original layout (null where the image lies outside that folder)",
    "target_id": "the target image's id, as `reference_id`",
    "target_path": "the target image's file, as `reference_path`",
    "category": "the garment category (shared across sources)",
    "source": "the dataset both images come from",
    "modification_text": "what changes from the reference to the target, written by the modification backend",
    "reference_caption": "the reference image's long caption, written by the caption backend",
    "target_caption": "the target image's long caption",
}
RENAMED = {"text": "modification_text"}  # FACap's table name -> the released one
# What the dataset card reads from FACap's data card (fashionblip2/datasets/assembly.py and
# leakage.py write them all).
CARD_KEYS = ("caption_backend", "modification_backend", "categories", "scores", "leakage", "provenance")
LEAKAGE_KEYS = ("action", "levels_checked", "thresholds", "leaked_images", "triplets_removed", "claim")
CLAIM_KEYS = ("paper", "checked", "holds_for_candidates", "holds_for_this_release")
QUANTILES = ("0.05", "0.25", "0.5", "0.75", "0.95")  # the card's keys (fashionblip2/datasets/scores.py)
LICENSE_NAME = "facap-annotations"
# Where to get each source's images (their own terms apply; nothing here copies them).
SOURCE_PAGES = {
    "fashion200k": "Fashion200k (https://github.com/xthan/fashion-200k)",
    "deepfashion_mm": "DeepFashion-MultiModal (https://github.com/yumingj/DeepFashion-MultiModal)",
    "fashioniq": "FashionIQ (https://github.com/XiaoxiaoGuo/fashion-iq)",
}
# The Hub's size buckets (its `size_categories` values), by the number of rows.
SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
]


@dataclass(frozen=True)
class FacapRelease:
    """What ``release/facap`` will hold, checked before anything is written."""

    table: pa.Table
    card: dict[str, Any]  # FACap's data card
    scores: list[str]


@dataclass(frozen=True)
class WrittenDataset:
    rows: int
    shards: list[str]
    bytes: int  # the shards' size on disk


def size_category(rows: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if rows < bound:
            return name
    return "n>100M"


def shard_names(shards: int) -> list[str]:
    """The Hub's shard naming: ``data/train-00000-of-00003.parquet``."""
    return [f"{DATA_DIR}/{SPLIT}-{k:05d}-of-{shards:05d}.parquet" for k in range(shards)]


def relative_image_paths(manifest: pd.DataFrame, source_roots: dict[str, str]) -> dict[str, str | None]:
    """Each manifest image's file relative to its source's folder (POSIX separators), so that a user
    with their own copy of the dataset finds it; None where the file lies outside the folder (a
    catalogue's absolute path), whose local path must not be published."""
    out: dict[str, str | None] = {}
    for source, rows in manifest.groupby("source", sort=False):
        root = source_roots.get(str(source))
        if root is None:
            continue
        root_path = os.path.abspath(root)
        for image_id, path in zip(rows["image_id"], rows["path"], strict=True):
            absolute = os.path.abspath(path)
            inside = os.path.commonpath([root_path, absolute]) == root_path
            out[image_id] = PurePath(os.path.relpath(absolute, root_path)).as_posix() if inside else None
    return out


def release_table(
    triplets: pd.DataFrame, scores: list[str], manifest: pd.DataFrame, source_roots: dict[str, str]
) -> pa.Table:
    """FACap's triplet table as released: image references instead of images, the text renamed to
    what it is, the score columns last. Every image must be in the manifest, and every source have a
    folder (else the paths would be silently missing)."""
    triplets = triplets.rename(columns=RENAMED)
    needed = [c for c in IDENTITY_COLUMNS if not c.endswith("_path")] + scores
    missing = [c for c in needed if c not in triplets.columns]
    if missing:
        raise BadInputError(f"FACap's {', '.join(missing)} column(s) are missing from its triplet table")
    unrooted = sorted(set(triplets["source"]) - set(source_roots))
    if unrooted:
        raise BadInputError(
            f"no source folder given for FACap's source(s) {', '.join(unrooted)} (--source-roots has "
            f"{', '.join(sorted(source_roots)) or 'none'}): the released paths are relative to it"
        )
    ids = pd.concat([triplets["reference_id"], triplets["target_id"]])
    paths = relative_image_paths(manifest[manifest["image_id"].isin(ids)], source_roots)
    unknown = sorted(set(ids) - set(paths))
    if unknown:
        raise BadInputError(
            f"{len(unknown)} FACap image(s) are not in the manifest (e.g. {unknown[0]}): "
            "FACap was built from another manifest; rebuild it"
        )
    frame = triplets.assign(
        reference_path=triplets["reference_id"].map(paths), target_path=triplets["target_id"].map(paths)
    )
    schema = pa.schema(
        [pa.field(c, pa.string()) for c in IDENTITY_COLUMNS] + [pa.field(c, pa.float64()) for c in scores]
    )
    frame = frame[list(schema.names)].astype({c: float for c in scores}).reset_index(drop=True)
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


def prepare_facap(
    facap_dir: str | os.PathLike[str], manifest: pd.DataFrame, source_roots: dict[str, str]
) -> FacapRelease:
    """Read FACap and check that its card has what the dataset card tells (scores, leakage,
    provenance, backends)."""
    facap_dir = Path(facap_dir)
    if not (facap_dir / "data_card.json").exists():
        raise BadInputError(f"{facap_dir}: no FACap here (expected data_card.json and its triplet table)")
    triplets, card = read_released(facap_dir)
    where = f"{facap_dir}/data_card.json"
    require(card, CARD_KEYS, where)
    require(card["leakage"], LEAKAGE_KEYS, f"{where}'s leakage entry")
    require(card["leakage"]["claim"], CLAIM_KEYS, f"{where}'s leakage claim")
    require(card["provenance"], PROVENANCE_KEYS, f"{where}'s provenance")
    scores = [s for s in SCORES if s in card["scores"]]
    if not scores:
        raise BadInputError(f"{where} defines no triplet score: rebuild FACap")
    for name in scores:
        require(card["scores"][name], ("definition", "mean", "quantiles"), f"{where}'s score {name}")
    return FacapRelease(release_table(triplets, scores, manifest, source_roots), card, scores)


def _features(table: pa.Table) -> list[dict[str, str]]:
    names = {pa.string(): "string", pa.float64(): "float64"}
    return [{"name": f.name, "dtype": names[f.type]} for f in table.schema]


def card_metadata(release: FacapRelease, download_size: int) -> dict[str, Any]:
    """The dataset card's YAML header: what the Hub shows and what ``load_dataset`` reads (the
    shards of the one config and split, the features, the row count it checks)."""
    rows = release.table.num_rows
    synthetic = release.card["provenance"]["data"] == "synthetic"
    return {
        "pretty_name": "FACap",
        "license": "other",
        "license_name": LICENSE_NAME,
        "language": ["en"],
        "task_categories": ["image-to-image", "text-to-image"],
        "tags": ["fashion", "composed-image-retrieval", *(["synthetic"] if synthetic else [])],
        "size_categories": [size_category(rows)],
        "configs": [{"config_name": "default", "data_files": [{"split": SPLIT, "path": f"{DATA_DIR}/{SPLIT}-*"}]}],
        "dataset_info": {
            "features": _features(release.table),
            "splits": [{"name": SPLIT, "num_bytes": int(release.table.nbytes), "num_examples": rows}],
            "download_size": download_size,
            "dataset_size": int(release.table.nbytes),
        },
    }


# The offline backends of the embedded default: their config's `model` is unused, so the card
# describes them instead of naming a model that wrote nothing.
OFFLINE_BACKENDS = {
    "metadata": "the offline captioner: the catalogue's product text and attributes read with the project's "
    "lexicon, and the garment's colours read from the pixels",
    "rules": "the offline differ: the two captions compared attribute by attribute; it may write wrong texts on "
    "purpose, at the seeded rates of the workflow's `annotation.modification.planted_errors`, so that the "
    "scores have known errors to find",
}


def _backend(entry: dict[str, Any]) -> str:
    name = entry["backend"]
    if name in OFFLINE_BACKENDS:
        return f"`{name}` ({OFFLINE_BACKENDS[name]})"
    model = entry.get("model") or entry.get("model_path")
    return f"`{name}`" + (f" (model `{model}`)" if model else "")


def dataset_card(release: FacapRelease, download_size: int, namespace: str) -> str:
    card, table = release.card, release.table
    prov = card["provenance"]
    leakage = card["leakage"]
    claim = leakage["claim"]
    rows = table.num_rows
    sources = sorted(set(table.column("source").to_pylist()))
    synthetic = prov["data"] == "synthetic"
    repo = hub_id(namespace, DATASET_REPO)
    parts = [front_matter(card_metadata(release, download_size)), "# FACap\n"]
    if synthetic:
        parts.append(
            "> **Synthetic data.** This release was built from the workflow's generated fashion world "
            "(rendered garments written in the real datasets' layouts), not from real photographs: it shows "
            "the format and the pipeline, and its numbers say nothing about real fashion data.\n"
        )
    parts += [
        "## What it is\n",
        f"FACap is a fashion composed-image-retrieval dataset: {number(rows)} triplets of a reference image, a "
        "modification text and a target image, each image with a long caption (*FACap: A Large-scale Fashion "
        "Dataset for Fine-grained Composed Image Retrieval*, GENNEXT@SIGIR'25). The text says what changes "
        "from the reference to the target; a model retrieves the target from the reference and the text.\n",
        markdown_table(
            ["category", "triplets", "images"],
            [[name, c["triplets"], c["images"]] for name, c in sorted(card["categories"].items())],
        )
        + "\n",
        "## Load it\n",
        "```python\nfrom datasets import load_dataset\n\n"
        f'facap = load_dataset("{repo}", split="{SPLIT}")   # a local copy: load_dataset("release/facap")\n'
        "```\n",
        "## Columns\n",
        markdown_table(
            ["column", "type", "what"],
            [[c, "string", what] for c, what in IDENTITY_COLUMNS.items()]
            + [[s, "float64", f"score (higher is better): {card['scores'][s]['definition']}"] for s in release.scores],
        )
        + "\n",
        "## The images are not included\n",
        "The rows name the images; they do not carry them. The images belong to their source datasets, whose "
        "licences do not allow re-distributing them: get them from each source under its own terms, then join on "
        "`reference_path` and `target_path` (relative to the source's folder in its original layout). Sources of "
        f"this release: {', '.join(SOURCE_PAGES.get(s, f'`{s}`') for s in sources)}.\n",
        "## How it was built\n",
        "1. Pairing: every image of the sources was embedded with CLIP; each image (the reference) got a partner "
        "(the target) drawn at random among its most similar images (cosine) of other items of the same source and "
        "category.\n"
        f"2. Captions: each paired image was captioned by the caption backend, {_backend(card['caption_backend'])}.\n"
        "3. Modification texts: the modification backend, "
        f"{_backend(card['modification_backend'])}, wrote the text between the two captions"
        + (
            f" ({number(card['pairs_without_an_accepted_modification_text'])} pairs got no accepted text and are "
            "not in FACap)"
            if "pairs_without_an_accepted_modification_text" in card
            else ""
        )
        + ".\n"
        "4. Leakage check and scores: see below.\n",
        "## Scores\n",
        "Every triplet carries four scores, computed by the workflow after the annotation (no paid call, no "
        "filtering here: filter on them yourself). Higher is better for each.\n",
        markdown_table(
            ["score", "definition", "mean", "5 %", "25 %", "median", "75 %", "95 %"],
            [
                [s, card["scores"][s]["definition"], card["scores"][s]["mean"]]
                + [card["scores"][s]["quantiles"].get(q) for q in QUANTILES]
                for s in release.scores
            ],
        )
        + "\n",
        "## Leakage\n",
        f'The paper says: "{claim["paper"]}". Checked: {claim["checked"]}.\n',
        markdown_table(
            ["", ""],
            [
                ["holds for the candidate images", "yes" if claim["holds_for_candidates"] else "no"],
                ["holds for this release", "yes" if claim["holds_for_this_release"] else "no"],
                ["action", leakage["action"]],
                ["levels checked", ", ".join(leakage["levels_checked"])],
                ["leaked images", leakage["leaked_images"]],
                ["triplets removed", leakage["triplets_removed"]],
            ]
            + [[f"threshold `{k}`", v] for k, v in sorted(leakage["thresholds"].items())],
        )
        + "\n",
        "## Provenance\n",
        provenance_table(prov) + "\n",
        "## Licence\n",
        f"`other` (`{LICENSE_NAME}`): this folder holds the annotations only (ids, relative paths, captions, "
        "modification texts, scores). The texts were written by the backends named above and describe the "
        "source images; the images stay under their sources' licences and terms, which also govern any use of "
        "these rows together with them. Check each source's terms, and the terms of the caption and "
        "modification backends, before use.\n",
        "## Upload\n",
        "The workflow uploads nothing. To publish this folder (`--exclude` leaves out the empty file Snakemake "
        "marks the folder with):\n",
        f"```bash\n{upload_command(namespace, DATASET_REPO, 'release/facap', 'dataset')}\n```\n",
    ]
    if not namespace:
        parts.append(
            f"Replace `{PLACEHOLDER_NAMESPACE}` with your Hub user or organisation (or set `release.namespace` in "
            "the config and run `snakemake release` again).\n"
        )
    return "\n".join(parts)


def write_facap_release(
    release: FacapRelease, out_dir: str | os.PathLike[str], namespace: str, shard_rows: int = SHARD_ROWS
) -> WrittenDataset:
    """The shards and the card, in a temporary folder that replaces ``out_dir`` whole when done."""
    rows = release.table.num_rows
    count = max(1, -(-rows // shard_rows))
    names = shard_names(count)
    with atomic_directory(out_dir) as tmp:
        (tmp / DATA_DIR).mkdir()
        for k, name in enumerate(names):
            shard = release.table.slice(k * shard_rows, shard_rows)
            pq.write_table(shard, tmp / name, row_group_size=ROW_GROUP_ROWS)
        size = sum((tmp / name).stat().st_size for name in names)
        (tmp / "README.md").write_text(dataset_card(release, size, namespace), encoding="utf-8")
    return WrittenDataset(rows, names, size)
