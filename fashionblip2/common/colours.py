"""Basic colour names and a typical RGB for each: the synthetic world paints with them, and the
offline captioner names a garment's pixels with them."""

NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (28, 28, 30),
    "white": (240, 240, 236),
    "grey": (128, 128, 132),
    "beige": (214, 196, 160),
    "brown": (120, 78, 44),
    "red": (200, 30, 40),
    "pink": (236, 140, 176),
    "orange": (240, 130, 30),
    "yellow": (240, 210, 50),
    "green": (40, 140, 70),
    "blue": (40, 90, 200),
    "navy": (25, 35, 90),
    "purple": (120, 60, 160),
}
