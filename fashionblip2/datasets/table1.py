"""Table 1: the datasets compared (the paper's rows as reported, FACap and FashionIQ computed from the files)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

TOKENISATION = "lower-cased text split on whitespace"
TABLE1_COLUMNS = ["Dataset", "Rows from", "#Uniq imgs", "Ann. type", "Pair type", "#Pairs", "Vocab size", "Avg. length"]
# Table 1 of the paper, as reported there (not recomputed).
TABLE1_REPORTED = [
    ("MSCOCO", 328_000, "Manual", "<img, caption>", 1_640_000, 26_848, 10.5),
    ("FACAD", 993_000, "Web", "<img, caption>", 130_000, 15_807, 21.0),
    ("FashionIQ", 25_136, "Manual", "<ref img, mod txt, tgt img>", 18_000, 4_401, 6.36),
    ("FACap (mod. texts)", 227_680, "Auto", "<ref img, mod txt, tgt img>", 227_680, 9_273, 23.38),
    ("FACap (captions)", 227_680, "Auto", "<img, caption>", 227_680, 18_689, 82.90),
]


def tokens(text: str) -> list[str]:
    return text.lower().split()


def text_stats(texts: Iterable[str]) -> tuple[int, float]:
    """(vocabulary size, average length in tokens)."""
    vocab: set[str] = set()
    n = total = 0
    for t in texts:
        words = tokens(t)
        vocab.update(words)
        total += len(words)
        n += 1
    return len(vocab), (total / n if n else 0.0)


def table1_row(
    name: str, origin: str, images: int, annotation: str, pair_type: str, texts: list[str]
) -> dict[str, Any]:
    vocab, length = text_stats(texts)
    return dict(
        zip(
            TABLE1_COLUMNS,
            [name, origin, images, annotation, pair_type, len(texts), vocab, round(length, 2)],
            strict=True,
        )
    )


def facap_rows(facap_dir: str | os.PathLike[str], origin: str, qualifier: str = "") -> list[dict[str, Any]]:
    """FACap's two rows; ``qualifier`` tells a filtered FACap from the one before ("filtered")."""
    extra = f", {qualifier}" if qualifier else ""
    import json

    root = Path(facap_dir)
    triplets, images, captions = [], set(), {}
    for f in sorted(root.glob("cir_triplets/*_train_triplets.json")):
        for row in json.loads(f.read_text()):
            triplets.append(row["captions"][0])
            images.update((row["candidate"], row["target"]))
    for f in sorted(root.glob("image_captions/*_train_captions.json")):
        captions.update(json.loads(f.read_text()))
    return [
        table1_row(f"FACap (mod. texts{extra})", origin, len(images), "Auto", "<ref img, mod txt, tgt img>", triplets),
        table1_row(
            f"FACap (captions{extra})", origin, len(captions), "Auto", "<img, caption>", list(captions.values())
        ),
    ]


def fashioniq_row(triplets: pd.DataFrame, origin: str) -> dict[str, Any]:
    """FashionIQ train: each relative caption is a text; a pair is a triplet."""
    images = len(set(triplets["candidate"]) | set(triplets["target"]))
    texts = [c for caps in triplets["captions"] for c in caps]
    row = table1_row("FashionIQ (train)", origin, images, "Manual", "<ref img, mod txt, tgt img>", texts)
    row["#Pairs"] = len(triplets)
    return row


def table1(computed: list[dict[str, Any]]) -> pd.DataFrame:
    reported = [
        dict(zip(TABLE1_COLUMNS, [name, "reported by the paper", *rest], strict=True))
        for name, *rest in TABLE1_REPORTED
    ]
    return pd.DataFrame(computed + reported, columns=TABLE1_COLUMNS)
