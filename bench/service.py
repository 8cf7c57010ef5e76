"""Service load figures: the real server on loopback against the same pipeline in-process.

Run ``python bench/service.py`` (not a timed test). It

1. makes a ``c3d_vll`` bundle (the demo variant ``c3d_vll_tiny`` by default, freshly
   initialised: the figures measure serving, not accuracy) and exports it to ONNX, unless
   ``--store``/``--model`` name an existing one; writes a 10 s 320x240 25 fps H.264 video;
2. starts ``python -m service`` on a free loopback port with the ONNX Runtime CPU backend;
3. overhead: alternates one in-process call (decode + ``models.pipeline.predict_frames`` on an
   ONNX Runtime session with the same threads) with one ``POST /recognize`` at concurrency 1,
   and reports median HTTP latency / median in-process latency (target <= 1.15);
4. load: requests/s and p50/p99 latency at concurrency 1, 4 and 8;
5. memory: the server's RSS before and after 300 more requests (target: growth < 50 MB);
6. batching across requests: requests/s at concurrency 8 of a second server with batching off
   (``max_batch_delay_ms`` 0) against the first (batching on, ``--batch-delay-ms``), as a
   ratio measured in the same run.

Every phase is bounded in requests and seconds. The host may be shared with other jobs:
figures from a busy machine are noisy, so the script also prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_reference_video(
    path: Path, *, seconds: float = 10.0, fps: int = 25, width: int = 320, height: int = 240
) -> Path:
    """A moving square over a drifting gradient, H.264 in MP4."""
    import av

    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(n):
            img = np.empty((height, width, 3), dtype=np.uint8)
            img[..., 0] = (xx + 2 * i) % 256
            img[..., 1] = (yy + i) % 256
            img[..., 2] = 80
            y, x = (3 * i) % (height - 40), (5 * i) % (width - 40)
            img[y : y + 40, x : x + 40] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_bundle(store: Path, arch: str) -> str:
    """A freshly initialised ``arch`` bundle with ``model.onnx``; returns its name."""
    import torch

    from export.onnx import export_onnx
    from models import create_model, get_spec
    from models.bundle import write_bundle

    torch.manual_seed(0)
    labels = [f"class_{i}" for i in range(10)]
    name = f"{arch}-bench"
    model = create_model(arch, num_classes=len(labels)).eval()
    write_bundle(
        store / name,
        model=model,
        model_name=arch,
        model_kwargs={"num_classes": 10},
        family="c3d_vll",
        labels=labels,
        spec=get_spec(arch),
    )
    export_onnx(store / name)
    return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Server:
    """``python -m service`` in a subprocess, logging to a file."""

    def __init__(
        self, store: Path, model: str, threads: int, log: Path, batch_delay_ms: float = 5.0
    ) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "ACTREC_BACKEND": "onnxruntime",
            "ACTREC_DEVICE": "cpu",
            "ACTREC_COMPUTE_THREADS": str(threads),
            "ACTREC_QUEUE_SIZE": "16",
            "ACTREC_LOG_LEVEL": "warning",
            "ACTREC_MAX_DURATION_S": "60",
            "OMP_NUM_THREADS": str(threads),
            "ACTREC_MAX_BATCH_DELAY_MS": str(batch_delay_ms),
        }
        self._log = open(log, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "--store",
                str(store),
                "--port",
                str(self.port),
                "--default-model",
                model,
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _post(client, payload: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    resp = client.post("/recognize", files={"file": ("video.mp4", payload, "video/mp4")})
    return resp.status_code, time.perf_counter() - started


def load_level(base: str, payload: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    """``requests`` POSTs from ``concurrency`` threads, stopping early after ``seconds``."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + seconds

    def worker() -> None:
        nonlocal issued
        with httpx.Client(base_url=base, timeout=120) as client:
            while True:
                with lock:
                    if issued >= requests or time.monotonic() > deadline:
                        return
                    issued += 1
                status, latency = _post(client, payload)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append(latency)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": sum(statuses.values()),
        "ok": len(latencies),
        "statuses": statuses,
        "wall_s": wall,
        "req_per_s": len(latencies) / wall if wall else float("nan"),
        "p50_ms": 1000 * _percentile(latencies, 50),
        "p99_ms": 1000 * _percentile(latencies, 99),
    }


def overhead(
    base: str, video: Path, bundle_dir: Path, threads: int, pairs: int, seconds: float
) -> dict:
    """Alternate in-process and HTTP calls on the same video; medians and their ratio."""
    import httpx
    import torch

    from models.bundle import load_bundle
    from models.pipeline import decode_for, predict_frames
    from service.backends import load_backend

    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_dir)
    backend = load_backend(bundle, "onnxruntime", device="cpu", threads=threads)
    defaults = bundle.spec
    payload = video.read_bytes()

    def in_process() -> float:
        started = time.perf_counter()
        frames, _ = decode_for(video, defaults, threads=2)
        predict_frames(backend.forward, frames, defaults, batch_size=16)
        return time.perf_counter() - started

    local, remote = [], []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=120) as client:
        in_process()
        _post(client, payload)  # warm both sides
        for _ in range(pairs):
            if time.monotonic() > deadline:
                break
            local.append(in_process())
            status, latency = _post(client, payload)
            if status == 200:
                remote.append(latency)
    med_local, med_remote = statistics.median(local), statistics.median(remote)
    return {
        "pairs": len(local),
        "in_process_p50_ms": 1000 * med_local,
        "http_p50_ms": 1000 * med_remote,
        "ratio": med_remote / med_local,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="existing store (default: a temp one)")
    parser.add_argument("--model", help="bundle name in --store")
    parser.add_argument("--arch", default="c3d_vll_tiny", help="c3d_vll variant to build")
    parser.add_argument("--threads", type=int, default=2, help="inference threads, both sides")
    parser.add_argument("--requests", type=int, default=40, help="requests per concurrency level")
    parser.add_argument("--level-seconds", type=float, default=90.0)
    parser.add_argument("--pairs", type=int, default=20, help="in-process/HTTP pairs")
    parser.add_argument("--rss-requests", type=int, default=300)
    parser.add_argument("--rss-seconds", type=float, default=240.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--batch-delay-ms", type=float, default=5.0, help="the server's max_batch_delay_ms"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="actrec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        store, model = args.store, args.model
        if store is None or model is None:
            store = tmp / "store"
            model = make_bundle(store, args.arch)
        video = write_reference_video(tmp / "reference_10s_320x240.mp4")
        payload = video.read_bytes()
        server = Server(store, model, args.threads, tmp / "server.log", args.batch_delay_ms)
        figures: dict = {
            "model": model,
            "video": "10 s 320x240 25 fps H.264",
            "video_bytes": len(payload),
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
        }
        try:
            server.wait_ready()
            figures["rss_ready_mb"] = _rss_mb(server.proc.pid)
            figures["overhead"] = overhead(
                server.base, video, store / model, args.threads, args.pairs, args.level_seconds
            )
            figures["load"] = [
                load_level(server.base, payload, c, args.requests, args.level_seconds)
                for c in (1, 4, 8)
            ]
            before = _rss_mb(server.proc.pid)
            rss_run = load_level(server.base, payload, 4, args.rss_requests, args.rss_seconds)
            after = _rss_mb(server.proc.pid)
            figures["rss"] = {
                "requests": rss_run["requests"],
                "before_mb": before,
                "after_mb": after,
                "growth_mb": after - before,
            }
        finally:
            server.stop()
        unbatched = Server(store, model, args.threads, tmp / "server-unbatched.log", 0.0)
        try:
            unbatched.wait_ready()
            off = load_level(unbatched.base, payload, 8, args.requests, args.level_seconds)
        finally:
            unbatched.stop()
        on = figures["load"][-1]
        figures["batching"] = {
            "delay_ms": args.batch_delay_ms,
            "on_req_per_s": on["req_per_s"],
            "off_req_per_s": off["req_per_s"],
            "ratio": on["req_per_s"] / off["req_per_s"],
            "off_p50_ms": off["p50_ms"],
        }
        figures["loadavg_end"] = os.getloadavg()

    o = figures["overhead"]
    print(
        f"model {model} (ONNX Runtime CPU, {args.threads} threads), {figures['video']}, "
        f"{figures['cpus']} CPUs, load average at start {figures['loadavg_start'][0]:.1f}"
    )
    print(
        f"overhead: HTTP p50 {o['http_p50_ms']:.1f} ms / in-process p50 "
        f"{o['in_process_p50_ms']:.1f} ms = {o['ratio']:.3f}x over {o['pairs']} pairs"
    )
    print("concurrency  requests  req/s   p50 ms   p99 ms  statuses")
    for row in figures["load"]:
        print(
            f"{row['concurrency']:>11}  {row['requests']:>8}  {row['req_per_s']:5.2f}  "
            f"{row['p50_ms']:7.1f}  {row['p99_ms']:7.1f}  {row['statuses']}"
        )
    r = figures["rss"]
    print(
        f"RSS: {r['before_mb']:.1f} MB before, {r['after_mb']:.1f} MB after {r['requests']} "
        f"requests: growth {r['growth_mb']:+.1f} MB (ready: {figures['rss_ready_mb']:.1f} MB)"
    )
    b = figures["batching"]
    print(
        f"batching across requests at concurrency 8: {b['on_req_per_s']:.2f} req/s on "
        f"({b['delay_ms']:g} ms) / {b['off_req_per_s']:.2f} off = {b['ratio']:.2f}x"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
