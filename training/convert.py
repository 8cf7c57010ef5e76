"""``python -m training.convert mmaction2``: an MMAction2 TSM checkpoint as a full_video bundle.

MMAction2's model zoo holds Kinetics-400 TSM recognizers (J. Lin, C. Gan, S. Han, "TSM:
Temporal Shift Module for Efficient Video Understanding", ICCV 2019, arXiv:1811.08383): a
``Recognizer2D`` with a ``ResNetTSM`` backbone and a ``TSMHead``. The network is the one
full_video builds (X. Liu et al., "No frame left behind: Full Video Action Recognition",
CVPR 2021, arXiv:2103.15395): the same ResNet, the same residual shift of 1/8 of the channels
each way before ``conv1`` of every block, zero-filled; the head's mean of per-segment logits
equals our linear head on the mean of per-segment features. So the conversion only renames
keys; the shift has no parameters. The bundle serves at once (``python -m service``) with
full-video clustering at inference: ``stem`` and ``layer1`` run on every frame and the
checkpoint's 8 segments become ``g = 8`` clusters of the whole video (docs/pretrained.md says
what that changes against MMAction2's own test, which sampled 8 frames).

The checkpoint is read with ``torch.load(weights_only=True)`` (tensors, plain data, numpy
scalars); one that needs other Python objects (an unpublished training checkpoint's
``message_hub``) is refused with their names, never unpickled. The training config stored in
its ``meta`` (mmengine's ``pretty_text``) is parsed as Python literals, never executed; it
gives the segments, the shift and the preprocessing, and anything it says that full_video
cannot represent is refused.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from models.bundle import Bundle, write_bundle
from models.fileio import sha256_file
from models.registry import create_model, get_spec
from models.weights import UnsafeWeightsFile, WeightsMismatch, load_matching, read_torch_file

__all__ = [
    "MMACTION2_MEAN",
    "MMACTION2_STD",
    "ConversionError",
    "TSMCheckpoint",
    "convert_mmaction2",
    "main",
    "mmaction2_to_full_video",
    "parse_config_text",
    "read_labels",
    "read_tsm_checkpoint",
]

log = logging.getLogger("training.convert")

# MMAction2's ImageNet normalisation (ActionDataPreprocessor), RGB on the 0-255 scale.
MMACTION2_MEAN = (123.675, 116.28, 103.53)
MMACTION2_STD = (58.395, 57.12, 57.375)
# Its TSM test pipeline: Resize(scale=(-1, 256)), CenterCrop(crop_size=224).
_SHORT_SIDE = 256
_CROP = 224
# TSM's (and MMAction2's) defaults where a checkpoint records no config.
_SEGMENTS = 8
_SHIFT_DIV = 8

# (blocks per stage, bottleneck) -> ResNet depth; the depths full_video has a variant for.
_DEPTHS: dict[tuple[tuple[int, ...], bool], int] = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}
_VARIANTS = {18: "full_video", 50: "full_video_r50"}

# numpy scalars in ``meta`` (a seed, say) are plain numbers: the scalar constructor, ``dtype``
# and its per-type classes; numpy 1.x pickles name the module ``numpy.core``, numpy 2
# ``numpy._core``.
_scalar = importlib.import_module(
    "numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core.multiarray"
).scalar
_NUMPY_SCALARS: list[Any] = [
    np.dtype,
    *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdg"},
    (_scalar, "numpy._core.multiarray.scalar"),
    (_scalar, "numpy.core.multiarray.scalar"),
]

# MMAction2 backbone key (after ``backbone.``) -> full_video key. ``conv<K>.conv(.net)`` is
# ResNetTSM's ConvModule whose conv the TemporalShift wraps (``.net``) in every block's conv1;
# ``conv<K>.bn`` is its BatchNorm; the classifier is ``cls_head.fc_cls``.
_BLOCK = r"^(layer\d\.\d+)\."
_RENAMES = (
    (re.compile(r"^conv1\.conv\.weight$"), "stem.0.weight"),
    (re.compile(r"^conv1\.bn\.(\w+)$"), r"stem.1.\1"),
    (re.compile(_BLOCK + r"conv(\d)\.conv(?:\.net)?\.weight$"), r"\1.conv\2.weight"),
    (re.compile(_BLOCK + r"conv(\d)\.bn\.(\w+)$"), r"\1.bn\2.\3"),
    (re.compile(_BLOCK + r"downsample\.conv\.weight$"), r"\1.downsample.0.weight"),
    (re.compile(_BLOCK + r"downsample\.bn\.(\w+)$"), r"\1.downsample.1.\2"),
)
_BLOCK_CONV1 = re.compile(r"^backbone\.(layer\d\.\d+)\.conv1\.conv(\.net)?\.weight$")


class ConversionError(ValueError):
    """The checkpoint is not one full_video can represent, or the inputs do not fit."""


def mmaction2_to_full_video(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An MMAction2 ``ResNetTSM`` + ``TSMHead`` state dict renamed to :class:`FullVideoNet`'s
    keys; a key of any other layout keeps its name (and is then refused as unexpected)."""

    def rename(key: str) -> str:
        if key.startswith("cls_head.fc_cls."):
            return "head." + key.removeprefix("cls_head.fc_cls.")
        inner = key.removeprefix("backbone.")
        for pattern, replacement in _RENAMES if inner != key else ():
            new, hits = pattern.subn(replacement, inner)
            if hits:
                return new
        return key

    return {rename(k): v for k, v in state.items()}


def parse_config_text(text: str) -> dict[str, Any]:
    """The top-level assignments of an mmengine config dump (``Config.pretty_text``) whose
    values are literals (``dict(...)`` calls, lists, numbers, strings); nothing is executed.
    Values that are not literals are left out."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return {}
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            value = _literal(node.value)
            if isinstance(target, ast.Name) and value is not _NOT_LITERAL:
                out[target.id] = value
    return out


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args:
            return _NOT_LITERAL
        pairs = [(kw.arg, _literal(kw.value)) for kw in node.keywords if kw.arg is not None]
        return {k: v for k, v in pairs if v is not _NOT_LITERAL}
    if isinstance(node, ast.Dict):
        items = [(k, v) for k, v in zip(node.keys, node.values) if k is not None]
        pairs = [(_literal(k), _literal(v)) for k, v in items]
        return {k: v for k, v in pairs if _NOT_LITERAL not in (k, v)}
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_literal(e) for e in node.elts]
        kept = [v for v in values if v is not _NOT_LITERAL]
        return kept if isinstance(node, ast.List) else tuple(kept)
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_LITERAL


@dataclass(frozen=True)
class TSMCheckpoint:
    """What a checkpoint says about the network and its input.

    Attributes:
        state: The state dict in MMAction2's keys.
        depth: ResNet depth, from the weights.
        num_classes: Outputs of ``cls_head.fc_cls``.
        segments: Segments it was trained on (``num_segments``); ``None`` when unrecorded.
        shift_div: ``1 / shift_div`` of the channels shift each way.
        mean: RGB mean, 0-255 scale.
        std: RGB standard deviation, 0-255 scale.
        short_side: The test pipeline's resize of the shorter side.
        crop: The test pipeline's centre crop (square).
        meta: The plain scalar entries of the checkpoint's ``meta`` (versions, time).
        assumed: What the checkpoint did not record and defaults stood in for.
    """

    state: dict[str, Tensor]
    depth: int
    num_classes: int
    segments: int | None
    shift_div: int = _SHIFT_DIV
    mean: tuple[float, float, float] = MMACTION2_MEAN
    std: tuple[float, float, float] = MMACTION2_STD
    short_side: int = _SHORT_SIDE
    crop: int = _CROP
    meta: dict[str, Any] = field(default_factory=dict)
    assumed: list[str] = field(default_factory=list)


def _plain_state(checkpoint: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, meta) of what ``torch.load`` gave: MMAction2's ``{"state_dict", "meta"}``
    or a bare state dict."""
    if not isinstance(checkpoint, Mapping):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint")
    state = checkpoint.get("state_dict", checkpoint)
    meta = checkpoint.get("meta") if "state_dict" in checkpoint else None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path}: its state_dict is not a mapping of tensors")
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, dict(meta) if isinstance(meta, Mapping) else {}


def _architecture(state: Mapping[str, Tensor], path: Path) -> tuple[int, int]:
    """(depth, num_classes) read from the weights; refuses what is not a blockres TSM ResNet."""
    if "cls_head.fc_cls.weight" not in state:
        raise ConversionError(
            f"{path} has no cls_head.fc_cls.weight: not an MMAction2 TSMHead recognizer "
            "(a backbone alone has no classes to serve)"
        )
    if "backbone.conv1.conv.weight" not in state:
        raise ConversionError(
            f"{path} has no backbone.conv1.conv.weight: not an MMAction2 ResNet backbone"
        )
    blocks: dict[int, set[int]] = {}
    shifted: dict[str, bool] = {}
    for key in state:
        m = _BLOCK_CONV1.match(key)
        if m:
            stage, index = m.group(1).split(".")
            blocks.setdefault(int(stage.removeprefix("layer")), set()).add(int(index))
            shifted[m.group(1)] = m.group(2) is not None
    layout = tuple(len(blocks.get(i, ())) for i in (1, 2, 3, 4))
    bottleneck = "backbone.layer1.0.conv3.conv.weight" in state
    depth = _DEPTHS.get((layout, bottleneck))
    if depth is None:
        raise ConversionError(f"{path}: blocks per stage {layout} are not a standard ResNet")
    if depth not in _VARIANTS:
        raise ConversionError(
            f"{path} is a ResNet-{depth} TSM; full_video has ResNet-18 and ResNet-50 "
            "backbones, so only those convert"
        )
    plain = sorted(b for b, s in shifted.items() if not s)
    if len(plain) == len(shifted):
        raise ConversionError(
            f"{path} has no temporal shift (no conv1.conv.net keys): a TSN ResNet, not TSM"
        )
    if plain:
        raise ConversionError(
            f"{path} shifts in some blocks only (not in {', '.join(plain[:4])}...); "
            "full_video shifts before conv1 of every block"
        )
    return depth, int(state["cls_head.fc_cls.weight"].shape[0])


def _pipeline_sizes(config: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(shorter side, crop) of the config's test pipeline, where it states them."""
    pipeline = config.get("test_pipeline")
    if not isinstance(pipeline, list):
        dataset = (config.get("test_dataloader") or {}).get("dataset") or {}
        pipeline = dataset.get("pipeline") if isinstance(dataset, dict) else None
    short: int | None = None
    crop: int | None = None
    for step in pipeline if isinstance(pipeline, list) else []:
        if not isinstance(step, dict):
            continue
        scale = step.get("scale")
        if step.get("type") == "Resize" and isinstance(scale, (list, tuple)) and -1 in scale:
            short = int(max(scale))
        size = step.get("crop_size")
        if step.get("type") in ("CenterCrop", "ThreeCrop", "TenCrop") and size:
            crop = int(size if isinstance(size, int) else max(size))
    return short, crop


def _rgb(values: Any, what: str, path: Path) -> tuple[float, float, float]:
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise ConversionError(f"{path}: data_preprocessor.{what} is {values!r}, not 3 values")
    return float(values[0]), float(values[1]), float(values[2])


def _any_set(flags: Any) -> bool:
    """Whether a (nested) sequence of flags such as ResNetTSM's ``non_local`` sets any."""
    if isinstance(flags, (list, tuple)):
        return any(_any_set(f) for f in flags)
    return bool(flags)


def _refuse_unless(value: Any, expected: Any, what: str, path: Path) -> None:
    if value is not None and value != expected:
        raise ConversionError(
            f"{path}: its config has {what}={value!r}; full_video converts only {expected!r}"
        )


def read_tsm_checkpoint(path: str | Path) -> TSMCheckpoint:
    """Read an MMAction2 1.x TSM checkpoint (``{"state_dict", "meta"}``, or a bare state dict)
    and what its config records.

    Raises:
        ConversionError: Another architecture, an unsupported depth, segments the backbone
            and the head disagree on, or a file that cannot be read safely.
    """
    path = Path(path)
    try:
        checkpoint = read_torch_file(path, allow=_NUMPY_SCALARS)
    except UnsafeWeightsFile as err:
        raise ConversionError(
            f"{err}. The converter needs only the weights: publish the checkpoint first "
            "(MMAction2's tools/deployment/publish_model.py drops the training state), or keep "
            "just its 'state_dict' and 'meta' in a trusted environment"
        ) from None
    except (OSError, ValueError) as err:
        raise ConversionError(str(err)) from None
    state, meta = _plain_state(checkpoint, path)
    # Unpublished checkpoints of some mmengine versions keep the normalisation as buffers.
    stored = {k: state.pop(f"data_preprocessor.{k}", None) for k in ("mean", "std")}
    text = meta.get("cfg", meta.get("config"))
    config = parse_config_text(text) if isinstance(text, str) else {}
    model = config.get("model") or {}
    backbone = model.get("backbone") or {}
    head = model.get("cls_head") or {}
    # The architecture first: its type names say more than the weights' keys would.
    _refuse_unless(model.get("type"), "Recognizer2D", "model.type", path)
    _refuse_unless(backbone.get("type"), "ResNetTSM", "backbone.type", path)
    _refuse_unless(head.get("type"), "TSMHead", "cls_head.type", path)
    depth, num_classes = _architecture(state, path)
    preprocessor = dict(model.get("data_preprocessor") or config.get("data_preprocessor") or {})
    for key, values in stored.items():
        if values is not None:
            preprocessor[key] = values.flatten().tolist()
    plain = {k: v.item() if isinstance(v, np.generic) else v for k, v in meta.items()}
    scalars = {
        k: v
        for k, v in plain.items()
        if isinstance(v, (str, int, float)) and k not in ("cfg", "config")
    }
    if not config:
        log.warning("%s records no config: assuming TSM's defaults", path)
        return TSMCheckpoint(
            state=state,
            depth=depth,
            num_classes=num_classes,
            segments=None,
            mean=_rgb(preprocessor.get("mean", MMACTION2_MEAN), "mean", path),
            std=_rgb(preprocessor.get("std", MMACTION2_STD), "std", path),
            meta=scalars,
            assumed=[
                f"segments {_SEGMENTS}",
                f"shift 1/{_SHIFT_DIV}",
                *([] if stored["mean"] is not None else ["MMAction2's ImageNet mean/std"]),
                f"shorter side {_SHORT_SIDE}, centre crop {_CROP}",
            ],
        )

    _refuse_unless(backbone.get("depth"), depth, "backbone.depth (the weights say)", path)
    _refuse_unless(backbone.get("shift_place"), "blockres", "backbone.shift_place", path)
    _refuse_unless(backbone.get("is_shift"), True, "backbone.is_shift", path)
    _refuse_unless(backbone.get("temporal_pool"), False, "backbone.temporal_pool", path)
    _refuse_unless(head.get("temporal_pool"), False, "cls_head.temporal_pool", path)
    _refuse_unless(head.get("num_classes"), num_classes, "cls_head.num_classes", path)
    if _any_set(backbone.get("non_local")):
        raise ConversionError(f"{path}: non-local blocks; full_video has none")
    segments = backbone.get("num_segments", _SEGMENTS)
    if head.get("num_segments", segments) != segments:
        raise ConversionError(
            f"{path}: its backbone runs on {segments} segments but its head averages "
            f"{head.get('num_segments')}"
        )
    short, crop = _pipeline_sizes(config)
    assumed = [] if short and crop else [f"shorter side {_SHORT_SIDE}, centre crop {_CROP}"]
    return TSMCheckpoint(
        state=state,
        depth=depth,
        num_classes=num_classes,
        segments=int(segments),
        shift_div=int(backbone.get("shift_div", _SHIFT_DIV)),
        mean=_rgb(preprocessor.get("mean", MMACTION2_MEAN), "mean", path),
        std=_rgb(preprocessor.get("std", MMACTION2_STD), "std", path),
        short_side=short or _SHORT_SIDE,
        crop=crop or _CROP,
        meta=scalars,
        assumed=assumed,
    )


def read_labels(path: str | Path) -> list[str]:
    """Class names from a text file, one per line in index order (trailing blank lines and
    surrounding spaces ignored), as MMAction2's ``label_map_k400.txt``.

    Raises:
        ConversionError: A blank line between labels, or a label given twice.
    """
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"labels file {path}: {err}") from None
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ConversionError(f"{path}: line {lines.index('') + 1} is blank (one label a line)")
    seen: dict[str, int] = {}
    for number, label in enumerate(lines, 1):
        if label in seen:
            raise ConversionError(f"{path}: {label!r} on line {number} repeats line {seen[label]}")
        seen[label] = number
    return lines


def convert_mmaction2(
    checkpoint: str | Path,
    labels: str | Path,
    out: str | Path,
    name: str,
    *,
    clustering: str = "cumulative",
    num_clusters: int | None = None,
) -> Bundle:
    """Write ``out/name``, a full_video bundle holding the TSM checkpoint's network.

    Args:
        checkpoint: The MMAction2 checkpoint (``.pth``).
        labels: Class names, one a line in index order (:func:`read_labels`).
        out: The bundle store.
        name: The bundle's name (a new directory).
        clustering: ``cumulative``, ``slope`` or ``uniform`` at inference.
        num_clusters: ``g``; must equal the segments the checkpoint was trained on when it
            records them (default: those, else 8).

    Raises:
        ConversionError: For anything that does not fit, with the reason; nothing is written.
    """
    ckpt = read_tsm_checkpoint(checkpoint)
    names = read_labels(labels)
    if len(names) != ckpt.num_classes:
        raise ConversionError(
            f"{labels} lists {len(names)} labels; the checkpoint's classifier has "
            f"{ckpt.num_classes} outputs"
        )
    if num_clusters is not None and num_clusters < 1:
        raise ConversionError(f"--num-clusters must be positive, got {num_clusters}")
    g = num_clusters or ckpt.segments or _SEGMENTS
    if ckpt.segments is not None and g != ckpt.segments:
        raise ConversionError(
            f"{checkpoint} was trained on {ckpt.segments} segments; --num-clusters {g} would "
            f"run its temporal shift over {g} (omit --num-clusters, or give {ckpt.segments})"
        )
    target = Path(out) / name
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ConversionError(f"{target} already exists; choose another --name or remove it")

    variant = _VARIANTS[ckpt.depth]
    base = get_spec(variant)
    decode_width = round(ckpt.short_side * base.decode_hw()[1] / base.decode_hw()[0])
    spec = base.replace(
        segments=g,
        input_size=(ckpt.crop, ckpt.crop),
        decode_size=(ckpt.short_side, decode_width),
        mean=_rgb([v / 255.0 for v in ckpt.mean], "mean", Path(checkpoint)),
        std=_rgb([v / 255.0 for v in ckpt.std], "std", Path(checkpoint)),
    )
    kwargs: dict[str, Any] = {
        "num_classes": ckpt.num_classes,
        "clustering": clustering,
        "shift_div": ckpt.shift_div,
    }
    model = create_model(variant, spec=spec, **kwargs)
    try:
        load_matching(
            model, mmaction2_to_full_video(ckpt.state), source=f"the weights of {checkpoint}"
        )
    except WeightsMismatch as err:
        raise ConversionError(str(err)) from None
    source = {
        "framework": "mmaction2",
        "checkpoint": str(Path(checkpoint)),
        "sha256": sha256_file(checkpoint),
        "architecture": f"Recognizer2D: ResNetTSM-{ckpt.depth} + TSMHead",
        "trained_segments": ckpt.segments,
        "shift_div": ckpt.shift_div,
        # MMAction2's own statement of its input, on its scale; the spec holds the same
        # normalisation on the [0, 1] scale.
        "preprocessing": {
            "mean_0_255": list(ckpt.mean),
            "std_0_255": list(ckpt.std),
            "resize_shorter_side": ckpt.short_side,
            "centre_crop": ckpt.crop,
        },
        "labels_file": str(Path(labels)),
        "assumed": ckpt.assumed,
        "meta": ckpt.meta,
    }
    bundle = write_bundle(
        target,
        model=model,
        model_name=variant,
        model_kwargs=kwargs,
        family="full_video",
        labels=names,
        spec=spec,
        extra={"converted_from": source},
    )
    log.info(
        "%s -> %s (%s, %d classes, %s clustering, g = %d)",
        checkpoint,
        target,
        variant,
        ckpt.num_classes,
        clustering,
        g,
    )
    return bundle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.convert",
        description="Convert another framework's checkpoint into a model bundle that "
        "python -m service serves.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="source", required=True)
    mm = sub.add_parser(
        "mmaction2",
        help="an MMAction2 1.x TSM recognizer (ResNetTSM-50 + TSMHead) -> a full_video bundle",
        description="Convert an MMAction2 1.x TSM checkpoint into a full_video bundle with "
        "full-video clustering at inference (docs/pretrained.md).",
        allow_abbrev=False,
    )
    mm.add_argument("--checkpoint", required=True, type=Path, help="the MMAction2 .pth file")
    mm.add_argument(
        "--labels", required=True, type=Path, help="class names, one a line in index order"
    )
    mm.add_argument("--out", required=True, type=Path, help="the bundle store")
    mm.add_argument("--name", required=True, help="the new bundle's name")
    mm.add_argument(
        "--clustering",
        choices=["cumulative", "slope", "uniform"],
        default="cumulative",
        help="temporal clustering at inference (default: cumulative)",
    )
    mm.add_argument(
        "--num-clusters",
        type=int,
        default=None,
        metavar="G",
        help="clusters g (default: the segments the checkpoint was trained on, else 8)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        bundle = convert_mmaction2(
            args.checkpoint,
            args.labels,
            args.out,
            args.name,
            clustering=args.clustering,
            num_clusters=args.num_clusters,
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(bundle.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
