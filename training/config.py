"""The one typed configuration of ``python -m training.run``.

Every field is a command-line flag (``--lr 0.01``, ``--ccl error``); a preset (``demo`` or
``paper``) fills family-specific values first and explicit flags win over it. Unknown flags and
values of the wrong type are refused with a message naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args, get_origin

__all__ = [
    "FAMILIES",
    "Family",
    "Preset",
    "TrainConfig",
    "PRESETS",
    "parse_config",
    "build_parser",
    "apply_preset",
    "config_from_dict",
]

Family = Literal["c3d_vll", "attention_lstm", "ms3d", "full_video"]
Preset = Literal["demo", "paper"]
FAMILIES: tuple[Family, ...] = get_args(Family)


def _f(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """All settings of one training run; the defaults are the CPU ``demo`` preset's base."""

    # --- what to train, on what, where to put it
    family: Family = _f("c3d_vll", "recognizer family")
    data: str = _f("", "dataset: UCF101/HMDB51-layout folder or a 'path label' list file")
    split: int = _f(1, "official split number (1-3) for UCF101/HMDB51 layouts")
    out: str = _f("store", "bundle store: the bundle is written to OUT/NAME")
    name: str = _f("", "bundle name (default: <model>-<dataset folder name>)")
    preset: Preset = _f("demo", "demo: small CPU variant; paper: paper settings")
    model: str = _f("", "registry variant (default: <family>_tiny for demo, <family> for paper)")
    model_kwargs: dict = _f({}, "extra constructor kwargs for the model as JSON")

    # --- optimisation
    epochs: int = _f(10, "passes over the training set")
    batch_size: int = _f(8, "videos per batch (video-level) or clips per batch (clip-level)")
    optimizer: Literal["sgd", "adam", "adamw"] = _f("sgd", "optimizer")
    lr: float = _f(0.01, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "weight decay")
    lr_schedule: Literal["constant", "step", "cosine"] = _f("cosine", "learning-rate schedule")
    lr_step: int = _f(2000, "step schedule: iterations between decays")
    lr_gamma: float = _f(0.1, "step schedule: decay factor")
    warmup_steps: int = _f(0, "linear warm-up iterations")
    grad_clip: float = _f(0.0, "clip the global gradient norm to this (0: off)")
    label_smoothing: float = _f(0.0, "label smoothing for cross-entropy losses")

    # --- data
    workers: int = _f(2, "data-loading worker processes (0: load in the main process)")
    max_clips: int = _f(20, "cap on clips per video in video-level training (evenly spaced)")
    eval_max_clips: int = _f(0, "cap on clips per video at evaluation (0: all clips)")
    augment: bool = _f(
        False,
        "training augmentation that keeps motion labels: random resized crop, brightness, "
        "contrast, blur, noise (never a flip); on in the demo presets",
    )
    augment_crop: float = _f(0.9, "augmentation: smallest crop side, as a fraction of the frame")
    limit_train: int = _f(0, "use only the first N training videos (0: all)")
    limit_test: int = _f(0, "use only the first N test videos (0: all)")
    strict: bool = _f(False, "refuse to start when any listed video is missing or undecodable")
    seed: int = _f(0, "seed for weights, sampling and data order")
    init_from: str = _f(
        "", "bundle whose weights start this run (same architecture; fine-tuning protocols)"
    )
    init_backbone_only: bool = _f(
        False,
        "with --init-from: leave the class-dependent layers (the classifier) freshly "
        "initialised even when the classes match",
    )
    pretrained: str = _f(
        "",
        "local ImageNet backbone weights (.pth read with weights_only=True, or .safetensors) "
        "in torchvision's key layout: ResNet-18/50 for full_video, VGG16 for attention_lstm; "
        "the classifier and the family's new layers start fresh (docs/pretrained.md)",
    )

    # --- c3d_vll (Shi et al., EURASIP JIVP 2020:35)
    level: Literal["video", "clip"] = _f("video", "c3d_vll: video-level or clip-level training")
    ccl: Literal["none", "euclidean", "error", "full"] = _f(
        "full", "c3d_vll: clip-consistency term (none = video-level CE only)"
    )
    alpha: float = _f(0.3, "c3d_vll: weight of the consistency term")
    ccl_detach_reference: bool = _f(
        False, "c3d_vll: stop the gradient through the mean clip response R_mean (Eq. 5)"
    )

    # --- attention_lstm ("Attention-based multi-level deep supervised network")
    fusion: Literal["early", "late"] = _f("late", "attention_lstm: LSTM input fusion")
    lam: float = _f(1000.0, "attention_lstm: attention-regularisation weight lambda")
    ds_weight: float = _f(1.0, "attention_lstm: weight of the deep-supervision losses")
    clip_len: int = _f(0, "frames per clip, L1 for attention_lstm (0: the model's default)")
    clip_stride: int = _f(0, "frames between clip starts, s (0: the model's default)")
    frame_step: int = _f(
        0, "frames between the frames of a clip, temporal dilation (0: model default)"
    )
    vote_steps: int = _f(0, "attention_lstm: L2, steps voted per clip (0: model default)")
    vgg_weights: str = _f("", "attention_lstm: deprecated spelling of --pretrained")
    frozen_vgg: bool = _f(False, "attention_lstm: keep the VGG16 layers frozen")

    # --- ms3d ("MS3D: Multi-Clue Sparse 3D ConvNet", Man, Zou and Li)
    pathway_sizes: tuple = _f((), "ms3d: frames per slow,mid,fast pathway, e.g. 7,17,25")
    drop_rate: float = _f(-1.0, "ms3d: sparse-DenseNet connection drop rate (-1: default)")
    walks: int = _f(0, "ms3d: p(z) walks per video for the repository (0: model default)")
    repo_videos: int = _f(0, "ms3d: videos per class for the repository centres (0: all)")
    gamma: float = _f(0.0, "ms3d: unknown threshold (0: calibrate on the calibration split)")
    calibration_fraction: float = _f(
        0.2,
        "ms3d: fraction of each known class's training videos set aside before training to "
        "calibrate gamma (never trained on; 0: none, then --gamma is needed)",
    )
    gamma_percentile: float = _f(95.0, "ms3d: in-class distance percentile used as gamma")
    holdout_classes: int = _f(1, "ms3d: classes held out of training for open-set figures")
    npair_scale: float = _f(10.0, "ms3d: similarity scale in the N-pair loss")
    tailor: bool = _f(
        False, "ms3d: the tailor strategy (Eq. 7-8) on every frame, in training and serving"
    )
    tailor_boxes: str = _f(
        "motion", "ms3d tailor: box source, 'motion' (built in) or a YOLO ONNX file"
    )
    tailor_eta: float = _f(1.2, "ms3d tailor: enhancement inside the box, eta (Eq. 7)")
    tailor_xi: float = _f(0.9, "ms3d tailor: decay per band outside the box, xi (Eq. 8)")

    # --- full_video ("No frame left behind", Liu et al., CVPR 2021)
    clustering: Literal["cumulative", "slope", "uniform", "none"] = _f(
        "cumulative", "full_video: temporal clustering (none: TSM on the sampled frames)"
    )
    num_clusters: int = _f(0, "full_video: clusters g (0: model default)")
    tsm_frames: int = _f(0, "full_video: TSM-k baseline, k uniformly sampled frames (0: all)")

    # --- runtime
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = _f(True, "mixed precision on CUDA (bf16 where supported, else fp16 + scaler)")
    threads: int = _f(0, "torch intra-op threads per process (0: leave as is)")
    eval_every: int = _f(1, "evaluate every N epochs (the last epoch always)")
    resume: bool = _f(
        False, "continue an unfinished run from OUT/NAME/checkpoint.pt (a finished run has none)"
    )
    stop_after: int = _f(0, "end this invocation after N epochs (continue later with --resume)")
    progress: bool = _f(True, "show progress bars")

    def resolved_model(self) -> str:
        """The registry variant this run trains."""
        if self.model:
            return self.model
        return f"{self.family}_tiny" if self.preset == "demo" else self.family


# Family-specific values per preset; explicit flags override them.
PRESETS: dict[Preset, dict[Family, dict[str, Any]]] = {
    "demo": {
        # Measured on 2 CPU cores with Move4Digits at 60 videos per class (docs/results.md).
        "c3d_vll": dict(
            epochs=25, batch_size=8, optimizer="adam", lr=1e-3, weight_decay=1e-4, augment=True
        ),
        "attention_lstm": dict(
            epochs=40,
            batch_size=8,
            optimizer="adam",
            lr=2e-3,
            lam=1.0,
            weight_decay=1e-5,
            augment=True,
        ),
        "ms3d": dict(
            epochs=30, batch_size=8, optimizer="adam", lr=2e-3, weight_decay=1e-5, augment=True
        ),
        "full_video": dict(
            epochs=25, batch_size=8, optimizer="adam", lr=1e-3, weight_decay=1e-4, augment=True
        ),
    },
    "paper": {
        # The c3d_vll paper (Shi et al.), Section 4.1: SGD at 0.001, x0.1 every 2000
        # iterations, alpha 0.3, dropout 0.05 (in the model), at most 20 clips per video
        # (authors' code).
        "c3d_vll": dict(
            epochs=40,
            batch_size=4,
            optimizer="sgd",
            lr=1e-3,
            momentum=0.9,
            lr_schedule="step",
            lr_step=2000,
            lr_gamma=0.1,
            weight_decay=0.0,
            alpha=0.3,
            max_clips=20,
        ),
        # The attention_lstm paper, Section 4: lambda 1000, weight decay 1e-5, L1 = 30,
        # L2 = 16, batch 64 clips.
        "attention_lstm": dict(
            epochs=30,
            batch_size=64,
            level="clip",
            optimizer="sgd",
            lr=1e-3,
            momentum=0.9,
            weight_decay=1e-5,
            lam=1000.0,
            clip_len=30,
            vote_steps=16,
            lr_schedule="cosine",
        ),
        # The MS3D paper, Section 4: Adam, batch 64, 500 epochs, drop rate 0.7, 7/17/25 frames.
        "ms3d": dict(
            epochs=500,
            batch_size=64,
            optimizer="adam",
            lr=1e-3,
            weight_decay=0.0,
            drop_rate=0.7,
            pathway_sizes=(7, 17, 25),
            tailor=True,
        ),
        # "No frame left behind" (Section 4) follows TSM: SGD 0.01 cosine, weight decay 5e-4, g = 8.
        "full_video": dict(
            epochs=50,
            batch_size=8,
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            weight_decay=5e-4,
            lr_schedule="cosine",
            num_clusters=8,
            clustering="cumulative",
        ),
    },
}


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _parse_json_dict(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"expected a JSON object: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per :class:`TrainConfig` field."""
    parser = argparse.ArgumentParser(
        prog="python -m training.run",
        description="Train a recognizer and write a model bundle. Every config field is a flag; "
        "a preset fills family values first, explicit flags win.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    hints = _field_types()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "help": f.metadata.get("help", ""),
            "default": argparse.SUPPRESS,
        }
        if get_origin(hint) is Literal:
            kwargs["choices"] = list(get_args(hint))
            kwargs["type"] = type(get_args(hint)[0])
        elif hint is bool:
            # `--amp` alone means true; `--amp false` is accepted too.
            kwargs.update(type=_parse_bool, nargs="?", const=True)
        elif hint is tuple:
            kwargs["type"] = _parse_tuple
        elif hint is dict:
            kwargs["type"] = _parse_json_dict
        else:
            kwargs["type"] = hint
        parser.add_argument(flag, **kwargs)
    return parser


def apply_preset(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """Fill the preset's family values into ``cfg`` for every field not given explicitly."""
    values = PRESETS[cfg.preset][cfg.family]
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:  # a programming error in PRESETS, caught by the tests
        raise KeyError(f"preset {cfg.preset}/{cfg.family} names unknown fields {sorted(unknown)}")
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k not in explicit})


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse flags into a :class:`TrainConfig`; argparse exits with a message on bad input."""
    parser = build_parser()
    ns = vars(parser.parse_args(argv))
    cfg = TrainConfig(**ns)
    cfg = apply_preset(cfg, explicit=set(ns))
    if not cfg.data:
        parser.error("--data is required (a dataset folder or list file)")
    return cfg


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuild a config stored in a manifest or checkpoint; refuses unknown keys."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}")
    data = dict(values)
    if "pathway_sizes" in data:
        data["pathway_sizes"] = tuple(data["pathway_sizes"])
    return TrainConfig(**data)
