"""Move4Digits generator: layout, determinism, balance and learnable motion (training/synth.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.synth import (
    CLASS_SETS,
    MotionSpec,
    class_names,
    generate,
    main,
    render_video,
    sample_motion,
)
from video.decode import decode_video

FRAMES, SIZE = 16, 32  # small videos keep the tests fast


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m4d") / "a"
    return generate(out, per_class=4, seed=7, frames=FRAMES, size=SIZE, progress=False)


def test_layout_and_balance(dataset: Path):
    assert (dataset / "classInd.txt").read_text() == (
        "1 move_up\n2 move_down\n3 move_left\n4 move_right\n"
    )
    train = (dataset / "trainlist01.txt").read_text().split("\n")[:-1]
    test = (dataset / "testlist01.txt").read_text().split("\n")[:-1]
    # per_class 4, test_fraction 0.25 -> 3 train + 1 test per class
    for label, name in enumerate(CLASS_SETS["4"], start=1):
        mine = [line for line in train if line.startswith(f"{name}/")]
        assert len(mine) == 3 and all(line.endswith(f".mp4 {label}") for line in mine)
        assert len([line for line in test if line.startswith(f"{name}/")]) == 1
    for line in test:
        assert " " not in line and (dataset / line).is_file()
    meta = json.loads((dataset / "move4digits.json").read_text())
    assert meta["classes"] == list(CLASS_SETS["4"]) and meta["seed"] == 7


def test_videos_are_h264_with_the_rendered_frames(dataset: Path):
    path = dataset / "move_left" / "v_move_left_0001.mp4"
    frames, meta = decode_video(path)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and meta.codec == "h264"
    spec = sample_motion(np.random.default_rng([7, 2, 1]), "move_left", frames=FRAMES, size=SIZE)
    rendered = render_video(spec, frames=FRAMES, size=SIZE)
    # Lossy but close: the file holds the frames the generator drew.
    assert np.abs(frames.astype(int) - rendered.astype(int)).mean() < 6


def test_same_seed_same_bytes_other_seed_other_frames(dataset: Path, tmp_path: Path):
    again = generate(tmp_path / "b", per_class=4, seed=7, frames=FRAMES, size=SIZE, progress=False)
    assert _files(again) == _files(dataset)
    other = generate(tmp_path / "c", per_class=4, seed=8, frames=FRAMES, size=SIZE, progress=False)
    name = "move_up/v_move_up_0000.mp4"
    a, _ = decode_video(dataset / name)
    c, _ = decode_video(other / name)
    assert a.shape == c.shape and not np.array_equal(a, c)


def test_extended_classes(tmp_path: Path):
    names = class_names("extended")
    assert len(names) >= 10 and len(set(names)) == len(names)
    assert {"move_up_left", "grow", "shrink", "rotate_cw", "rotate_ccw"} <= set(names)
    out = generate(
        tmp_path / "x", classes="extended", per_class=2, seed=0, frames=8, size=16, progress=False
    )
    lines = (out / "classInd.txt").read_text().splitlines()
    assert lines == [f"{i} {n}" for i, n in enumerate(names, start=1)]
    assert len((out / "trainlist01.txt").read_text().splitlines()) == len(names)


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(ValueError):
        generate(tmp_path, classes="7", per_class=2, seed=0)
    with pytest.raises(ValueError):
        generate(tmp_path, per_class=1, seed=0)
    with pytest.raises(ValueError):
        generate(tmp_path, per_class=4, seed=0, size=33)


def _digit_only(spec: MotionSpec) -> MotionSpec:
    # Black background, and a distractor that shows just that background: only the moving
    # digit is bright, so its centroid and mass can be measured.
    return dataclasses.replace(
        spec,
        bg_texture=np.zeros_like(spec.bg_texture),
        chunk=(0, 0),
        colour=np.full(3, 255.0),
    )


def _centroids(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mass = video[..., 0].astype(np.float64)
    total = mass.sum(axis=(1, 2))
    ys, xs = np.mgrid[: video.shape[1], : video.shape[2]]
    cx = (mass * xs).sum(axis=(1, 2)) / total
    cy = (mass * ys).sum(axis=(1, 2)) / total
    return np.stack([cx, cy], axis=1), total


@pytest.mark.parametrize("motion", CLASS_SETS["extended"][:8])
def test_digit_moves_in_its_direction_and_stays_in_view(motion: str):
    frames, size = 32, 64
    for k in range(3):
        spec = sample_motion(np.random.default_rng([1, k]), motion, frames=frames, size=size)
        video = render_video(_digit_only(spec), frames=frames, size=size)
        centre, mass = _centroids(video)
        step = (centre[-1] - centre[0]) / (frames - 1)
        want = np.sign(
            [("right" in motion) - ("left" in motion), ("down" in motion) - ("up" in motion)]
        )
        speed = math.hypot(*step)
        assert 0.6 < speed < 1.3, (motion, step)
        for axis in range(2):
            if want[axis] == 0:
                assert abs(step[axis]) < 0.1
            else:
                assert np.sign(step[axis]) == want[axis]
        # The digit never leaves the frame: its visible ink hardly changes.
        assert mass.min() > 0.85 * mass.max()


@pytest.mark.parametrize("motion", ["grow", "shrink", "rotate_cw", "rotate_ccw"])
def test_in_place_motions(motion: str):
    spec = sample_motion(np.random.default_rng(3), motion, frames=32, size=64)
    video = render_video(_digit_only(spec), frames=32, size=64)
    centre, mass = _centroids(video)
    # Stays where it is (a turning digit's ink centroid circles its cell centre a little).
    assert np.abs(centre - centre[0]).max() < (3.0 if motion in ("grow", "shrink") else 5.0)
    if motion == "grow":
        assert mass[-1] > 2 * mass[0]
    elif motion == "shrink":
        assert mass[0] > 2 * mass[-1]
    else:
        turn = spec.angle[-1] - spec.angle[0]
        assert (turn > 0) == (motion == "rotate_cw") and abs(turn) > math.radians(100)


def test_positive_angle_turns_clockwise_on_screen():
    # A bar above the digit centre, turned by +90 degrees, must point to the right.
    bar = np.zeros((8, 8))
    bar[0:4, 3:5] = 1.0
    spec = dataclasses.replace(
        _digit_only(sample_motion(np.random.default_rng(0), "rotate_cw", frames=2, size=64)),
        digit=bar,
        centre=np.array([[32.0, 32.0], [32.0, 32.0]]),
        scale=np.ones(2),
        angle=np.array([0.0, math.pi / 2]),
    )
    centre, _ = _centroids(render_video(spec, frames=2, size=64))
    assert centre[0, 1] < 30 and abs(centre[0, 0] - 32) < 1  # up
    assert centre[1, 0] > 34 and abs(centre[1, 1] - 32) < 1  # right


def test_distractor_chunk():
    kinds = set()
    for k in range(30):
        spec = sample_motion(np.random.default_rng(k), "move_up", frames=32, size=64)
        start, length = spec.chunk
        assert 4 <= length <= 8 and 0 <= start <= 32 - length
        kinds.add(spec.chunk_kind)
        if spec.chunk_kind == "black":
            video = render_video(spec)
            inside = np.zeros(32, dtype=bool)
            inside[start : start + length] = True
            assert video[inside].max() == 0
            assert video[~inside].reshape(32 - length, -1).mean(axis=1).min() > 20
    assert kinds == {"black", "background", "static_digit"}


def test_train_and_test_digits_are_disjoint():
    from sklearn.datasets import load_digits

    images = load_digits().images / 16.0
    where: dict[bytes, set[int]] = {}
    for i, img in enumerate(images):
        where.setdefault(img.tobytes(), set()).add(i % 4 == 0)
    for k in range(20):
        for split, is_test in (("train", False), ("test", True)):
            spec = sample_motion(np.random.default_rng(k), "move_up", split=split)
            assert where[spec.digit.tobytes()] == {is_test}
            assert where[spec.distractor_digit.tobytes()] == {is_test}


def test_cli(tmp_path: Path, capsys):
    main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--per-class",
            "2",
            "--seed",
            "1",
            "--frames",
            "8",
            "--size",
            "16",
        ]
    )
    assert "wrote Move4Digits" in capsys.readouterr().out
    assert len((tmp_path / "cli" / "trainlist01.txt").read_text().splitlines()) == 4
