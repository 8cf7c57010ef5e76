"""Samplers against hand-computed indices (video/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from video.sampling import (
    SAMPLERS,
    all_frames,
    consecutive_clips,
    evenly_spaced,
    frame_difference_distribution,
    pathway_walk,
    sample_by_distribution,
    sample_indices,
    uniform_segments,
)


def _video(t: int) -> np.ndarray:
    return np.zeros((t, 2, 2, 3), dtype=np.uint8)


# consecutive ----------------------------------------------------------------------------


def test_consecutive_drops_tail():
    got = consecutive_clips(35, 16)
    assert got.dtype == np.int64
    assert got.tolist() == [list(range(0, 16)), list(range(16, 32))]


def test_consecutive_exact_multiple():
    assert consecutive_clips(32, 16).tolist() == [list(range(16)), list(range(16, 32))]


def test_consecutive_short_video_pads_with_last_frame():
    assert consecutive_clips(5, 16).tolist() == [[0, 1, 2, 3, 4] + [4] * 11]
    assert consecutive_clips(1, 3).tolist() == [[0, 0, 0]]


def test_consecutive_with_stride():
    # Starts 0, 3, 6 (9 would need frames 9..12, only 0..10 exist).
    assert consecutive_clips(11, 4, stride=3).tolist() == [
        [0, 1, 2, 3],
        [3, 4, 5, 6],
        [6, 7, 8, 9],
    ]


@pytest.mark.parametrize("args", [(0, 16), (10, 0), (10, 4, 0)])
def test_consecutive_rejects_non_positive(args):
    with pytest.raises(ValueError):
        consecutive_clips(*args)


# evenly_spaced / uniform -----------------------------------------------------------------


def test_evenly_spaced():
    # floor((2i+1) * 10 / 6) for i = 0, 1, 2 -> 1, 5, 8
    assert evenly_spaced(10, 3).tolist() == [1, 5, 8]
    assert evenly_spaced(40, 20).tolist() == list(range(1, 40, 2))
    assert evenly_spaced(3, 5).tolist() == [0, 1, 2]
    assert evenly_spaced(0, 5).tolist() == []


def test_uniform_segments_eval_centres():
    # T=10, k=4: floor((2i+1)*10/8) -> 1, 3, 6, 8
    assert uniform_segments(10, 4).tolist() == [1, 3, 6, 8]
    # T=8, k=8: every frame
    assert uniform_segments(8, 8).tolist() == list(range(8))


def test_uniform_segments_short_video_repeats():
    # T=3, k=5: floor((2i+1)*3/10) -> 0, 0, 1, 2, 2
    assert uniform_segments(3, 5).tolist() == [0, 0, 1, 2, 2]
    got = uniform_segments(3, 5, train=True, rng=np.random.default_rng(1))
    # Segments [0,0) [0,1) [1,1) [1,2) [2,3): empty ones take their start frame.
    assert got.tolist() == [0, 0, 1, 1, 2]


def test_uniform_segments_train_stays_in_segments():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        got = uniform_segments(10, 4, train=True, rng=rng)
        # Segments: [0,2) [2,5) [5,7) [7,10)
        assert 0 <= got[0] < 2 and 2 <= got[1] < 5 and 5 <= got[2] < 7 and 7 <= got[3] < 10
        seen.add(tuple(got.tolist()))
    assert len(seen) > 10  # it is actually random
    a = uniform_segments(100, 8, train=True, rng=np.random.default_rng(5))
    b = uniform_segments(100, 8, train=True, rng=np.random.default_rng(5))
    assert a.tolist() == b.tolist()


# p(z) ----------------------------------------------------------------------------------


def test_frame_difference_distribution_by_hand():
    # 4 one-pixel grey frames 0, 10, 10, 40 (uint8): differences 10, 0, 30 -> frames 1, 2, 3
    frames = np.array([0, 10, 10, 40], dtype=np.uint8).reshape(4, 1, 1, 1)
    p = frame_difference_distribution(frames, floor=0.0)
    np.testing.assert_allclose(p, [0.0, 0.25, 0.0, 0.75])
    # floor 0.2: 0.8 * d/40 + 0.05
    p = frame_difference_distribution(frames, floor=0.2)
    np.testing.assert_allclose(p, [0.05, 0.25, 0.05, 0.65])
    assert p.dtype == np.float64 and np.isclose(p.sum(), 1.0)


def test_frame_difference_no_uint8_wraparound():
    # 200 -> 10 is a difference of 190, not (10 - 200) mod 256 = 66; 3 channels each.
    frames = np.array([200, 10, 10], dtype=np.uint8).reshape(3, 1, 1, 1).repeat(3, axis=3)
    frames[2, 0, 0, 0] = 5  # second difference: |5 - 10| = 5 on one channel only
    p = frame_difference_distribution(frames, floor=0.0)
    np.testing.assert_allclose(p, [0.0, 570 / 575, 5 / 575])


def test_frame_difference_static_video_is_uniform():
    np.testing.assert_allclose(frame_difference_distribution(_video(5)), [0.2] * 5)
    np.testing.assert_allclose(frame_difference_distribution(_video(1)), [1.0])


def test_sample_by_distribution_without_replacement_sorted():
    p = np.full(30, 1 / 30)
    for seed in range(20):
        got = sample_by_distribution(p, 25, np.random.default_rng(seed))
        assert got.dtype == np.int64 and len(got) == 25
        assert len(set(got.tolist())) == 25
        assert np.all(np.diff(got) > 0)


def test_sample_by_distribution_pads_short_video():
    # T=3, n=7: floor(i*3/7) -> 0,0,0,1,1,2,2
    got = sample_by_distribution(np.full(3, 1 / 3), 7, np.random.default_rng(0))
    assert got.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert sample_by_distribution(np.full(4, 0.25), 4, np.random.default_rng(0)).tolist() == [
        0,
        1,
        2,
        3,
    ]


def test_sample_by_distribution_zero_mass_frames_fill_in():
    p = np.array([0.0, 0.5, 0.0, 0.5, 0.0])
    got = sample_by_distribution(p, 3, np.random.default_rng(0))
    assert {1, 3} <= set(got.tolist()) and len(set(got.tolist())) == 3


def test_high_motion_frames_sampled_more():
    # Frames 10..19 change a lot, the rest barely: p(z) should favour them.
    t = 30
    frames = np.zeros((t, 4, 4, 3), dtype=np.uint8)
    for i in range(t):
        frames[i] = (i % 2) * (200 if 10 <= i < 20 else 2)
    p = frame_difference_distribution(frames)
    rng = np.random.default_rng(0)
    counts = np.zeros(t)
    for _ in range(300):
        counts[sample_by_distribution(p, 8, rng)] += 1
    high = counts[10:20].sum() + counts[20]  # frame 20 shows the last big change
    assert high / counts.sum() > 0.9


def test_pathway_walk_layout_and_determinism():
    p = frame_difference_distribution(np.random.default_rng(0).integers(0, 255, (40, 3, 3, 3)))
    a = pathway_walk(p, (7, 17, 25), np.random.default_rng(3))
    b = pathway_walk(p, (7, 17, 25), np.random.default_rng(3))
    assert a.shape == (49,) and a.tolist() == b.tolist()
    for part in (a[:7], a[7:24], a[24:]):
        assert np.all(np.diff(part) > 0)
    c = pathway_walk(p, (7, 17, 25), np.random.default_rng(4))
    assert a.tolist() != c.tolist()


# all ------------------------------------------------------------------------------------


def test_all_frames():
    assert all_frames(4).tolist() == [0, 1, 2, 3]
    assert all_frames(3, min_frames=6).tolist() == [0, 1, 2, 2, 2, 2]
    assert all_frames(7, min_frames=6).tolist() == list(range(7))


# dispatcher -------------------------------------------------------------------------------


def test_sampler_names():
    assert set(SAMPLERS) == {"consecutive", "uniform", "pz", "all"}


def test_sample_indices_consecutive_with_cap():
    got = sample_indices("consecutive", _video(35), clip_len=16)
    assert got.tolist() == consecutive_clips(35, 16).tolist()
    # 10 clips of 4 capped to 3: clips 1, 5, 8 (evenly_spaced(10, 3))
    got = sample_indices("consecutive", _video(40), clip_len=4, max_clips=3)
    assert got[:, 0].tolist() == [4, 20, 32]


def test_sample_indices_shapes():
    video = _video(20)
    assert sample_indices("uniform", video, num_segments=4).tolist() == [[2, 7, 12, 17]]
    assert sample_indices("all", video, min_frames=25).shape == (1, 25)
    got = sample_indices("pz", video, sizes=(2, 3), walks=4)
    assert got.shape == (4, 5) and got.dtype == np.int64


def test_sample_indices_pz_seeded():
    video = np.random.default_rng(0).integers(0, 255, (30, 3, 3, 3), dtype=np.uint8)
    a = sample_indices("pz", video, sizes=(3, 5), walks=2)
    b = sample_indices("pz", video, sizes=(3, 5), walks=2)
    assert a.tolist() == b.tolist()  # rng=None means seed 0
    c = sample_indices("pz", video, sizes=(3, 5), walks=2, rng=np.random.default_rng(9))
    assert a.tolist() != c.tolist()
    assert a[0].tolist() != a[1].tolist()  # walks are independent draws


def test_sample_indices_errors():
    with pytest.raises(KeyError, match="unknown sampler"):
        sample_indices("nope", _video(3))
    with pytest.raises(TypeError):
        sample_indices("all", _video(3), clip_len=4)
    with pytest.raises(ValueError):
        sample_indices("all", _video(0))


def test_sample_indices_caps_inputs_evenly() -> None:
    frames = np.zeros((80, 2, 2, 3), dtype=np.uint8)
    # 5 clips of 16 frames; a cap of 2 keeps clips floor((2i+1)*5/4) = 1 and 3
    capped = sample_indices("consecutive", frames, clip_len=16, max_inputs=2)
    np.testing.assert_array_equal(capped[:, 0], [16, 48])
    assert len(sample_indices("consecutive", frames, clip_len=16, max_inputs=0)) == 5


def test_consecutive_frame_step_dilates_each_clip() -> None:
    # span = (4 - 1) * 3 + 1 = 10 frames; starts every 10 by default: 0, 10 (20 + 10 > 25).
    assert consecutive_clips(25, 4, frame_step=3).tolist() == [[0, 3, 6, 9], [10, 13, 16, 19]]
    # An explicit stride still sets the starts.
    assert consecutive_clips(12, 3, stride=2, frame_step=2).tolist() == [
        [0, 2, 4],
        [2, 4, 6],
        [4, 6, 8],
        [6, 8, 10],
    ]
    # Shorter than one span: one clip, indices past the end repeat the last frame.
    assert consecutive_clips(7, 4, frame_step=3).tolist() == [[0, 3, 6, 6]]
    frames = np.zeros((32, 2, 2, 3), dtype=np.uint8)
    got = sample_indices("consecutive", frames, clip_len=8, frame_step=4)
    assert got.tolist() == [list(range(0, 32, 4))]
