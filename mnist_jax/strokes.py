"""Digits drawn as a person draws them on a page's canvas: pen strokes per digit.

Each digit has several stroke templates, the shapes people write it in (a
7 with and without a bar, a 1 with and without a flag, a 4 open and
closed, an 8 in one stroke or two loops, ...): polylines and arcs in a
box one unit high and about 0.6 wide, y pointing down. `draw_digit`
jitters a template the way one hand differs from another (slant, aspect,
size, a small rotation, a smooth bend of every stroke, the pen's width)
and draws it as the drawing page does: black strokes with round caps and
joins on a white 280x280 canvas, anti-aliased. The picture is a page to
bring to MNIST's form with mnist_jax.digits.to_mnist, as the page's
drawings are.
"""

from __future__ import annotations

import math

import numpy as np

CANVAS = 280  # The drawing page's canvas, CSS pixels a side.
SUPERSAMPLE = 2  # Drawn at twice the size, then reduced: anti-aliased edges, as a browser's.
PEN = (8.0, 30.0)  # Stroke widths in canvas pixels (the page draws 18-22).
HEIGHT = (110.0, 200.0)  # The digit's height in canvas pixels.

Stroke = np.ndarray  # (n, 2) points (x, y) in the template's box.


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Stroke:
    """Points along an ellipse's arc, about one every 5 degrees.

    Args:
      cx: the ellipse's centre, x.
      cy: the ellipse's centre, y (pointing down).
      rx: its half-width.
      ry: its half-height.
      start: the angle the pen starts at, degrees: 0 points right, 90 down.
      end: the angle it ends at; below `start`: drawn the other way round.

    Returns:
      The points (n, 2), (x, y).
    """
    count = max(2, math.ceil(abs(end - start) / 5) + 1)
    angles = np.radians(np.linspace(start, end, count))
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=-1)


def path(*points: tuple[float, float]) -> Stroke:
    """A polyline through `points`."""
    return np.asarray(points, np.float64)


def joined(*parts: Stroke) -> Stroke:
    """One stroke through the parts in order (the pen not lifted between them)."""
    return np.concatenate(parts)


def _eight(narrow_top: float) -> Stroke:
    """A figure 8 in one stroke (a vertical lemniscate of Gerono), its top
    loop `narrow_top` times the bottom's width."""
    t = np.linspace(0.0, 2 * math.pi, 97)
    y = (1 - np.cos(t)) / 2
    half = 0.28 * (narrow_top + (1 - narrow_top) * y)
    return np.stack([0.3 + half * np.sin(2 * t), y], axis=-1)


# Every template of each digit: a tuple of strokes (the pen lifted between them).
TEMPLATES: dict[int, tuple[tuple[Stroke, ...], ...]] = {
    0: (
        (arc(0.3, 0.5, 0.28, 0.49, -90, 270),),
        (arc(0.3, 0.5, 0.22, 0.49, -110, 280),),  # Narrow, the ends overlapping.
    ),
    1: (
        (path((0.3, 0.0), (0.3, 1.0)),),
        (path((0.1, 0.22), (0.32, 0.0), (0.32, 1.0)),),  # With a flag.
        (
            path((0.1, 0.22), (0.32, 0.0), (0.32, 1.0)),
            path((0.08, 1.0), (0.56, 1.0)),
        ),  # And a base.
    ),
    2: (
        (joined(arc(0.3, 0.27, 0.27, 0.25, 190, 380), path((0.03, 1.0), (0.6, 1.0))),),
        (joined(arc(0.3, 0.3, 0.28, 0.28, 170, 400), path((0.3, 0.7), (0.02, 1.0), (0.6, 0.96))),),
    ),
    3: (
        (joined(arc(0.28, 0.25, 0.25, 0.23, 200, 450), arc(0.28, 0.73, 0.3, 0.27, -90, 160)),),
        (
            joined(
                path((0.05, 0.0), (0.55, 0.0), (0.25, 0.4)), arc(0.28, 0.69, 0.3, 0.3, -100, 160)
            ),
        ),
    ),
    4: (
        (path((0.42, 0.0), (0.0, 0.68), (0.6, 0.68)), path((0.45, 0.05), (0.45, 1.0))),  # Closed.
        (path((0.08, 0.0), (0.05, 0.6), (0.6, 0.6)), path((0.45, 0.0), (0.45, 1.0))),  # Open.
        (path((0.45, 1.0), (0.45, 0.0), (0.0, 0.68), (0.6, 0.68)),),  # Closed, one stroke.
    ),
    5: (
        (
            path((0.55, 0.0), (0.1, 0.0)),
            joined(path((0.1, 0.0)), arc(0.28, 0.7, 0.3, 0.28, -125, 150)),
        ),
        (joined(path((0.55, 0.0), (0.1, 0.0)), arc(0.28, 0.7, 0.3, 0.28, -125, 150)),),
    ),
    6: (
        (joined(arc(0.4, 0.74, 0.35, 0.72, -80, -180), arc(0.3, 0.74, 0.25, 0.24, 180, -180)),),
        (joined(path((0.45, 0.0), (0.06, 0.7)), arc(0.3, 0.75, 0.24, 0.23, 180, -180)),),
    ),
    7: (
        (path((0.0, 0.02), (0.6, 0.0), (0.2, 1.0)),),
        (path((0.0, 0.02), (0.6, 0.0), (0.2, 1.0)), path((0.12, 0.5), (0.52, 0.5))),  # With a bar.
        (path((0.0, 0.05), (0.6, 0.0), (0.55, 0.1), (0.42, 0.35), (0.32, 0.65), (0.28, 1.0)),),
    ),
    8: (
        (_eight(0.8),),
        (arc(0.3, 0.24, 0.2, 0.24, 0, 360), arc(0.3, 0.73, 0.26, 0.27, -90, 270)),  # Two loops.
    ),
    9: (
        (joined(arc(0.3, 0.27, 0.26, 0.26, 0, -360), path((0.56, 0.27), (0.52, 1.0))),),
        (joined(arc(0.3, 0.27, 0.26, 0.26, 10, -350), path((0.55, 0.4), (0.5, 0.7), (0.35, 1.0))),),
    ),
}


def _resampled(stroke: Stroke, spacing: float) -> Stroke:
    """The stroke's points spaced about `spacing` apart along it (so a bend moves it smoothly)."""
    lengths = np.linalg.norm(np.diff(stroke, axis=0), axis=-1)
    along = np.concatenate([[0.0], np.cumsum(lengths)])
    count = max(2, math.ceil(along[-1] / spacing) + 1)
    at = np.linspace(0.0, along[-1], count)
    return np.stack([np.interp(at, along, stroke[:, i]) for i in range(2)], axis=-1)


def _trimmed(rng: np.random.Generator, points: Stroke) -> Stroke:
    """The stroke (evenly spaced points) with up to 8 % of its length cut
    off or carried straight on at each end: loops left open or
    overdrawn, bars too short or too long."""
    first, last = (rng.uniform(-0.08, 0.08, 2) * len(points)).astype(int)
    before = points[0] + (points[0] - points[1]) * np.arange(max(-first, 0), 0, -1)[:, None]
    after = points[-1] + (points[-1] - points[-2]) * np.arange(1, max(-last, 0) + 1)[:, None]
    kept = points[max(first, 0) : len(points) - max(last, 0)]
    return np.concatenate([before, kept, after]) if len(kept) >= 2 else points


def jitter(rng: np.random.Generator, strokes: tuple[Stroke, ...]) -> list[Stroke]:
    """The template's strokes as one hand might draw them, in canvas pixels:
    each stroke trimmed or carried on at its ends and, after a pen lift,
    moved a little; then all slanted, stretched, bent smoothly, rotated,
    scaled and placed near the canvas's centre."""
    height = rng.uniform(*HEIGHT)
    aspect = rng.uniform(0.6, 1.4)
    slant = rng.uniform(-0.4, 0.45)  # Shear: x moves by slant * (height above the middle).
    angle = math.radians(rng.uniform(-12, 12))
    # A smooth bend: two low sinusoids across the box, each up to 6 % of its height.
    waves = rng.uniform(0.5, 1.6, (2, 2)), rng.uniform(0, 2 * math.pi, (2, 2))
    bend = rng.uniform(0.0, 0.06, 2)
    centre = CANVAS / 2 + rng.uniform(-15, 15, 2)
    cos, sin = math.cos(angle), math.sin(angle)
    drawn = []
    for index, stroke in enumerate(strokes):
        points = _trimmed(rng, _resampled(stroke, 0.02))
        if index:  # A pen lift: the next stroke lands a little off.
            points = points + rng.normal(0.0, 0.035, 2)
        x, y = points[:, 0] - 0.3, points[:, 1] - 0.5
        x = x + bend[0] * np.sin(2 * math.pi * waves[0][0, 0] * y + waves[1][0, 0])
        y = y + bend[1] * np.sin(2 * math.pi * waves[0][1, 1] * x + waves[1][1, 1])
        x = x * aspect + slant * (-y)
        x, y = cos * x - sin * y, sin * x + cos * y
        drawn.append(np.stack([x, y], axis=-1) * height + centre)
    return drawn


def render(strokes: list[Stroke], width: float) -> np.ndarray:
    """The strokes (canvas pixels) drawn black, `width` pixels wide with
    round caps and joins, on a white canvas: grey levels (CANVAS, CANVAS)
    float32 in [0, 255]."""
    from PIL import Image, ImageDraw

    size = CANVAS * SUPERSAMPLE
    page = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(page)
    radius = width * SUPERSAMPLE / 2
    for stroke in strokes:
        points = [tuple(p) for p in (stroke * SUPERSAMPLE).tolist()]
        draw.line(points, fill=0, width=round(2 * radius), joint="curve")
        for x, y in (points[0], points[-1]):  # Round caps.
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=0)
    page = page.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    return np.asarray(page, np.float32)


def draw_digit(rng: np.random.Generator, digit: int, template: int | None = None) -> np.ndarray:
    """A digit drawn on the canvas by a random hand: one of its templates
    (`template`, or one at random), jittered, drawn with a pen of random
    width. Grey levels (CANVAS, CANVAS) float32, black on white."""
    shapes = TEMPLATES[digit]
    chosen = shapes[rng.integers(len(shapes)) if template is None else template]
    return render(jitter(rng, chosen), rng.uniform(*PEN))
