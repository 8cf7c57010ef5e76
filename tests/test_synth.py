"""Move4Digits generator: layout, determinism, balance, styles and learnable motion.

(training/synth.py)
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from training.synth import (
    CLASS_SETS,
    STYLES,
    MotionSpec,
    class_names,
    generate,
    main,
    render_video,
    sample_motion,
)
from video.decode import decode_video

FRAMES, SIZE = 16, 32  # small videos keep the tests fast
DIRECTIONS = CLASS_SETS["extended"][:8]
# The classic style has one family of each kind and draws its own way (tested on its own).
DRAWN = [s for s in STYLES if s != "classic"]
RENDERINGS = [(s, r) for s in DRAWN for r in STYLES[s].renderings]
BACKGROUNDS = [(s, b) for s in DRAWN for b in STYLES[s].backgrounds]
# One frame's pixel sum, as the first generator (before styles) drew it: see the test.
CLASSIC_FRAME_SUM = 236540
STROKES = ("thin", "normal", "thick")


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("m4d") / "a"
    return generate(
        out, per_class=4, seed=7, frames=FRAMES, size=SIZE, style="varied", progress=False
    )


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
    assert meta["style"] == "varied" and meta["speed_range"] == [0.6, 1.6]
    assert meta["families"]["rendering"] == ["smooth", "blocky", "soft"]


def test_videos_jsonl_records_every_video(dataset: Path):
    records = [json.loads(line) for line in (dataset / "videos.jsonl").read_text().splitlines()]
    train = [line.split()[0] for line in (dataset / "trainlist01.txt").read_text().splitlines()]
    test = (dataset / "testlist01.txt").read_text().splitlines()
    assert sorted(r["video"] for r in records) == sorted(train + test)
    look = STYLES["varied"]
    for r in records:
        assert r["split"] == ("test" if r["video"] in test else "train")
        assert r["motion"] == r["video"].split("/")[0]
        assert r["rendering"] in look.renderings and r["stroke"] in look.strokes
        assert r["background"] in look.backgrounds and 0 <= r["digit"] <= 9
        assert r["distractor"] in ("black", "background", "static_digit")
        assert 0.3 < r["speed"] <= look.speed[1]  # 32 px frames cap the fastest paths


def test_videos_are_h264_with_the_rendered_frames(dataset: Path):
    path = dataset / "move_left" / "v_move_left_0001.mp4"
    frames, meta = decode_video(path)
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and meta.codec == "h264"
    spec = sample_motion(
        np.random.default_rng([7, 2, 1]), "move_left", frames=FRAMES, size=SIZE, style="varied"
    )
    rendered = render_video(spec, frames=FRAMES, size=SIZE)
    # Lossy but close: the file holds the frames the generator drew.
    assert np.abs(frames.astype(int) - rendered.astype(int)).mean() < 6


@pytest.mark.parametrize("style", list(STYLES))
def test_same_seed_same_bytes_other_seed_other_frames(style: str, dataset: Path, tmp_path: Path):
    def make(name: str, seed: int) -> Path:
        return generate(
            tmp_path / name,
            per_class=4,
            seed=seed,
            frames=FRAMES,
            size=SIZE,
            style=style,
            progress=False,
        )

    first = dataset if style == "varied" else make("a", 7)
    again = make("b", 7)
    assert _files(again) == _files(first)
    # The files hold the frames the generator drew, in either style.
    decoded, _ = decode_video(first / "move_down" / "v_move_down_0002.mp4")
    spec = sample_motion(
        np.random.default_rng([7, 1, 2]), "move_down", frames=FRAMES, size=SIZE, style=style
    )
    rendered = render_video(spec, frames=FRAMES, size=SIZE)
    assert np.abs(decoded.astype(int) - rendered.astype(int)).mean() < 6
    other = make("c", 8)
    name = "move_up/v_move_up_0000.mp4"
    a, _ = decode_video(first / name)
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
    with pytest.raises(ValueError, match="style"):
        generate(tmp_path, per_class=4, seed=0, style="fancy")
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rendering"):
        sample_motion(rng, "move_up", style="varied", rendering="fancy")
    with pytest.raises(ValueError, match="stroke"):
        sample_motion(rng, "move_up", style="varied", stroke="fancy")
    with pytest.raises(ValueError, match="background"):
        sample_motion(rng, "move_up", style="varied", background="fancy")
    with pytest.raises(ValueError, match="classic style has one family"):
        sample_motion(rng, "move_up", rendering="smooth")


# Styles and families.


def test_alt_style_shares_no_rendering_or_background_with_the_others():
    for other in ("classic", "varied"):
        assert not set(STYLES[other].renderings) & set(STYLES["alt"].renderings)
        assert not set(STYLES[other].backgrounds) & set(STYLES["alt"].backgrounds)
    default, alt = STYLES["varied"], STYLES["alt"]
    assert not set(default.renderings) & set(alt.renderings)
    assert not set(default.backgrounds) & set(alt.backgrounds)
    # Its colours differ too: vivid darker strokes on light backgrounds.
    assert alt.digit_saturation[0] > default.digit_saturation[1]
    assert alt.bg_value[0] > default.bg_value[1]
    # Its speeds are ones the default style also shows: only the look is new.
    assert default.speed[0] <= alt.speed[0] < alt.speed[1] <= default.speed[1]
    for name, look in STYLES.items():
        seen: dict[str, set[str]] = {"rendering": set(), "stroke": set(), "background": set()}
        for k in range(60):
            spec = sample_motion(np.random.default_rng([k]), "move_up", style=name)
            assert spec.style == name
            seen["rendering"].add(spec.rendering)
            seen["stroke"].add(spec.stroke)
            seen["background"].add(spec.background)
        # Sampled videos use every family of their own style and none of another's.
        assert seen["rendering"] == set(look.renderings)
        assert seen["stroke"] == set(look.strokes)
        assert seen["background"] == set(look.backgrounds)


def _digit_only(spec: MotionSpec) -> MotionSpec:
    # Black background, no sensor noise, and no distractor chunk: only the moving digit is
    # bright, so its centroid and mass can be measured.
    return dataclasses.replace(
        spec,
        bg_texture=np.zeros_like(spec.bg_texture),
        chunk=(0, 0),
        colour=np.full(3, 255.0),
        sensor_noise=0.0,
    )


def _background_only(spec: MotionSpec, frames: int) -> MotionSpec:
    return dataclasses.replace(spec, chunk=(0, frames), chunk_kind="background")


def _centroids(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (x, y) and total of a ``(T, H, W)`` mass per frame."""
    total = mass.sum(axis=(1, 2))
    ys, xs = np.mgrid[: mass.shape[1], : mass.shape[2]]
    cx = (mass * xs).sum(axis=(1, 2)) / total
    cy = (mass * ys).sum(axis=(1, 2)) / total
    return np.stack([cx, cy], axis=1), total


def _ink(video: np.ndarray) -> np.ndarray:
    return video[..., 0].astype(np.float64)


def _check_motion(motion: str, spec: MotionSpec, centre: np.ndarray, mass: np.ndarray) -> None:
    frames = len(centre)
    step = (centre[-1] - centre[0]) / (frames - 1)
    want = np.sign(
        [("right" in motion) - ("left" in motion), ("down" in motion) - ("up" in motion)]
    )
    for axis in range(2):
        if want[axis] == 0:
            assert abs(step[axis]) < 0.1, (motion, step)
        else:
            assert np.sign(step[axis]) == want[axis], (motion, step)
    # The measured step is the drawn one, and its speed is in the style's range.
    drawn = (spec.centre[-1] - spec.centre[0]) / (frames - 1)
    np.testing.assert_allclose(step, drawn, atol=0.1)
    low, high = STYLES[spec.style].speed
    assert low - 0.1 < math.hypot(*step) < high + 0.1, (motion, step)
    # The digit never leaves the frame: its visible ink hardly changes.
    assert mass.min() > 0.85 * mass.max(), (motion, mass.min(), mass.max())


@pytest.mark.parametrize(("style", "rendering"), RENDERINGS)
@pytest.mark.parametrize("motion", DIRECTIONS)
def test_digit_moves_in_its_direction_and_stays_in_view(motion: str, style: str, rendering: str):
    frames, size = 32, 64
    for k, stroke in enumerate(STROKES):
        rng = np.random.default_rng([1, k])
        spec = sample_motion(
            rng, motion, frames=frames, size=size, style=style, rendering=rendering, stroke=stroke
        )
        video = render_video(_digit_only(spec), frames=frames, size=size)
        centre, mass = _centroids(_ink(video))
        _check_motion(motion, spec, centre, mass)


def _alpha_estimate(video: np.ndarray, background: np.ndarray, colour: np.ndarray) -> np.ndarray:
    # Per pixel, the least-squares alpha of video = background + alpha (colour - background).
    towards = colour.astype(np.float64) - background
    moved = video.astype(np.float64) - background
    return np.clip((moved * towards).sum(-1) / np.maximum((towards**2).sum(-1), 1.0), 0.0, 1.0)


@pytest.mark.parametrize("motion", DIRECTIONS)
def test_classic_digit_moves_in_its_direction_and_stays_in_view(motion: str):
    for k in range(3):
        spec = sample_motion(np.random.default_rng([1, k]), motion, frames=32, size=64)
        assert (spec.style, spec.rendering, spec.background) == ("classic", "smooth", "noise")
        video = render_video(_digit_only(spec), frames=32, size=64)
        centre, mass = _centroids(_ink(video))
        _check_motion(motion, spec, centre, mass)


def test_classic_is_the_default_and_the_first_look(tmp_path: Path):
    """The generator's default reproduces the videos the first generator made: a pixel sum of
    one frame, recorded from the generator before styles existed, still holds."""
    out = generate(tmp_path / "c", per_class=2, seed=0, frames=8, size=32, progress=False)
    meta = json.loads((out / "move4digits.json").read_text())
    assert meta["style"] == "classic" and meta["families"]["background"] == ["noise"]
    spec = sample_motion(np.random.default_rng([0, 0, 0]), "move_up", frames=8, size=32)
    frame = render_video(spec, frames=8, size=32)[3]
    assert int(frame.astype(np.int64).sum()) == CLASSIC_FRAME_SUM


@pytest.mark.parametrize(("style", "background"), BACKGROUNDS)
@pytest.mark.parametrize("motion", ["move_up", "move_right", "move_down_left"])
def test_digit_moves_over_every_background(motion: str, style: str, background: str):
    frames, size = 32, 64
    for k in range(2):
        spec = sample_motion(
            np.random.default_rng([2, k]), motion, style=style, background=background
        )
        spec = dataclasses.replace(spec, chunk=(0, 0))
        video = render_video(spec, frames=frames, size=size)
        behind = render_video(_background_only(spec, frames), frames=frames, size=size)
        alpha = _alpha_estimate(video, behind.astype(np.float64), spec.colour)
        centre, mass = _centroids(alpha)
        _check_motion(motion, spec, centre, mass)


def _digit_mask(spec: MotionSpec, frames: int, size: int) -> np.ndarray:
    return render_video(_digit_only(spec), frames=frames, size=size)[..., 0] > 160


@pytest.mark.parametrize(("style", "background"), BACKGROUNDS)
def test_every_background_is_textured_and_the_digit_stands_out(style: str, background: str):
    frames, size = 32, 64
    spec = sample_motion(np.random.default_rng(4), "move_left", style=style, background=background)
    spec = dataclasses.replace(spec, chunk=(0, 0))
    video = render_video(spec, frames=frames, size=size).astype(np.float64)
    behind = render_video(_background_only(spec, frames), frames=frames, size=size)
    behind = behind.astype(np.float64)
    # Something to see (the flat family's texture is its sensor noise) ...
    assert behind[0].std(axis=(0, 1)).max() > 2.0, background
    if background == "gradient":
        # ... a ramp across the frame (drifting, it only shifts its colours a little) ...
        assert np.ptp(behind[0].mean(axis=-1)) > 15
    elif background != "flat":
        # ... that drifts: later frames show the texture shifted.
        assert np.abs(behind[-1] - behind[0]).mean() > 1.0, background
    # Where the digit is drawn, the frame clearly differs from the background alone.
    mask = _digit_mask(spec, frames, size)
    contrast = np.abs(video - behind).max(axis=-1)
    assert contrast[mask].mean() > 40, (background, contrast[mask].mean())
    assert contrast[~mask].mean() < 5, background


@pytest.mark.parametrize(("style", "rendering"), RENDERINGS)
def test_every_rendering_draws_a_digit_whose_strokes_widen_with_the_stroke_level(
    style: str, rendering: str
):
    size = 64
    box = (0.3125 * size) ** 2
    ink = []
    for stroke in STROKES:
        # The same seed: the same digit, drawn thinner or thicker.
        spec = sample_motion(
            np.random.default_rng(5), "move_up", style=style, rendering=rendering, stroke=stroke
        )
        spec = dataclasses.replace(
            _digit_only(spec), centre=np.full((1, 2), (size - 1) / 2), scale=np.ones(1)
        )
        frame = render_video(dataclasses.replace(spec, angle=np.zeros(1)), frames=1, size=size)
        alpha = frame[0, ..., 0] / 255.0
        ink.append(alpha.sum())
        # A digit, not a speck and not a filled box; all of it near the box.
        assert 0.05 * box < alpha.sum() < 0.75 * box, (rendering, stroke, alpha.sum())
        ys, xs = np.nonzero(alpha > 0.05)
        assert np.abs(np.concatenate([xs, ys]) - (size - 1) / 2).max() < 0.65 * 0.3125 * size
    assert ink[0] < ink[1] < ink[2], (rendering, ink)


def test_renderings_of_one_digit_differ():
    # The handwritten renderings of the same load_digits image are different drawings.
    frames = {}
    for rendering in ("smooth", "blocky", "soft", "outline"):
        spec = sample_motion(
            np.random.default_rng(6), "move_up", style="varied", rendering=rendering
        )
        frames[rendering] = render_video(_digit_only(spec), frames=1)[0, ..., 0].astype(int)
    names = list(frames)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            drawn = np.maximum(frames[a], frames[b]) > 20
            assert np.abs(frames[a] - frames[b])[drawn].mean() > 15, (a, b)


@pytest.mark.parametrize("style", list(STYLES))
def test_speed_range_is_honoured(style: str):
    low, high = STYLES[style].speed
    speeds: dict[tuple[int, str], np.ndarray] = {}
    for size in (64, 160):
        for motion in ("move_up", "move_up_left"):
            got = []
            for k in range(150):
                spec = sample_motion(np.random.default_rng([k]), motion, size=size, style=style)
                steps = np.diff(spec.centre, axis=0)
                got.append(np.hypot(steps[:, 0], steps[:, 1]).mean())
                # The whole path keeps the tilted digit box (20 px at 64) in the frame.
                tilt = spec.angle[0]
                half = 0.5 * 0.3125 * size * (abs(math.cos(tilt)) + abs(math.sin(tilt)))
                assert spec.centre.min() >= half - 0.5 - 1e-9
                assert spec.centre.max() <= size - 0.5 - half + 1e-9
            speeds[size, motion] = np.array(got)
    for key, values in speeds.items():
        assert values.min() >= low - 1e-9 and values.max() <= high + 1e-9, key
    for motion in ("move_up", "move_up_left"):
        # Large frames show the whole range ...
        big = speeds[160, motion]
        assert big.min() < low + 0.1 and big.max() > high - 0.1
        # ... 64 px frames cap it (a 20 px digit crossing 31 frames) for every direction alike,
        # so that speed carries no hint of the class.
        assert speeds[64, motion].max() <= (64 - 20) / 31 + 1e-9
    assert abs(speeds[64, "move_up"].mean() - speeds[64, "move_up_left"].mean()) < 0.08


@pytest.mark.parametrize(("style", "rendering"), RENDERINGS)
@pytest.mark.parametrize("motion", ["grow", "shrink", "rotate_cw", "rotate_ccw"])
def test_in_place_motions(motion: str, style: str, rendering: str):
    spec = sample_motion(
        np.random.default_rng(3), motion, frames=32, size=64, style=style, rendering=rendering
    )
    video = render_video(_digit_only(spec), frames=32, size=64)
    centre, mass = _centroids(_ink(video))
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
        rendering="smooth",
        stroke="normal",
        centre=np.array([[32.0, 32.0], [32.0, 32.0]]),
        scale=np.ones(2),
        angle=np.array([0.0, math.pi / 2]),
    )
    centre, _ = _centroids(_ink(render_video(spec, frames=2, size=64)))
    assert centre[0, 1] < 30 and abs(centre[0, 0] - 32) < 1  # up
    assert centre[1, 0] > 34 and abs(centre[1, 1] - 32) < 1  # right


@pytest.mark.parametrize("style", list(STYLES))
def test_distractor_chunk(style: str):
    kinds = set()
    for k in range(30):
        spec = sample_motion(np.random.default_rng(k), "move_up", frames=32, size=64, style=style)
        start, length = spec.chunk
        assert 4 <= length <= 8 and 0 <= start <= 32 - length
        kinds.add(spec.chunk_kind)
        if spec.chunk_kind == "black":
            video = render_video(spec)
            inside = np.zeros(32, dtype=bool)
            inside[start : start + length] = True
            assert video[inside].max() == 0  # no sensor noise in a dropped signal either
            assert video[~inside].reshape(32 - length, -1).mean(axis=1).min() > 20
    assert kinds == {"black", "background", "static_digit"}


def test_static_distractor_is_another_digit_of_the_same_look():
    for style in STYLES:
        for k in range(40):
            spec = sample_motion(np.random.default_rng(k), "move_up", style=style)
            if spec.chunk_kind == "static_digit":
                break
        start, length = spec.chunk
        still = render_video(dataclasses.replace(_digit_only(spec), chunk=spec.chunk))
        inside = _ink(still[start : start + length])
        # The same image in every chunk frame, centred where the spec says.
        assert np.array_equal(inside[0], inside[-1]) and inside[0].sum() > 0
        centre, _ = _centroids(inside[:1])
        assert np.abs(centre[0] - spec.distractor_centre).max() < 3.0
        assert not np.array_equal(spec.digit, spec.distractor_digit)


def test_train_and_test_digits_are_disjoint():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images / 16.0
    where: dict[bytes, set[int]] = {}
    value: dict[bytes, int] = {}
    for i, img in enumerate(images):
        where.setdefault(img.tobytes(), set()).add(i % 4 == 0)
        value[img.tobytes()] = int(bunch.target[i])
    # Every rendering of a load_digits image, in either style, keeps the split's pool.
    for rendering in ("smooth", "blocky", "soft", "outline"):
        for k in range(10):
            for split, is_test in (("train", False), ("test", True)):
                rng = np.random.default_rng(k)
                spec = sample_motion(
                    rng, "move_up", split=split, style="varied", rendering=rendering
                )
                assert where[spec.digit.tobytes()] == {is_test}
                assert where[spec.distractor_digit.tobytes()] == {is_test}
                assert spec.digit_value == value[spec.digit.tobytes()]
                assert value[spec.distractor_digit.tobytes()] != spec.digit_value


def test_drawn_glyphs_cover_the_ten_values():
    values = set()
    for rendering in ("seven_segment", "dot_matrix"):
        for k in range(60):
            spec = sample_motion(
                np.random.default_rng(k), "move_up", style="alt", rendering=rendering
            )
            values.add(spec.digit_value)
            assert (
                spec.digit.shape == (24, 24) and 0.0 <= spec.digit.min() <= spec.digit.max() <= 1.0
            )
    assert values == set(range(10))


def test_cli(tmp_path: Path, capsys):
    args = ["--per-class", "2", "--seed", "1", "--frames", "8", "--size", "16"]
    main(["--out", str(tmp_path / "cli"), *args])
    assert "wrote Move4Digits" in capsys.readouterr().out
    assert len((tmp_path / "cli" / "trainlist01.txt").read_text().splitlines()) == 4
    main(["--out", str(tmp_path / "alt"), *args, "--style", "alt"])
    assert "style alt" in capsys.readouterr().out
    meta = json.loads((tmp_path / "alt" / "move4digits.json").read_text())
    assert meta["style"] == "alt" and meta["families"]["background"] == list(
        STYLES["alt"].backgrounds
    )
    records = (tmp_path / "alt" / "videos.jsonl").read_text().splitlines()
    assert {json.loads(r)["rendering"] for r in records} <= set(STYLES["alt"].renderings)
