"""Reading weight files without executing code, and loading a state dict into a network all
or nothing, with a report of what went where.

Used wherever a run starts from weights it did not train (``--init-from`` a bundle,
``--pretrained`` ImageNet backbones, ``training.convert``): every key of the network must be
loaded or deliberately left at its initialisation (``skip``); anything else (a key missing
from the file, a key the network does not have, a shape that does not fit) refuses the whole
load with a listing, before a single tensor is copied.

Files are ``.safetensors`` or PyTorch files read with ``torch.load(weights_only=True)``: only
tensors and plain Python data are rebuilt; a file that needs any other object (a class of the
program that wrote it) is refused with the names of those objects, never unpickled.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "LoadReport",
    "UnsafeWeightsFile",
    "WeightsMismatch",
    "load_matching",
    "read_state_dict",
    "read_torch_file",
]

# How many keys of each kind a refusal lists before "and N more".
_SHOWN = 8


class WeightsMismatch(ValueError):
    """The stored weights do not fit the network; the message lists the keys."""


class UnsafeWeightsFile(ValueError):
    """A PyTorch file holds objects other than tensors and plain data; it is not unpickled."""


def read_torch_file(path: str | os.PathLike[str], *, allow: Iterable[Any] = ()) -> Any:
    """Read a PyTorch file with ``torch.load(weights_only=True)`` onto the CPU.

    Args:
        path: The file.
        allow: Further classes or functions the file may name (``torch.serialization``'s
            safe globals: an object, or ``(object, "the.name.in.the.file")`` for one that
            moved), for formats known to store harmless extras such as numpy scalars.

    Raises:
        FileNotFoundError: No such file.
        UnsafeWeightsFile: The file names other objects; the message lists them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        error = err
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in allow}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, ValueError, pickle.UnpicklingError):
        # The legacy (non-zip) format cannot be listed; torch's message names the first one.
        names = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    unsafe = [n for n in names if n not in allowed]
    if not unsafe:
        lines = [line for line in str(error).splitlines() if line.strip()] or ["unreadable"]
        reason = next((x for x in lines if "got <" in x or "invalid load" in x), lines[-1])
        raise ValueError(f"{path} is not a PyTorch file that can be read safely: {reason}")
    raise UnsafeWeightsFile(
        f"{path} holds Python objects besides tensors and plain data ({', '.join(unsafe)}); "
        "refusing to unpickle them (it could run code)"
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a PyTorch file holding a plain
    state dict (or ``{"state_dict": ...}``), read without executing code.

    Raises:
        FileNotFoundError: No such file.
        UnsafeWeightsFile: A PyTorch file that names other objects.
        ValueError: The file holds something other than tensors by name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = read_torch_file(path)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{path} does not hold a plain state dict of tensors")
    return dict(state)


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_matching` did.

    Attributes:
        loaded: Keys copied from the file.
        skipped: Keys of the network left at their initialisation, as asked.
        ignored: Keys of the file not used, as asked (they belong to skipped parts).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"{title} ({len(items)}): {shown}{more}"


def load_matching(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    skip: Iterable[str] = (),
    source: str = "the weights",
) -> LoadReport:
    """Copy ``state`` into ``model``, leaving the keys in ``skip`` as they are.

    Args:
        model: The network (its state dict names the keys that must be filled).
        state: The stored tensors.
        skip: Keys not to load (present in the network, the file, or both).
        source: What ``state`` is, for messages (e.g. the bundle's path).

    Raises:
        WeightsMismatch: A key the network needs is missing from ``state``, ``state`` has a
            key the network lacks, or a shape differs (outside ``skip``); nothing is loaded.
    """
    skipped = set(skip)
    own = model.state_dict()
    # Listed in the network's order (the file's for unexpected keys): the first offender of a
    # wrong architecture is usually the telling one (the stem's width, say).
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own and k not in skipped]
    shapes = list(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and k not in skipped and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = [
            _listing("missing from the file", missing) if missing else "",
            _listing("not in the network", unexpected) if unexpected else "",
            _listing("shape (file vs network)", shapes) if shapes else "",
        ]
        raise WeightsMismatch(
            f"{source} do not fit the network: " + "; ".join(p for p in parts if p)
        )
    chosen = {k: state[k] for k in own if k not in skipped}
    model.load_state_dict(chosen, strict=False)
    return LoadReport(
        loaded=sorted(chosen),
        skipped=sorted(k for k in own if k in skipped),
        ignored=sorted(k for k in state if k in skipped),
    )
