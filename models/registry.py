"""The model registry: one builder per variant, keyed by the builder's name.

Importing :mod:`models` registers every family. A builder is registered with its
:class:`~models.spec.VariantSpec`; :func:`create_model` hands the builder that spec (or a
run's modified copy of it), so the clip shape a network is built for is the one its sampler
produces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from models.spec import VariantSpec

__all__ = ["create_model", "get_spec", "list_models", "register_model"]

_Model = TypeVar("_Model", bound=nn.Module)

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_SPECS: dict[str, VariantSpec] = {}


def register_model(
    *, spec: VariantSpec
) -> Callable[[Callable[..., _Model]], Callable[..., _Model]]:
    """Register a builder under its function name.

    The builder takes ``spec`` as a keyword; the function returned (and registered) passes it
    ``spec`` unless the caller gives another one, so the builder itself never restates it.

    Args:
        spec: The variant's clip shape, sizes, normalisation, sampler and aggregator.

    Raises:
        ValueError: If a builder of the same name is already registered.
    """

    def _register(fn: Callable[..., _Model]) -> Callable[..., _Model]:
        name = fn.__name__
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")

        @functools.wraps(fn)
        def build(*, spec: VariantSpec | None = None, **kwargs: Any) -> _Model:
            return fn(spec=spec or _SPECS[name], **kwargs)

        _BUILDERS[name] = build
        _SPECS[name] = spec
        return build

    return _register


def create_model(name: str, *, spec: VariantSpec | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered variant ``name``.

    Args:
        name: A registered variant.
        spec: The spec to build for (default: the registered one).
        **kwargs: Network arguments (``num_classes``, ``fusion``...).
    """
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
    return builder(spec=spec, **kwargs)


def list_models() -> list[str]:
    """Names of all registered variants, sorted."""
    return sorted(_BUILDERS)


def get_spec(name: str) -> VariantSpec:
    """The :class:`VariantSpec` registered with variant ``name``."""
    try:
        return _SPECS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}") from None
