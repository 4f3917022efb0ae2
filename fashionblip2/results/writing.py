"""Every table of the workflow written the same way: Markdown with its notes, CSV, and LaTeX."""

from __future__ import annotations

import os

import pandas as pd

from fashionblip2.common.io import write_text_atomic


def write_table(
    frame: pd.DataFrame,
    stem: str | os.PathLike[str],
    title: str,
    notes: list[str],
    tex: bool = False,
    sections: dict[str, pd.DataFrame] | None = None,
) -> None:
    """``<stem>.md`` (title, table, notes, then each extra section) and ``<stem>.csv`` (and ``<stem>.tex``,
    and ``<stem>_<section>.csv`` per section), each written atomically. The .md is written last: it is
    the rule's declared output, so it exists only when the others do."""
    sections = sections or {}
    for name, part in sections.items():
        write_text_atomic(f"{stem}_{name.split(':')[0].lower().replace(' ', '_')}.csv", part.to_csv(index=False))
    write_text_atomic(f"{stem}.csv", frame.to_csv(index=False))
    if tex:
        body = frame.to_latex(index=False, float_format="%.2f", na_rep="--", escape=True)
        comments = "".join(f"% {n}\n" for n in [title, *notes])
        write_text_atomic(f"{stem}.tex", comments + body)
    md = [f"# {title}", "", frame.to_markdown(index=False, floatfmt=".2f", missingval="–"), ""]
    md += [f"- {n}" for n in notes]
    for name, part in sections.items():
        md += ["", f"## {name}", "", part.to_markdown(index=False, floatfmt=".3f", missingval="–")]
    write_text_atomic(f"{stem}.md", "\n".join(md) + "\n")
