"""MS3D class-centre repository (Eq. 6, Section III.D): centres, gamma, persistence."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import safetensors.numpy
import torch
from safetensors import safe_open

from models.repository import Repository, RepositoryError, calibrate_gamma, in_class_distances


def _two_classes(gamma: float = math.inf) -> Repository:
    repo = Repository(2, gamma=gamma)
    repo.add_class("left", [[1.0, 0.0]])
    repo.add_class("up", [[0.0, 1.0]])
    return repo


def test_add_class_centre_is_mean_of_all_walks() -> None:
    repo = Repository(2)
    # w = 2 videos x p = 2 walks: the mean of the four embeddings.
    repo.add_class("a", np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [2.0, 2.0]]]))
    np.testing.assert_allclose(repo.centres, [[1.0, 1.0]])
    np.testing.assert_array_equal(repo.counts, [4])
    repo.add_class("b", torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(repo.centres[1], [2 / 3, 2 / 3], rtol=1e-6)
    assert repo.names == ["a", "b"] and len(repo) == 2 and "b" in repo


def test_update_is_running_mean_weighted_by_counts() -> None:
    repo = Repository(2)
    repo.add_class("a", [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # centre (2/3, 2/3), n = 3
    repo.update("a", [[0.0, 0.0]])  # (3 * 2/3 + 0) / 4 = 0.5
    np.testing.assert_allclose(repo.centres, [[0.5, 0.5]], rtol=1e-6)
    assert repo.counts.tolist() == [4]
    repo.update("a", [[4.5, 0.5], [0.5, 4.5]])  # (4 * 0.5 + 5) / 6 = 7/6
    np.testing.assert_allclose(repo.centres, [[7 / 6, 7 / 6]], rtol=1e-6)
    assert repo.counts.tolist() == [6]


def test_editing_errors_are_clear() -> None:
    repo = _two_classes()
    with pytest.raises(RepositoryError, match="already in the repository"):
        repo.add_class("left", [[1.0, 0.0]])
    with pytest.raises(RepositoryError, match="unknown class 'down'"):
        repo.update("down", [[1.0, 0.0]])
    with pytest.raises(ValueError, match="dimension 3"):
        repo.add_class("down", [[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="NaN"):
        repo.add_class("down", [[math.nan, 0.0]])


def test_remove_class_shifts_later_indices() -> None:
    repo = _two_classes()
    repo.add_class("right", [[-1.0, 0.0], [-1.0, 0.0]])
    repo.remove_class("up")
    assert repo.names == ["left", "right"]
    np.testing.assert_allclose(repo.centres, [[1.0, 0.0], [-1.0, 0.0]])
    assert repo.counts.tolist() == [1, 2]
    assert repo.index("right") == 1
    with pytest.raises(RepositoryError):
        repo.remove_class("up")


def test_calibrate_gamma_by_hand() -> None:
    d = [0.5, 0.1, 0.4, 0.2, 0.3]
    assert calibrate_gamma(d, 50) == pytest.approx(0.3)
    # Sorted 0.1..0.5, position 0.95 * 4 = 3.8: 0.4 + 0.8 * 0.1.
    assert calibrate_gamma(d, 95) == pytest.approx(0.48)
    assert calibrate_gamma(torch.tensor(d), 100) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        calibrate_gamma([], 95)
    with pytest.raises(ValueError):
        calibrate_gamma(d, 101)


def test_in_class_distances_and_calibration_by_hand() -> None:
    repo = _two_classes()
    videos = [
        np.array([[0.6, 0.8], [0.6, 0.8]]),  # mean (0.6, 0.8): |(0.6, 0.8) - (1, 0)| = sqrt(0.8)
        np.array([0.0, 2.0]),  # normalised to (0, 1): distance 0 to "up"
    ]
    d = in_class_distances(repo, videos, ["left", "up"])
    np.testing.assert_allclose(d, [math.sqrt(0.8), 0.0], atol=1e-6)
    assert repo.calibrate(videos, ["left", "up"], percentile=100) == pytest.approx(math.sqrt(0.8))
    assert repo.gamma == pytest.approx(math.sqrt(0.8))
    with pytest.raises(RepositoryError):
        in_class_distances(repo, videos, ["left", "down"])


def test_judge_nearest_and_unknown() -> None:
    repo = _two_classes(gamma=0.5)
    # Walks (1, 0.2) and (1, -0.2): mean (1, 0) -> distance 0 to "left", sqrt(2) to "up".
    j = repo.judge(torch.tensor([[1.0, 0.2], [1.0, -0.2]]))
    assert j.nearest == "left" and j.label == "left" and not j.unknown
    assert j.distance == pytest.approx(0.0, abs=1e-6)
    assert [n for n, _ in j.ranking] == ["left", "up"]
    assert j.ranking[1][1] == pytest.approx(math.sqrt(2), rel=1e-6)
    # (0.6, 0.8): sqrt(0.8) ~ 0.894 to "left", sqrt(0.4) ~ 0.632 to "up" >= 0.5 -> unknown.
    j = repo.judge([0.6, 0.8])
    assert j.nearest == "up" and j.unknown and j.label is None
    assert j.distance == pytest.approx(math.sqrt(0.4), rel=1e-6)
    assert not repo.judge([0.6, 0.8], gamma=0.7).unknown
    with pytest.raises(RepositoryError):
        Repository(2).judge([1.0, 0.0])


def test_save_load_roundtrip(tmp_path) -> None:
    repo = _two_classes(gamma=0.75)
    repo.update("left", [[0.5, 0.5]])
    path = repo.save(tmp_path / "repository.safetensors")
    back = Repository.load(path)
    assert back.names == repo.names
    np.testing.assert_array_equal(back.centres, repo.centres)
    np.testing.assert_array_equal(back.counts, repo.counts)
    assert back.gamma == 0.75 and back.dim == 2
    # The stored layout is the documented one.
    tensors = safetensors.numpy.load_file(str(path))
    assert tensors["centres"].dtype == np.float32 and tensors["centres"].shape == (2, 2)
    assert tensors["counts"].tolist() == [2, 1]
    # An infinite gamma (never unknown) and an empty repository survive too.
    Repository(3).save(tmp_path / "empty.safetensors")
    empty = Repository.load(tmp_path / "empty.safetensors")
    assert len(empty) == 0 and empty.dim == 3 and math.isinf(empty.gamma)


def test_save_leaves_no_temp_file_and_overwrites(tmp_path) -> None:
    path = tmp_path / "repository.safetensors"
    _two_classes().save(path)
    _two_classes(gamma=0.1).save(path)
    assert os.listdir(tmp_path) == ["repository.safetensors"]
    assert Repository.load(path).gamma == pytest.approx(0.1)


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_write_leaves_original_untouched(tmp_path, monkeypatch, fail_at) -> None:
    path = tmp_path / "repository.safetensors"
    _two_classes(gamma=0.5).save(path)
    original = path.read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, fail_at, boom)
    repo = _two_classes(gamma=0.9)
    repo.add_class("down", [[0.0, -1.0]])
    with pytest.raises(OSError, match="disk full"):
        repo.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert os.listdir(tmp_path) == ["repository.safetensors"]


def _write(path, tensors, metadata) -> None:
    path.write_bytes(safetensors.numpy.save(tensors, metadata=metadata))


def _good_parts() -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors: dict[str, np.ndarray] = {
        "centres": np.eye(2, dtype=np.float32),
        "counts": np.array([1, 1], dtype=np.int64),
        "gamma": np.array(0.5),
    }
    meta = {"format": "actrec.ms3d.repository", "version": "1", "class_names": '["a", "b"]'}
    return tensors, meta


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t, m: m.update(class_names='["a"]'), "1 class names, 2 centres"),
        (lambda t, m: m.update(class_names='["a", "a"]'), "duplicate"),
        (lambda t, m: m.update(class_names="not json"), "not JSON"),
        (lambda t, m: m.update(format="other"), "format"),
        (lambda t, m: t.update(counts=np.array([1, 0])), "positive"),
        (lambda t, m: t.update(counts=np.array([1, 1, 1])), "counts of shape"),
        (lambda t, m: t.update(centres=np.array([[np.nan, 0], [0, 1]], np.float32)), "NaN"),
        (lambda t, m: t.update(centres=np.eye(2)), "float32"),
        (lambda t, m: t.update(gamma=np.array(-1.0)), "gamma"),
        (lambda t, m: t.pop("gamma"), "missing tensors"),
    ],
)
def test_inconsistent_file_is_refused(tmp_path, change, message) -> None:
    tensors, meta = _good_parts()
    path = tmp_path / "repo.safetensors"
    _write(path, tensors, meta)
    assert Repository.load(path).names == ["a", "b"]  # the unchanged parts are valid
    change(tensors, meta)
    _write(path, tensors, meta)
    with pytest.raises(RepositoryError, match=message):
        Repository.load(path)


def test_corrupt_or_missing_file_is_refused(tmp_path) -> None:
    path = _two_classes().save(tmp_path / "repository.safetensors")
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RepositoryError, match="not a readable safetensors file"):
        Repository.load(path)
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(RepositoryError):
        Repository.load(path)
    with pytest.raises(FileNotFoundError):
        Repository.load(tmp_path / "nope.safetensors")


def test_metadata_names_are_json(tmp_path) -> None:
    path = _two_classes().save(tmp_path / "r.safetensors")
    with safe_open(str(path), framework="np") as fh:
        assert json.loads(fh.metadata()["class_names"]) == ["left", "up"]
