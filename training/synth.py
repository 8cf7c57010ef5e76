"""Move4Digits: a synthetic, fully controlled motion dataset written as real H.264 videos.

A rebuild of Move4MNIST, the synthetic dataset of the full-video paper (cited in
:mod:`models.full_video`), from parts that ship with the project: digits (handwritten ones
from scikit-learn's bundled ``load_digits``, or glyphs drawn here; nothing is downloaded) move
over a drifting background, with a distractor chunk in every video. The label is the motion,
never the digit. Videos are written in the UCF101 layout (split 1), so
:mod:`training.datasets` reads them like a real dataset::

    python -m training.synth --out data/move4digits --classes 4 --per-class 100 --seed 0

A *style* (:data:`STYLES`) is the look: the digit renderings, stroke widths and background
families every video draws from, its colour ranges and its speed range. ``classic`` (the
default) is the first look, reproduced byte for byte; ``varied`` adds renderings, strokes,
backgrounds, both polarities and a wider speed range; ``alt`` shares no rendering or
background family with either: train on one, test on ``alt`` to measure generalisation to a
look never seen (``--style alt``).

The same arguments give byte-identical files. Classes, motion, styles, distractors,
determinism: docs/data.md#move4digits.
"""

from __future__ import annotations

import argparse
import colorsys
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

__all__ = [
    "CLASS_SETS",
    "STYLES",
    "MotionSpec",
    "Style",
    "class_names",
    "generate",
    "main",
    "render_video",
    "sample_motion",
]

_DIRECTIONS: dict[str, tuple[float, float]] = {
    # (dx, dy) in image coordinates: y grows downwards.
    "move_up": (0.0, -1.0),
    "move_down": (0.0, 1.0),
    "move_left": (-1.0, 0.0),
    "move_right": (1.0, 0.0),
    "move_up_left": (-1.0, -1.0),
    "move_up_right": (1.0, -1.0),
    "move_down_left": (-1.0, 1.0),
    "move_down_right": (1.0, 1.0),
}

CLASS_SETS: dict[str, tuple[str, ...]] = {
    "4": ("move_up", "move_down", "move_left", "move_right"),
    "extended": (
        "move_up",
        "move_down",
        "move_left",
        "move_right",
        "move_up_left",
        "move_up_right",
        "move_down_left",
        "move_down_right",
        "grow",
        "shrink",
        "rotate_cw",
        "rotate_ccw",
    ),
}

_FPS = 25
# Digit box side as a fraction of the frame side (20 px in a 64 px frame): 8 x 8 digit cells.
_DIGIT_FRACTION = 0.3125
_TILT_DEG = 10.0  # static random tilt of moving digits
_SCALE_SMALL = (0.55, 0.7)  # grow starts / shrink ends here ...
_SCALE_LARGE = (1.25, 1.4)  # ... and the other end here
_SPIN_DEG = (4.0, 6.0)  # degrees per frame for the rotation classes
_BG_SPEED = (0.15, 0.3)  # background drift, px per frame
_CLASSIC_SPEED = (0.8, 1.2)  # px per frame along the direction of motion, classic style
_DISTRACTORS = ("black", "background", "static_digit")
_SENSOR_NOISE = (3.0, 8.0)  # grey levels (std) of the per-frame noise of "flat" backgrounds
# Every rendering but the plain bilinear one is drawn on a canvas of 3 px per digit cell with
# one empty cell of border, so blur, outlines and thick strokes have room beyond the 8x8 box.
_UPSAMPLE = 3
_BORDER = 1


@dataclass(frozen=True)
class Style:
    """The look of Move4Digits videos: the families each video draws one of, and its ranges.

    Attributes:
        renderings: How the digit is drawn (see :attr:`MotionSpec.rendering`).
        strokes: Stroke-width levels (``"thin"``, ``"normal"``, ``"thick"``), drawn by each
            rendering its own way.
        backgrounds: Background families (docs/data.md#move4digits); every one drifts.
        speed: Range of the direction classes' speed, px per frame.
        digit_saturation: HSV saturation range of the stroke colour (any hue).
        digit_value: HSV value range of the stroke colour.
        bg_saturation: HSV saturation range of the background's base colour.
        bg_value: HSV value range of the background's base colour.
        bg_contrast: Range of the background pattern's amplitude, grey levels.
        dark_on_light: Share of videos whose stroke and background value ranges are swapped
            (dark strokes on a light background).
    """

    renderings: tuple[str, ...]
    strokes: tuple[str, ...]
    backgrounds: tuple[str, ...]
    speed: tuple[float, float]
    digit_saturation: tuple[float, float]
    digit_value: tuple[float, float]
    bg_saturation: tuple[float, float]
    bg_value: tuple[float, float]
    bg_contrast: tuple[float, float]
    dark_on_light: float = 0.0


STYLES: dict[str, Style] = {
    # The first Move4Digits look (drawn by its own code, _sample_classic, so that a seed gives
    # the videos it always gave): the generator's default, and the shipped demo bundles' data.
    "classic": Style(
        renderings=("smooth",),
        strokes=("normal",),
        backgrounds=("noise",),
        speed=_CLASSIC_SPEED,
        digit_saturation=(0.0, 0.25),
        digit_value=(0.75, 1.0),
        bg_saturation=(0.0, 0.5),
        bg_value=(0.2, 0.45),
        bg_contrast=(25.0, 25.0),
    ),
    # Handwritten load_digits shapes in several renderings, strokes and backgrounds, either
    # polarity: more variety for models that should generalise.
    "varied": Style(
        renderings=("smooth", "blocky", "soft"),
        strokes=("thin", "normal", "thick"),
        backgrounds=("noise", "gradient", "stripes"),
        speed=(0.6, 1.6),
        digit_saturation=(0.0, 0.3),
        digit_value=(0.72, 1.0),
        bg_saturation=(0.0, 0.45),
        bg_value=(0.2, 0.45),
        bg_contrast=(15.0, 35.0),
        # Half the videos the other way round: a model should not learn that the mover is
        # the brightest thing in the frame.
        dark_on_light=0.5,
    ),
    # A look the classic and varied styles never show: constructed glyphs and hollow
    # strokes, vivid darker strokes on light geometric backgrounds. Its speeds lie inside the
    # varied range, so a
    # model trained on varied meets no new speed, only a new look.
    "alt": Style(
        renderings=("seven_segment", "dot_matrix", "outline"),
        strokes=("thin", "normal", "thick"),
        backgrounds=("checker", "grid", "blobs", "flat"),
        speed=(0.7, 1.5),
        digit_saturation=(0.65, 1.0),
        digit_value=(0.45, 0.75),
        bg_saturation=(0.0, 0.25),
        bg_value=(0.6, 0.9),
        bg_contrast=(15.0, 35.0),
    ),
}


def class_names(classes: str = "4") -> list[str]:
    """Class names of a class set (``"4"`` or ``"extended"``) in label order."""
    try:
        return list(CLASS_SETS[classes])
    except KeyError:
        raise ValueError(f"classes must be one of {sorted(CLASS_SETS)}, got {classes!r}") from None


def _style(style: str) -> Style:
    try:
        return STYLES[style]
    except KeyError:
        raise ValueError(f"style must be one of {sorted(STYLES)}, got {style!r}") from None


@dataclass(frozen=True)
class MotionSpec:
    """Everything random about one video, drawn by :func:`sample_motion`.

    Attributes:
        motion: Class name.
        digit: The moving digit's source, a square float alpha in ``[0, 1]`` spanning the digit
            box: an ``(8, 8)`` ``load_digits`` image, or a glyph drawn at 3 px per cell.
        distractor_digit: A digit of another value, shown static in a ``static_digit`` chunk.
        centre: ``(T, 2)`` digit centre (x, y) per frame in pixels.
        scale: ``(T,)`` digit scale per frame (1 = the base digit size).
        angle: ``(T,)`` clockwise rotation per frame in radians.
        colour: RGB of the digit strokes.
        bg_texture: ``(S + m, S + m, 3)`` float background texture.
        bg_origin: (x, y) of the frame's top-left corner in the texture at frame 0.
        bg_velocity: (dx, dy) background drift per frame.
        chunk: ``(start, length)`` of the distractor chunk.
        chunk_kind: ``"black"``, ``"background"`` or ``"static_digit"``.
        distractor_centre: (x, y) of the static distractor digit.
        style: Name of the style the families were drawn from.
        rendering: How ``digit`` is drawn: ``"smooth"`` (bilinear), ``"blocky"`` (nearest
            neighbour), ``"soft"`` (blurred), ``"outline"`` (hollow strokes), or
            ``"seven_segment"`` / ``"dot_matrix"`` (``digit`` is that glyph, drawn as it is).
        stroke: Stroke width, ``"thin"``, ``"normal"`` or ``"thick"``.
        background: Family of ``bg_texture`` (a record; the texture is what is drawn).
        sensor_noise: Std, in grey levels, of Gaussian noise drawn afresh for every frame.
        noise_seed: Seed of that noise, so that rendering stays a pure function of the spec.
        digit_value: The moving digit's value (0-9; -1 where unknown).
        dark_on_light: Whether the strokes were drawn darker than the background.
    """

    motion: str
    digit: np.ndarray
    distractor_digit: np.ndarray
    centre: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    colour: np.ndarray
    bg_texture: np.ndarray
    bg_origin: tuple[float, float]
    bg_velocity: tuple[float, float]
    chunk: tuple[int, int]
    chunk_kind: str
    distractor_centre: tuple[float, float]
    style: str = "classic"
    rendering: str = "smooth"
    stroke: str = "normal"
    background: str = "noise"
    sensor_noise: float = 0.0
    noise_seed: int = 0
    digit_value: int = -1
    dark_on_light: bool = False


@functools.lru_cache(maxsize=1)
def _digit_pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float64) / 16.0
    labels = bunch.target.astype(np.int64)
    test = np.arange(len(images)) % 4 == 0
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample a 2-D ``img`` at float coordinates (bilinear), zero outside the array."""
    h, w = img.shape
    flat = np.pad(img, 1).ravel()
    # Shift into the padded frame; clamping keeps far-outside points on the zero border.
    ys = np.clip(ys + 1, 0, h + 1)
    xs = np.clip(xs + 1, 0, w + 1)
    y0 = np.minimum(np.floor(ys), h)
    x0 = np.minimum(np.floor(xs), w)
    fy, fx = ys - y0, xs - x0
    i = y0.astype(np.int64) * (w + 2) + x0.astype(np.int64)
    top = flat[i] + (flat[i + 1] - flat[i]) * fx
    bottom = flat[i + w + 2] + (flat[i + w + 3] - flat[i + w + 2]) * fx
    return top + (bottom - top) * fy


def _smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes (wrap-around borders)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        x = sum(k * np.roll(x, int(o), axis=axis) for o, k in zip(offsets, kernel))
    return x


# Stroke-width levels. Each rendering draws a level its own way: grey erosion / dilation of a
# handwritten glyph, the line width or dot radius of a drawn one, the width of an outline.
_STROKES: dict[str, int] = {"thin": -1, "normal": 0, "thick": 1}

# Digit glyphs drawn here (the alt style's own pool, one glyph per value, varied per video).

# Segments a-g of a seven-segment display lit for each value (a top, then clockwise, g middle).
_SEGMENTS = (
    "abcdef",
    "bc",
    "abdeg",
    "abcdg",
    "bcfg",
    "acdfg",
    "acdefg",
    "abc",
    "abcdefg",
    "abcdfg",
)
_SEGMENT_ENDS = {
    "a": ("tl", "tr"),
    "b": ("tr", "mr"),
    "c": ("mr", "br"),
    "d": ("bl", "br"),
    "e": ("ml", "bl"),
    "f": ("tl", "ml"),
    "g": ("ml", "mr"),
}
# A 5 x 7 dot-matrix font, one string of rows per value.
_DOTS = (
    ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
)


def _capsules(ends: np.ndarray, width: float, side: int) -> np.ndarray:
    """Anti-aliased alpha of line segments ``(k, 2, 2)`` (two (x, y) ends each), ``width`` wide.

    A segment with equal ends is a round dot. Coordinates are pixel centres of a ``side``
    square canvas.
    """
    ys, xs = np.mgrid[:side, :side].astype(np.float64)
    p = np.stack([xs, ys], axis=-1)[None]  # (1, S, S, 2)
    a, b = ends[:, None, None, 0], ends[:, None, None, 1]  # (k, 1, 1, 2)
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0.0, 1.0)
    dist = np.linalg.norm(p - a - t[..., None] * ab, axis=-1).min(axis=0)
    return np.clip(0.5 * width - dist + 0.5, 0.0, 1.0)


def _seven_segment(value: int, level: int, rng: np.random.Generator) -> np.ndarray:
    """A seven-segment ``value``: random height, width, slant and gaps; line width by level."""
    side = 8 * _UPSAMPLE
    height = rng.uniform(17.0, 21.0)
    half_w, half_h = 0.5 * height * rng.uniform(0.5, 0.62), 0.5 * height
    width = 2.8 + 0.9 * level + rng.uniform(-0.35, 0.35)
    slant, gap = rng.uniform(0.0, 0.2), rng.uniform(0.6, 1.4)
    corner = {
        "tl": (-half_w, -half_h),
        "tr": (half_w, -half_h),
        "ml": (-half_w, 0.0),
        "mr": (half_w, 0.0),
        "bl": (-half_w, half_h),
        "br": (half_w, half_h),
    }
    ends = []
    for segment in _SEGMENTS[value]:
        p, q = (np.array(corner[c]) for c in _SEGMENT_ENDS[segment])
        # Shorten both ends so neighbouring segments stay apart by the gap.
        cut = (q - p) / np.linalg.norm(q - p) * (0.5 * width + 0.5 * gap)
        ends.append([p + cut, q - cut])
    pts = np.array(ends)
    pts[..., 0] -= slant * pts[..., 1]  # italic: the top leans right
    return _capsules(pts + (side - 1) / 2, width, side)


def _dot_matrix(value: int, level: int, rng: np.random.Generator) -> np.ndarray:
    """A 5 x 7 dot-matrix ``value``: random dot pitch; dot radius by level."""
    side = 8 * _UPSAMPLE
    pitch = rng.uniform(2.6, 3.0)
    radius = pitch * (0.42 + 0.09 * level + rng.uniform(-0.03, 0.03))
    rows, cols = np.nonzero(np.array([[c == "1" for c in row] for row in _DOTS[value]]))
    centres = np.stack([(cols - 2) * pitch, (rows - 3) * pitch], axis=1) + (side - 1) / 2
    return _capsules(np.stack([centres, centres], axis=1), 2 * radius, side)


_PROCEDURAL: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "seven_segment": _seven_segment,
    "dot_matrix": _dot_matrix,
}
_RENDERINGS = ("smooth", "blocky", "soft", "outline", *_PROCEDURAL)


def _pick_digits(
    rng: np.random.Generator, rendering: str, stroke: str, split: str
) -> tuple[np.ndarray, np.ndarray, int]:
    """The moving digit's source, a distractor of another value, and the moving digit's value."""
    if rendering in _PROCEDURAL:
        draw = _PROCEDURAL[rendering]
        value = int(rng.integers(10))
        other = (value + 1 + int(rng.integers(9))) % 10
        level = _STROKES[stroke]
        return draw(value, level, rng), draw(other, level, rng), value
    images, labels = _digit_pools()[split]
    pick = int(rng.integers(len(images)))
    others = np.flatnonzero(labels != labels[pick])
    return images[pick], images[int(rng.choice(others))], int(labels[pick])


# Glyph drawing: from a source to the alpha that is moved around the frame.


def _canvas(source: np.ndarray, *, nearest: bool) -> np.ndarray:
    """Resample a source spanning the digit box onto the bordered 3 px per cell canvas."""
    n = source.shape[0]
    cells = (np.arange((8 + 2 * _BORDER) * _UPSAMPLE) + 0.5) / _UPSAMPLE - _BORDER
    pos = cells * n / 8  # in source pixels, 0 at the box's outer edge
    if nearest:
        idx = np.floor(pos).astype(np.int64)
        inside = (idx >= 0) & (idx < n)
        idx = np.clip(idx, 0, n - 1)
        return source[np.ix_(idx, idx)] * inside[:, None] * inside[None, :]
    ys, xs = np.meshgrid(pos - 0.5, pos - 0.5, indexing="ij")
    return _bilinear(source, ys, xs)


def _morph(alpha: np.ndarray, steps: int) -> np.ndarray:
    """Grey dilation (``steps > 0``) or erosion (``< 0``) by a 3 x 3 square, ``|steps|`` times."""
    pick = np.maximum if steps > 0 else np.minimum
    h, w = alpha.shape
    for _ in range(abs(steps)):
        padded = np.pad(alpha, 1)
        out = padded[1 : h + 1, 1 : w + 1]
        for dy in range(3):
            for dx in range(3):
                out = pick(out, padded[dy : dy + h, dx : dx + w])
        alpha = out
    return alpha


def _soft(alpha: np.ndarray, level: int) -> np.ndarray:
    pad = 6
    blurred = _smooth(np.pad(_morph(alpha, level), pad), 1.8)[pad:-pad, pad:-pad]
    return blurred / max(float(blurred.max()), 1e-6)


def _outline(alpha: np.ndarray, level: int) -> np.ndarray:
    # The ring between the dilated and the eroded strokes: hollow strokes with a gap inside.
    solid = np.clip((alpha - 0.3) / 0.3, 0.0, 1.0)
    return _morph(solid, 1 + max(level, 0)) - _morph(solid, -1 if level >= 0 else 0)


def _glyph(source: np.ndarray, rendering: str, stroke: str) -> tuple[np.ndarray, int]:
    """The alpha glyph of a digit source and the number of digit cells its side spans."""
    if stroke not in _STROKES:
        raise ValueError(f"unknown stroke {stroke!r}")
    level = _STROKES[stroke]
    if rendering in _PROCEDURAL or (rendering == "smooth" and level == 0):
        # Bilinear straight from the source (drawn glyphs carry their stroke width already).
        return source, 8
    cells = 8 + 2 * _BORDER
    if rendering in ("smooth", "blocky"):
        canvas = _morph(_canvas(source, nearest=rendering == "blocky"), level)
    elif rendering == "soft":
        canvas = _soft(_canvas(source, nearest=False), level)
    elif rendering == "outline":
        canvas = _outline(_canvas(source, nearest=False), level)
    else:
        raise ValueError(f"unknown rendering {rendering!r}")
    return np.clip(canvas, 0.0, 1.0), cells


# Background families: a (side, side, 3) texture around a base colour, windowed while drifting.


def _hsv(
    rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]
) -> np.ndarray:
    h, s, v = rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)
    return 255.0 * np.array(colorsys.hsv_to_rgb(h, s, v))


def _plane(rng: np.random.Generator, side: int) -> np.ndarray:
    """Distance along a random direction through the centre, per texture pixel."""
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[:side, :side] - (side - 1) / 2
    return xs * math.cos(theta) + ys * math.sin(theta)


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A colour direction near grey, so patterns vary a little in hue as well."""
    return 1.0 + rng.uniform(-0.3, 0.3, size=3)


def _noise_bg(rng: np.random.Generator, side: int, base: np.ndarray, contrast: float) -> np.ndarray:
    coarse = _smooth(rng.standard_normal((side, side, 3)), 4.0)
    fine = _smooth(rng.standard_normal((side, side, 3)), 1.0)
    tex = coarse / coarse.std() + 0.5 * fine / fine.std()
    return base + contrast * tex / tex.std()


def _gradient_bg(
    rng: np.random.Generator, side: int, base: np.ndarray, contrast: float
) -> np.ndarray:
    # Each channel ramps up or down on its own: the hue changes across the frame as well.
    gains = rng.uniform(0.5, 1.5, size=3) * rng.choice([-1.0, 1.0], size=3)
    ramp = 2.0 * _plane(rng, side) / side
    return base + contrast * ramp[..., None] * gains


def _stripes_bg(
    rng: np.random.Generator, side: int, base: np.ndarray, contrast: float
) -> np.ndarray:
    period, phase = rng.uniform(6.0, 14.0), rng.uniform(0, 2 * math.pi)
    bands = np.tanh(2.5 * np.sin(2 * math.pi * _plane(rng, side) / period + phase))
    return base + contrast * bands[..., None] * _tint(rng)


def _checker_bg(
    rng: np.random.Generator, side: int, base: np.ndarray, contrast: float
) -> np.ndarray:
    square = int(rng.integers(4, 11))
    ox, oy = rng.integers(square, size=2)
    ys, xs = np.mgrid[:side, :side]
    sign = 2.0 * (((xs + ox) // square + (ys + oy) // square) % 2) - 1.0
    return base + contrast * sign[..., None] * _tint(rng)


def _grid_bg(rng: np.random.Generator, side: int, base: np.ndarray, contrast: float) -> np.ndarray:
    spacing, line = int(rng.integers(6, 13)), int(rng.integers(1, 3))
    ox, oy = rng.integers(spacing, size=2)
    ys, xs = np.mgrid[:side, :side]
    lines = ((xs + ox) % spacing < line) | ((ys + oy) % spacing < line)
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    return base + 1.5 * sign * contrast * lines[..., None] * _tint(rng)


def _blobs_bg(rng: np.random.Generator, side: int, base: np.ndarray, contrast: float) -> np.ndarray:
    tex = np.broadcast_to(base, (side, side, 3)).astype(np.float64)
    ys, xs = np.mgrid[:side, :side]
    for _ in range(int(rng.integers(12, 30))):
        (cx, cy), radius = rng.uniform(0, side, size=2), rng.uniform(2.0, 8.0)
        colour = base + contrast * rng.uniform(-1.5, 1.5, size=3)
        disc = np.clip(radius - np.hypot(xs - cx, ys - cy) + 0.5, 0.0, 1.0)[..., None]
        tex = tex + (colour - tex) * disc
    return tex


def _flat_bg(rng: np.random.Generator, side: int, base: np.ndarray, contrast: float) -> np.ndarray:
    # Its only texture is the sensor noise render_video adds to every frame.
    return np.broadcast_to(base, (side, side, 3))


_BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, np.ndarray, float], np.ndarray]] = {
    "noise": _noise_bg,
    "gradient": _gradient_bg,
    "stripes": _stripes_bg,
    "checker": _checker_bg,
    "grid": _grid_bg,
    "blobs": _blobs_bg,
    "flat": _flat_bg,
}


def _family(
    rng: np.random.Generator,
    choices: tuple[str, ...],
    given: str | None,
    known: tuple[str, ...],
    what: str,
) -> str:
    drawn = choices[int(rng.integers(len(choices)))]
    if given is None:
        return drawn
    if given not in known:
        raise ValueError(f"{what} must be one of {sorted(known)}, got {given!r}")
    return given


def _track(rng: np.random.Generator, lo: float, hi: float, delta: float) -> float:
    """A start coordinate so that start and start + delta both lie in [lo, hi]."""
    first, last = lo - min(0.0, delta), hi - max(0.0, delta)
    return float(rng.uniform(first, last)) if last > first else (lo + hi - delta) / 2


def _classic_texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """The ``classic`` style's drifting background: smoothed colour noise around a dark mean."""
    coarse = _smooth(rng.standard_normal((side, side, 3)), 4.0)
    fine = _smooth(rng.standard_normal((side, side, 3)), 1.0)
    tex = coarse / coarse.std() + 0.5 * fine / fine.std()
    tex = tex / tex.std()
    mean = rng.uniform(60.0, 110.0, size=3)
    return np.clip(mean + 25.0 * tex, 0.0, 200.0).astype(np.float32)


def _sample_classic(
    rng: np.random.Generator, motion: str, *, split: str, frames: int, size: int
) -> MotionSpec:
    """The ``classic`` style: the first Move4Digits look, with its draws in their original
    order, so a seed gives the same videos, byte for byte, as before styles existed
    (smoothly upsampled ``load_digits`` strokes, bright on a dark noise texture)."""
    if motion not in CLASS_SETS["extended"]:
        raise ValueError(f"unknown motion {motion!r}")
    images, labels = _digit_pools()[split]
    pick = int(rng.integers(len(images)))
    others = np.flatnonzero(labels != labels[pick])
    digit, other = images[pick], images[int(rng.choice(others))]
    t = np.arange(frames, dtype=np.float64)
    span = max(frames - 1, 1)
    base = _DIGIT_FRACTION * size

    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        norm = math.hypot(dx, dy)
        tilt = math.radians(rng.uniform(-_TILT_DEG, _TILT_DEG))
        radius = 0.5 * base * (abs(math.cos(tilt)) + abs(math.sin(tilt)))
        room = size - 2 * radius
        speed = min(rng.uniform(*_CLASSIC_SPEED), room * norm / (max(abs(dx), abs(dy)) * span))
        vx, vy = speed * dx / norm, speed * dy / norm
        x0 = _track(rng, radius - 0.5, size - 0.5 - radius, vx * span)
        y0 = _track(rng, radius - 0.5, size - 0.5 - radius, vy * span)
        centre = np.stack([x0 + vx * t, y0 + vy * t], axis=1)
        scale = np.ones(frames)
        angle = np.full(frames, tilt)
    else:
        if motion in ("grow", "shrink"):
            small, large = rng.uniform(*_SCALE_SMALL), rng.uniform(*_SCALE_LARGE)
            start, end = (small, large) if motion == "grow" else (large, small)
            scale = start + (end - start) * t / span
            tilt = math.radians(rng.uniform(-_TILT_DEG, _TILT_DEG))
            angle = np.full(frames, tilt)
            radius = 0.5 * base * large * (abs(math.cos(tilt)) + abs(math.sin(tilt)))
        else:
            spin = math.radians(rng.uniform(*_SPIN_DEG)) * (1 if motion == "rotate_cw" else -1)
            angle = rng.uniform(-math.pi / 6, math.pi / 6) + spin * t
            scale = np.ones(frames)
            radius = 0.5 * base * math.sqrt(2)
        lo, hi = radius - 0.5, size - 0.5 - radius
        cx, cy = (rng.uniform(lo, hi), rng.uniform(lo, hi)) if hi > lo else ((size - 1) / 2,) * 2
        centre = np.tile([cx, cy], (frames, 1))

    colour = rng.uniform(190.0, 255.0, size=3)
    bg_speed = rng.uniform(*_BG_SPEED)
    bg_dir = rng.uniform(0, 2 * math.pi)
    bg_velocity = (bg_speed * math.cos(bg_dir), bg_speed * math.sin(bg_dir))
    margin = int(math.ceil(_BG_SPEED[1] * span)) + 2
    texture = _classic_texture(rng, size + 2 * margin)
    bg_origin = (
        margin - bg_velocity[0] * span / 2,
        margin - bg_velocity[1] * span / 2,
    )
    length = int(rng.integers(max(1, frames // 8), max(1, frames // 4) + 1))
    chunk = (int(rng.integers(0, frames - length + 1)), length)
    kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
    lo, hi = 0.5 * base - 0.5, size - 0.5 - 0.5 * base
    d_centre = (
        (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if hi > lo
        else (
            (size - 1) / 2,
            (size - 1) / 2,
        )
    )
    return MotionSpec(
        motion=motion,
        digit=digit,
        distractor_digit=other,
        centre=centre,
        scale=scale,
        angle=np.asarray(angle, dtype=np.float64),
        colour=colour,
        bg_texture=texture,
        bg_origin=bg_origin,
        bg_velocity=bg_velocity,
        chunk=chunk,
        chunk_kind=kind,
        distractor_centre=d_centre,
        style="classic",
    )


def sample_motion(
    rng: np.random.Generator,
    motion: str,
    *,
    split: str = "train",
    frames: int = 32,
    size: int = 64,
    style: str = "classic",
    rendering: str | None = None,
    stroke: str | None = None,
    background: str | None = None,
) -> MotionSpec:
    """Draw the look, digit, trajectory, background and distractor of one video.

    The rendering, stroke and background families are drawn uniformly from the style's, unless
    given. The start position is chosen so the whole trajectory keeps the digit box inside the
    frame; the speed is drawn from the style's range below the fastest such path (the same
    bound for every direction, so speed tells nothing about the class).

    The digit and the background texture come from generators of their own, seeded from
    ``rng``: giving a family instead of drawing it changes only what that family draws (the
    same trajectory, colours and distractor chunk, another look).

    Args:
        rng: The video's own random generator.
        motion: A class name from :data:`CLASS_SETS`.
        split: ``"train"`` or ``"test"``: which ``load_digits`` pool to draw from (the drawn
            glyphs of the alt style have no pool: every video varies its own).
        frames: Frames per video.
        size: Frame side in pixels.
        style: A name from :data:`STYLES`.
        rendering: A digit rendering of any style (see :class:`MotionSpec`) instead of one
            drawn from the style's: for per-family test sets and ablations.
        stroke: Likewise a stroke width, ``"thin"``, ``"normal"`` or ``"thick"``.
        background: Likewise a background family of any style.
    """
    if motion not in CLASS_SETS["extended"]:
        raise ValueError(f"unknown motion {motion!r}")
    look = _style(style)
    if style == "classic":
        if rendering or stroke or background:
            raise ValueError("the classic style has one family of each kind: none can be given")
        return _sample_classic(rng, motion, split=split, frames=frames, size=size)
    # Every draw happens whether or not the family is given, so the rest of the video stays.
    rendering = _family(rng, look.renderings, rendering, _RENDERINGS, "rendering")
    stroke = _family(rng, look.strokes, stroke, tuple(_STROKES), "stroke")
    background = _family(rng, look.backgrounds, background, tuple(_BACKGROUNDS), "background")
    digit_seed, texture_seed, noise_seed = (int(x) for x in rng.integers(2**63, size=3))
    t = np.arange(frames, dtype=np.float64)
    span = max(frames - 1, 1)
    base = _DIGIT_FRACTION * size

    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        norm = math.hypot(dx, dy)
        tilt = math.radians(rng.uniform(-_TILT_DEG, _TILT_DEG))
        radius = 0.5 * base * (abs(math.cos(tilt)) + abs(math.sin(tilt)))
        # The fastest speed whose path fits along an axis; diagonal paths fit a fortiori.
        fastest = (size - 2 * radius) / span
        low, high = look.speed
        speed = rng.uniform(min(low, fastest), min(high, fastest))
        vx, vy = speed * dx / norm, speed * dy / norm
        x0 = _track(rng, radius - 0.5, size - 0.5 - radius, vx * span)
        y0 = _track(rng, radius - 0.5, size - 0.5 - radius, vy * span)
        centre = np.stack([x0 + vx * t, y0 + vy * t], axis=1)
        scale = np.ones(frames)
        angle = np.full(frames, tilt)
    else:
        if motion in ("grow", "shrink"):
            small, large = rng.uniform(*_SCALE_SMALL), rng.uniform(*_SCALE_LARGE)
            start, end = (small, large) if motion == "grow" else (large, small)
            scale = start + (end - start) * t / span
            tilt = math.radians(rng.uniform(-_TILT_DEG, _TILT_DEG))
            angle = np.full(frames, tilt)
            radius = 0.5 * base * large * (abs(math.cos(tilt)) + abs(math.sin(tilt)))
        else:
            spin = math.radians(rng.uniform(*_SPIN_DEG)) * (1 if motion == "rotate_cw" else -1)
            angle = rng.uniform(-math.pi / 6, math.pi / 6) + spin * t
            scale = np.ones(frames)
            radius = 0.5 * base * math.sqrt(2)
        lo, hi = radius - 0.5, size - 0.5 - radius
        cx, cy = (rng.uniform(lo, hi), rng.uniform(lo, hi)) if hi > lo else ((size - 1) / 2,) * 2
        centre = np.tile([cx, cy], (frames, 1))

    dark = bool(rng.random() < look.dark_on_light)
    digit_value, bg_value = (
        (look.bg_value, look.digit_value) if dark else (look.digit_value, look.bg_value)
    )
    colour = _hsv(rng, look.digit_saturation, digit_value)
    bg_speed = rng.uniform(*_BG_SPEED)
    bg_dir = rng.uniform(0, 2 * math.pi)
    bg_velocity = (bg_speed * math.cos(bg_dir), bg_speed * math.sin(bg_dir))
    margin = int(math.ceil(_BG_SPEED[1] * span)) + 2
    bg_base = _hsv(rng, look.bg_saturation, bg_value)
    contrast = rng.uniform(*look.bg_contrast)
    noise_level = float(rng.uniform(*_SENSOR_NOISE))
    bg_origin = (
        margin - bg_velocity[0] * span / 2,
        margin - bg_velocity[1] * span / 2,
    )
    length = int(rng.integers(max(1, frames // 8), max(1, frames // 4) + 1))
    chunk = (int(rng.integers(0, frames - length + 1)), length)
    kind = _DISTRACTORS[int(rng.integers(len(_DISTRACTORS)))]
    lo, hi = 0.5 * base - 0.5, size - 0.5 - 0.5 * base
    d_centre = (
        (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        if hi > lo
        else (
            (size - 1) / 2,
            (size - 1) / 2,
        )
    )
    digit, other, value = _pick_digits(np.random.default_rng(digit_seed), rendering, stroke, split)
    texture = _BACKGROUNDS[background](
        np.random.default_rng(texture_seed), size + 2 * margin, bg_base, contrast
    )
    return MotionSpec(
        motion=motion,
        digit=digit,
        distractor_digit=other,
        centre=centre,
        scale=scale,
        angle=np.asarray(angle, dtype=np.float64),
        colour=colour,
        bg_texture=np.clip(texture, 0.0, 255.0).astype(np.float32),
        bg_origin=bg_origin,
        bg_velocity=bg_velocity,
        chunk=chunk,
        chunk_kind=kind,
        distractor_centre=d_centre,
        style=style,
        rendering=rendering,
        stroke=stroke,
        background=background,
        sensor_noise=noise_level if background == "flat" else 0.0,
        noise_seed=noise_seed,
        digit_value=value,
        dark_on_light=dark,
    )


def _digit_alpha(
    glyph: np.ndarray,
    cells: int,
    centre: np.ndarray,
    scale: np.ndarray,
    angle: np.ndarray,
    size: int,
) -> np.ndarray:
    """Render a glyph per frame as ``(T, S, S)`` alpha by inverse-mapping every pixel.

    ``glyph`` is square and its side spans ``cells`` digit cells (8 cells make the digit box).
    """
    f32 = np.float32
    n = glyph.shape[0]
    grid = np.arange(size, dtype=f32)
    px = grid[None, None, :] - centre[:, 0, None, None].astype(f32)
    py = grid[None, :, None] - centre[:, 1, None, None].astype(f32)
    # Frame pixels per glyph pixel, per frame.
    pitch = (_DIGIT_FRACTION * size / 8.0 * cells / n * scale).astype(f32)[:, None, None]
    cos = np.cos(angle).astype(f32)[:, None, None] / pitch
    sin = np.sin(angle).astype(f32)[:, None, None] / pitch
    # Undo the clockwise on-screen rotation, then the scale: glyph pixel coordinates.
    middle = f32((n - 1) / 2)
    u = cos * px + sin * py + middle
    v = cos * py - sin * px + middle
    return np.clip(_bilinear(glyph.astype(f32), v, u), 0.0, 1.0)


def _drifting_background(spec: MotionSpec, frames: int, size: int) -> np.ndarray:
    """``(T, S, S, 3)`` windows of the texture, shifted by a sub-pixel offset per frame."""
    out = np.empty((frames, size, size, 3), dtype=np.float32)
    for t in range(frames):
        x = spec.bg_origin[0] + spec.bg_velocity[0] * t
        y = spec.bg_origin[1] + spec.bg_velocity[1] * t
        ix, iy = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - ix, y - iy
        # The whole window shares one pair of bilinear weights: four shifted slices suffice.
        win = spec.bg_texture[iy : iy + size + 1, ix : ix + size + 1]
        top = win[:-1, :-1] * (1 - fx) + win[:-1, 1:] * fx
        bottom = win[1:, :-1] * (1 - fx) + win[1:, 1:] * fx
        out[t] = top * (1 - fy) + bottom * fy
    return out


def render_video(spec: MotionSpec, *, frames: int = 32, size: int = 64) -> np.ndarray:
    """Draw the frames described by ``spec``.

    Returns:
        ``(frames, size, size, 3)`` uint8 RGB.
    """
    background = _drifting_background(spec, frames, size)
    glyph, cells = _glyph(spec.digit, spec.rendering, spec.stroke)
    alpha = _digit_alpha(glyph, cells, spec.centre, spec.scale, spec.angle, size)[..., None]
    colour = spec.colour.astype(np.float32)
    video = background + (colour - background) * alpha

    start, length = spec.chunk
    chunk = slice(start, start + length)
    if spec.chunk_kind == "background":
        video[chunk] = background[chunk]
    elif spec.chunk_kind == "static_digit":
        glyph, cells = _glyph(spec.distractor_digit, spec.rendering, spec.stroke)
        centre = np.tile(spec.distractor_centre, (length, 1))
        still = _digit_alpha(glyph, cells, centre, np.ones(length), np.zeros(length), size)
        video[chunk] = background[chunk] + (colour - background[chunk]) * still[..., None]
    if spec.sensor_noise > 0:
        noise = np.random.default_rng(spec.noise_seed).standard_normal(
            (frames, size, size, 1), dtype=np.float32
        )
        video += np.float32(spec.sensor_noise) * noise
    if spec.chunk_kind == "black":
        video[chunk] = 0.0  # a dropped signal: no sensor noise either
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)


def _write_mp4(path: Path, video: np.ndarray, fps: int = _FPS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        # Byte-identical output needs one encoder thread and no macroblock-tree rate control:
        # with mbtree on, this x264 build gave different bitstreams for identical input
        # from run to run (seen at 16-96 px frames).
        stream.codec_context.thread_count = 1
        stream.options = {
            "crf": "16",
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "mbtree=0",
        }
        for img in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _record(rel: str, split: str, spec: MotionSpec) -> dict[str, object]:
    """One ``videos.jsonl`` line: what a video shows, for analysis by family."""
    steps = np.diff(spec.centre, axis=0)
    return {
        "video": rel,
        "split": split,
        "motion": spec.motion,
        "rendering": spec.rendering,
        "stroke": spec.stroke,
        "background": spec.background,
        "dark_on_light": spec.dark_on_light,
        "digit": spec.digit_value,
        "speed": round(float(np.hypot(steps[:, 0], steps[:, 1]).mean()), 4) if len(steps) else 0.0,
        "distractor": spec.chunk_kind,
    }


def _split_counts(per_class: int, test_fraction: float) -> tuple[int, int]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if per_class < 2:
        raise ValueError(f"per_class must be >= 2 (one train and one test video), got {per_class}")
    n_test = min(per_class - 1, max(1, round(per_class * test_fraction)))
    return per_class - n_test, n_test


def generate(
    out: Path,
    *,
    classes: str = "4",
    per_class: int,
    seed: int,
    frames: int = 32,
    size: int = 64,
    test_fraction: float = 0.25,
    progress: bool = True,
    style: str = "classic",
) -> Path:
    """Write a Move4Digits dataset in the UCF101 layout (split 1).

    Files: ``classInd.txt`` (``"1 move_up"``), ``trainlist01.txt``
    (``"move_up/v_move_up_0000.mp4 1"``), ``testlist01.txt`` (``"move_up/v_move_up_0003.mp4"``),
    one folder of MP4s per class, ``move4digits.json`` with the arguments and the style's
    families, and ``videos.jsonl`` with one line per video (its path, split, motion, families,
    digit value, speed and distractor). Every class gets ``per_class`` videos, the first
    ``per_class - n_test`` for training.

    Args:
        out: Output directory (created; existing files of the same names are overwritten).
        classes: ``"4"`` (the paper's directions) or ``"extended"`` (12 motions).
        per_class: Videos per class (>= 2).
        seed: Base seed; the same arguments give identical files.
        frames: Frames per video (>= 2).
        size: Frame side in pixels (even, >= 16).
        test_fraction: Share of each class's videos in the test list.
        progress: Show a tqdm progress bar.
        style: A name from :data:`STYLES`: the look the videos draw their families from.

    Returns:
        ``out``.
    """
    names = class_names(classes)
    look = _style(style)
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_train, _ = _split_counts(per_class, test_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_lines, test_lines, records = [], [], []
    with tqdm(total=len(names) * per_class, desc="Move4Digits", disable=not progress) as bar:
        for label, name in enumerate(names):
            for k in range(per_class):
                split = "train" if k < n_train else "test"
                rng = np.random.default_rng([seed, label, k])
                spec = sample_motion(rng, name, split=split, frames=frames, size=size, style=style)
                rel = f"{name}/v_{name}_{k:04d}.mp4"
                _write_mp4(out / rel, render_video(spec, frames=frames, size=size))
                records.append(_record(rel, split, spec))
                if split == "train":
                    train_lines.append(f"{rel} {label + 1}")
                else:
                    test_lines.append(rel)
                bar.update()
    (out / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (out / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train_lines))
    (out / "testlist01.txt").write_text("".join(f"{line}\n" for line in test_lines))
    (out / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = {
        "dataset": "move4digits",
        "classes": names,
        "class_set": classes,
        "per_class": per_class,
        "seed": seed,
        "frames": frames,
        "size": size,
        "fps": _FPS,
        "test_fraction": test_fraction,
        "style": style,
        "families": {
            "rendering": list(look.renderings),
            "stroke": list(look.strokes),
            "background": list(look.backgrounds),
        },
        "speed_range": list(look.speed),
        "train_videos": len(train_lines),
        "test_videos": len(test_lines),
    }
    (out / "move4digits.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m training.synth --out DIR --per-class N --seed S``."""
    parser = argparse.ArgumentParser(
        prog="python -m training.synth", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--classes", choices=sorted(CLASS_SETS), default="4", help="class set")
    parser.add_argument("--per-class", type=int, required=True, help="videos per class")
    parser.add_argument("--seed", type=int, default=0, help="base random seed")
    parser.add_argument("--frames", type=int, default=32, help="frames per video")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--test-fraction", type=float, default=0.25, help="test share per class")
    parser.add_argument(
        "--style",
        choices=sorted(STYLES),
        default="classic",
        help="look: classic (the default), varied, or alt (the cross-style test set)",
    )
    args = parser.parse_args(argv)
    out = generate(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        seed=args.seed,
        frames=args.frames,
        size=args.size,
        test_fraction=args.test_fraction,
        style=args.style,
    )
    print(
        f"wrote Move4Digits ({args.classes} classes, {args.per_class} per class, "
        f"style {args.style}) to {out}"
    )


if __name__ == "__main__":
    main()
