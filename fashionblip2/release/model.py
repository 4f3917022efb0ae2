"""A trained FashionBLIP-2 as the Hugging Face Hub loads a model: the folder ``models/<stage>/<variant>``
copied (weights, ``config.json``, the tokenizer, ``training.json``), a ``preprocessor_config.json``
with the images' preprocessing, and a ``README.md`` model card with the variant's rows of the result
tables (value and 95 % interval), what each stage trained on, and how to load it.

The preprocessing is written as a CLIP image processor (shortest side to the image size, bicubic,
centre crop, CLIP's mean and std), which transformers' ``AutoImageProcessor`` loads. With its PIL
backend it gives the training pixels exactly where the crop's margin is even, and shifted by one
pixel where it is odd (training's torchvision crop rounds the offset half to even, transformers'
floors it); an image whose aspect ratio reaches 1.25 is first padded to that ratio
(``target_pad``), a step no transformers processor has: ``target_pad_ratio`` records it, and the
card says both.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from fashionblip2.common.io import atomic_directory
from fashionblip2.common.issues import BadInputError
from fashionblip2.model.configuration import FashionBLIP2Config
from fashionblip2.model.processing import CLIP_MEAN, CLIP_STD, TARGET_PAD_RATIO
from fashionblip2.release import (
    DATASET_REPO,
    PLACEHOLDER_NAMESPACE,
    PROVENANCE_KEYS,
    front_matter,
    hub_id,
    markdown_table,
    model_repo,
    number,
    provenance_table,
    require,
    upload_command,
)
from fashionblip2.results.tables import REPORTED, TABLE5_SETTINGS, WITH_FT, WITHOUT_FT

PROCESSOR_CONFIG = "preprocessor_config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # a model saved in shards
# The tokenizer files save_pretrained may write (the workflow's word-level one writes the first two).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
TRAINING_RECORD = "training.json"
# What the model card reads from training.json (fashionblip2/training/runs.py and train_model.py write them).
RECORD_KEYS = ("name", "stage", "start", "data", "variant", "training", "parameters", "provenance")
PIL_BICUBIC = 3  # PIL.Image.BICUBIC, as transformers' processors store `resample`

# How the result tables say which stage a number is of (fashionblip2/results/tables.py writes them):
# Table 3's Setting column, the column prefixes of Tables 5 and 6, and Table 4's fine-tuning column
# (all its rows of ours are fine-tuned, stage 2).
STAGE_SETTINGS = {"stage1": WITHOUT_FT, "stage2": WITH_FT}
STAGE_PREFIXES = dict(TABLE5_SETTINGS)
STAGE_NAMES = {"stage1": "stage 1, trained on FACap", "stage2": "stage 2, fine-tuned on FashionIQ"}
FINE_TUNED_COLUMN = "Fine-tune on FIQ"
ORIGIN_COLUMN = "Rows from"
CHANCE = "chance"  # Table 3's chance row: "chance (random ranking)"
METRICS_NOTE = (
    "R@K: recall at K (%) on the FashionIQ validation queries of a category; Avg: the mean of the "
    "categories' mean R@10 and mean R@50. FIQ: FashionIQ validation's Avg; enhFIQ: enhFashionIQ's Avg. "
    "Each number is the mean over the run's training seeds (experiments.seeds; the weights here are the "
    "first seed's), with a 95 % bootstrap interval over seeds and queries. '(best on val)': the validation "
    "step with the best FashionIQ Avg, chosen on the set it is reported on (as SPRC reports)."
)


@dataclass(frozen=True)
class TableRow:
    """One row of a result table naming the variant, at its stage: its labels and its numbers."""

    table: str
    labels: dict[str, str]
    metrics: list[tuple[str, float, float, float, float]]  # name, value, low, high, chance (nan: none)


@dataclass(frozen=True)
class ModelRelease:
    """What ``release/model/<variant>`` will hold, checked before anything is written."""

    variant: str
    source: Path
    files: list[str]  # copied from the model folder
    processor: dict[str, Any]
    card: str


def processor_config(image_size: int) -> dict[str, Any]:
    """The model's preprocessing (fashionblip2.model.processing: ``target_pad``, ``normalise``) as a
    CLIP image processor's config; ``target_pad_ratio`` is the padding before it."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": PIL_BICUBIC,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "target_pad_ratio": TARGET_PAD_RATIO,
    }


def _names_variant(row: pd.Series, variant: str) -> bool:
    """Our rows name a variant alone (Tables 5, 6) or after the model's name, "FashionBLIP-2 (cir_mh)"."""
    return any(isinstance(v, str) and (v == variant or v.endswith(f"({variant})")) for v in row.values)


def _at_stage(row: pd.Series, stage: str) -> bool:
    if "Setting" in row.index and row["Setting"] != STAGE_SETTINGS[stage]:
        return False
    return not (FINE_TUNED_COLUMN in row.index and (row[FINE_TUNED_COLUMN] == "yes") != (stage == "stage2"))


def _interval_columns(columns: list[str]) -> list[str]:
    """The numbers with an interval: a ``<name> low`` and ``<name> high`` column beside them."""
    return [c for c in columns if f"{c} low" in columns and f"{c} high" in columns]


def _of_stage(column: str, stage: str) -> bool:
    """Whether a column is this stage's, or no stage's (Tables 5 and 6 prefix each stage's columns)."""
    return not any(column.startswith(f"{p} ") for s, p in STAGE_PREFIXES.items() if s != stage)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def variant_rows(tables: dict[str, pd.DataFrame], variant: str, stage: str) -> list[TableRow]:
    """The rows of ours (not the paper's) that name ``variant`` at ``stage``, table by table: their
    labels (the text columns) and this stage's numbers, each with its interval and, where the table
    has a chance row (Table 3), the chance level."""
    found = []
    for name, table in tables.items():
        columns = list(table.columns)
        valued = _interval_columns(columns)
        numbers = set(valued) | {f"{c} {b}" for c in valued for b in ("low", "high")}
        metrics = [c for c in valued if _of_stage(c, stage)]
        ours = table[table[ORIGIN_COLUMN] != REPORTED] if ORIGIN_COLUMN in columns else table
        chance = ours[ours.astype(str).apply(lambda r: r.str.startswith(CHANCE)).any(axis=1)]
        for _, row in ours.iterrows():
            if not metrics or not _names_variant(row, variant) or not _at_stage(row, stage):
                continue
            labels = {c: str(row[c]) for c in columns if c not in numbers and c not in (ORIGIN_COLUMN, "Setting")}
            values = [
                (
                    c,
                    _float(row[c]),
                    _float(row[f"{c} low"]),
                    _float(row[f"{c} high"]),
                    _float(chance.iloc[0][c]) if len(chance) else math.nan,
                )
                for c in metrics
            ]
            found.append(TableRow(name, labels, values))
    return found


def _training_record(folder: Path) -> dict[str, Any]:
    path = folder / TRAINING_RECORD
    if not path.exists():
        raise BadInputError(f"{path} is missing: {folder} was not written by the workflow's training")
    record = json.loads(path.read_text())
    require(record, RECORD_KEYS, str(path))
    require(record["variant"], ("losses", "adapters", "matching"), f"{path}'s variant")
    require(record["provenance"], PROVENANCE_KEYS, f"{path}'s provenance")
    return record


def model_files(folder: Path) -> list[str]:
    """The files a release copies, after checking that the folder loads: its config, its weights
    (one file, or an index and the shards it names) and its tokenizer."""
    if not folder.is_dir():
        raise BadInputError(f"{folder}: model folder not found (train it first: snakemake {folder})")
    for required in ("config.json", "tokenizer_config.json"):
        if not (folder / required).exists():
            raise BadInputError(f"{folder}/{required} is missing: the model folder is incomplete")
    if (folder / WEIGHTS).exists():
        weights = [WEIGHTS]
    elif (folder / WEIGHTS_INDEX).exists():
        shards = sorted(set(json.loads((folder / WEIGHTS_INDEX).read_text())["weight_map"].values()))
        absent = [s for s in shards if not (folder / s).exists()]
        if absent:
            raise BadInputError(f"{folder}: weight shard(s) {', '.join(absent)} named by {WEIGHTS_INDEX} are missing")
        weights = [WEIGHTS_INDEX, *shards]
    else:
        raise BadInputError(f"{folder}/{WEIGHTS} is missing: the model folder holds no weights")
    model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    if model_type != FashionBLIP2Config.model_type:
        raise BadInputError(f"{folder}/config.json is a {model_type!r} model, not a trained FashionBLIP-2")
    tokenizer = [f for f in TOKENIZER_FILES if (folder / f).exists()]
    return ["config.json", *weights, *tokenizer, TRAINING_RECORD]


def _settings_lines(record: dict[str, Any]) -> tuple[str, str]:
    """The variant (losses, adapters, matching) and the run's settings, each as a line of text."""
    variant, training = record["variant"], record["training"]
    keys = ("steps", "batch_size", "lr", "schedule", "precision", "seed")
    return (
        f"losses {'+'.join(x.upper() for x in variant['losses'])}, adapters "
        f"{'yes' if variant['adapters'] else 'no'}, matching {variant['matching']}",
        ", ".join(f"{k} {number(training[k], 6)}" for k in keys if k in training) or "settings not recorded",
    )


def _skipped(data: dict[str, Any]) -> list[str]:
    return [
        f"{source} {reason} ({number(n)})"
        for source, reasons in data["skipped"].items()
        for reason, n in reasons.items()
    ]


def _facap_lines(data: dict[str, Any], facap_rows: int) -> str:
    """What a FACap stage read, against the released FACap: training.json records the count, not
    the folder, so a count below the release's says the run read FACap after `facap.filters`."""
    read = data["facap_triplets"]
    if read < facap_rows:
        which = (
            f"FACap after the workflow's `facap.filters`: {number(read)} of this release's {number(facap_rows)} "
            "triplets"
        )
    elif read == facap_rows:
        which = f"FACap: the {number(read)} triplets of this release"
    else:  # FACap was rebuilt since: Snakemake would retrain the model, but a hand-made call may not
        which = f"FACap of {number(read)} triplets, not this release's {number(facap_rows)}"
    used = f"{number(data['used'])} used (fraction {number(data['fraction'])})"
    return "; ".join([which, used, *_skipped(data)])


def _fashioniq_lines(data: dict[str, Any]) -> str:
    items = [f"{k.replace('_', ' ')} {number(v)}" for k, v in data.items() if k != "skipped"]
    return "; ".join(items + _skipped(data)) or "not recorded"


def training_section(record: dict[str, Any], stage1: dict[str, Any] | None, facap_rows: int) -> str:
    """What each stage trained on, with which settings (training.json: the data counts, the variant,
    the settings)."""
    variant_line, settings = _settings_lines(record)
    lines = [f"Variant `{record['name']}`: {variant_line}."]
    if record["stage"] == "stage2":
        if stage1 is not None:
            lines.append(f"- Stage 1, {_facap_lines(stage1['data'], facap_rows)}; {_settings_lines(stage1)[1]}")
        else:
            lines.append(
                f"- Stage 1: none (the variant trains no stage on FACap); stage 2 starts from `{record['start']}`"
            )
        lines.append(f"- Stage 2, fine-tuned on FashionIQ train: {_fashioniq_lines(record['data'])}; {settings}")
    else:
        lines.append(
            f"- Stage 1 (no fine-tuning; started from `{record['start']}`), "
            f"{_facap_lines(record['data'], facap_rows)}; {settings}"
        )
    params = record["parameters"]
    lines.append(
        f"- Parameters: {number(params['total'])} in all, {number(params['trainable'])} trained in this stage "
        "(the vision encoder's own weights stay frozen)"
    )
    return "\n".join(lines) + "\n"


def results_section(rows: list[TableRow]) -> str:
    parts = []
    for row in rows:
        labels = ", ".join(f"{k}: {v}" for k, v in row.labels.items())
        has_chance = any(not math.isnan(m[4]) for m in row.metrics)
        header = ["metric", "value", "95 % interval"] + (["chance"] if has_chance else [])
        body = [
            [name, round(value, 2), f"[{number(round(low, 2))}, {number(round(high, 2))}]"]
            + ([round(chance, 2)] if has_chance else [])
            for name, value, low, high, chance in row.metrics
        ]
        parts.append(f"**{row.table}** ({labels})\n\n{markdown_table(header, body)}\n")
    return "\n".join(parts)


def _model_metadata(variant: str, synthetic: bool, namespace: str) -> dict[str, Any]:
    return {
        # Not transformers' AutoModel: the classes are this project's (FashionBLIP2.from_pretrained).
        "library_name": "fashionblip2",
        "license": "other",
        "license_name": "fashionblip2-weights",
        "tags": [
            "fashion",
            "composed-image-retrieval",
            "blip-2",
            "fashionblip2",
            *(["synthetic"] if synthetic else []),
        ],
        "datasets": [hub_id(namespace, DATASET_REPO)],
    }


def model_card(
    record: dict[str, Any],
    stage1: dict[str, Any] | None,
    rows: list[TableRow],
    image_size: int,
    namespace: str,
    facap_rows: int,
) -> str:
    variant, stage = record["name"], record["stage"]
    synthetic = record["provenance"]["data"] == "synthetic"
    repo = hub_id(namespace, model_repo(variant))
    folder = f"release/model/{variant}"
    parts = [
        front_matter(_model_metadata(variant, synthetic, namespace)),
        f"# FashionBLIP-2 `{variant}` ({STAGE_NAMES[stage]})\n",
    ]
    if synthetic:
        parts.append(
            "> **Synthetic data.** This model is the embedded default's tiny FashionBLIP-2, trained on the workflow's "
            "generated fashion world: it shows the format and the pipeline. Its numbers compare variants of this run "
            "with each other and with chance, not with the paper's.\n"
        )
    parts += [
        "## What it is\n",
        "FashionBLIP-2 (FACap paper, §4) retrieves a target garment image from a reference image and a modification "
        "text: BLIP-2 with adapters in its vision encoder, the reference image and the text fused in the Q-Former, "
        "and multi-head (or global) matching. Query and gallery embeddings are compared by inner product. "
        + (
            "This is the model after fine-tuning on FashionIQ (stage 2)."
            if stage == "stage2"
            else "This is the model trained on FACap only (stage 1, no fine-tuning)."
        )
        + "\n",
        "## Results (this run)\n",
        results_section(rows),
        METRICS_NOTE + "\n",
        "## Training data\n",
        training_section(record, stage1, facap_rows),
        f"FACap is at `{hub_id(namespace, DATASET_REPO)}` (the triplets and their scores; images stay with their "
        "sources). `training.json` in this folder has every setting.\n",
        "## Preprocessing\n",
        f"`{PROCESSOR_CONFIG}`: images of {image_size} x {image_size} pixels, the shortest side resized (bicubic) and "
        "centre-cropped, then normalised with CLIP's mean "
        f"({', '.join(number(m, 8) for m in CLIP_MEAN)}) and std ({', '.join(number(s, 8) for s in CLIP_STD)}). "
        f"An image whose aspect ratio reaches {number(TARGET_PAD_RATIO)} is first padded (black, centred) to that "
        "ratio (`target_pad_ratio`; `fashionblip2.model.processing.target_pad`), as in training: transformers' "
        "`CLIPImageProcessor` has no such step. After it, `AutoImageProcessor.from_pretrained(folder, "
        'backend="pil")` gives the training pixels, exactly where the crop\'s margin is even and shifted by one '
        "pixel where it is odd (training rounds the crop's offset half to even, transformers floors it); "
        "`ImageStore` below gives them exactly.\n",
        "## How to load\n",
        "`FashionBLIP2.from_pretrained` reads local folders only: download the repository first. The classes are "
        "this project's `fashionblip2` package (`pip install -e .` in its checkout).\n",
        "```python\n"
        "import torch\n"
        "from huggingface_hub import snapshot_download\n"
        "from fashionblip2.model import FashionBLIP2\n"
        "from fashionblip2.model.processing import ImageStore\n"
        "from fashionblip2.model.tokenization import load_tokenizer, tokenize\n\n"
        f'folder = snapshot_download("{repo}")   # or the local copy, "{folder}"\n'
        "model = FashionBLIP2.from_pretrained(folder).eval()\n"
        "tokenizer = load_tokenizer(folder)\n"
        'images = ImageStore.for_model({"reference": "dress.jpg", "candidate": "other.jpg"}, model, cache=False)\n'
        'ids, mask = tokenize(tokenizer, ["is red and has shorter sleeves"], model.config.max_text_length)\n'
        "with torch.no_grad():\n"
        '    query = model.query_embedding(images.pixels(["reference"]), ids, mask)\n'
        '    gallery = model.gallery_embedding(images.pixels(["candidate"]))\n'
        "score = query @ gallery.T   # higher: a better match\n"
        "```\n",
        "## Provenance\n",
        provenance_table(record["provenance"]) + "\n",
        "## Licence\n",
        "`other` (`fashionblip2-weights`): the weights were trained on FACap's annotations and FashionIQ, from the "
        "backbone the workflow started from; the terms of that backbone and of the training data's sources (whose "
        "images are not included) apply. Check them before use.\n",
        "## Upload\n",
        "The workflow uploads nothing. To publish this folder (`--exclude` leaves out the empty file Snakemake "
        "marks the folder with):\n",
        f"```bash\n{upload_command(namespace, model_repo(variant), folder, 'model')}\n```\n",
    ]
    if not namespace:
        parts.append(
            f"Replace `{PLACEHOLDER_NAMESPACE}` with your Hub user or organisation (or set `release.namespace` in the "
            "config and run `snakemake release` again).\n"
        )
    return "\n".join(parts)


def prepare_model(
    folder: str | os.PathLike[str],
    tables: dict[str, pd.DataFrame],
    stage1_folder: str | os.PathLike[str] | None,
    namespace: str,
    facap_rows: int,
) -> ModelRelease:
    """Check the folder and find the variant's table rows (a missing one is an error naming the
    variant and the tables), then write its card in memory. ``facap_rows``: the released FACap's
    triplets, which the card compares what stage 1 read with."""
    folder = Path(folder)
    files = model_files(folder)
    record = _training_record(folder)
    variant, stage = record["name"], record["stage"]
    rows = variant_rows(tables, variant, stage)
    if not rows:
        raise BadInputError(
            f"no row of ours in {', '.join(tables) or 'no table'} names variant {variant!r} at {stage} "
            f"({STAGE_SETTINGS[stage].lower()}): add it to the tables (experiments.table3/table4/table5) or "
            "release another variant"
        )
    stage1 = _training_record(Path(stage1_folder)) if stage1_folder is not None else None
    config = json.loads((folder / "config.json").read_text())
    image_size = int(config["blip2"]["vision_config"]["image_size"])
    card = model_card(record, stage1, rows, image_size, namespace, facap_rows)
    return ModelRelease(variant, folder, files, processor_config(image_size), card)


def write_model_release(release: ModelRelease, out_dir: str | os.PathLike[str]) -> int:
    """The folder's files, the processor config and the card, in a temporary folder that replaces
    ``out_dir`` whole when done. Returns the bytes written."""
    with atomic_directory(out_dir) as tmp:
        for name in release.files:
            shutil.copyfile(release.source / name, tmp / name)
        (tmp / PROCESSOR_CONFIG).write_text(json.dumps(release.processor, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(release.card, encoding="utf-8")
        size = sum(p.stat().st_size for p in tmp.iterdir())
    return size
