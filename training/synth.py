"""Move4Digits: a synthetic, fully controlled motion dataset written as real H.264 videos.

A rebuild of Move4MNIST, the synthetic dataset of the full-video paper (cited in
:mod:`models.full_video`), from parts that ship with the project: handwritten digits from
scikit-learn's bundled ``load_digits`` (no download) move over a drifting textured background,
with a distractor chunk in every video. The label is the motion, never the digit. Videos are
written in the UCF101 layout (split 1), so :mod:`training.datasets` reads them like a real
dataset::

    python -m training.synth --out data/move4digits --classes 4 --per-class 100 --seed 0

The same arguments give byte-identical files. Classes, motion, distractors, determinism:
docs/data.md#move4digits.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

__all__ = [
    "CLASS_SETS",
    "MotionSpec",
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
# Digit cell side as a fraction of the frame side (20 px in a 64 px frame).
_DIGIT_FRACTION = 0.3125
_SPEED_RANGE = (0.8, 1.2)  # px per frame along the direction of motion
_TILT_DEG = 10.0  # static random tilt of moving digits
_SCALE_SMALL = (0.55, 0.7)  # grow starts / shrink ends here ...
_SCALE_LARGE = (1.25, 1.4)  # ... and the other end here
_SPIN_DEG = (4.0, 6.0)  # degrees per frame for the rotation classes
_BG_SPEED = (0.15, 0.3)  # background drift, px per frame
_DISTRACTORS = ("black", "background", "static_digit")


def class_names(classes: str = "4") -> list[str]:
    """Class names of a class set (``"4"`` or ``"extended"``) in label order."""
    try:
        return list(CLASS_SETS[classes])
    except KeyError:
        raise ValueError(f"classes must be one of {sorted(CLASS_SETS)}, got {classes!r}") from None


@dataclass(frozen=True)
class MotionSpec:
    """Everything random about one video, drawn by :func:`sample_motion`.

    Attributes:
        motion: Class name.
        digit: The moving digit, ``(8, 8)`` float alpha in ``[0, 1]``.
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


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    coarse = _smooth(rng.standard_normal((side, side, 3)), 4.0)
    fine = _smooth(rng.standard_normal((side, side, 3)), 1.0)
    tex = coarse / coarse.std() + 0.5 * fine / fine.std()
    tex = tex / tex.std()
    mean = rng.uniform(60.0, 110.0, size=3)
    return np.clip(mean + 25.0 * tex, 0.0, 200.0).astype(np.float32)


def _track(rng: np.random.Generator, lo: float, hi: float, delta: float) -> float:
    """A start coordinate so that start and start + delta both lie in [lo, hi]."""
    first, last = lo - min(0.0, delta), hi - max(0.0, delta)
    return float(rng.uniform(first, last)) if last > first else (lo + hi - delta) / 2


def sample_motion(
    rng: np.random.Generator, motion: str, *, split: str = "train", frames: int = 32, size: int = 64
) -> MotionSpec:
    """Draw the digit, trajectory, background and distractor of one video.

    The start position is chosen so the whole trajectory keeps the digit inside the frame
    (the speed is lowered for frames too small to hold a full ~1 px/frame path).

    Args:
        rng: The video's own random generator.
        motion: A class name from :data:`CLASS_SETS`.
        split: ``"train"`` or ``"test"``: which digit pool to draw from.
        frames: Frames per video.
        size: Frame side in pixels.
    """
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
        speed = min(rng.uniform(*_SPEED_RANGE), room * norm / (max(abs(dx), abs(dy)) * span))
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
    texture = _texture(rng, size + 2 * margin)
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
    )


def _digit_alpha(
    digit: np.ndarray, centre: np.ndarray, scale: np.ndarray, angle: np.ndarray, size: int
) -> np.ndarray:
    """Render a digit per frame as ``(T, S, S)`` alpha by inverse-mapping every pixel."""
    f32 = np.float32
    grid = np.arange(size, dtype=f32)
    px = grid[None, None, :] - centre[:, 0, None, None].astype(f32)
    py = grid[None, :, None] - centre[:, 1, None, None].astype(f32)
    # Pixels per digit cell, per frame.
    cell = (_DIGIT_FRACTION * size / 8.0 * scale).astype(f32)[:, None, None]
    cos = np.cos(angle).astype(f32)[:, None, None] / cell
    sin = np.sin(angle).astype(f32)[:, None, None] / cell
    # Undo the clockwise on-screen rotation, then the scale: digit cell coordinates.
    u = cos * px + sin * py + f32(3.5)
    v = cos * py - sin * px + f32(3.5)
    return np.clip(_bilinear(digit.astype(f32), v, u), 0.0, 1.0)


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
    alpha = _digit_alpha(spec.digit, spec.centre, spec.scale, spec.angle, size)[..., None]
    colour = spec.colour.astype(np.float32)
    video = background + (colour - background) * alpha

    start, length = spec.chunk
    chunk = slice(start, start + length)
    if spec.chunk_kind == "black":
        video[chunk] = 0.0
    elif spec.chunk_kind == "background":
        video[chunk] = background[chunk]
    else:
        centre = np.tile(spec.distractor_centre, (length, 1))
        still = _digit_alpha(
            spec.distractor_digit, centre, np.ones(length), np.zeros(length), size
        )[..., None]
        video[chunk] = background[chunk] + (colour - background[chunk]) * still
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
) -> Path:
    """Write a Move4Digits dataset in the UCF101 layout (split 1).

    Files: ``classInd.txt`` (``"1 move_up"``), ``trainlist01.txt``
    (``"move_up/v_move_up_0000.mp4 1"``), ``testlist01.txt`` (``"move_up/v_move_up_0003.mp4"``),
    one folder of MP4s per class, and ``move4digits.json`` with the arguments. Every class
    gets ``per_class`` videos, the first ``per_class - n_test`` for training.

    Args:
        out: Output directory (created; existing files of the same names are overwritten).
        classes: ``"4"`` (the paper's directions) or ``"extended"`` (12 motions).
        per_class: Videos per class (>= 2).
        seed: Base seed; the same arguments give identical files.
        frames: Frames per video (>= 2).
        size: Frame side in pixels (even, >= 16).
        test_fraction: Share of each class's videos in the test list.
        progress: Show a tqdm progress bar.

    Returns:
        ``out``.
    """
    names = class_names(classes)
    if frames < 2:
        raise ValueError(f"frames must be >= 2, got {frames}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be even and >= 16 (yuv420p), got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    n_train, _ = _split_counts(per_class, test_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_lines, test_lines = [], []
    with tqdm(total=len(names) * per_class, desc="Move4Digits", disable=not progress) as bar:
        for label, name in enumerate(names):
            for k in range(per_class):
                split = "train" if k < n_train else "test"
                rng = np.random.default_rng([seed, label, k])
                spec = sample_motion(rng, name, split=split, frames=frames, size=size)
                rel = f"{name}/v_{name}_{k:04d}.mp4"
                _write_mp4(out / rel, render_video(spec, frames=frames, size=size))
                if split == "train":
                    train_lines.append(f"{rel} {label + 1}")
                else:
                    test_lines.append(rel)
                bar.update()
    (out / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (out / "trainlist01.txt").write_text("".join(f"{line}\n" for line in train_lines))
    (out / "testlist01.txt").write_text("".join(f"{line}\n" for line in test_lines))
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
    args = parser.parse_args(argv)
    out = generate(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        seed=args.seed,
        frames=args.frames,
        size=args.size,
        test_fraction=args.test_fraction,
    )
    print(f"wrote Move4Digits ({args.classes} classes, {args.per_class} per class) to {out}")


if __name__ == "__main__":
    main()
