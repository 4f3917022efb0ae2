"""The record every reader produces: one image of the manifest."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ImageRecord:
    """One image as a source describes it, before the image file itself is checked.

    ``origin`` and ``origin_line`` say where the record was read from, so that a problem found
    later (a missing or broken image) can still be reported with its file and line.
    """

    image_id: str
    path: str
    source: str
    category: str
    source_category: str
    item_id: str
    view: str
    split: str
    product_text: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    origin_line: int | None = None


MANIFEST_COLUMNS = [
    "image_id",
    "path",
    "source",
    "category",
    "source_category",
    "item_id",
    "view",
    "split",
    "product_text",
    "attributes",
    "width",
    "height",
    "mode",
]
