"""Loading a stored state dict into a network, all or nothing, with a report of what went where.

Used wherever a run starts from weights it did not train (``--init-from`` a bundle): every
key of the network must be loaded or deliberately left at its initialisation (``skip``);
anything else (a key missing from the file, a key the network does not have, a shape that
does not fit) refuses the whole load with a listing, before a single tensor is copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["LoadReport", "WeightsMismatch", "load_matching"]

# How many keys of each kind a refusal lists before "and N more".
_SHOWN = 8


class WeightsMismatch(ValueError):
    """The stored weights do not fit the network; the message lists the keys."""


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
    missing = sorted(k for k in own if k not in state and k not in skipped)
    unexpected = sorted(k for k in state if k not in own and k not in skipped)
    shapes = sorted(
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
