"""Every table of the workflow written the same way: Markdown with its notes, CSV, and LaTeX."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from fashionblip2.common.io import write_text_atomic
from fashionblip2.results.significance import Interval


def _has_intervals(column: pd.Series) -> bool:
    return any(isinstance(v, Interval) for v in column)


def as_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """The .csv form: an interval column becomes its value and ``<column> low`` / ``<column> high``."""
    out = {}
    for name, column in frame.items():
        if not _has_intervals(column):
            out[name] = column
            continue
        out[name] = [v.value if isinstance(v, Interval) else v for v in column]
        out[f"{name} low"] = [v.low if isinstance(v, Interval) else float("nan") for v in column]
        out[f"{name} high"] = [v.high if isinstance(v, Interval) else float("nan") for v in column]
    return pd.DataFrame(out)


def _cell(value: object, decimals: int) -> object:
    if isinstance(value, Interval):
        return f"{value.value:.{decimals}f} ± {value.half_width:.{decimals}f}"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{decimals}f}"
    return value


def for_display(frame: pd.DataFrame, decimals: int = 2) -> pd.DataFrame:
    """The .md/.tex form: ``53.20 ± 2.10`` for an interval, numbers with the same decimals."""
    return frame.map(lambda v: _cell(v, decimals))


def _intervals_in(frame: pd.DataFrame) -> bool:
    return any(_has_intervals(c) for _, c in frame.items())


def _markdown(frame: pd.DataFrame, decimals: int) -> str:
    """A table with interval cells is formatted cell by cell (``53.20 ± 2.10``); one without keeps
    tabulate's own number formatting."""
    if _intervals_in(frame):
        return for_display(frame, decimals).to_markdown(index=False, missingval="–", disable_numparse=True)
    return frame.to_markdown(index=False, floatfmt=f".{decimals}f", missingval="–")


def _latex(frame: pd.DataFrame) -> str:
    if _intervals_in(frame):
        return for_display(frame).to_latex(index=False, na_rep="--", escape=True)
    return frame.to_latex(index=False, na_rep="--", escape=True, float_format="%.2f")


@dataclass(frozen=True)
class TableFiles:
    """Every file of one table, each named by the rule that declares it (rules/common.smk,
    table_files): the .md, the .csv, the .tex if the table has one, and a CSV per extra section
    (keyed by the section's heading)."""

    md: str
    csv: str
    tex: str | None = None
    sections: dict[str, str] = field(default_factory=dict)


def write_table(
    frame: pd.DataFrame,
    files: TableFiles,
    title: str,
    notes: list[str],
    sections: dict[str, pd.DataFrame] | None = None,
) -> None:
    """The .md (title, table, notes, then each extra section), the .csv, the .tex when declared, and
    each section's CSV, each written atomically. The .md is written last: it is the rule's report
    item, so it exists only when the others do."""
    sections = sections or {}
    undeclared = sorted(set(sections) - set(files.sections))
    if undeclared:
        raise ValueError(f"no file declared for the section(s) {undeclared} of {files.md}")
    for name, part in sections.items():
        write_text_atomic(files.sections[name], as_numbers(part).to_csv(index=False))
    write_text_atomic(files.csv, as_numbers(frame).to_csv(index=False))
    if files.tex:
        body = _latex(frame)
        comments = "".join(f"% {n}\n" for n in [title, *notes])
        write_text_atomic(files.tex, comments + body)
    md = [f"# {title}", "", _markdown(frame, 2), ""]
    md += [f"- {n}" for n in notes]
    for name, part in sections.items():
        md += ["", f"## {name}", "", _markdown(part, 3)]
    write_text_atomic(files.md, "\n".join(md) + "\n")
