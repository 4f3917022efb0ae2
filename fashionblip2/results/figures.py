"""The paper's figures: recall against the FACap training fraction (Figure 5, matplotlib) and
contact sheets of retrieval results (Figure 6 and ``fashionblip2 search --sheet``, Pillow)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from fashionblip2.common.images import load_rgb
from fashionblip2.common.io import atomic_path

THUMB = 128
PAD = 8
TEXT_WIDTH = 220
FRAME = (40, 170, 60)


@dataclass
class SheetRow:
    """One line of a contact sheet: the reference, its text, the retrieved images and a note on the right."""

    reference: str
    text: str
    retrieved: Sequence[str]
    labels: Sequence[str]
    framed: Sequence[bool] = field(default_factory=list)
    note: str = ""


def _thumb(path: str) -> Image.Image:
    image = load_rgb(path)
    scale = THUMB / max(image.size)  # small images are enlarged too: 64 px renders stay readable
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    canvas = Image.new("RGB", (THUMB, THUMB), "white")
    canvas.paste(image, ((THUMB - image.width) // 2, (THUMB - image.height) // 2))
    return canvas


def qualitative_row(rankings, dataset: str, which: str, paths: dict[str, str], k: int) -> SheetRow | None:
    """Figure 6's row for one evaluation set: its best-ranked query (``which="best"``) or its worst
    (a failure case), ties broken by reference id; the target framed, and shown after the top-k
    with its rank when it is not among them."""
    if rankings.empty:
        return None
    ordered = rankings.sort_values(["target_rank", "reference"], ascending=[which == "best", True], kind="stable")
    r = ordered.iloc[0]
    top = list(r["top"])[:k]
    labels = [f"#{i}" for i in range(1, len(top) + 1)]
    if r["target"] not in top:
        top, labels = top + [r["target"]], labels + [f"target (#{int(r['target_rank'])})"]
    return SheetRow(
        paths[r["reference"]],
        f"[{dataset}] {r['text']}",
        [paths[t] for t in top],
        labels,
        [t == r["target"] for t in top],
        f"target rank: {int(r['target_rank'])}",
    )


def contact_sheet(rows: Sequence[SheetRow], out: str | os.PathLike[str], title: str = "") -> None:
    """Reference | text | top-k (labels under each, green frame where ``framed``) | note; PNG, atomically."""
    font = ImageFont.load_default(size=13)
    k = max((len(r.retrieved) for r in rows), default=0)
    label_h, title_h = 18, (24 if title else 0)
    row_h = THUMB + label_h + PAD
    width = PAD + THUMB + PAD + TEXT_WIDTH + PAD + k * (THUMB + PAD) + 90
    sheet = Image.new("RGB", (width, title_h + PAD + row_h * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((PAD, PAD), title, fill="black", font=font)
    for n, row in enumerate(rows):
        y = title_h + PAD + n * row_h
        sheet.paste(_thumb(row.reference), (PAD, y))
        draw.text((PAD, y + THUMB + 2), "reference", fill="black", font=font)
        x = PAD + THUMB + PAD
        draw.multiline_text((x, y), "\n".join(textwrap.wrap(row.text, 30)[:8]), fill="black", font=font)
        x += TEXT_WIDTH + PAD
        for i, path in enumerate(row.retrieved):
            sheet.paste(_thumb(path), (x, y))
            if i < len(row.framed) and row.framed[i]:
                draw.rectangle((x - 3, y - 3, x + THUMB + 2, y + THUMB + 2), outline=FRAME, width=4)
            draw.text((x, y + THUMB + 2), row.labels[i] if i < len(row.labels) else "", fill="black", font=font)
            x += THUMB + PAD
        draw.text(
            (PAD + THUMB + PAD + TEXT_WIDTH + PAD + k * (THUMB + PAD), y + THUMB // 2),
            row.note,
            fill="black",
            font=font,
        )
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def recall_curve(
    fractions: Sequence[float],
    series: dict[str, dict[str, Sequence[float]]],
    out: str | os.PathLike[str],
    title: str,
    footnote: str = "",
) -> None:
    """Figure 5: one panel per dataset, a line per metric (R@10, R@50, Avg) against the training fraction;
    a metric given as intervals (``value``, ``low``, ``high``) gets its band."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(6.5 * len(series), 4), squeeze=False)
    for ax, (dataset, metrics) in zip(axes[0], series.items(), strict=True):
        xs = [100 * f for f in fractions]
        for metric, values in metrics.items():
            style = {"linestyle": "--", "color": "grey"} if metric.startswith("chance") else {"marker": "o"}
            points = [getattr(v, "value", v) for v in values]
            (line,) = ax.plot(xs, points, label=metric, **style)
            if all(hasattr(v, "low") for v in values):  # an interval per point: its band
                ax.fill_between(
                    xs, [v.low for v in values], [v.high for v in values], color=line.get_color(), alpha=0.15
                )
        ax.set_title(dataset)
        ax.set_xlabel("FACap training triplets used (%)")
        ax.set_ylabel("Recall (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(title)
    if footnote:
        fig.text(0.01, 0.01, footnote, fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
