"""``python -m service.batch --ray`` on a local Ray instance with 2 CPU workers: the same
lines as the local run (Ray is the optional ``scale`` extra; skipped without it)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from media import write_video

from service.batch.cli import main
from service.batch.ray_run import plan_actors
from service.quickstart import DEMO_BUNDLES

if os.environ.get("ACTREC_REQUIRE_RAY"):  # CI (.ci/run): a missing Ray fails, not skips
    import ray
else:
    ray = pytest.importorskip(
        "ray", reason="Ray is not installed (the optional extra: pip install '.[scale]')"
    )

BUNDLE = "ms3d-move4digits"  # distances: float answers, compared exactly


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _lines(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("timing_ms", None)
        assert record["path"] not in out
        out[record["path"]] = record
    return out


def test_the_pool_is_sized_to_the_cluster() -> None:
    assert plan_actors({"CPU": 8.0}).actors == 8
    assert plan_actors({"CPU": 8.0}, cpus_per_actor=2).actors == 4
    gpus = plan_actors({"CPU": 32.0, "GPU": 4.0})
    assert (gpus.actors, gpus.gpus_per_actor) == (4, 1.0)
    assert plan_actors({"CPU": 2.0}, actors=3).actors == 3


@pytest.mark.slow
def test_a_local_ray_run_gives_the_local_answers(local_ray: None, tmp_path: Path) -> None:
    shutil.copytree(DEMO_BUNDLES / BUNDLE, tmp_path / BUNDLE)
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(6):
        write_video(videos / f"v{i}.mp4", n=30 + 7 * i)
    (videos / "broken.mp4").write_bytes(os.urandom(2000))
    args = ["--no-progress", "--model", str(tmp_path / BUNDLE), str(videos), "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "local.jsonl")]) == 0
    ray_args = [*args, "--ray", "--ray-actors", "2", "--ray-videos-per-call", "2"]
    assert main([*ray_args, "--out", str(tmp_path / "ray.jsonl")]) == 0
    assert ray.is_initialized()  # the run used the instance it found and left it running

    local, on_ray = _lines(tmp_path / "local.jsonl"), _lines(tmp_path / "ray.jsonl")
    assert len(local) == 7 and on_ray == local
    assert on_ray[str(videos / "broken.mp4")]["error"]["code"] == "not_a_video"
    # Resumed on Ray too: nothing left to do, nothing added.
    assert main([*ray_args, "--out", str(tmp_path / "ray.jsonl")]) == 0
    assert len((tmp_path / "ray.jsonl").read_text().splitlines()) == 7
