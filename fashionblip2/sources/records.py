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


# How a category reads in a sentence (prompts to the models), for every source; a category not
# listed reads as itself, with underscores as spaces (a catalogue's "t_shirt" is "t shirt").
READABLE_CATEGORIES = {
    "toptee": "top or t-shirt",  # FashionIQ's name for tops and tees
}


def readable_category(category: str) -> str:
    return READABLE_CATEGORIES.get(category, category.replace("_", " "))


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
