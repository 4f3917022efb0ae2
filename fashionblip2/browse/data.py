"""A finished run's tables for the browser: read once at start, then filtered, sorted and paged in
memory, so that a page of 50 rows costs a few array operations whatever the table's size (the
paper's FACap has 227,680 rows; none of them goes to the browser unless it is on the page asked for).

Also the one path check every served file goes through (:func:`safe_file`): images are asked for
by manifest image id (never by a path from the request), and the file an id names must resolve,
symlinks resolved, under the run's image roots. The manifest is the run's own record and trusted;
the roots guard against what the image folders hold (a symlink to a file elsewhere), and the
request can name nothing but an id.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fashionblip2.datasets.caption_text import join_captions
from fashionblip2.datasets.scores import DEFINITIONS, SCORES

# Where a run keeps what the browser reads (the owners of these names are in rules/common.smk).
MANIFEST = "data/manifest/images.parquet"
FASHIONIQ_TRIPLETS = "data/manifest/fashioniq_triplets.parquet"
FACAP_TRIPLETS = "data/facap/triplets.parquet"
TRIPLET_SCORES = "data/scores/triplets.parquet"
ENHFASHIONIQ_CAPTIONS = "data/enhfashioniq/captions"
LEAKAGE_MATCHES = "data/leakage/matches.csv"

DATASETS = {"facap": "FACap", "enhfashioniq": "enhFashionIQ", "fashioniq": "FashionIQ"}
# Every column of the explorer's table; a dataset that lacks one has empty values there.
COLUMNS = [
    "dataset",
    "category",
    "source",
    "split",
    "reference_id",
    "target_id",
    "text",
    "reference_caption",
    "target_caption",
    *SCORES,
]
TEXT_SORT_KEYS = ("dataset", "category", "source", "text")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})
MAX_PAGE_SIZE = 200
MAX_WORDS_CHARS = 200


class BrowseError(Exception):
    """A request the browser refuses, with the HTTP status and a message for the person."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


# --- the path check ---------------------------------------------------------------------------


def safe_file(candidate: str | os.PathLike[str], roots: Iterable[Path], suffixes: Iterable[str]) -> Path:
    """``candidate`` as a real path if, with every symlink and ``..`` resolved, it is a regular file
    under one of ``roots`` (themselves resolved) with one of ``suffixes``; else a BrowseError (404,
    saying no more than that it is not served: the message goes to the browser)."""
    real = Path(os.path.realpath(candidate))
    if not any(real.is_relative_to(Path(os.path.realpath(r))) for r in roots):
        raise BrowseError("not served: the file is outside the run's image folders", 404)
    if real.suffix.lower() not in set(suffixes):
        raise BrowseError("not served: not an image file", 404)
    if not real.is_file():
        raise BrowseError("not served: no such file", 404)
    return real


class ImagePaths:
    """Image id -> file, for the manifest's images (and an index's or the leakage check's ones that
    the manifest lacks). The roots are each source's common folder (plus any ``extra_roots``): a
    symlink in an image folder that points outside them is not followed."""

    def __init__(self, root: Path, manifest: pd.DataFrame, extra_roots: Sequence[str | os.PathLike[str]] = ()):
        self.root = root
        self.paths: dict[str, str] = dict(zip(manifest["image_id"], manifest["path"], strict=True))
        roots = set()
        for _, group in manifest.groupby("source", sort=True):
            parents = {os.path.normpath(self._absolute(p)).rsplit(os.sep, 1)[0] for p in group["path"]}
            roots.add(Path(os.path.commonpath(sorted(parents))))
        roots.update(Path(r).resolve() for r in extra_roots)
        # A manifest whose images share nothing but "/" would open the whole disk: refuse that root.
        self.roots = sorted({Path(os.path.realpath(r)) for r in roots if Path(r).parent != Path(r)})

    def _absolute(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(self.root, path)

    def add(self, ids: Iterable[str], paths: Iterable[str]) -> None:
        """Ids the manifest does not hold (their files still have to be under the roots)."""
        for i, p in zip(ids, paths, strict=True):
            self.paths.setdefault(str(i), str(p))

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.paths

    def file(self, image_id: str) -> Path:
        if image_id not in self.paths:
            raise BrowseError(f"unknown image id {image_id[:200]!r}", 404)
        return safe_file(self._absolute(self.paths[image_id]), self.roots, IMAGE_SUFFIXES)


# --- the triplets ------------------------------------------------------------------------------


def _flags(frame: pd.DataFrame) -> pd.Series:
    """The flag columns (``*_issue``) of a score table as one '; '-joined string per row."""
    joined = pd.Series("", index=frame.index, dtype="str")
    for column in (c for c in frame.columns if c.endswith("_issue")):
        # Column by column, vectorised: a row-wise apply takes seconds on 227,680 rows.
        values = frame[column].fillna("").astype(str)
        part = (column.removesuffix("_issue") + ": " + values).where(values != "", "")
        glue = pd.Series(np.where((joined != "") & (part != ""), "; ", ""), index=frame.index, dtype="str")
        joined = joined + glue + part
    return joined


def _fashioniq_text(captions: Any) -> str:
    captions = [str(c) for c in (captions if captions is not None else [])]
    if len(captions) >= 2:
        return join_captions(captions)
    return captions[0] if captions else ""


def read_triplets(root: Path) -> pd.DataFrame:
    """FACap, enhFashionIQ and FashionIQ as one frame of :data:`COLUMNS` plus ``flags``: whichever
    of their files the run has."""
    frames = []
    scores = pd.read_parquet(root / TRIPLET_SCORES) if (root / TRIPLET_SCORES).exists() else None
    if scores is not None:
        scores = scores.assign(flags=_flags(scores))
    if (root / FACAP_TRIPLETS).exists():
        facap = pd.read_parquet(root / FACAP_TRIPLETS).assign(dataset="facap")
        if scores is not None:  # the flags live in the score table only
            keys = scores.loc[scores["dataset"] == "facap", ["reference_id", "target_id", "flags"]]
            facap = facap.merge(keys.drop_duplicates(["reference_id", "target_id"]), how="left")
        frames.append(facap)
    if scores is not None and (scores["dataset"] == "enhfashioniq").any():
        frames.append(scores[scores["dataset"] == "enhfashioniq"].assign(split="val"))
    elif (root / ENHFASHIONIQ_CAPTIONS).is_dir():  # a run without the score table: the release itself
        rows = []
        for path in sorted((root / ENHFASHIONIQ_CAPTIONS).glob("cap.*.*.json")):
            _, category, split, _ = path.name.split(".")
            for r in json.loads(path.read_text(encoding="utf-8")):
                rows.append(
                    {
                        "category": category,
                        "split": split,
                        "source": "fashioniq",
                        "text": r["captions"][0],
                        "reference_id": f"fashioniq:{category}:{r['candidate']}",
                        "target_id": f"fashioniq:{category}:{r['target']}",
                        **r.get("scores", {}),
                    }
                )
        frames.append(pd.DataFrame(rows).assign(dataset="enhfashioniq"))
    if (root / FASHIONIQ_TRIPLETS).exists():
        fiq = pd.read_parquet(root / FASHIONIQ_TRIPLETS)
        frames.append(
            pd.DataFrame(
                {
                    "dataset": "fashioniq",
                    "category": fiq["category"],
                    "source": "fashioniq",
                    "split": fiq["split"],
                    # FashionIQ's ids name the product; the manifest's name the dataset and category too.
                    "reference_id": "fashioniq:" + fiq["category"] + ":" + fiq["candidate"],
                    "target_id": "fashioniq:" + fiq["category"] + ":" + fiq["target"],
                    "text": fiq["captions"].map(_fashioniq_text),
                }
            )
        )
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in SCORES else "str") for c in [*COLUMNS, "flags"]})
    return pd.concat(frames, ignore_index=True).reindex(columns=[*COLUMNS, "flags"])


@dataclass(frozen=True)
class TripletQuery:
    """One explorer request: filters, sort, page. Empty filters keep every row."""

    datasets: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    ranges: tuple[tuple[str, float | None, float | None], ...] = ()
    flagged: bool = False
    sort: str = ""
    descending: bool = False
    page: int = 0
    size: int = 50

    def key(self) -> tuple:
        """What decides the rows and their order (not the page): the cache key."""
        return (
            self.datasets,
            self.categories,
            self.sources,
            self.words,
            self.ranges,
            self.flagged,
            self.sort,
            self.descending,
        )


def _number(value: str, name: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise BrowseError(f"{name} must be a number, not {value[:50]!r}") from None
    if not math.isfinite(number):
        raise BrowseError(f"{name} must be a finite number, not {value[:50]!r}")
    return number


def _integer(value: str, name: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BrowseError(f"{name} must be a whole number, not {value[:50]!r}") from None
    if not low <= number <= high:
        raise BrowseError(f"{name} must be between {low} and {high}, not {number}")
    return number


@dataclass
class TripletTable:
    """The explorer's rows, with the arrays its filters and sorts read, built once."""

    frame: pd.DataFrame
    cache_size: int = 32
    _order_cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _ranks: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        frame = self.frame.reset_index(drop=True)
        for column in ("dataset", "category", "source"):
            frame[column] = frame[column].astype("category")
        self.frame = frame
        self.scores = [c for c in SCORES if c in frame.columns and frame[c].notna().any()]
        self._values = {c: frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in self.scores}
        self._codes = {c: frame[c].cat.codes.to_numpy() for c in ("dataset", "category", "source")}
        self._flagged = frame["flags"].fillna("").astype(str).str.len().to_numpy() > 0
        # Word search reads one lower-cased string per row (text and both captions), searched by
        # Arrow's substring kernel: no Python loop over 227,680 rows.
        haystack = (
            frame["text"].fillna("").astype(str)
            + "\n"
            + frame["reference_caption"].fillna("").astype(str)
            + "\n"
            + frame["target_caption"].fillna("").astype(str)
        )
        self._haystack = pc.utf8_lower(pa.array(haystack.to_numpy(dtype=object), type=pa.large_string()))

    def __len__(self) -> int:
        return len(self.frame)

    # -- what the page offers --------------------------------------------------------------------

    def facets(self) -> dict[str, Any]:
        counts = self.frame["dataset"].value_counts()
        score_ranges = {
            c: {"min": float(np.nanmin(v)), "max": float(np.nanmax(v)), "definition": DEFINITIONS.get(c, "")}
            for c, v in self._values.items()
        }
        return {
            "datasets": [
                {"name": d, "label": DATASETS.get(d, d), "rows": int(counts.get(d, 0))}
                for d in DATASETS
                if counts.get(d, 0)
            ],
            "categories": sorted(map(str, self.frame["category"].cat.categories)),
            "sources": sorted(map(str, self.frame["source"].cat.categories)),
            "scores": score_ranges,
            "sort_keys": [*TEXT_SORT_KEYS, *self.scores],
            "rows": len(self),
            "flagged": int(self._flagged.sum()),
        }

    def parse(self, params: Mapping[str, Any]) -> TripletQuery:
        """A TripletQuery from query-string parameters (``getlist`` for repeatable ones); unknown
        names, values and numbers are a BrowseError that names them."""
        getlist = params.getlist if hasattr(params, "getlist") else lambda k: [params[k]] if k in params else []
        known = {"dataset", "category", "source", "q", "flagged", "sort", "order", "page", "size"}
        known |= {f"{b}_{s}" for s in self.scores for b in ("min", "max")}
        unknown = sorted(set(params) - known)
        if unknown:
            raise BrowseError(f"unknown parameter(s): {', '.join(u[:50] for u in unknown)}")

        def values(name: str, allowed: Iterable[str]) -> tuple[str, ...]:
            chosen = tuple(v for raw in getlist(name) for v in raw.split(",") if v)
            allowed = set(allowed)
            bad = [v for v in chosen if v not in allowed]
            if bad:
                raise BrowseError(f"unknown {name} {bad[0][:50]!r}; known: {', '.join(sorted(allowed))}")
            return chosen

        words_text = " ".join(getlist("q"))
        if len(words_text) > MAX_WORDS_CHARS:
            raise BrowseError(f"the words filter has {len(words_text):,} characters; at most {MAX_WORDS_CHARS}")
        ranges = []
        for score in self.scores:
            low = _number(params.get(f"min_{score}", ""), f"min_{score}")
            high = _number(params.get(f"max_{score}", ""), f"max_{score}")
            if low is not None or high is not None:
                ranges.append((score, low, high))
        sort = params.get("sort", "")
        if sort and sort not in (*TEXT_SORT_KEYS, *self.scores):
            raise BrowseError(f"cannot sort by {sort[:50]!r}; sort keys: {', '.join((*TEXT_SORT_KEYS, *self.scores))}")
        order = params.get("order", "asc")
        if order not in ("asc", "desc"):
            raise BrowseError(f"order must be asc or desc, not {order[:20]!r}")
        return TripletQuery(
            datasets=values("dataset", self._codes_of("dataset")),
            categories=values("category", self._codes_of("category")),
            sources=values("source", self._codes_of("source")),
            words=tuple(w for w in words_text.lower().split() if w),
            ranges=tuple(ranges),
            flagged=params.get("flagged", "") in ("1", "true", "on"),
            sort=sort,
            descending=order == "desc",
            page=_integer(params.get("page", "0"), "page", 0, 10**9),
            size=_integer(params.get("size", "50"), "size", 1, MAX_PAGE_SIZE),
        )

    def _codes_of(self, column: str) -> list[str]:
        return list(map(str, self.frame[column].cat.categories))

    # -- rows -------------------------------------------------------------------------------------

    def _mask(self, query: TripletQuery) -> np.ndarray:
        mask = np.ones(len(self), dtype=bool)
        for column, chosen in (("dataset", query.datasets), ("category", query.categories), ("source", query.sources)):
            if chosen:
                categories = list(map(str, self.frame[column].cat.categories))
                mask &= np.isin(self._codes[column], [categories.index(c) for c in chosen])
        for score, low, high in query.ranges:
            values = self._values[score]
            mask &= ~np.isnan(values)  # a row without the score is not in any range of it
            if low is not None:
                mask &= values >= low
            if high is not None:
                mask &= values <= high
        if query.flagged:
            mask &= self._flagged
        for word in query.words:
            mask &= pc.match_substring(self._haystack, word).to_numpy(zero_copy_only=False)
        return mask

    def _rank(self, column: str) -> np.ndarray:
        """Each row's place in ``column``'s sorted order, computed once per column (Arrow sorts
        227,680 strings in tens of milliseconds; a page then sorts integers)."""
        if column not in self._ranks:
            values = pa.array(self.frame[column].astype(str).to_numpy(dtype=object))
            self._ranks[column] = pc.rank(values, sort_keys="ascending", tiebreaker="first").to_numpy()
        return self._ranks[column]

    def order(self, query: TripletQuery) -> np.ndarray:
        """The filtered rows' positions, sorted: cached by filters and sort, so that the next page
        only slices."""
        key = query.key()
        with self._lock:
            if key in self._order_cache:
                self._order_cache.move_to_end(key)
                return self._order_cache[key]
        rows = np.flatnonzero(self._mask(query))
        if query.sort in self._values:
            values = self._values[query.sort][rows]
            # Rows without the score go last in either direction; ties keep the table's order.
            keyed = np.where(np.isnan(values), np.inf, -values if query.descending else values)
            rows = rows[np.argsort(keyed, kind="stable")]
        elif query.sort:
            ranks = self._rank(query.sort)[rows]
            rows = rows[np.argsort(-ranks if query.descending else ranks, kind="stable")]
        with self._lock:
            self._order_cache[key] = rows
            while len(self._order_cache) > self.cache_size:
                self._order_cache.popitem(last=False)
        return rows

    def page(self, query: TripletQuery) -> dict[str, Any]:
        rows = self.order(query)
        start = query.page * query.size
        chosen = rows[start : start + query.size]
        return {
            "total": int(len(rows)),
            "page": query.page,
            "size": query.size,
            "pages": max(1, math.ceil(len(rows) / query.size)),
            "rows": [self.row(int(i)) for i in chosen],
        }

    def row(self, i: int) -> dict[str, Any]:
        r = self.frame.iloc[i]

        def text(v: Any) -> str | None:
            return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(v)

        return {
            "row": i,
            **{c: text(r[c]) for c in COLUMNS if c not in SCORES},
            "scores": {
                c: (None if math.isnan(self._values[c][i]) else round(float(self._values[c][i]), 4))
                for c in self.scores
            },
            "flags": [f for f in (text(r["flags"]) or "").split("; ") if f],
        }


# --- the other tables --------------------------------------------------------------------------


def read_manifest(root: Path) -> pd.DataFrame:
    if not (root / MANIFEST).exists():
        raise FileNotFoundError(
            f"{root / MANIFEST}: not a finished run (no image manifest); run the workflow first (make demo)"
        )
    columns = ["image_id", "path", "source", "category", "split"]
    return pd.read_parquet(root / MANIFEST, columns=columns)


class ImageTable:
    """The manifest's images for the gallery view: filtered by source, category and split, paged."""

    def __init__(self, manifest: pd.DataFrame):
        self.frame = manifest[["image_id", "source", "category", "split"]].reset_index(drop=True).astype(str)

    def facets(self) -> dict[str, list[str]]:
        return {c: sorted(self.frame[c].unique()) for c in ("source", "category", "split")}

    def page(self, params: Mapping[str, str], only: Sequence[str] | None = None) -> dict[str, Any]:
        known = {"source", "category", "split", "q", "model", "page", "size"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise BrowseError(f"unknown parameter(s): {', '.join(u[:50] for u in unknown)}")
        mask = np.ones(len(self.frame), dtype=bool)
        for column in ("source", "category", "split"):
            if params.get(column):
                mask &= (self.frame[column] == params[column]).to_numpy()
        if params.get("q"):
            needle = params["q"][:MAX_WORDS_CHARS].lower()
            mask &= self.frame["image_id"].str.lower().str.contains(needle, regex=False).to_numpy()
        if only is not None:
            mask &= self.frame["image_id"].isin(only).to_numpy()
        rows = np.flatnonzero(mask)
        page = _integer(params.get("page", "0"), "page", 0, 10**9)
        size = _integer(params.get("size", "60"), "size", 1, MAX_PAGE_SIZE)
        chosen = self.frame.iloc[rows[page * size : (page + 1) * size]]
        return {
            "total": int(len(rows)),
            "page": page,
            "size": size,
            "pages": max(1, math.ceil(len(rows) / size)),
            "rows": chosen.to_dict("records"),
        }


class LeakageTable:
    """The leakage check's matched pairs (near duplicates and semantic matches), paged."""

    COLUMNS = ("kind", "image_a", "image_b", "heldout_sets", "exact", "hash_distance", "cosine", "levels")

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame.reset_index(drop=True)

    @classmethod
    def read(cls, root: Path) -> LeakageTable | None:
        path = root / LEAKAGE_MATCHES
        return cls(pd.read_csv(path, dtype={"image_a": str, "image_b": str})) if path.exists() else None

    def page(self, params: Mapping[str, str]) -> dict[str, Any]:
        unknown = sorted(set(params) - {"level", "page", "size"})
        if unknown:
            raise BrowseError(f"unknown parameter(s): {', '.join(u[:50] for u in unknown)}")
        frame = self.frame
        if params.get("level"):
            frame = frame[frame["levels"].astype(str).str.split(";").map(lambda ls: params["level"] in ls)]
        page = _integer(params.get("page", "0"), "page", 0, 10**9)
        size = _integer(params.get("size", "50"), "size", 1, MAX_PAGE_SIZE)
        chosen = frame.iloc[page * size : (page + 1) * size]
        columns = [c for c in self.COLUMNS if c in chosen.columns]
        rows = [
            {c: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for c, v in r.items()}
            for r in chosen[columns].to_dict("records")
        ]
        return {
            "total": len(frame),
            "page": page,
            "size": size,
            "pages": max(1, math.ceil(len(frame) / size)),
            "rows": rows,
        }
