"""The model registry: one builder per variant, keyed by the builder's name.

Importing :mod:`models` registers every family. Each builder is registered together with its
:class:`~models._defaults.ModelDefaults`, so training, export and the service read the clip
shape, normalisation, sampler and aggregator of a variant from one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from models._defaults import ModelDefaults

__all__ = ["register_model", "create_model", "list_models", "get_defaults"]

_Builder = TypeVar("_Builder", bound=Callable[..., nn.Module])

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_DEFAULTS: dict[str, ModelDefaults] = {}


def register_model(*, defaults: ModelDefaults) -> Callable[[_Builder], _Builder]:
    """Register a builder under its function name.

    Args:
        defaults: The variant's clip shape, normalisation, sampler and aggregator settings.

    Raises:
        ValueError: If a builder of the same name is already registered.
    """

    def _register(fn: _Builder) -> _Builder:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = fn
        _DEFAULTS[name] = defaults
        return fn

    return _register


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build the registered variant ``name`` with keyword overrides (e.g. ``num_classes``)."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return builder(**kwargs)


def list_models() -> list[str]:
    """Names of all registered variants, sorted."""
    return sorted(_BUILDERS)


def get_defaults(name: str) -> ModelDefaults:
    """The :class:`ModelDefaults` registered with variant ``name``."""
    try:
        return _DEFAULTS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
