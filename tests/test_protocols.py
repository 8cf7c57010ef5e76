"""The papers' training protocols: ms3d's calibration split (gamma from videos never trained
on), c3d_vll's clip-level epoch over every clip, ``--init-from`` an earlier bundle, and the
CCL's detached reference reaching the loss."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from media import write_video
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from models.bundle import WEIGHTS, load_bundle, write_bundle
from models.pipeline import decode_for, preprocess_frames
from models.registry import create_model, get_spec
from models.repository import Repository, calibrate_gamma, in_class_distances
from models.stream import _keep_frames, _Reader, stream_outputs
from models.tailor import tailor_chunk
from models.weights import WeightsMismatch, load_matching
from training.config import TrainConfig, parse_config
from training.datasets import (
    ClipDataset,
    DatasetSplits,
    VideoDataset,
    VideoEntry,
    load_dataset,
)
from training.evaluate import evaluate_videos
from training.init import class_dependent_keys, init_from_bundle
from training.run import main
from training.synth import generate
from training.tasks import Batch, calibration_split, make_task

COMMON = ["--epochs", "1", "--workers", "0", "--threads", "2", "--progress", "false"]
CLASSES = ["a", "b", "c", "d"]


def _entries(per_class: dict[int, int]) -> list[VideoEntry]:
    return [
        VideoEntry(Path(f"{CLASSES[label]}{i}.mp4"), label)
        for label, n in per_class.items()
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- calibration


def test_calibration_split_is_stratified_disjoint_and_seeded() -> None:
    entries = _entries({0: 10, 1: 10, 2: 5, 3: 1})
    train, calib = calibration_split(entries, 0.2, seed=3)
    assert not set(map(str, train)) & set(map(str, calib))
    assert sorted(map(str, train + calib)) == sorted(map(str, entries))
    # per class round(0.2 n), at least one, never all: 10 -> 2, 5 -> 1, 1 -> 0
    assert Counter(e.label for e in calib) == {0: 2, 1: 2, 2: 1}
    assert [e for e in entries if e in train] == train  # list order kept
    assert calibration_split(entries, 0.2, seed=3) == (train, calib)
    assert calibration_split(entries, 0.2, seed=4)[1] != calib  # the seed draws them
    assert calibration_split(entries, 0.0, seed=3) == (entries, [])
    with pytest.raises(ValueError, match="calibration fraction"):
        calibration_split(entries, 1.0, seed=0)


def test_ms3d_split_sets_calibration_videos_aside_before_training() -> None:
    train = _entries({0: 5, 1: 5, 2: 5, 3: 5})
    test = _entries({0: 1, 1: 1, 2: 1, 3: 1})
    splits = DatasetSplits("list", CLASSES, train, test)
    cfg = TrainConfig(family="ms3d", data="-", holdout_classes=1, calibration_fraction=0.4)
    data = make_task(cfg, CLASSES).split(splits)
    assert Counter(e.label for e in data.calibration) == {0: 2, 1: 2, 2: 2}
    assert not {e.path for e in data.train} & {e.path for e in data.calibration}
    assert all(e.label < 3 for e in data.train + data.calibration)  # held-out class apart
    assert len(data.train) == 9 and len(data.held_out_train) == 5
    # what the N-pair loader draws from is the training part only
    task = make_task(cfg, CLASSES)
    placeholder = cast(Dataset, [None] * len(data.train))  # the sampler reads labels only
    _, batches = task.loader(placeholder, data.train, 0, 1, 0)
    drawn = {i for batch in batches for i in batch}
    assert drawn <= set(range(len(data.train)))
    with pytest.raises(SystemExit, match="calibrate gamma"):
        make_task(TrainConfig(family="ms3d", data="-", calibration_fraction=0.0), CLASSES).split(
            splits
        )
    fixed = TrainConfig(family="ms3d", data="-", calibration_fraction=0.0, gamma=0.3)
    assert make_task(fixed, CLASSES).split(splits).calibration == []


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m4d-proto") / "move4digits"
    generate(out, classes="4", per_class=5, seed=4, progress=False)
    return out


@pytest.mark.slow
def test_ms3d_gamma_is_calibrated_on_the_recorded_calibration_videos(
    dataset: Path, tmp_path: Path
) -> None:
    args = ["--family", "ms3d", "--data", str(dataset), "--out", str(tmp_path), "--name", "m"]
    assert main([*args, *COMMON, "--calibration-fraction", "0.34"]) == 0
    bundle = load_bundle(tmp_path / "m")
    recorded = bundle.manifest["training"]["calibration_videos"]
    assert len(recorded) == 3  # one of the 3 training videos of each of the 3 known classes
    assert all(not Path(p).is_absolute() and (dataset / p).is_file() for p in recorded)
    # recompute gamma from the bundle: the calibration videos' distances to their centres
    model = bundle.build_model()
    repo = Repository.load(bundle.file("repository.safetensors"))
    names = {str(p.relative_to(dataset)): p.parent.name for p in dataset.rglob("*.mp4")}
    embeddings = []
    for rel in recorded:
        out, _, _ = stream_outputs(dataset / rel, bundle.spec, lambda x: model(x), batch_size=8)
        embeddings.append(out.detach().numpy())
    distances = in_class_distances(repo, embeddings, [names[r] for r in recorded])
    expected = calibrate_gamma(distances, bundle.config["gamma_percentile"])
    assert bundle.metrics["gamma"] == pytest.approx(expected, rel=1e-5)
    assert repo.gamma == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- clip level


def test_a_clip_level_epoch_visits_every_clip_of_every_video_once(tmp_path: Path) -> None:
    lengths = [32, 48, 20]
    entries = []
    for i, n in enumerate(lengths):
        write_video(tmp_path / f"v{i}.mp4", n=n, height=64, width=64)
        entries.append(VideoEntry(tmp_path / f"v{i}.mp4", i % 2))
    cfg = TrainConfig(family="c3d_vll", data="-", level="clip", max_clips=2, batch_size=4)
    task = make_task(cfg, ["x", "y"])
    dataset = task.train_dataset(entries)
    assert isinstance(dataset, ClipDataset) and dataset.mode == "all"
    spec = task.spec()
    videos = VideoDataset(entries, spec=spec, max_clips=cfg.max_clips)
    per_video = [videos[v].clips.shape[0] for v in range(len(entries))]
    assert per_video == [2, 2, 1]  # 16-frame clips: 2 of 32, 3 of 48 capped to 2, 1 of 20
    assert sorted(dataset.pairs) == [(v, j) for v, n in enumerate(per_video) for j in range(n)]
    loader, sampler = task.loader(dataset, entries, 0, 1, 0)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        assert sorted(order) == list(range(len(dataset)))  # each clip once per epoch
        assert sum(len(b.inputs) for b in loader) == len(dataset)
    # without training randomness, item (v, j) is the video-level dataset's clip j of v
    plain = ClipDataset(entries, spec=spec, mode="all", max_clips=cfg.max_clips)
    for k, (v, j) in enumerate(plain.pairs):
        torch.testing.assert_close(plain[k].clip, videos[v].clips[j], rtol=0, atol=0)


def test_ccl_detach_reference_reaches_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config(["--family", "c3d_vll", "--data", "-", "--ccl-detach-reference"])
    assert cfg.ccl_detach_reference
    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.update(kwargs)
        return torch.zeros(())

    monkeypatch.setattr("training.tasks.vll_loss", spy)
    task = make_task(cfg, ["x", "y"])
    model = nn.Linear(3, 2)
    task.loss(model, Batch(torch.zeros(4, 3), torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1])))
    assert seen["detach_reference"] is True and seen["ccl"] == "full"
    assert not parse_config(["--family", "c3d_vll", "--data", "-"]).ccl_detach_reference


# ----------------------------------------------------------------------------- init from


def test_load_matching_is_all_or_nothing() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    good = {k: torch.randn_like(v) for k, v in before.items()}
    report = load_matching(net, good)
    assert report.loaded == sorted(good) and report.skipped == []
    for k, v in net.state_dict().items():
        assert torch.equal(v, good[k])
    broken = {**good, "1.weight": torch.zeros(3, 4), "extra": torch.zeros(1)}
    del broken["0.bias"]
    now = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(WeightsMismatch) as err:
        load_matching(net, broken, source="f.safetensors")
    text = str(err.value)
    assert "missing from the file (1): 0.bias" in text
    assert "not in the network (1): extra" in text
    assert "1.weight (3, 4) vs (2, 4)" in text
    for k, v in net.state_dict().items():  # nothing copied
        assert torch.equal(v, now[k])
    # skipped keys may be absent, extra or of another shape
    report = load_matching(net, broken, skip={"0.bias", "1.weight", "extra"})
    assert report.skipped == ["0.bias", "1.weight"] and "extra" in report.ignored
    assert torch.equal(net.state_dict()["0.bias"], now["0.bias"])


def _bundle(tmp_path: Path, name: str, labels: list[str], **kwargs: Any) -> Path:
    torch.manual_seed(len(name))
    model = create_model("c3d_vll_tiny", num_classes=len(labels), **kwargs)
    write_bundle(
        tmp_path / name,
        model=model,
        model_name="c3d_vll_tiny",
        model_kwargs={"num_classes": len(labels), **kwargs},
        family="c3d_vll",
        labels=labels,
        spec=get_spec("c3d_vll_tiny"),
    )
    return tmp_path / name


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(family="c3d_vll", data="-", **kw)


def _fresh(labels: list[str], seed: int = 99) -> tuple[nn.Module, Any, dict[str, Any]]:
    task = make_task(_cfg(), labels)
    torch.manual_seed(seed)
    kwargs = task.model_kwargs()
    return create_model(task.model_name, spec=task.spec(), **kwargs), task, kwargs


def test_init_from_loads_exactly_the_stored_weights(tmp_path: Path) -> None:
    labels = ["w", "x", "y", "z"]
    path = _bundle(tmp_path, "src", labels)
    stored = load_file(str(path / WEIGHTS))
    model, task, kwargs = _fresh(labels)
    record = init_from_bundle(model, task, task.spec(), kwargs, str(path), backbone_only=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key]), key
    assert record["loaded"] == len(stored) and record["reinitialised"] == []
    assert record["weights_sha256"] == load_bundle(path).file_info(WEIGHTS)["sha256"]

    # other classes (or backbone only): the class-dependent layers stay fresh, the rest loads
    heads = class_dependent_keys(task, task.spec(), kwargs)
    assert heads and all(k.startswith("head.") for k in heads)
    for new_labels, backbone_only in ((["p", "q"], False), (labels, True)):
        model, task, kwargs = _fresh(new_labels)
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        record = init_from_bundle(
            model, task, task.spec(), kwargs, str(path), backbone_only=backbone_only
        )
        assert record["reinitialised"] == sorted(class_dependent_keys(task, task.spec(), kwargs))
        for key, value in model.state_dict().items():
            expected = fresh[key] if key in record["reinitialised"] else stored[key]
            assert torch.equal(value, expected), key


def test_init_from_refuses_what_does_not_fit(tmp_path: Path) -> None:
    labels = ["w", "x"]
    wider = _bundle(tmp_path, "wider", labels, fc_dim=48)
    model, task, kwargs = _fresh(labels)
    with pytest.raises(SystemExit, match=r"shape \(file vs network\)"):
        init_from_bundle(model, task, task.spec(), kwargs, str(wider), backbone_only=False)
    (tmp_path / "wider" / WEIGHTS).write_bytes(b"broken")
    with pytest.raises(SystemExit, match="sha256|checksum"):
        init_from_bundle(model, task, task.spec(), kwargs, str(wider), backbone_only=False)
    with pytest.raises(SystemExit, match="--init-from"):
        init_from_bundle(
            model, task, task.spec(), kwargs, str(tmp_path / "none"), backbone_only=False
        )
    other = make_task(TrainConfig(family="c3d_vll", data="-", model="c3d_vll"), labels)
    good = _bundle(tmp_path, "good", labels)
    with pytest.raises(SystemExit, match="holds a c3d_vll_tiny network"):
        init_from_bundle(model, other, other.spec(), kwargs, str(good), backbone_only=False)


@pytest.mark.slow
def test_video_level_fine_tuned_from_a_clip_level_bundle(dataset: Path, tmp_path: Path) -> None:
    """The c3d_vll paper's protocol: clip-level first, then video-level from its weights."""
    base = ["--family", "c3d_vll", "--data", str(dataset), "--out", str(tmp_path), *COMMON]
    assert main([*base, "--name", "clip", "--level", "clip"]) == 0
    clip = load_bundle(tmp_path / "clip")
    args = [*base, "--name", "video", "--level", "video", "--init-from", str(tmp_path / "clip")]
    assert main([*args, "--lr", "0"]) == 0  # lr 0: the weights stay the clip-level ones
    video = load_bundle(tmp_path / "video")
    record = video.manifest["training"]["init_from"]
    assert record["weights_sha256"] == clip.file_info(WEIGHTS)["sha256"]
    assert record["reinitialised"] == [] and video.config["init_from"] == str(tmp_path / "clip")
    a, b = load_file(str(clip.file(WEIGHTS))), load_file(str(video.file(WEIGHTS)))
    for key in a:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # batch-norm statistics move in train mode even at lr 0
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    assert np.isfinite(video.metrics["top1"])


# ----------------------------------------------------------------------------- tailor


def _moving_square() -> np.ndarray:
    """3 grey (100) frames of 10x10 with a 2x2 square of 200 at columns 2, 4, 6 of rows 2-3."""
    frames = np.full((3, 10, 10, 3), 100, dtype=np.uint8)
    for t, col in enumerate((2, 4, 6)):
        frames[t, 2:4, col : col + 2] = 200
    return frames


def test_tailor_through_the_front_end_by_hand() -> None:
    spec = get_spec("ms3d_tiny").replace(tailor={"eta": 1.5, "xi": 0.5, "band": 2})
    out = preprocess_frames(_moving_square(), spec)
    # frame 1: moved pixels (|F1 - F0| > 25) span columns 2-5 of rows 2-3: box (2, 2, 6, 4)
    assert out[1, 2, 3, 0] == 150  # inside, background: 100 * eta
    assert out[1, 2, 4, 0] == 255  # inside, the square: 200 * 1.5 = 300, clipped
    assert out[1, 2, 6, 0] == 50  # one column right of the box: band ceil(1 / 2) = 1, xi
    assert out[1, 0, 0, 0] == 50  # Chebyshev distance 2: band 1
    assert out[1, 9, 9, 0] == 12  # distance max(9 - 3, 9 - 5) = 6: band 3, 100 / 8 = 12.5
    # frame 0 has no predecessor: its box is the one of its successor's difference
    assert out[0, 2, 3, 0] == 255 and out[0, 2, 6, 0] == 50
    # frame 2: box (4, 2, 8, 4), so column 3 is now outside (band 1) and 6 inside
    assert out[2, 2, 3, 0] == 50 and out[2, 2, 5, 0] == 150 and out[2, 2, 6, 0] == 255
    # off: the frames as they are; chunked with the previous raw frame: as the whole
    np.testing.assert_array_equal(
        preprocess_frames(_moving_square(), get_spec("ms3d_tiny")), _moving_square()
    )
    raw = _moving_square()
    for cut in (2, 3):  # a first chunk of two frames or more, then the rest
        parts = [
            preprocess_frames(raw[:cut], spec),
            preprocess_frames(raw[cut:], spec, raw[cut - 1]),
        ]
        np.testing.assert_array_equal(np.concatenate(parts), out)


def test_tailor_is_applied_alike_in_memory_and_streamed(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    write_video(video, n=30, height=64, width=64)
    plain = get_spec("ms3d_tiny")
    spec = plain.replace(tailor={"eta": 1.2, "xi": 0.9})
    frames, _ = decode_for(video, spec)
    raw, _ = decode_for(video, plain)
    np.testing.assert_array_equal(frames, tailor_chunk(raw, spec.tailor))
    assert not np.array_equal(frames, raw)
    reader = _Reader(video, spec, None, 1, 7, None)  # chunks of 7 frames
    np.testing.assert_array_equal(np.concatenate(list(reader.frames())), frames)
    # the second pass past the keep budget reads the preprocessed frames too
    rows = np.array([[0, 7, 8, 29], [3, 3, 14, 21]])
    kept, local = _keep_frames(reader, rows)
    np.testing.assert_array_equal(kept[local], frames[rows])
    with pytest.raises(ValueError, match="unknown tailor settings"):
        preprocess_frames(raw, plain.replace(tailor={"gain": 2}))


def test_tailor_flags_reach_the_spec_and_the_paper_preset() -> None:
    cfg = parse_config(["--family", "ms3d", "--data", "-", "--tailor", "--tailor-eta", "1.4"])
    spec = make_task(cfg, CLASSES).spec()
    assert spec.tailor == {"boxes": "motion", "eta": 1.4, "xi": 0.9, "band": 5}
    assert make_task(parse_config(["--family", "ms3d", "--data", "-"]), CLASSES).spec().tailor == {}
    paper = parse_config(["--family", "ms3d", "--data", "-", "--preset", "paper"])
    assert paper.tailor and make_task(paper, CLASSES).spec().tailor["boxes"] == "motion"
    bad = parse_config(["--family", "ms3d", "--data", "-", "--tailor", "--tailor-xi", "2"])
    with pytest.raises(SystemExit, match="--tailor"):
        make_task(bad, CLASSES).spec()
    missing = ["--tailor", "--tailor-boxes", "/no/such/yolo.onnx"]
    with pytest.raises(SystemExit, match="no such YOLO"):
        make_task(parse_config(["--family", "ms3d", "--data", "-", *missing]), CLASSES).spec()


@pytest.mark.slow
def test_evaluation_equals_the_service_with_tailor_on(dataset: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service import Settings, create_app

    args = ["--family", "ms3d", "--data", str(dataset), "--out", str(tmp_path), "--name", "t"]
    assert main([*args, *COMMON, "--tailor", "--tailor-eta", "1.5"]) == 0
    bundle = load_bundle(tmp_path / "t")
    assert bundle.spec.tailor == {"boxes": "motion", "eta": 1.5, "xi": 0.9, "band": 5}
    repo = Repository.load(bundle.file("repository.safetensors"))
    videos = [(e.path, e.label) for e in load_dataset(dataset).test]
    net = bundle.build_model()
    _, outcomes = evaluate_videos(
        net,
        videos,
        bundle.spec,
        len(bundle.labels),
        batch_size=8,
        centres=repo.centres_tensor(),
        gamma=repo.gamma,
    )
    _, untailored = evaluate_videos(
        net,
        videos[:1],
        bundle.spec.replace(tailor={}),
        len(bundle.labels),
        batch_size=8,
        centres=repo.centres_tensor(),
        gamma=repo.gamma,
    )
    settings = Settings(store=tmp_path, backend="torch", load_in_background=False, warmup=False)
    with TestClient(create_app(settings)) as client:
        for outcome in outcomes:
            files = {"file": ("v.mp4", Path(outcome.path).read_bytes())}
            body = client.post("/recognize", files=files, data={"model": "t"}).json()
            assert [t["label"] for t in body["top5"]] == [
                bundle.labels[i] for i in outcome.order[:5]
            ]
            assert body["unknown"] == outcome.unknown
            distance = body["detail"]["distances"][0]["distance"]
            assert distance == pytest.approx(outcome.nearest, rel=1e-5)
    # and tailoring changes what the network sees on these videos
    assert untailored[0].nearest != pytest.approx(outcomes[0].nearest, rel=1e-4)
