"""Rendering synthetic garments with PIL.

A garment is a silhouette (category, length, fit, sleeves, neckline) filled with a pattern in
one or two colours, with a light fabric texture. Views of one item differ by small shifts,
scale, rotation, lighting and mirroring, like several product photos of the same item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter

from fashionblip2.synthetic.attributes import COLOURS, Garment

SUPERSAMPLE = 2
SKIN = (224, 182, 150)
HAIR = (60, 40, 30)
PRODUCT_BACKGROUND = (250, 250, 250)
STUDIO_BACKGROUND = (214, 214, 218)

# Vertical positions (fractions of the canvas) of the hem per length.
LOWER_HEM = {"mini": 0.60, "knee": 0.71, "midi": 0.82, "maxi": 0.94, "shorts": 0.60, "cropped": 0.80, "full": 0.94}
UPPER_HEM = {"cropped": 0.46, "regular": 0.56, "long": 0.66}
SLEEVE_LENGTH = {"sleeveless": 0.0, "short": 0.10, "elbow": 0.19, "long": 0.33}
FIT_WIDTH = {"slim": 0.86, "regular": 1.0, "loose": 1.2}


@dataclass(frozen=True)
class View:
    """How one photo of an item is taken."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    angle: float = 0.0
    brightness: float = 1.0
    mirror: bool = False

    @staticmethod
    def sample(rng: np.random.Generator, index: int) -> View:
        if index == 0:  # the first view is the canonical front photo
            return View()
        return View(
            dx=float(rng.uniform(-0.05, 0.05)),
            dy=float(rng.uniform(-0.04, 0.04)),
            scale=float(rng.uniform(0.9, 1.05)),
            angle=float(rng.uniform(-6, 6)),
            brightness=float(rng.uniform(0.88, 1.1)),
            mirror=bool(rng.random() < 0.3),
        )


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in colour)  # type: ignore[return-value]


def _pattern_image(size: int, g: Garment, rng: np.random.Generator) -> Image.Image:
    c1, c2 = COLOURS[g.colour], COLOURS[g.colour2]
    img = Image.new("RGB", (size, size), c1)
    draw = ImageDraw.Draw(img)
    period = max(4, size // 12)
    if g.pattern == "stripes":
        for y in range(0, size, period):
            draw.rectangle([0, y, size, y + period // 2 - 1], fill=c2)
    elif g.pattern == "dots":
        r = max(1, period // 4)
        for row, y in enumerate(range(period // 2, size, period)):
            offset = period // 2 if row % 2 else 0
            for x in range(offset, size + period, period):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=c2)
    elif g.pattern == "plaid":
        band = max(2, period // 3)
        overlay = Image.new("RGB", (size, size), c1)
        od = ImageDraw.Draw(overlay)
        for v in range(0, size, period * 2):
            od.rectangle([v, 0, v + band, size], fill=c2)
            od.rectangle([0, v, size, v + band], fill=c2)
        img = Image.blend(img, overlay, 0.7)
    elif g.pattern == "floral":
        n = int(size * size / (period * period) * 0.6)
        r = max(2, period // 3)
        centre = _shade(c2, 0.6) if sum(c2) > 300 else _shade(c2, 1.6)
        for _ in range(n):
            x, y = (int(v) for v in rng.integers(0, size, size=2))
            for k in range(5):
                a = 2 * math.pi * k / 5
                px, py = x + r * math.cos(a), y + r * math.sin(a)
                draw.ellipse([px - r / 1.6, py - r / 1.6, px + r / 1.6, py + r / 1.6], fill=c2)
            draw.ellipse([x - r / 2.5, y - r / 2.5, x + r / 2.5, y + r / 2.5], fill=centre)
    elif g.pattern == "colour block":
        draw.rectangle([size // 2, 0, size, size], fill=c2)
    return img


def _fabric_texture(img: Image.Image, fabric: str, rng: np.random.Generator) -> Image.Image:
    size = img.size[0]
    if fabric == "knitted":
        tex = Image.new("L", img.size, 255)
        d = ImageDraw.Draw(tex)
        for y in range(0, size, 3):
            d.line([0, y, size, y], fill=200)
        return ImageChops.multiply(img, Image.merge("RGB", [tex] * 3))
    if fabric == "denim":
        tex = Image.new("L", img.size, 255)
        d = ImageDraw.Draw(tex)
        for x in range(-size, size, 4):
            d.line([x, 0, x + size, size], fill=215)
        return ImageChops.multiply(img, Image.merge("RGB", [tex] * 3))
    if fabric == "leather":
        ramp = np.linspace(1.25, 0.85, size, dtype=np.float32)[None, :, None]
        arr = np.asarray(img, dtype=np.float32) * ramp
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if fabric == "chiffon":
        return Image.blend(img, Image.new("RGB", img.size, (255, 255, 255)), 0.25)
    if fabric == "furry":
        noise = rng.normal(0, 18, size=(size, size, 1)).astype(np.float32)
        arr = np.asarray(img, dtype=np.float32) + noise
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


def _upper_body(g: Garment, w: float, hem: float) -> tuple[list[list[tuple[float, float]]], tuple[float, float]]:
    """Polygons (torso and sleeves) for garments covering the upper body, and the shoulder points."""
    sh, waist_y = 0.17 * w, 0.45
    shoulder_y = 0.22
    polys = []
    if g.garment == "dress":
        flare = {"slim": 0.15, "regular": 0.22, "loose": 0.3}[g.fit]
        torso = [
            (0.5 - sh, shoulder_y),
            (0.5 + sh, shoulder_y),
            (0.5 + 0.13 * w, waist_y),
            (0.5 + flare, hem),
            (0.5 - flare, hem),
            (0.5 - 0.13 * w, waist_y),
        ]
    else:
        hw = 0.15 * w
        torso = [(0.5 - sh, shoulder_y), (0.5 + sh, shoulder_y), (0.5 + hw, hem), (0.5 - hw, hem)]
    polys.append(torso)
    length = SLEEVE_LENGTH[g.sleeve or "sleeveless"]
    if length > 0:
        width = 0.075 * w
        for side in (-1, 1):
            x0 = 0.5 + side * sh
            angle = math.radians(22)
            dx, dy = side * math.sin(angle) * length, math.cos(angle) * length
            polys.append(
                [
                    (x0, shoulder_y),
                    (x0 - side * 0.01, shoulder_y + width),
                    (x0 + dx - side * 0.005, shoulder_y + dy + width),
                    (x0 + dx + side * width, shoulder_y + dy),
                ]
            )
    return polys, (sh, shoulder_y)


def _lower_body(g: Garment, w: float) -> list[list[tuple[float, float]]]:
    waist_y, hem = 0.40, LOWER_HEM[g.length]
    if g.garment == "skirt":
        flare = {"slim": 0.14, "regular": 0.2, "loose": 0.28}[g.fit]
        return [[(0.5 - 0.13 * w, waist_y), (0.5 + 0.13 * w, waist_y), (0.5 + flare, hem), (0.5 - flare, hem)]]
    leg = {"slim": 0.065, "regular": 0.085, "loose": 0.11}[g.fit]
    crotch = 0.53
    left = [(0.5 - 0.13 * w, waist_y), (0.5, waist_y), (0.5, crotch), (0.5 - 0.01, hem), (0.5 - 0.02 - 2 * leg, hem)]
    right = [(0.5, waist_y), (0.5 + 0.13 * w, waist_y), (0.5 + 0.02 + 2 * leg, hem), (0.5 + 0.01, hem), (0.5, crotch)]
    return [left, right]


def _scaled(poly: list[tuple[float, float]], size: int) -> list[tuple[float, float]]:
    return [(x * size, y * size) for x, y in poly]


def render_garment(
    g: Garment,
    view: View,
    size: int,
    rng: np.random.Generator,
    *,
    worn: bool = False,
) -> Image.Image:
    """Render one photo of a garment as an RGB image of ``size`` x ``size`` pixels.

    ``worn`` draws a simple model wearing the garment on a studio background (DeepFashion style);
    otherwise the garment is a product shot on white (Fashion200k, FashionIQ style).
    """
    big = size * SUPERSAMPLE
    background = STUDIO_BACKGROUND if worn else PRODUCT_BACKGROUND
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    w = FIT_WIDTH[g.fit]

    if worn:
        draw.ellipse(_box(0.5, 0.1, 0.055, 0.065, big), fill=SKIN)
        draw.pieslice(_box(0.5, 0.085, 0.06, 0.05, big), 180, 360, fill=HAIR)
        draw.rectangle([0.48 * big, 0.16 * big, 0.52 * big, 0.23 * big], fill=SKIN)
        for side in (-1, 1):  # arms, then legs
            draw.line(
                [((0.5 + side * 0.17) * big, 0.23 * big), ((0.5 + side * 0.27) * big, 0.58 * big)],
                fill=SKIN,
                width=int(0.05 * big),
            )
            draw.line(
                [((0.5 + side * 0.06) * big, 0.5 * big), ((0.5 + side * 0.08) * big, 0.97 * big)],
                fill=SKIN,
                width=int(0.06 * big),
            )

    if g.garment in ("skirt", "pants"):
        polys = _lower_body(g, w)
        if worn:  # a plain top so the figure is dressed
            draw.polygon(_scaled([(0.33, 0.22), (0.67, 0.22), (0.65, 0.44), (0.35, 0.44)], big), fill=(236, 236, 236))
    else:
        hem = LOWER_HEM[g.length] if g.garment == "dress" else UPPER_HEM[g.length]
        polys, _ = _upper_body(g, w, hem)
        if worn and g.garment != "dress":  # plain trousers under a top
            draw.polygon(_scaled([(0.38, 0.55), (0.62, 0.55), (0.61, 0.95), (0.39, 0.95)], big), fill=(70, 70, 80))

    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    for poly in polys:
        mdraw.polygon(_scaled(poly, big), fill=255)
    fill = _fabric_texture(_pattern_image(big, g, rng), g.fabric, rng)
    canvas.paste(fill, (0, 0), mask)
    edge = _shade(COLOURS[g.colour], 0.55)
    for poly in polys:
        draw.polygon(_scaled(poly, big), outline=edge, width=max(1, big // 90))

    _draw_neckline(draw, g, big, skin=SKIN if worn else background, edge=edge)
    if g.garment == "shirt":  # a button placket
        for k in range(4):
            y = (0.3 + 0.06 * k) * big
            draw.ellipse(_box(0.5, y / big, 0.008, 0.008, big), fill=_shade(COLOURS[g.colour], 0.4))
    if g.garment == "jacket":
        draw.line([(0.5 * big, 0.3 * big), (0.5 * big, UPPER_HEM[g.length] * big)], fill=edge, width=max(1, big // 64))

    return _apply_view(canvas, view, size, background)


def _box(cx: float, cy: float, rx: float, ry: float, big: int) -> list[float]:
    return [(cx - rx) * big, (cy - ry) * big, (cx + rx) * big, (cy + ry) * big]


def _draw_neckline(
    draw: ImageDraw.ImageDraw, g: Garment, big: int, skin: tuple[int, int, int], edge: tuple[int, int, int]
) -> None:
    n = g.neckline
    if n is None:
        return
    top = 0.22
    if n == "v-neck":
        draw.polygon(_scaled([(0.44, top), (0.56, top), (0.5, top + 0.12)], big), fill=skin)
    elif n == "round":
        draw.pieslice(_box(0.5, top, 0.065, 0.05, big), 0, 180, fill=skin)
    elif n == "square":
        draw.rectangle([0.44 * big, top * big, 0.56 * big, (top + 0.07) * big], fill=skin)
    elif n == "turtleneck":
        draw.rectangle([0.455 * big, (top - 0.06) * big, 0.545 * big, (top + 0.01) * big], fill=_shade(edge, 1.5))
    elif n == "collar":
        draw.polygon(
            _scaled([(0.45, top), (0.5, top + 0.05), (0.5, top + 0.09), (0.42, top + 0.05)], big), fill=(245, 245, 245)
        )
        draw.polygon(
            _scaled([(0.55, top), (0.5, top + 0.05), (0.5, top + 0.09), (0.58, top + 0.05)], big), fill=(245, 245, 245)
        )
    elif n == "lapel":
        draw.polygon(_scaled([(0.45, top), (0.55, top), (0.5, top + 0.1)], big), fill=skin)
        draw.polygon(_scaled([(0.44, top), (0.5, top + 0.1), (0.43, top + 0.08)], big), fill=_shade(edge, 0.8))
        draw.polygon(_scaled([(0.56, top), (0.5, top + 0.1), (0.57, top + 0.08)], big), fill=_shade(edge, 0.8))


def _apply_view(canvas: Image.Image, view: View, size: int, background: tuple[int, int, int]) -> Image.Image:
    big = canvas.size[0]
    if view.mirror:
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if view.angle or view.scale != 1.0 or view.dx or view.dy:
        # Inverse affine map: rotate and scale about the centre, then shift.
        a = math.radians(view.angle)
        cos, sin = math.cos(a) / view.scale, math.sin(a) / view.scale
        cx = cy = big / 2
        tx, ty = view.dx * big, view.dy * big
        coeffs = (cos, sin, cx - cos * (cx + tx) - sin * (cy + ty), -sin, cos, cy + sin * (cx + tx) - cos * (cy + ty))
        canvas = canvas.transform(
            (big, big), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=background
        )
    img = canvas.resize((size, size), Image.Resampling.LANCZOS).filter(ImageFilter.SMOOTH)
    if view.brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(view.brightness)
    return img
