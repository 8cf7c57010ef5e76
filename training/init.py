"""``--init-from BUNDLE``: start a run from the weights of an earlier bundle.

The fine-tuning protocols of the papers (e.g. the c3d_vll paper's video-level model
fine-tuned from a clip-level one) start from a trained network. The bundle must hold the
same architecture (registry variant and constructor kwargs up to the class count); its
checksums are verified. The class-dependent layers (those whose shape follows the number of
classes: the classifier, deep-supervision heads) are loaded only when the bundle's labels
equal the run's classes in order and ``--init-backbone-only`` is off; otherwise they keep
their fresh initialisation. Everything else must load exactly
(:func:`models.weights.load_matching` refuses a partial fit, listing the keys).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from models.bundle import WEIGHTS, BundleError, load_bundle
from models.registry import create_model
from models.spec import VariantSpec
from models.weights import WeightsMismatch, load_matching
from training.tasks import Task

__all__ = ["class_dependent_keys", "init_from_bundle"]

log = logging.getLogger("training")


def class_dependent_keys(task: Task, spec: VariantSpec, kwargs: dict[str, Any]) -> set[str]:
    """State-dict keys whose shape follows ``num_classes`` (found by building the network
    with one class more and comparing shapes); none for a network without classes (ms3d's
    embeddings)."""
    if "num_classes" not in kwargs:
        return set()
    base = create_model(task.model_name, spec=spec, **kwargs).state_dict()
    more = create_model(
        task.model_name, spec=spec, **{**kwargs, "num_classes": kwargs["num_classes"] + 1}
    ).state_dict()
    return {k for k, v in base.items() if k not in more or tuple(more[k].shape) != tuple(v.shape)}


def init_from_bundle(
    model: nn.Module,
    task: Task,
    spec: VariantSpec,
    kwargs: dict[str, Any],
    path: str,
    *,
    backbone_only: bool,
) -> dict[str, Any]:
    """Load the weights of the bundle at ``path`` into ``model``; returns what the manifest
    records of it (``training.init_from``).

    Raises:
        SystemExit: Not a usable bundle, another architecture, or weights that do not fit,
            with the reason.
    """
    try:
        bundle = load_bundle(path)
    except BundleError as err:
        raise SystemExit(f"--init-from {path}: {err}") from None
    if bundle.model_name != task.model_name:
        raise SystemExit(
            f"--init-from {path} holds a {bundle.model_name} network; this run trains "
            f"{task.model_name} (pass --model {bundle.model_name} to fine-tune it)"
        )
    same_classes = bundle.labels == list(task.classes)
    class_keys = class_dependent_keys(task, spec, kwargs)
    skip = set(class_keys) if (backbone_only or not same_classes) else set()
    state = load_file(str(bundle.file(WEIGHTS)))
    try:
        report = load_matching(model, state, skip=skip, source=f"the weights of {path}")
    except WeightsMismatch as err:
        raise SystemExit(f"--init-from: {err}") from None
    why = "asked" if backbone_only else "the classes differ" if not same_classes else ""
    log.info(
        "initialised from %s: %d tensors loaded%s",
        path,
        len(report.loaded),
        f", {len(report.skipped)} class-dependent ones left fresh ({why})"
        if report.skipped
        else "",
    )
    return {
        "bundle": str(Path(path)),
        "weights_sha256": bundle.file_info(WEIGHTS)["sha256"],
        "bundle_labels": bundle.labels,
        "loaded": len(report.loaded),
        "reinitialised": report.skipped,
    }
