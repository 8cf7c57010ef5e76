"""Split parsing, validation and the torch datasets (training/datasets.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from models.spec import VariantSpec
from training.datasets import (
    ClipDataset,
    DatasetError,
    EmptySplitError,
    UnusableVideosError,
    VideoDataset,
    VideoEntry,
    VideoItem,
    VideoLoadError,
    collate_videos,
    detect_layout,
    load_dataset,
    load_hmdb51,
    load_list,
    load_ucf101,
    scan_videos,
    validate_entries,
)
from training.synth import generate
from video.decode import decode_video
from video.sampling import consecutive_clips

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def m4d(tmp_path_factory) -> Path:
    """Move4Digits, 4 classes x 2 videos (1 train + 1 test each), 16 frames of 32x32."""
    out = tmp_path_factory.mktemp("data") / "m4d"
    return generate(out, per_class=2, seed=0, frames=16, size=32, test_fraction=0.5, progress=False)


# --------------------------------------------------------------------------- UCF101


def test_ucf101_split_files_in_subfolder(tmp_path: Path):
    lists = tmp_path / "ucfTrainTestlist"
    _write(lists / "classInd.txt", "1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n3 Zebra\r\n")
    _write(
        lists / "trainlist02.txt",
        "ApplyEyeMakeup/v_a1.avi 1\nHandstandPushups/v_HandStandPushups_g01.avi 2\n\nZebra/z.avi\n",
    )
    # UCF101 spells the folder both ways: labels come from the folder case-insensitively.
    _write(lists / "testlist02.txt", "HandStandPushups/v_h.avi\r\nApplyEyeMakeup/v_a2.avi\r\n")
    assert detect_layout(tmp_path) == "ucf101"
    splits = load_ucf101(tmp_path, split=2)
    assert splits.layout == "ucf101"
    assert splits.classes == ["ApplyEyeMakeup", "HandstandPushups", "Zebra"]
    assert splits.train == [
        VideoEntry(tmp_path / "ApplyEyeMakeup/v_a1.avi", 0),
        VideoEntry(tmp_path / "HandstandPushups/v_HandStandPushups_g01.avi", 1),
        VideoEntry(tmp_path / "Zebra/z.avi", 2),
    ]
    assert splits.test == [
        VideoEntry(tmp_path / "HandStandPushups/v_h.avi", 1),
        VideoEntry(tmp_path / "ApplyEyeMakeup/v_a2.avi", 0),
    ]
    assert splits.sources == [
        lists / "classInd.txt",
        lists / "trainlist02.txt",
        lists / "testlist02.txt",
    ]


def test_ucf101_split_files_in_root(tmp_path: Path):
    _write(tmp_path / "classInd.txt", "2 b\n1 a\n")  # order of lines does not matter
    _write(tmp_path / "trainlist01.txt", "b/x.avi 2\n")
    _write(tmp_path / "testlist01.txt", "a/y.avi\n")
    splits = load_dataset(tmp_path)
    assert splits.classes == ["a", "b"]
    assert splits.train == [VideoEntry(tmp_path / "b/x.avi", 1)]
    assert splits.test == [VideoEntry(tmp_path / "a/y.avi", 0)]


def test_ucf101_errors(tmp_path: Path):
    _write(tmp_path / "classInd.txt", "1 a\n2 b\n")
    _write(tmp_path / "trainlist01.txt", "a/x.avi 2\n")
    _write(tmp_path / "testlist01.txt", "a/y.avi\n")
    with pytest.raises(DatasetError, match="contradicts"):
        load_ucf101(tmp_path)
    _write(tmp_path / "trainlist01.txt", "a/x.avi 3\n")
    with pytest.raises(DatasetError, match="not in 1..2"):
        load_ucf101(tmp_path)
    _write(tmp_path / "trainlist01.txt", "a/x.avi 1\n")
    _write(tmp_path / "testlist01.txt", "c/y.avi\n")
    with pytest.raises(DatasetError, match="no known class folder"):
        load_ucf101(tmp_path)
    with pytest.raises(DatasetError, match="missing split file"):
        load_ucf101(tmp_path, split=3)
    with pytest.raises(DatasetError, match="split must be"):
        load_ucf101(tmp_path, split=4)


def test_ucf101_empty_split_names_the_file(tmp_path: Path):
    _write(tmp_path / "classInd.txt", "1 a\n")
    _write(tmp_path / "trainlist01.txt", "a/x.avi\n")
    test_file = _write(tmp_path / "testlist01.txt", "\n# nothing\n")
    with pytest.raises(EmptySplitError) as err:
        load_ucf101(tmp_path)
    assert str(test_file) in str(err.value) and "test split 1" in str(err.value)


# --------------------------------------------------------------------------- HMDB51


def test_hmdb51_splits(tmp_path: Path):
    splits_dir = tmp_path / "testTrainMulti_7030_splits"
    _write(splits_dir / "wave_test_split1.txt", "w1.avi 1 \nw2.avi 2 \nw3.avi 0 \n")
    _write(splits_dir / "brush_hair_test_split1.txt", "b1.avi 2\nb2.avi 1\n")
    _write(splits_dir / "wave_test_split2.txt", "w1.avi 2\nw2.avi 1\nw3.avi 1\n")
    _write(splits_dir / "brush_hair_test_split2.txt", "b1.avi 1\nb2.avi 2\n")
    assert detect_layout(tmp_path) == "hmdb51"
    one = load_dataset(tmp_path)
    assert one.layout == "hmdb51" and one.classes == ["brush_hair", "wave"]
    assert one.train == [
        VideoEntry(tmp_path / "brush_hair/b2.avi", 0),
        VideoEntry(tmp_path / "wave/w1.avi", 1),
    ]
    assert one.test == [
        VideoEntry(tmp_path / "brush_hair/b1.avi", 0),
        VideoEntry(tmp_path / "wave/w2.avi", 1),
    ]
    two = load_hmdb51(tmp_path, split=2)
    assert [e.path.name for e in two.train] == ["b1.avi", "w2.avi", "w3.avi"]
    assert [e.path.name for e in two.test] == ["b2.avi", "w1.avi"]


def test_hmdb51_splits_dir_argument_and_empty_split(tmp_path: Path):
    elsewhere = tmp_path / "splits"
    a = _write(elsewhere / "run_test_split1.txt", "r1.avi 1\nr2.avi 0\n")
    b = _write(elsewhere / "sit_test_split1.txt", "s1.avi 1\n")
    with pytest.raises(EmptySplitError) as err:
        load_hmdb51(tmp_path / "videos", splits_dir=elsewhere)
    assert str(a) in str(err.value) and str(b) in str(err.value)
    _write(elsewhere / "sit_test_split1.txt", "s1.avi 2\n")
    splits = load_hmdb51(tmp_path / "videos", splits_dir=elsewhere)
    assert splits.test == [VideoEntry(tmp_path / "videos/sit/s1.avi", 1)]
    _write(elsewhere / "sit_test_split1.txt", "s1.avi 3\n")
    with pytest.raises(DatasetError, match="expected"):
        load_hmdb51(tmp_path / "videos", splits_dir=elsewhere)


# --------------------------------------------------------------------------- lists


def test_list_with_indices_and_names(tmp_path: Path):
    train = _write(tmp_path / "lists/train.txt", "a/x.mp4 1\n/abs/y.mp4 0\nwith space.mp4 1\n")
    test = _write(tmp_path / "lists/test.txt", "z.mp4 0\n")
    assert detect_layout(train) == "list"
    splits = load_dataset(train, test_list=test)
    assert splits.layout == "list" and splits.classes == ["0", "1"]
    assert splits.train == [
        VideoEntry(tmp_path / "lists/a/x.mp4", 1),
        VideoEntry(Path("/abs/y.mp4"), 0),
        VideoEntry(tmp_path / "lists/with space.mp4", 1),
    ]
    assert splits.test == [VideoEntry(tmp_path / "lists/z.mp4", 0)]

    named = _write(tmp_path / "named.txt", "p.mp4 walk\nq.mp4 run\nr.mp4 walk\n")
    splits = load_list(named)
    assert splits.classes == ["run", "walk"] and [e.label for e in splits.train] == [1, 0, 1]
    assert splits.test == []
    splits = load_list(named, classes=["walk", "run", "jump"])
    assert [e.label for e in splits.train] == [0, 1, 0]


def test_csv_list_and_list_errors(tmp_path: Path):
    csv = _write(tmp_path / "d.csv", "path,label\nv1.mp4,jump\nv2.mp4,sit\n")
    assert [(e.path.name, e.label) for e in load_list(csv).train] == [("v1.mp4", 0), ("v2.mp4", 1)]
    mixed = _write(tmp_path / "mixed.txt", "a.mp4 run\nb.mp4 0\n")
    with pytest.raises(DatasetError, match="mix"):
        load_list(mixed)
    assert [e.label for e in load_list(mixed, classes=["walk", "run"]).train] == [1, 0]
    with pytest.raises(DatasetError, match="not in 0..1"):
        load_list(_write(tmp_path / "big.txt", "a.mp4 2\n"), classes=["x", "y"])
    with pytest.raises(DatasetError, match="unknown class"):
        load_list(mixed, classes=["walk"])
    with pytest.raises(DatasetError, match="expected 'path label'"):
        load_list(_write(tmp_path / "bad.txt", "lonely\n"))
    empty = _write(tmp_path / "empty.txt", "# header only\n")
    with pytest.raises(EmptySplitError, match="empty.txt"):
        load_list(empty)


def test_detect_layout_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    with pytest.raises(DatasetError, match="cannot tell"):
        detect_layout(tmp_path)


# --------------------------------------------------------------------------- validation


@pytest.fixture
def mixed_entries(tmp_path: Path, make_video) -> list[VideoEntry]:
    good = make_video("good.mp4", n=8, height=16, width=16)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"definitely not a video" * 10)
    return [VideoEntry(good, 0), VideoEntry(tmp_path / "missing.mp4", 1), VideoEntry(garbage, 1)]


def test_scan_reports_missing_and_undecodable(mixed_entries):
    report = scan_videos(mixed_entries, workers=2)
    assert report.ok == mixed_entries[:1]
    assert [e for e, _ in report.bad] == mixed_entries[1:]
    assert report.bad[0][1] == "missing" and report.bad[1][1].startswith("not_a_video")


def test_validate_skips_with_a_warning(mixed_entries, caplog):
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        kept = validate_entries(mixed_entries, what="train split 1")
    assert kept == mixed_entries[:1]
    text = caplog.text
    assert "2 of 3 videos in train split 1 are unusable" in text
    assert str(mixed_entries[1].path) in text and str(mixed_entries[2].path) in text


def test_validate_strict_refuses(mixed_entries):
    with pytest.raises(UnusableVideosError) as err:
        validate_entries(mixed_entries, strict=True, workers=1)
    for entry in mixed_entries[1:]:
        assert str(entry.path) in str(err.value)
    assert [p for p, _ in err.value.bad] == [mixed_entries[1].path, mixed_entries[2].path]


def test_validate_all_bad_is_an_empty_split(mixed_entries):
    with pytest.raises(EmptySplitError):
        validate_entries(mixed_entries[1:])


# --------------------------------------------------------------------------- torch datasets


def _spec(sampler: str = "consecutive", size=(32, 32), decode_size=None, **shape) -> VariantSpec:
    shape = shape or {"clip_len": 8}
    return VariantSpec(
        family="c3d_vll",
        input_size=size,
        decode_size=decode_size,
        mean=MEAN,
        std=STD,
        sampler=sampler,
        **shape,
    )


def test_video_dataset_shapes_and_labels(m4d: Path):
    splits = load_dataset(m4d)
    assert splits.classes == ["move_up", "move_down", "move_left", "move_right"]
    assert [e.label for e in splits.train] == [0, 1, 2, 3]
    assert [e.label for e in splits.test] == [0, 1, 2, 3]
    ds = VideoDataset(splits.test, spec=_spec(size=(28, 28), decode_size=(32, 32)))
    assert len(ds) == 4
    for i in range(4):
        item = ds[i]
        assert isinstance(item, VideoItem)
        assert item.clips.shape == (2, 3, 8, 28, 28)  # 16 frames -> 2 clips of 8
        assert item.label == i and item.index == i
    # The clips are exactly the sampled frames, centre-cropped and normalised.
    frames, _ = decode_video(splits.test[1].path, size=(32, 32))
    want = torch.from_numpy(frames[consecutive_clips(16, 8)][:, :, 2:30, 2:30]).float() / 255
    want = (want.permute(0, 4, 1, 2, 3) - 0.5) / 0.25
    torch.testing.assert_close(ds[1].clips, want)
    capped = VideoDataset(splits.test, spec=_spec(), max_clips=1)
    assert capped[0].clips.shape == (1, 3, 8, 32, 32)


@pytest.mark.parametrize(
    ("sampler", "kwargs", "shape"),
    [
        ("uniform", {"segments": 4}, (1, 3, 4, 32, 32)),
        ("pz", {"pathways": (2, 3, 4), "sampler_kwargs": {"walks": 2}}, (2, 3, 9, 32, 32)),
        ("all", {"segments": 20}, (1, 3, 20, 32, 32)),
    ],
)
def test_video_dataset_other_samplers(m4d: Path, sampler, kwargs, shape):
    entries = load_dataset(m4d).train
    ds = VideoDataset(entries, spec=_spec(sampler, **kwargs), train=True)
    assert ds[2].clips.shape == shape and ds[2].label == 2


def test_training_randomness_is_seeded_per_epoch(m4d: Path):
    entries = load_dataset(m4d).train
    spec = _spec(
        "pz", size=(24, 24), decode_size=(32, 32), pathways=(3,), sampler_kwargs={"walks": 1}
    )
    kw: dict[str, Any] = dict(spec=spec, train=True, seed=5)
    a, b = VideoDataset(entries, **kw), VideoDataset(entries, **kw)
    assert torch.equal(a[0].clips, b[0].clips)
    different = []
    for epoch in range(1, 4):
        b.set_epoch(epoch)
        different.append(not torch.equal(a[0].clips, b[0].clips))
    assert any(different)
    # Evaluation is deterministic and ignores the epoch.
    ev = VideoDataset(entries, **{**kw, "train": False})
    first = ev[0].clips
    ev.set_epoch(3)
    assert torch.equal(first, ev[0].clips)


def test_dataset_matches_the_serving_pipeline(m4d: Path):
    from models.pipeline import decode_for, prepare_inputs

    spec = VariantSpec(family="c3d_vll", input_size=(24, 24), decode_size=(32, 32), clip_len=8)
    assert spec.sampler_args() == {"clip_len": 8}
    assert spec.decode_hw() == (32, 32) and spec.crop() == (24, 24)
    entry = load_dataset(m4d).test[3]
    item = VideoDataset([entry], spec=spec)[0]
    frames, _ = decode_for(entry.path, spec)
    torch.testing.assert_close(item.clips, prepare_inputs(frames, spec))


def test_collate_videos():
    a = VideoItem(torch.zeros(2, 3, 4, 5, 5), 3, 7)
    b = VideoItem(torch.ones(3, 3, 4, 5, 5), 1, 2)
    batch = collate_videos([a, b])
    assert batch.clips.shape == (5, 3, 4, 5, 5)
    assert batch.clip_video.tolist() == [0, 0, 1, 1, 1]
    assert batch.labels.tolist() == [3, 1] and batch.indices.tolist() == [7, 2]
    assert batch.clips[2:].eq(1).all() and batch.clips[:2].eq(0).all()
    with pytest.raises(ValueError, match="different clip shapes"):
        collate_videos([a, VideoItem(torch.zeros(1, 3, 6, 5, 5), 0, 0)])


def test_video_dataset_in_a_dataloader(m4d: Path):
    ds = VideoDataset(load_dataset(m4d).train, spec=_spec())
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_videos)
    batches = list(loader)
    assert [len(b.labels) for b in batches] == [3, 1]
    assert batches[0].clips.shape == (6, 3, 8, 32, 32) and batches[0].labels.tolist() == [0, 1, 2]


def test_clip_dataset_random_mode(m4d: Path):
    entries = load_dataset(m4d).train
    ds = ClipDataset(entries, clips_per_video=2, train=True, seed=1, spec=_spec())
    assert len(ds) == 8
    item = ds[5]
    assert item.clip.shape == (3, 8, 32, 32) and item.label == 2 and item.index == 2
    # The clip is one of the video's two clips; over epochs both get drawn.
    whole = VideoDataset(entries, spec=_spec())[0].clips
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        clip = ds[0].clip
        seen.add(next(j for j in range(2) if torch.equal(clip, whole[j])))
    assert seen == {0, 1}


def test_clip_dataset_all_mode(m4d: Path):
    entries = load_dataset(m4d).test
    ds = ClipDataset(entries, mode="all", spec=_spec())  # probes the frame counts
    assert len(ds) == 8 and ds.pairs[:3] == [(0, 0), (0, 1), (1, 0)]
    whole = VideoDataset(entries, spec=_spec())[1].clips
    assert torch.equal(ds[3].clip, whole[1]) and ds[3].label == 1 and ds[3].index == 1
    # Given counts: 20 frames with clips of 8 -> 2 clips; 7 frames -> 1 padded clip.
    given = ClipDataset(entries[:2], mode="all", frame_counts=[20, 7], spec=_spec())
    assert given.pairs == [(0, 0), (0, 1), (1, 0)]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch.clip.shape == (4, 3, 8, 32, 32) and batch.label.tolist() == [0, 0, 1, 1]


def test_failing_video_is_skipped_and_counted(m4d: Path, tmp_path: Path, caplog):
    good = load_dataset(m4d).test
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    entries = [good[0], VideoEntry(broken, 1), good[2]]
    ds = VideoDataset(entries, spec=_spec())
    with caplog.at_level(logging.WARNING, logger="training.datasets"):
        item = ds[1]
    assert item.index == 2 and item.label == 2  # the next readable video
    assert list(ds.failures) == [broken] and str(broken) in caplog.text
    assert ds[1].index == 2 and len(ds.failures) == 1  # a known failure is not retried
    strict = VideoDataset(entries, spec=_spec(), skip_errors=False)
    with pytest.raises(VideoLoadError) as err:
        strict[1]
    assert err.value.path == broken and str(broken) in str(err.value)
    with pytest.raises(RuntimeError, match="no readable video"):
        VideoDataset([VideoEntry(broken, 0)], spec=_spec())[0]
