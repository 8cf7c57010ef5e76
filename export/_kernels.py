"""The GPU kernels behind the ``TemporalCluster`` TensorRT plugin, testable without TensorRT.

Both compute :func:`models.clustering.temporal_cluster` (the full-video clustering; the paper
is cited in :mod:`models.full_video`) for ``(N, T, C, H, W)`` activations on a CUDA device.

**The JIT path** (:func:`temporal_cluster_cuda`, run by the plugin's ``trtp.impl`` in a Python
process, on the caller's current stream):

1. Neighbour Hamming counts of the sign bits: one pass over the activations, by a Triton
   kernel when Triton is importable (it is the only step that reads all ``N * T * C * H * W``
   values), else by the reference's torch ops.
2. The cluster assignment on the ``(N, T - 1)`` distances: the reference functions of
   :mod:`models.clustering`, run on the CPU copy of that small matrix so that the assignment
   is the reference's bit for bit (its float32 cumulative sum accumulates in double there).
3. The means: one batched matmul of the ``(N, g, T)`` averaging matrix with the activations,
   written into the caller's output buffer.

**The fused kernel** (:func:`fused_cluster_means`, and compiled ahead of time by
:func:`compile_aot_kernel` for the plugin's ``trtp.aot_impl``, so that a plan runs without
Python): one Triton program per video does the whole clustering: the Hamming counts, the
assignment on a ``TMAX``-long register vector (cumulative, slope or uniform, with the
reference's refill of empty clusters and tie rules, the cumulative distance summed in float64
and rounded to float32 as the CPU reference does), and the cluster means, each cluster being a
contiguous run of frames. TensorRT's AOT plugins launch one kernel, and the means need every
distance of their video, so a video cannot be split across programs without a second launch;
the cost is one streaming multiprocessor per video (figures: docs/export.md). A video longer
than ``TMAX`` frames gets NaN means rather than a wrong answer. :func:`fused_cluster_ids`
runs the same code and writes the assignment instead, for checks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.clustering import CLUSTERING_MODES, assign_clusters, cluster_weights, hamming_distances

__all__ = [
    "AOT_BLOCK",
    "AOT_WARPS",
    "AotKernel",
    "METHOD_CODES",
    "KernelError",
    "aot_tmax",
    "compile_aot_kernel",
    "driver_ptx_isa",
    "fused_cluster_ids",
    "fused_cluster_means",
    "hamming_counts",
    "method_code",
    "ptx_isa_for_cuda",
    "strip_unused_params",
    "temporal_cluster_cuda",
    "triton_available",
]

# Elements of one frame's activation reduced per Triton program (the JIT Hamming kernel).
_BLOCK = 1024
# The fused kernel: features per step and warps of its one program per video.
AOT_BLOCK = 1024
AOT_WARPS = 8
# The clustering method as the integer the fused kernel is specialised on.
METHOD_CODES = {name: code for code, name in enumerate(CLUSTERING_MODES)}


class KernelError(RuntimeError):
    """A kernel cannot be built as asked (an unknown method, a kernel that needs scratch)."""


def method_code(method: str | bytes | int) -> int:
    """The clustering method as ``0`` (cumulative), ``1`` (slope) or ``2`` (uniform).

    TensorRT's ONNX parser hands string attributes to ``tensorrt.plugin`` with a trailing NUL,
    which ``tensorrt.plugin`` decodes as part of the string: NULs and surrounding blanks are
    stripped here, on every path that reads the attribute.

    Raises:
        KernelError: Not one of :data:`models.clustering.CLUSTERING_MODES` (or their codes).
    """
    if isinstance(method, bool):
        raise KernelError(f"unknown clustering method {method!r}")
    if isinstance(method, int):
        if method in METHOD_CODES.values():
            return method
        raise KernelError(f"unknown clustering method code {method}; expected 0, 1 or 2")
    text = method.decode("utf-8", "replace") if isinstance(method, bytes) else str(method)
    name = text.replace("\x00", "").strip()
    if name not in METHOD_CODES:
        raise KernelError(
            f"unknown clustering method {text!r}; expected one of {list(METHOD_CODES)}"
        )
    return METHOD_CODES[name]


def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of PyTorch)."""
    try:
        import triton  # noqa: F401 - importing is the availability check
    except ImportError:
        return False
    return True


@functools.cache
def _hamming_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def hamming_kernel(x_ptr, counts_ptr, frames, features, BLOCK: tl.constexpr):
        # One program per (pair of neighbouring frames, block of features); partial counts are
        # integers, so the atomic accumulation is exact and order-independent.
        pair = tl.program_id(0)
        block = tl.program_id(1)
        video = pair // (frames - 1)
        frame = pair % (frames - 1)
        base = (video * frames + frame).to(tl.int64) * features
        offsets = block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < features
        first = tl.load(x_ptr + base + offsets, mask=mask, other=0.0)
        second = tl.load(x_ptr + base + features + offsets, mask=mask, other=0.0)
        differ = ((first > 0) != (second > 0)).to(tl.int32)
        tl.atomic_add(counts_ptr + pair, tl.sum(differ, axis=0))

    return hamming_kernel


def hamming_counts(x: Tensor) -> Tensor:
    """Number of differing sign bits between consecutive frames, by the Triton kernel.

    Args:
        x: ``(N, T, D)`` contiguous CUDA activations (float32 or float16).

    Returns:
        ``(N, T - 1)`` int32 counts.
    """
    import triton

    n, t, d = x.shape
    counts = torch.zeros(n, max(t - 1, 0), dtype=torch.int32, device=x.device)
    if t > 1 and n > 0:
        grid = (n * (t - 1), triton.cdiv(d, _BLOCK))
        _hamming_kernel()[grid](x, counts, t, d, BLOCK=_BLOCK)
    return counts


def temporal_cluster_cuda(
    x: Tensor,
    num_clusters: int,
    method: str,
    *,
    out: Tensor | None = None,
    use_triton: bool | None = None,
) -> Tensor:
    """:func:`models.clustering.temporal_cluster` for ``(N, T, C, H, W)`` CUDA activations.

    Args:
        x: ``(N, T, C, H, W)`` activations on a CUDA device, float32 or float16.
        num_clusters: ``g``.
        method: ``"cumulative"``, ``"slope"`` or ``"uniform"`` (NULs stripped, see
            :func:`method_code`).
        out: ``(N, g, C, H, W)`` buffer to write (e.g. TensorRT's output); allocated if ``None``.
        use_triton: Force the Triton kernel on or off; by default it is used when importable.

    Returns:
        ``out``, holding the cluster means in ``x``'s dtype.
    """
    if x.dim() != 5:
        raise ValueError(f"expected (N, T, C, H, W) activations, got shape {tuple(x.shape)}")
    mode = CLUSTERING_MODES[method_code(method)]
    n, t = x.shape[:2]
    flat = x.reshape(n, t, -1).contiguous()
    if use_triton is None:
        use_triton = x.is_cuda and triton_available()
    if use_triton:
        # Same arithmetic as the reference: exact int32 counts, then one float32 division.
        distances = hamming_counts(flat).to(torch.float32) / flat.shape[-1]
    else:
        distances = hamming_distances(flat, feature_dims=1)
    # (N, T - 1) values: assigned where the reference assigns them, then sent back.
    assignment = assign_clusters(distances.cpu(), num_clusters, mode).to(x.device)
    weights = cluster_weights(assignment, num_clusters, dtype=x.dtype)  # (N, g, T)
    means = torch.bmm(weights, flat).reshape((n, num_clusters) + tuple(x.shape[2:]))
    if out is None:
        return means
    out.copy_(means)
    return out


# ---------------------------------------------------------------------------------------------
# The fused kernel: one program per video


@functools.cache
def _fused_kernels() -> tuple[Any, Any]:
    """``(means_kernel, ids_kernel)`` of :mod:`export._fused_kernel` (imports Triton)."""
    from export import _fused_kernel

    return _fused_kernel.means_kernel, _fused_kernel.ids_kernel


def _pow2(value: int) -> int:
    return 1 << max(0, int(value) - 1).bit_length()


def aot_tmax(max_frames: int, num_clusters: int) -> int:
    """The ``TMAX`` the fused kernel is compiled for: a power of two (at least 16) covering
    the profile's largest frame count and ``g``."""
    return max(16, _pow2(max(int(max_frames), int(num_clusters))))


def _constexprs(num_clusters: int, method: str | bytes | int, tmax: int, block: int) -> dict:
    if num_clusters < 1:
        raise KernelError(f"num_clusters must be at least 1, got {num_clusters}")
    return {
        "G": int(num_clusters),
        "GP": max(2, _pow2(num_clusters)),
        "METHOD": method_code(method),
        "TMAX": int(tmax),
        "BLOCK": int(block),
    }


def _launch_fused(
    kernel: Any, x: Tensor, out: Tensor, num_clusters: int, method: str, block: int, tmax: int
) -> None:
    n, t = x.shape[:2]
    flat = x.reshape(n, t, -1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    consts = _constexprs(num_clusters, method, tmax or aot_tmax(t, num_clusters), block)
    if n:
        kernel[(n,)](flat, t, flat.shape[-1], out, num_warps=AOT_WARPS, **consts)


def fused_cluster_means(
    x: Tensor,
    num_clusters: int,
    method: str,
    *,
    out: Tensor | None = None,
    block: int = AOT_BLOCK,
    tmax: int = 0,
) -> Tensor:
    """The fused kernel's ``(N, g, C, H, W)`` cluster means of ``(N, T, C, H, W)`` activations
    (the plan's kernel, launched by Triton here; on a CUDA device, or on the CPU under
    ``TRITON_INTERPRET=1``). ``tmax`` 0: the smallest that fits ``T``."""
    if x.dim() != 5:
        raise ValueError(f"expected (N, T, C, H, W) activations, got shape {tuple(x.shape)}")
    if out is None:
        out = x.new_empty((x.shape[0], num_clusters, *x.shape[2:]))
    means_kernel, _ = _fused_kernels()
    _launch_fused(means_kernel, x, out, num_clusters, method, block, tmax)
    return out


def fused_cluster_ids(
    x: Tensor, num_clusters: int, method: str, *, block: int = AOT_BLOCK, tmax: int = 0
) -> Tensor:
    """The fused kernel's ``(N, T)`` int32 cluster ids (``-1`` where ``T > tmax``), as
    :func:`models.clustering.assign_clusters` returns them."""
    if x.dim() != 5:
        raise ValueError(f"expected (N, T, C, H, W) activations, got shape {tuple(x.shape)}")
    ids = torch.empty(x.shape[:2], dtype=torch.int32, device=x.device)
    _, ids_kernel = _fused_kernels()
    _launch_fused(ids_kernel, x, ids, num_clusters, method, block, tmax)
    return ids


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compilation for the plugin's trtp.aot_impl


@dataclass(frozen=True)
class AotKernel:
    """The fused means kernel compiled for one GPU architecture.

    Attributes:
        name: The PTX entry's name.
        ptx: The PTX, with Triton's unused trailing scratch parameters removed, so that its
            parameters are exactly ``(x, frames, features, out)`` as TensorRT passes them.
        num_warps: Warps per program: the launch's block is ``num_warps * 32`` threads.
        shared: Bytes of dynamic shared memory per program.
        tmax: Largest frame count the kernel clusters (longer videos get NaN).
        arch: The ``sm_XY`` number compiled for.
    """

    name: str
    ptx: str
    num_warps: int
    shared: int
    tmax: int
    arch: int

    @property
    def block_threads(self) -> int:
        return self.num_warps * 32


_ENTRY = re.compile(r"\.entry\s+(?P<name>[A-Za-z_$][\w$]*)\s*\((?P<params>[^)]*)\)", re.S)


def strip_unused_params(ptx: str, keep: int) -> str:
    """``ptx`` with the parameters after the first ``keep`` of its entry removed.

    Triton appends scratch pointers (global and profile scratch) to every kernel it compiles;
    TensorRT's AOT launch passes only the plugin's inputs, extra scalars and outputs. The
    removed parameters must be unused (scratch size 0): referenced ones are refused.

    Raises:
        KernelError: No single entry, fewer than ``keep`` parameters, or a removed parameter
            that the body reads.
    """
    entries = list(_ENTRY.finditer(ptx))
    if len(entries) != 1:
        raise KernelError(f"expected one .entry in the PTX, found {len(entries)}")
    entry = entries[0]
    params = [p.strip() for p in entry["params"].split(",") if p.strip()]
    if len(params) < keep:
        raise KernelError(f"the kernel has {len(params)} parameters, fewer than {keep}")
    body = ptx[entry.end() :]
    for param in params[keep:]:
        param_name = param.split()[-1]
        if re.search(rf"\b{re.escape(param_name)}\b", body):
            raise KernelError(f"parameter {param_name} is used by the kernel; it cannot be removed")
    kept = ",\n".join(f"\t{p}" for p in params[:keep])
    header = f".entry {entry['name']}(\n{kept}\n)"
    return ptx[: entry.start()] + header + body


def ptx_isa_for_cuda(version: int) -> int:
    """The newest PTX ISA (``major * 10 + minor``) a CUDA driver of ``version`` (as
    ``cuDriverGetVersion`` reports it, e.g. 12060) compiles: 12.0-12.5 take 8.0-8.5, 12.6 and
    12.7 take 8.5 and 8.6, 12.8 takes 8.7, 12.9 takes 8.8, 13.x takes 9.x."""
    major, minor = version // 1000, (version % 1000) // 10
    if major >= 13:
        return 90 + (major - 13) * 10 + minor
    if major == 12:
        return 80 + minor - (minor >= 6)
    if major == 11:
        return 70 + minor
    raise KernelError(f"CUDA driver {major}.{minor} is too old for the plugin's kernel")


def driver_ptx_isa() -> int | None:
    """:func:`ptx_isa_for_cuda` of this machine's CUDA driver; ``None`` without one."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return ptx_isa_for_cuda(version.value)


def compile_aot_kernel(
    *,
    dtype: str,
    num_clusters: int,
    method: str | bytes | int,
    max_frames: int,
    arch: int,
    block: int = AOT_BLOCK,
    num_warps: int = AOT_WARPS,
    ptx_isa: int | None = None,
) -> AotKernel:
    """Compile the fused means kernel to PTX for ``sm_<arch>``; no GPU needed.

    Args:
        dtype: ``"fp32"`` or ``"fp16"``: the activations and means (input and output alike).
        num_clusters: ``g``.
        method: The clustering method (a name, NULs stripped, or its code).
        max_frames: Largest frame count of the engine's profile (``TMAX`` is
            :func:`aot_tmax` of it).
        arch: Compute capability as ``major * 10 + minor`` (90 for H100/H200).
        block: Features per step.
        num_warps: Warps per program.
        ptx_isa: PTX ISA version to write (``major * 10 + minor``): TensorRT hands the PTX to
            the CUDA driver, which compiles only versions it knows. Default: this machine's
            driver's (:func:`driver_ptx_isa`), else Triton's own (that of its ``ptxas``).

    Raises:
        ImportError: Triton is not installed.
        KernelError: An unknown method or dtype, or a kernel that needs scratch memory.
    """
    import triton
    from triton.backends.compiler import GPUTarget

    if dtype not in ("fp32", "fp16"):
        raise KernelError(f"the kernel takes fp32 or fp16 activations, not {dtype!r}")
    tmax = aot_tmax(max_frames, num_clusters)
    consts = _constexprs(num_clusters, method, tmax, block)
    means_kernel, _ = _fused_kernels()
    signature = {"x_ptr": f"*{dtype}", "frames": "i32", "features": "i32", "out_ptr": f"*{dtype}"}
    source = triton.compiler.ASTSource(
        fn=means_kernel,
        signature={**signature, **dict.fromkeys(consts, "constexpr")},
        constexprs=consts,
    )
    # No FMA contraction: the assignment's float arithmetic must round as the reference's.
    options: dict[str, Any] = {"num_warps": num_warps, "enable_fp_fusion": False}
    isa = driver_ptx_isa() if ptx_isa is None else ptx_isa
    if isa is not None:
        options["ptx_version"] = int(isa)
    compiled = triton.compile(source, target=GPUTarget("cuda", int(arch), 32), options=options)
    meta = compiled.metadata
    for scratch in ("global_scratch_size", "profile_scratch_size"):
        if getattr(meta, scratch, 0):
            raise KernelError(f"the kernel needs {scratch} = {getattr(meta, scratch)} bytes")
    ptx = strip_unused_params(compiled.asm["ptx"], keep=len(signature))
    return AotKernel(meta.name, ptx, int(meta.num_warps), int(meta.shared), tmax, int(arch))
