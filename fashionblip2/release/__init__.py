"""Stage: the release (rules/release.smk): FACap and the trained models in folders that the Hugging
Face ecosystem loads as they are, each with its card (``datasets.load_dataset("release/facap")``,
``FashionBLIP2.from_pretrained("release/model/<variant>")``). Nothing is uploaded: each card shows
the one command that would.

- :mod:`~fashionblip2.release.dataset`: FACap as Parquet shards and its dataset card.
- :mod:`~fashionblip2.release.model`: a model folder copied, its processor config and model card.

This module holds what both cards share; it imports no model code, so that the dataset's side runs
without PyTorch.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from fashionblip2.common.issues import BadInputError

# Who uploads is unknown to the workflow: with no namespace the cards name this placeholder.
PLACEHOLDER_NAMESPACE = "<user>"
DATASET_REPO = "facap"


def model_repo(variant: str) -> str:
    return f"fashionblip2-{variant}"


def hub_id(namespace: str, repo: str) -> str:
    return f"{namespace or PLACEHOLDER_NAMESPACE}/{repo}"


# Snakemake marks a folder output with this empty file; the Hub repository has no use for it.
SNAKEMAKE_MARKER = ".snakemake_timestamp"


def upload_command(namespace: str, repo: str, folder: str, repo_type: str) -> str:
    """The one command that uploads a release folder. `hf` is huggingface_hub's command since 1.0
    (before it, `huggingface-cli upload` took the same arguments)."""
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    return f"hf upload {hub_id(namespace, repo)} {folder}{kind} --exclude {SNAKEMAKE_MARKER}"


def require(record: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    """The keys a card reads from a record the workflow wrote (a data card, training.json): one
    missing means an older or hand-edited file, named here rather than guessed over in the card."""
    missing = [k for k in keys if k not in record]
    if missing:
        raise BadInputError(f"{where} lacks {', '.join(missing)}: it was written by an older workflow; rebuild it")


PROVENANCE_KEYS = ("data", "run_name", "commit", "package_version")


def provenance_table(provenance: dict[str, Any]) -> str:
    """Where a release's content comes from (the provenance the workflow records in its outputs)."""
    data = provenance["data"]
    return markdown_table(
        ["", ""],
        [
            ["data", "synthetic (the generated world)" if data == "synthetic" else data],
            ["config run", provenance["run_name"]],
            ["commit", provenance["commit"]],
            ["package version", provenance["package_version"]],
        ],
    )


def front_matter(metadata: dict[str, Any]) -> str:
    """A card's YAML header, as the Hub reads it (keys in the given order, so it reads top down)."""
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def number(value: Any, digits: int = 4) -> str:
    """A number for a card's text: rounded, without trailing zeros; a missing one as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A small Markdown table (pipes in cells escaped, so a text cannot break it)."""

    def cell(value: Any) -> str:
        return number(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
