"""``--pretrained PATH``: start a run's backbone from local ImageNet weights.

The papers start from ImageNet: the full-video paper (arXiv:2103.15395) and TSM
(arXiv:1811.08383) from a ResNet-18/50, the attention_lstm paper from a VGG16. The file is
read without executing code (:func:`models.weights.read_state_dict`) and loaded into the
freshly built network by the family's :meth:`training.tasks.Task.load_pretrained`, all or
nothing: a file that does not fit refuses the run before any training, listing the missing
keys, the unexpected keys and the shape mismatches. Layers the ImageNet network does not
have keep their initialisation and train from scratch: the classifier always (another set of
classes), and the family's own layers (attention_lstm's 3D convolutions and LSTM). TSM's
temporal shift has no parameters. The bundle's manifest records the file and its sha256
under ``training.pretrained``. See docs/pretrained.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from models.fileio import sha256_file
from models.weights import UnsafeWeightsFile, WeightsMismatch, read_state_dict
from training.config import TrainConfig
from training.tasks import Task

__all__ = ["load_pretrained", "pretrained_path"]

log = logging.getLogger("training")


def pretrained_path(cfg: TrainConfig) -> str:
    """The ``--pretrained`` file of ``cfg`` (``--vgg-weights``, its deprecated spelling for
    attention_lstm, counts too); empty for none.

    Raises:
        SystemExit: Both are given and differ, or ``--init-from`` is given as well.
    """
    path = cfg.pretrained
    if cfg.vgg_weights:
        if path and path != cfg.vgg_weights:
            raise SystemExit(
                f"--vgg-weights {cfg.vgg_weights} and --pretrained {path} disagree; "
                "--vgg-weights is the old spelling of --pretrained: give only --pretrained"
            )
        log.warning("--vgg-weights is deprecated: use --pretrained %s", cfg.vgg_weights)
        path = cfg.vgg_weights
    if path and cfg.init_from:
        raise SystemExit(
            f"--pretrained {path} and --init-from {cfg.init_from} both set the starting "
            "weights; give one (a bundle from --init-from already holds a trained backbone)"
        )
    return path


def _modules(keys: list[str]) -> list[str]:
    """The top-level modules that ``keys`` belong to, sorted (``head.weight`` -> ``head``)."""
    return sorted({k.split(".", 1)[0] for k in keys})


def load_pretrained(model: nn.Module, task: Task, path: str) -> dict[str, Any]:
    """Load the ImageNet weights at ``path`` into ``model``; returns what the manifest records
    of it (``training.pretrained``).

    Raises:
        SystemExit: The family takes no pretrained backbone, the file is missing or unsafe,
            or its weights do not fit, with the reason.
    """
    try:
        state = read_state_dict(path)
        report = task.load_pretrained(model, state)
    except WeightsMismatch as err:
        raise SystemExit(
            f"--pretrained {path}: {task.model_name} takes {task.pretrained_backbone}: {err}"
        ) from None
    except (OSError, UnsafeWeightsFile, ValueError) as err:
        raise SystemExit(f"--pretrained {path}: {err}") from None
    # BatchNorm's step counters carry no learned value: not "new layers".
    fresh = [
        k
        for k in sorted(set(model.state_dict()) - set(report.loaded))
        if not k.endswith("num_batches_tracked")
    ]
    log.info(
        "backbone from %s: %d tensors loaded; new, from scratch: %s",
        path,
        len(report.loaded),
        ", ".join(_modules(fresh)) or "nothing",
    )
    return {
        "file": str(Path(path)),
        "sha256": sha256_file(path),
        "loaded": len(report.loaded),
        "fresh_modules": _modules(fresh),
        "ignored": report.ignored,
    }
