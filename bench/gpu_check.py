"""One GPU check: what this project's GPU paths do on a real NVIDIA GPU, in one command.

Run on a GPU machine (H100/H200, PyTorch with CUDA, Triton, CuPy; TensorRT optional):

    python bench/gpu_check.py                      # about 5 minutes; --budget-s caps it
    python bench/gpu_check.py --dry-run            # anywhere: says what it would skip

One Markdown table on stdout (and ``$OUT/gpu_check.json`` when ``OUT`` is set, or
``--json PATH``), one row per measurement:

1. ``torch``: per family, the paper-size and the tiny variant: eager FP32 against AMP (FP16
   autocast) clips/s on the same batch, and one training step (AMP, SGD, a stated surrogate
   loss: cross-entropy on random labels, ms3d's N-pair-style similarity loss) with its time
   and a finite loss.
2. ``onnxruntime``: the same networks exported as ``python -m export.onnx`` does, run by ONNX
   Runtime's CUDA provider in a child process (``onnxruntime-gpu`` is installed with pip if
   the provider is missing; where that fails, the row says so): max abs difference against
   PyTorch and clips/s.
3. ``clustering``: the fused Triton kernel (the TensorRT plugin's AOT kernel) and the JIT
   path against :func:`models.clustering.temporal_cluster` on layer1-sized activations:
   identical assignments, means within 1e-5; then the AOT PTX itself, loaded by CuPy and
   launched exactly as TensorRT launches it (four parameters, one program per video).
4. ``tensorrt`` (where ``tensorrt`` imports): engines of the tiny bundles (FP32 with the AOT
   plugin, FP16 from the FP16 graph): build time, parity, clips/s.

Nothing is estimated or filled in: a row that could not run says ``skipped`` or
``unavailable`` and why; a failed check says ``FAIL`` with the error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import create_model, get_spec  # noqa: E402

FAMILIES = ("c3d_vll", "attention_lstm", "ms3d", "full_video")
SECTIONS = ("env", "torch", "onnxruntime", "clustering", "tensorrt")
DEFAULT_BUDGET_S = 420.0
FRAMES = 32  # per video for full_video


@dataclass
class Row:
    """One measurement: ``status`` is ``ok``, ``FAIL``, ``skipped`` or ``unavailable``."""

    section: str
    model: str
    check: str
    result: str
    status: str


class Check:
    """Collects rows against a time budget."""

    def __init__(self, budget_s: float, dry_run: bool) -> None:
        self.deadline = time.monotonic() + budget_s
        self.dry_run = dry_run
        self.cuda = torch.cuda.is_available() and not dry_run
        self.rows: list[Row] = []

    def add(self, section: str, model: str, check: str, result: str, status: str = "ok") -> None:
        self.rows.append(Row(section, model, check, result, status))
        print(f"[{section}] {model} {check}: {result} ({status})", file=sys.stderr, flush=True)

    def gpu_reason(self) -> str | None:
        """Why GPU work cannot run, or ``None``."""
        if self.dry_run:
            return "--dry-run"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    @contextmanager
    def guarded(self, section: str, model: str, check: str) -> Iterator[None]:
        """Run a block; an exception becomes a ``FAIL`` row with its message."""
        try:
            yield
        except Exception as err:  # a check's failure is a result, not the end of the run
            message = f"{type(err).__name__}: {err}".replace("\n", " ")[:300]
            self.add(section, model, check, message, "FAIL")
            traceback.print_exc(file=sys.stderr)


def _timed(fn: Callable[[], object], repeats: int, sync: bool) -> float:
    """Median seconds of ``fn`` after two warm-up calls."""
    for _ in range(2):
        fn()
    if sync:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _variants(families: list[str]) -> list[tuple[str, str]]:
    """``(family, registry name)``: the paper-size variant and the tiny one of each family."""
    return [(family, name) for family in families for name in (f"{family}_tiny", family)]


def _batch(name: str) -> torch.Tensor:
    spec = get_spec(name)
    clips = 1 if not spec.input_frames else (2 if name == "attention_lstm" else 4)
    length = spec.input_frames or FRAMES
    generator = torch.Generator().manual_seed(0)
    return torch.randn(clips, 3, length, *spec.input_size, generator=generator)


def _surrogate_loss(output: torch.Tensor, name: str) -> torch.Tensor:
    if get_spec(name).output == "embedding":
        # N-pair style: each embedding is its own positive among the batch.
        similarity = output.float() @ output.float().T
        return torch.nn.functional.cross_entropy(
            similarity, torch.arange(len(output), device=output.device)
        )
    logits = output.float().reshape(-1, output.shape[-1])
    labels = torch.randint(0, output.shape[-1], (len(logits),), device=output.device)
    return torch.nn.functional.cross_entropy(logits, labels)


# ---------------------------------------------------------------------------------------------
# Sections


def check_env(check: Check) -> None:
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "none"
    capability = ".".join(map(str, torch.cuda.get_device_capability())) if cuda else "-"
    check.add(
        "env",
        "-",
        "torch",
        f"{torch.__version__}, CUDA {torch.version.cuda}, device {device} (sm {capability})",
    )
    for module in ("triton", "cupy", "onnxruntime", "tensorrt"):
        spec = importlib.util.find_spec(module)
        if spec is None:
            check.add("env", "-", module, "not installed", "unavailable")
            continue
        try:
            version = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as err:  # a broken install is worth a line, not a crash
            check.add("env", "-", module, f"import failed: {err}", "FAIL")
            continue
        check.add("env", "-", module, str(version))


def _torch_variant(check: Check, name: str) -> None:
    """Eager FP32 vs AMP clips/s and one AMP training step of one registered variant."""
    torch.manual_seed(0)
    model = create_model(name).cuda().eval()
    x = _batch(name).cuda()
    with check.guarded("torch", name, "eager fp32 vs AMP"):
        clips = len(x)
        with torch.inference_mode():
            fp32_s = _timed(lambda: model(x), 5, sync=True)
            with torch.autocast("cuda", dtype=torch.float16):
                amp_s = _timed(lambda: model(x), 5, sync=True)
                amp_out = model(x).float()
            diff = float((amp_out - model(x)).abs().max())
        shape = "x".join(map(str, x.shape))
        check.add(
            "torch",
            name,
            f"eager fp32 vs AMP ({shape})",
            f"{clips / fp32_s:.1f} vs {clips / amp_s:.1f} clips/s (x{fp32_s / amp_s:.2f}), "
            f"max|AMP-fp32| {diff:.1e}",
        )
    with check.guarded("torch", name, "train step"):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda")

        def step() -> float:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16):
                loss = _surrogate_loss(model(x), name)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            return float(loss.detach())

        torch.cuda.reset_peak_memory_stats()
        step_s = _timed(step, 3, sync=True)
        loss = step()
        peak = torch.cuda.max_memory_allocated() / 2**30
        ok = np.isfinite(loss)
        check.add(
            "torch",
            name,
            "train step (AMP, surrogate loss)",
            f"{step_s * 1e3:.0f} ms/step, loss {loss:.3f}, peak {peak:.1f} GiB",
            "ok" if ok else "FAIL",
        )


def check_torch(check: Check, variants: list[tuple[str, str]]) -> None:
    reason = check.gpu_reason()
    for _, name in variants:
        if reason is not None:
            check.add(
                "torch", name, "eager fp32 vs AMP, train step", f"skipped: {reason}", "skipped"
            )
            continue
        if check.out_of_time():
            check.add(
                "torch", name, "eager fp32 vs AMP, train step", "skipped: time budget", "skipped"
            )
            continue
        with check.guarded("torch", name, "build on the GPU"):
            _torch_variant(check, name)
        torch.cuda.empty_cache()


_ORT_WORKER = """
import json, sys, time, numpy as np
import torch  # loads the CUDA libraries the provider links against
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
work = sys.argv[1]
jobs = json.load(open(f"{work}/jobs.json"))
if "CUDAExecutionProvider" not in ort.get_available_providers():
    print(json.dumps({"error": f"no CUDAExecutionProvider in {ort.get_available_providers()}"}))
    sys.exit(0)
results = {}
for name in jobs:
    try:
        session = ort.InferenceSession(f"{work}/{name}.onnx", providers=["CUDAExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"session fell back to {session.get_providers()}")
        x = np.load(f"{work}/{name}.input.npy")
        feed = {session.get_inputs()[0].name: x}
        for _ in range(2):
            out = session.run(None, feed)[0]
        times = []
        for _ in range(5):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        np.save(f"{work}/{name}.ort.npy", out)
        results[name] = {"seconds": sorted(times)[2], "version": ort.__version__}
    except Exception as err:
        results[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
print(json.dumps(results))
"""


def _ort_cuda_ready() -> tuple[bool, str]:
    probe = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode == 0 and result.stdout.strip().endswith("True"):
        return True, "CUDAExecutionProvider present"
    return False, (result.stderr.strip().splitlines() or ["CUDAExecutionProvider missing"])[-1]


def check_onnxruntime(check: Check, variants: list[tuple[str, str]]) -> None:
    reason = check.gpu_reason()
    if reason is not None:
        check.add(
            "onnxruntime", "-", "CUDA provider parity and clips/s", f"skipped: {reason}", "skipped"
        )
        return
    ready, why = _ort_cuda_ready()
    if not ready:
        install = subprocess.run(
            # Short retries: where no registry is reachable this fails in seconds.
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--retries",
                "1",
                "--timeout",
                "15",
                "onnxruntime-gpu",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        tail = (install.stderr.strip().splitlines() or ["no output"])[-1][:200]
        if install.returncode != 0:
            check.add(
                "onnxruntime",
                "-",
                "install onnxruntime-gpu",
                f"pip failed ({why}): {tail}",
                "unavailable",
            )
            return
        ready, why = _ort_cuda_ready()
        check.add(
            "onnxruntime",
            "-",
            "install onnxruntime-gpu",
            f"installed; {why}",
            "ok" if ready else "unavailable",
        )
        if not ready:
            return
    from export.onnx import export_network

    with tempfile.TemporaryDirectory() as work:
        jobs, expected, exported = [], {}, {}
        for _, name in variants:
            if check.out_of_time():
                check.add("onnxruntime", name, "export", "skipped: time budget", "skipped")
                continue
            with check.guarded("onnxruntime", name, "export"):
                torch.manual_seed(0)
                model = create_model(name).eval()
                x = _batch(name)
                started = time.perf_counter()
                proto = export_network(model, get_spec(name), optimize=False)
                (Path(work) / f"{name}.onnx").write_bytes(proto.SerializeToString())
                np.save(Path(work) / f"{name}.input.npy", x.numpy())
                with torch.inference_mode():
                    expected[name] = model.cuda()(x.cuda()).float().cpu().numpy()
                exported[name] = time.perf_counter() - started
                jobs.append(name)
                del model
        if not jobs:
            return
        (Path(work) / "jobs.json").write_text(json.dumps(jobs))
        run = subprocess.run(
            [sys.executable, "-c", _ORT_WORKER, work],
            capture_output=True,
            text=True,
            timeout=max(60.0, check.deadline - time.monotonic() + 60),
            check=False,
        )
        lines = run.stdout.strip().splitlines()
        if run.returncode != 0 or not lines:
            tail = (run.stderr.strip().splitlines() or ["no output"])[-1][:300]
            check.add("onnxruntime", "-", "CUDA provider run", f"worker failed: {tail}", "FAIL")
            return
        results = json.loads(lines[-1])
        if "error" in results:
            check.add("onnxruntime", "-", "CUDA provider", results["error"], "unavailable")
            return
        for name in jobs:
            result = results.get(name, {"error": "no result"})
            if "error" in result:
                check.add("onnxruntime", name, "CUDA provider", result["error"], "FAIL")
                continue
            got = np.load(Path(work) / f"{name}.ort.npy")
            diff = float(np.abs(got - expected[name]).max())
            clips = len(expected[name])
            check.add(
                "onnxruntime",
                name,
                f"CUDA provider (ORT {result['version']})",
                f"{clips / result['seconds']:.1f} clips/s, max|ORT-torch| {diff:.1e} "
                f"(export {exported[name]:.0f} s)",
                "ok" if diff <= 1e-2 else "FAIL",
            )


def check_clustering(check: Check) -> None:
    from export._kernels import (
        compile_aot_kernel,
        driver_ptx_isa,
        fused_cluster_ids,
        fused_cluster_means,
        temporal_cluster_cuda,
    )
    from models.clustering import assign_clusters, hamming_distances, temporal_cluster

    reason = check.gpu_reason()
    if importlib.util.find_spec("triton") is None:
        check.add(
            "clustering", "-", "Triton kernels", "skipped: triton not installed", "unavailable"
        )
        return
    kernel = None
    with check.guarded("clustering", "-", "AOT PTX compile"):
        started = time.perf_counter()
        arch = 90
        if reason is None:
            major, minor = torch.cuda.get_device_capability()
            arch = major * 10 + minor
        kernel = compile_aot_kernel(
            dtype="fp32",
            num_clusters=8,
            method="cumulative",
            max_frames=512,
            arch=arch,
            ptx_isa=driver_ptx_isa(),
        )
        check.add(
            "clustering",
            "-",
            f"AOT PTX compile (sm_{arch})",
            f"{kernel.name}: {len(kernel.ptx)} chars, {kernel.block_threads} threads, "
            f"{kernel.shared} B shared, TMAX {kernel.tmax}, {time.perf_counter() - started:.1f} s",
        )
    if reason is not None:
        check.add(
            "clustering", "-", "fused and JIT kernels vs reference", f"skipped: {reason}", "skipped"
        )
        check.add("clustering", "-", "AOT PTX launched by CuPy", f"skipped: {reason}", "skipped")
        return
    generator = torch.Generator().manual_seed(7)
    shapes = {"tiny layer1": (2, 16, 16, 16), "R18 layer1 at 224": (1, 64, 56, 56)}
    for label, (videos, c, h, w) in shapes.items():
        for method in ("cumulative", "slope", "uniform"):
            if check.out_of_time():
                check.add("clustering", label, method, "skipped: time budget", "skipped")
                continue
            with check.guarded("clustering", label, method):
                worst, same, timings = 0.0, True, []
                for frames in (1, 7, 32, 100):
                    x = torch.relu(torch.randn(videos, frames, c, h, w, generator=generator)) - 0.3
                    if frames >= 7:
                        x[:, 2:4] = x[:, 1:2]  # equal neighbours: zero distances and ties
                    ref_ids = assign_clusters(hamming_distances(x), 8, method)
                    ref = temporal_cluster(x, 8, method)
                    gx = x.cuda()
                    same &= torch.equal(fused_cluster_ids(gx, 8, method).long().cpu(), ref_ids)
                    worst = max(
                        worst, float((fused_cluster_means(gx, 8, method).cpu() - ref).abs().max())
                    )
                    worst = max(
                        worst, float((temporal_cluster_cuda(gx, 8, method).cpu() - ref).abs().max())
                    )
                    fused_s = _timed(partial(fused_cluster_means, gx, 8, method), 5, True)
                    jit_s = _timed(partial(temporal_cluster_cuda, gx, 8, method), 5, True)
                    timings.append(f"T={frames}: {fused_s * 1e6:.0f}/{jit_s * 1e6:.0f} us")
                ok = same and worst <= 1e-5
                check.add(
                    "clustering",
                    label,
                    f"{method}: fused and JIT vs reference",
                    f"ids {'identical' if same else 'DIFFER'}, max|means diff| {worst:.1e}; "
                    f"fused/JIT {', '.join(timings)}",
                    "ok" if ok else "FAIL",
                )
    with check.guarded("clustering", "tiny layer1", "AOT PTX launched by CuPy"):
        if kernel is None:
            check.add("clustering", "-", "AOT PTX launched by CuPy", "skipped: no PTX", "skipped")
            return
        if importlib.util.find_spec("cupy") is None:
            check.add(
                "clustering",
                "-",
                "AOT PTX launched by CuPy",
                "skipped: cupy not installed",
                "unavailable",
            )
            return
        cupy = importlib.import_module("cupy")

        x = torch.randn(3, 40, 16, 16, 16, device="cuda")
        out = torch.empty(3, 8, 16, 16, 16, device="cuda")
        with tempfile.TemporaryDirectory() as work:
            path = Path(work) / "kernel.ptx"
            path.write_text(kernel.ptx)
            function = cupy.RawModule(path=str(path)).get_function(kernel.name)
            function.max_dynamic_shared_size_bytes = kernel.shared
            args = (cupy.asarray(x), np.int32(40), np.int32(16 * 16 * 16), cupy.asarray(out))
            function((3,), (kernel.block_threads,), args, shared_mem=kernel.shared)
            cupy.cuda.get_current_stream().synchronize()
        diff = float((out.cpu() - temporal_cluster(x.cpu(), 8, "cumulative")).abs().max())
        check.add(
            "clustering",
            "tiny layer1",
            "AOT PTX launched by CuPy (TensorRT's contract)",
            f"max|means diff| {diff:.1e}",
            "ok" if diff <= 1e-5 else "FAIL",
        )


def check_tensorrt(check: Check, families: list[str]) -> None:
    reason = check.gpu_reason()
    if importlib.util.find_spec("tensorrt") is None:
        check.add("tensorrt", "-", "engines", "skipped: tensorrt not installed", "unavailable")
        return
    if reason is not None:
        check.add("tensorrt", "-", "engines", f"skipped: {reason}", "skipped")
        return
    from export.onnx import export_onnx
    from export.trt import build_engine
    from export.trt_runtime import TrtEngine
    from models.bundle import write_bundle

    names = [f"{f}_tiny" for f in families if f in ("c3d_vll", "full_video")]
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            for fp16 in (False, True):
                label = "fp16" if fp16 else "fp32"
                if check.out_of_time():
                    check.add("tensorrt", name, label, "skipped: time budget", "skipped")
                    continue
                with check.guarded("tensorrt", name, f"{label} engine (AOT plugin)"):
                    torch.manual_seed(0)
                    spec = get_spec(name)
                    model = create_model(name, num_classes=4)
                    bundle = write_bundle(
                        Path(work) / f"{name}-{label}",
                        model=model,
                        model_name=name,
                        model_kwargs={"num_classes": 4},
                        family=spec.family,
                        labels=list("abcd"),
                        spec=spec,
                    )
                    bundle = export_onnx(bundle, fp16=fp16)
                    started = time.perf_counter()
                    bundle = build_engine(bundle, fp16=fp16, plugin="aot", max_frames=64)
                    build_s = time.perf_counter() - started
                    engine = TrtEngine(bundle)
                    x = _batch(name)[:, :, :64]
                    with torch.inference_mode():
                        want = bundle.build_model()(x)
                    diff = float((engine(x) - want).abs().max())
                    seconds = _timed(partial(engine, x), 5, sync=True)
                    info = engine.describe()
                    check.add(
                        "tensorrt",
                        name,
                        f"{label} engine ({info['plugin'] or 'no plugin'})",
                        f"build {build_s:.0f} s, {len(x) / seconds:.1f} clips/s, "
                        f"max|TRT-torch| {diff:.1e}",
                        "ok" if diff <= (5e-2 if fp16 else 1e-3) else "FAIL",
                    )


# ---------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """The rows as one Markdown table."""
    lines = ["| section | model | check | result | status |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [row.section, row.model, row.check, row.result, row.status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU work: say what is skipped")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget")
    parser.add_argument(
        "--json", default=None, help="also write the rows here (default $OUT/gpu_check.json)"
    )
    args = parser.parse_args(argv)
    check = Check(args.budget_s, args.dry_run)
    variants = _variants(args.families)
    started = time.perf_counter()
    if "env" in args.sections:
        check_env(check)
    if "torch" in args.sections:
        check_torch(check, variants)
    if "onnxruntime" in args.sections:
        check_onnxruntime(check, variants)
    if "clustering" in args.sections:
        check_clustering(check)
    if "tensorrt" in args.sections:
        check_tensorrt(check, args.families)
    elapsed = time.perf_counter() - started
    print(table(check.rows))
    failed = sum(r.status == "FAIL" for r in check.rows)
    print(f"\n{len(check.rows)} rows, {failed} failed, {elapsed:.0f} s")
    target = args.json or (
        str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else None
    )
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "elapsed_s": round(elapsed, 1),
            "dry_run": args.dry_run,
            "rows": [asdict(r) for r in check.rows],
        }
        Path(target).write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
