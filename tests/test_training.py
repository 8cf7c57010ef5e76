"""Training: end-to-end runs on a tiny generated Move4Digits (every family writes a loadable
bundle without the resume checkpoint, an interrupted run resumes to the same weights, torchrun
with two processes works), the optimisation step, and ms3d's held-out-classes split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.bundle import load_bundle
from training.config import TrainConfig
from training.datasets import DatasetSplits, VideoEntry
from training.run import CHECKPOINT_FILE, main
from training.synth import generate
from training.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--epochs", "1", "--workers", "0", "--threads", "2", "--progress", "false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("m4d") / "move4digits"
    generate(out, classes="4", per_class=4, seed=3, progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("c3d_vll", ["--ccl", "full"]),
        ("c3d_vll", ["--level", "clip"]),
        ("attention_lstm", ["--fusion", "early", "--lam", "10"]),
        ("ms3d", ["--holdout-classes", "1"]),
        ("full_video", ["--clustering", "slope", "--num-clusters", "4"]),
        ("full_video", ["--tsm-frames", "4"]),
    ],
)
def test_every_family_trains_and_writes_a_bundle(
    dataset: Path, tmp_path: Path, family: str, extra: list[str]
) -> None:
    assert (
        main(
            [
                "--family",
                family,
                "--data",
                str(dataset),
                "--out",
                str(tmp_path),
                "--name",
                "b",
                *COMMON,
                *extra,
            ]
        )
        == 0
    )
    bundle = load_bundle(tmp_path / "b")
    assert bundle.family == family
    metrics = bundle.manifest["metrics"]
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["videos"] > 0
    # the resume checkpoint is removed once the bundle is written; the per-epoch log stays
    assert not (tmp_path / "b" / CHECKPOINT_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(
        ["manifest.json", "metrics.jsonl", *bundle.files]
    )
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and "eval" in json.loads(lines[0])
    model = bundle.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    if family == "ms3d":
        assert bundle.has("repository.safetensors")
        # the held-out class is added to the repository after the open-set figures
        assert len(bundle.labels) == 4 and "unknown_rejection" in metrics
        assert 0.0 <= metrics["all_classes_after_adding_top1"] <= 1.0
        sweep = metrics["open_set_sweep"]
        accept = [row["in_class_acceptance"] for row in sweep]
        reject = [row["unknown_rejection"] for row in sweep]
        # a larger gamma accepts more known videos and rejects fewer unknown ones
        assert accept == sorted(accept) and reject == sorted(reject, reverse=True)
    else:
        assert sorted(bundle.labels) == ["move_down", "move_left", "move_right", "move_up"]


@pytest.mark.slow
def test_resume_gives_the_same_weights(dataset: Path, tmp_path: Path) -> None:
    args = [
        "--family",
        "c3d_vll",
        "--data",
        str(dataset),
        "--workers",
        "0",
        "--threads",
        "2",
        "--progress",
        "false",
        "--epochs",
        "2",
        "--eval-every",
        "5",
    ]
    assert main([*args, "--out", str(tmp_path / "a"), "--name", "run"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--name", "run", "--stop-after", "1"]) == 0
    assert not (tmp_path / "b" / "run" / "manifest.json").exists()
    assert (tmp_path / "b" / "run" / CHECKPOINT_FILE).is_file()
    assert main([*args, "--out", str(tmp_path / "b"), "--name", "run", "--resume"]) == 0
    assert not (tmp_path / "b" / "run" / CHECKPOINT_FILE).exists()
    full = load_file(str(tmp_path / "a" / "run" / "weights.safetensors"))
    resumed = load_file(str(tmp_path / "b" / "run" / "weights.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=0)


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(dataset: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "training.run",
        "--family",
        "full_video",
        "--data",
        str(dataset),
        "--out",
        str(tmp_path),
        "--name",
        "ddp",
        "--num-clusters",
        "4",
        "--batch-size",
        "2",
        *COMMON[:-4],
        "--threads",
        "1",
        "--progress",
        "false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = load_bundle(tmp_path / "ddp")
    assert bundle.manifest["training"]["world_size"] == 2


def test_train_step_updates_and_refuses_a_non_finite_loss() -> None:
    import contextlib

    from training.run import train_step
    from training.tasks import Batch

    class _Task:  # the one method train_step needs from a Task
        def __init__(self, scale: float) -> None:
            self.scale = scale

        def loss(self, net, batch):
            loss = (net(batch.inputs).squeeze(1) - batch.labels).pow(2).mean() * self.scale
            return loss, {"mse": float(loss.detach())}

    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    batch = Batch(torch.randn(8, 3), torch.randn(8))
    before = net.weight.detach().clone()
    # Expected SGD update by hand: w <- w - lr * dL/dw with L = mean((xw + b - y)^2).
    residual = (batch.inputs @ before.T + net.bias.detach()).squeeze(1) - batch.labels
    grad = 2 * (residual[:, None] * batch.inputs).mean(0)
    loss, parts = train_step(
        net, _Task(1.0), batch, opt, autocast=contextlib.nullcontext, scaler=None
    )
    torch.testing.assert_close(net.weight.detach()[0], before[0] - 0.1 * grad)
    assert loss.item() == pytest.approx(residual.pow(2).mean().item()) and "mse" in parts

    before = net.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="epoch 3"):
        train_step(
            net,
            _Task(float("nan")),
            batch,
            opt,
            autocast=contextlib.nullcontext,
            scaler=None,
            where="epoch 3, step 7",
        )
    assert torch.equal(net.weight.detach(), before)  # nothing reached the weights


def test_ms3d_holds_classes_out_once() -> None:
    classes = ["a", "b", "c", "d"]
    train = [
        VideoEntry(Path(f"{c}{i}.mp4"), label) for label, c in enumerate(classes) for i in (0, 1)
    ]
    test = [VideoEntry(Path(f"{c}t.mp4"), label) for label, c in enumerate(classes)]
    splits = DatasetSplits("list", classes, train, test)
    # (no calibration split here: tests/test_protocols.py covers it)
    cfg = TrainConfig(
        family="ms3d", data="-", holdout_classes=1, calibration_fraction=0.0, gamma=0.5
    )
    data = make_task(cfg, classes).split(splits)
    assert data.held_out == ["d"]
    assert data.train == train[:6] and data.held_out_train == train[6:]
    assert data.test == test  # the held-out classes' test videos measure rejection
    # no hold-out: everything is trained on, as for the other families
    cfg = TrainConfig(
        family="ms3d", data="-", holdout_classes=0, calibration_fraction=0.0, gamma=0.5
    )
    data = make_task(cfg, classes).split(splits)
    assert (data.train, data.test, data.held_out, data.held_out_train) == (train, test, [], [])
    for family in ("c3d_vll", "full_video"):  # holdout_classes is ms3d's alone
        data = make_task(TrainConfig(family=family, data="-"), classes).split(splits)
        assert data.train == train and data.held_out == []
    with pytest.raises(SystemExit, match="fewer than two known classes"):
        make_task(TrainConfig(family="ms3d", data="-", holdout_classes=3), classes).split(splits)
