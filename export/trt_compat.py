"""What differs between the TensorRT releases the export supports (10.9 through 11.x).

Kept apart from the build so that each rule is a plain function, tested without TensorRT:

- :func:`check_version`: the supported range. ``tensorrt.plugin`` first shipped in 10.6;
  until 10.7 the ONNX parser expands a node's model-local function even when a plugin of its
  name is registered; before 10.9 a plugin's output shape cannot take a constant. 12 and
  later are untested (``pyproject.toml`` pins ``tensorrt>=10.9,<12``).
- :func:`network_flags`: every network is strongly typed (TensorRT 11 removed weak typing
  and ``BuilderFlag.FP16``; FP16 comes from an FP16 ONNX graph, see :mod:`export.onnx`),
  with the preference between a plugin's ahead-of-time and just-in-time implementations.
- :func:`plugin_layers`: which layers of a parsed network are plugins, so a build records
  what the parser really did instead of what it was asked to do.
- :func:`timing_cache_name`: one timing cache per bundle, GPU, compute capability and
  TensorRT version (a cache from another version or device is refused by the builder).

Details: docs/export.md#tensorrt.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "MIN_TENSORRT",
    "MAX_TENSORRT",
    "PLUGIN_MODES",
    "TensorRTUnsupported",
    "check_version",
    "import_tensorrt",
    "network_flags",
    "parse_version",
    "plugin_layers",
    "timing_cache_name",
]

# Supported: MIN_TENSORRT <= version < MAX_TENSORRT.
MIN_TENSORRT = (10, 9)
MAX_TENSORRT = (12, 0)
# How the TemporalCluster node is built: its ahead-of-time kernel (the plan runs without
# Python), its Python implementation (the loading process registers export.plugin), or the
# node's ONNX function expanded into standard layers (no plugin at all).
PLUGIN_MODES = ("aot", "jit", "none")


class TensorRTUnsupported(RuntimeError):
    """The installed TensorRT is outside the supported range."""


def parse_version(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; pre-release tails (``"11.0.0b1"``) are cut at
    the first non-digit of a part.

    Raises:
        TensorRTUnsupported: No leading number.
    """
    parts: list[int] = []
    for part in str(version).strip().split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(part):
            break
    if not parts:
        raise TensorRTUnsupported(f"cannot read the TensorRT version {version!r}")
    return tuple(parts)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


def check_version(version: str) -> tuple[int, ...]:
    """The parsed ``version`` if the export supports it.

    Raises:
        TensorRTUnsupported: Below :data:`MIN_TENSORRT` or at/above :data:`MAX_TENSORRT`; the
            message says why and what to install.
    """
    parsed = parse_version(version)
    wanted = f"pip install 'tensorrt>={_dotted(MIN_TENSORRT)},<{MAX_TENSORRT[0]}'"
    if parsed[:2] < MIN_TENSORRT:
        raise TensorRTUnsupported(
            f"TensorRT {version} is too old: the TemporalCluster plugin needs "
            f"{_dotted(MIN_TENSORRT)} or newer (tensorrt.plugin, the ONNX parser's plugin "
            f"lookup and constant plugin output shapes settled there); {wanted}"
        )
    if parsed[:2] >= MAX_TENSORRT:
        raise TensorRTUnsupported(
            f"TensorRT {version} is newer than this export was written for "
            f"(<{MAX_TENSORRT[0]}); {wanted}"
        )
    return parsed


def import_tensorrt() -> Any:
    """``tensorrt``, once :func:`check_version` accepted it.

    Raises:
        ImportError: Not installed.
        TensorRTUnsupported: Outside the supported range.
    """
    import tensorrt as trt

    check_version(trt.__version__)
    return trt


def network_flags(trt: Any, plugin: str) -> int:
    """``create_network`` flags: strongly typed, preferring the plugin's ``plugin``
    implementation (``"aot"`` or ``"jit"``) when the plugin has both.

    Raises:
        ValueError: ``plugin`` is not one of :data:`PLUGIN_MODES`.
        TensorRTUnsupported: This TensorRT lacks strong typing.
    """
    if plugin not in PLUGIN_MODES:
        raise ValueError(f"plugin must be one of {PLUGIN_MODES}, got {plugin!r}")
    names = trt.NetworkDefinitionCreationFlag
    if not hasattr(names, "STRONGLY_TYPED"):
        raise TensorRTUnsupported("this TensorRT has no strongly typed networks")
    flags = 1 << int(names.STRONGLY_TYPED)
    preference = {"aot": "PREFER_AOT_PYTHON_PLUGINS", "jit": "PREFER_JIT_PYTHON_PLUGINS"}
    name = preference.get(plugin)
    if name is not None and hasattr(names, name):
        flags |= 1 << int(getattr(names, name))
    return flags


def plugin_layers(trt: Any, network: Any) -> list[dict[str, str]]:
    """``[{"layer", "plugin"}]`` of each plugin layer in a parsed network: the layer's name and
    the ``namespace::name`` of its plugin (empty where TensorRT does not say)."""
    kinds = {
        getattr(trt.LayerType, k)
        for k in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3")
        if hasattr(trt.LayerType, k)
    }
    found = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type not in kinds:
            continue
        found.append({"layer": str(layer.name), "plugin": _plugin_id(trt, layer)})
    return found


def _plugin_id(trt: Any, layer: Any) -> str:
    # A V3 layer's plugin names itself through its core capability; a V2 plugin directly.
    # network.get_layer returns the base ILayer: its class is set to the plugin layer's to
    # reach get_plugin, as TensorRT's Python samples do for typed layers.
    layer_class = getattr(trt, "IPluginV3Layer", None)
    if layer_class is not None and layer.type == getattr(trt.LayerType, "PLUGIN_V3", None):
        try:
            layer.__class__ = layer_class
        except TypeError:
            pass
    getter = getattr(layer, "get_plugin", None)
    plugin = getter() if getter is not None else getattr(layer, "plugin", None)
    if plugin is None:
        return ""
    core = plugin
    capability = getattr(trt, "PluginCapabilityType", None)
    if capability is not None and hasattr(plugin, "get_capability_interface"):
        core = plugin.get_capability_interface(capability.CORE) or plugin
    name = getattr(core, "plugin_name", "")
    namespace = getattr(core, "plugin_namespace", "")
    return f"{namespace}::{name}" if namespace else str(name)


def timing_cache_name(bundle: str, gpu_slug: str, capability: tuple[int, int], version: str) -> str:
    """``<bundle>.<gpu>.sm<XY>.trt<version>.timing-cache``.

    >>> timing_cache_name("fv", "nvidia-h100-80gb-hbm3", (9, 0), "10.13.0.35")
    'fv.nvidia-h100-80gb-hbm3.sm90.trt10.13.0.35.timing-cache'
    """
    major, minor = capability
    safe = re.sub(r"[^0-9A-Za-z.]+", "-", version).strip("-.")
    return f"{bundle}.{gpu_slug}.sm{major}{minor}.trt{safe}.timing-cache"
