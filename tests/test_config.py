"""The training command's typed config: presets, overrides, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from models.pipeline import sample_video
from training.config import PRESETS, TrainConfig, apply_preset, config_from_dict, parse_config


def test_preset_fills_and_flags_win() -> None:
    cfg = parse_config(["--family", "c3d_vll", "--data", "d", "--preset", "paper", "--lr", "0.5"])
    assert cfg.lr == 0.5  # explicit flag beats the preset
    assert cfg.lr_schedule == "step" and cfg.lr_step == 2000 and cfg.alpha == 0.3
    assert cfg.resolved_model() == "c3d_vll"
    demo = parse_config(["--family", "ms3d", "--data", "d"])
    assert demo.resolved_model() == "ms3d_tiny"


def test_types_are_parsed() -> None:
    cfg = parse_config(
        [
            "--data",
            "d",
            "--pathway-sizes",
            "4,8,12",
            "--amp",
            "false",
            "--strict",
            "--model-kwargs",
            '{"width": 0.5}',
            "--epochs",
            "3",
        ]
    )
    assert cfg.pathway_sizes == (4, 8, 12)
    assert cfg.amp is False and cfg.strict is True
    assert cfg.model_kwargs == {"width": 0.5} and cfg.epochs == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "d", "--bogus", "1"], "unrecognized arguments: --bogus"),
        (["--data", "d", "--lr", "fast"], "invalid float value: 'fast'"),
        (["--data", "d", "--ccl", "maybe"], "invalid choice: 'maybe'"),
        (["--data", "d", "--amp", "perhaps"], "expected true/false"),
        (["--family", "ms3d"], "--data is required"),
        (["--data", "d", "--model-kwargs", "[1]"], "expected a JSON object"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_config(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_presets_name_only_real_fields() -> None:
    for preset, families in PRESETS.items():
        for family in families:
            apply_preset(TrainConfig(family=family, preset=preset), explicit=set())


def test_config_roundtrip_refuses_unknown_keys() -> None:
    cfg = TrainConfig(data="d", pathway_sizes=(1, 2, 3))
    import dataclasses

    assert config_from_dict(dataclasses.asdict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown config keys"):
        config_from_dict({"nope": 1})


def test_clip_overrides_reach_the_sampler() -> None:
    from training.tasks import make_task

    base = ["--data", "x", "--preset", "demo"]
    # frame_step alone: clips of the default length, dilated, non-overlapping (span 3*15+1).
    task = make_task(parse_config([*base, "--family", "c3d_vll", "--frame-step", "3"]), ["a", "b"])
    d = task.spec()
    assert d.sampler_args() == {"clip_len": 16, "frame_step": 3}
    assert sample_video(np.zeros((100, 1, 1, 3), np.uint8), d)[:, 0].tolist() == [0, 46]
    # An explicit stride wins; the vote window of attention_lstm never exceeds the clip.
    task = make_task(
        parse_config(
            [
                *base,
                "--family",
                "attention_lstm",
                "--clip-len",
                "4",
                "--clip-stride",
                "2",
                "--frame-step",
                "2",
            ]
        ),
        ["a", "b"],
    )
    d = task.spec()
    assert (d.clip_len, d.sampler_args()["stride"], d.sampler_args()["frame_step"]) == (4, 2, 2)
    assert d.aggregator_kwargs["last"] <= 4
