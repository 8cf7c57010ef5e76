"""The HTTP service end to end on two tiny real bundles (c3d_vll and ms3d, one epoch each on a
generated Move4Digits, exported to ONNX): every route, equality with ``training.evaluate``,
torch vs ONNX Runtime, bad uploads, the streaming byte cap, backpressure, timeouts, class
enrolment across restarts, and the real server in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from media import write_audio_only, write_video

from models.bundle import REPOSITORY_FILE, add_bundle_file, load_bundle
from models.repository import Repository
from service import Settings, create_app
from training.datasets import load_dataset
from training.evaluate import evaluate_videos
from training.run import main as train_main
from training.synth import generate

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
C3D, MS3D = "c3d_vll-m4d", "ms3d-m4d"
# Small caps so that over-limit inputs stay tiny; every Move4Digits video is well inside them.
MAX_UPLOAD = 200_000
LIMITS = {
    "max_upload_bytes": MAX_UPLOAD,
    "max_duration_s": 4.0,
    "max_pixels": 320 * 240,
    "max_frames": 200,
}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("svc-data") / "move4digits"
    generate(out, classes="4", per_class=4, seed=5, progress=False)
    return out


@pytest.fixture(scope="session")
def master_store(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> Path:
    """Two trained bundles with model.onnx; tests that edit bundles work on a copy."""
    from export.onnx import export_onnx

    store = tmp_path_factory.mktemp("svc-store")
    common = [
        "--data",
        str(dataset),
        "--out",
        str(store),
        "--epochs",
        "1",
        "--workers",
        "0",
        "--threads",
        "2",
        "--progress",
        "false",
    ]
    assert train_main(["--family", "c3d_vll", "--name", C3D, *common]) == 0
    assert train_main(["--family", "ms3d", "--name", MS3D, *common]) == 0
    for name in (C3D, MS3D):
        (store / name / "checkpoint.pt").unlink(missing_ok=True)
        export_onnx(store / name)
    return store


@pytest.fixture
def store(master_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(master_store, copy)
    return copy


def _settings(store: Path, uploads: Path, **overrides) -> Settings:
    values: dict[str, Any] = dict(
        store=store,
        admin_token=ADMIN_TOKEN,
        load_in_background=False,
        upload_dir=uploads,
        default_model=C3D,
        compute_threads=2,
        **LIMITS,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def client(master_store: Path, uploads: Path) -> Iterator[TestClient]:
    """The default (auto backend: ONNX Runtime, since the bundles hold model.onnx)."""
    with TestClient(create_app(_settings(master_store, uploads))) as c:
        yield c


@pytest.fixture(scope="module")
def torch_client(master_store: Path, uploads: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(master_store, uploads, backend="torch"))) as c:
        yield c


def _videos(dataset: Path) -> list[tuple[Path, int]]:
    splits = load_dataset(dataset, split=1)
    return [(e.path, e.label) for e in [*splits.test, *splits.train]]


def _post(
    client: TestClient, path: Path | bytes, model: str | None = None, **kwargs
) -> httpx.Response:
    content = path if isinstance(path, bytes) else Path(path).read_bytes()
    data = {"model": model} if model else {}
    return client.post("/recognize", files={"file": ("video.mp4", content)}, data=data, **kwargs)


def _assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


# ----------------------------------------------------------------------------- routes


def test_health_ready_and_models(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == [C3D, MS3D]
    body = client.get("/models").json()
    assert body["default"] == C3D and body["failed"] == {}
    models = {m["name"]: m for m in body["models"]}
    c3d, ms3d = models[C3D], models[MS3D]
    assert c3d["family"] == "c3d_vll" and ms3d["family"] == "ms3d"
    assert c3d["backend"] == ms3d["backend"] == "onnxruntime"
    assert c3d["labels"] == ["move_up", "move_down", "move_left", "move_right"]
    assert c3d["sampler"] == {"name": "consecutive", "clip_len": 16}
    assert c3d["aggregator"] == {"name": "majority_vote"} and c3d["default"]
    assert ms3d["sampler"]["name"] == "pz" and ms3d["enrollable"] and not c3d["enrollable"]
    assert ms3d["gamma"] > 0


def test_openapi_documents_the_contract(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/recognize"]["post"]
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["file"]
    assert set(schema["properties"]) == {"file", "model", "timeline", "window_s"}
    assert {"400", "404", "413", "415", "422", "503"} <= set(post["responses"])
    # the 200 answer is JSON, or NDJSON lines when asked for
    assert {"application/json", "application/x-ndjson"} <= set(post["responses"]["200"]["content"])
    fields = spec["components"]["schemas"]["RecognizeResponse"]["properties"]
    assert {
        "model",
        "family",
        "backend",
        "top5",
        "unknown",
        "frames",
        "clips",
        "duration_s",
        "timing_ms",
        "detail",
        "timeline",  # only answered when asked for
    } == set(fields)
    assert {
        "/models/{name}/classes",
        "/models/{name}/classes/{label}",
        "/healthz",
        "/readyz",
        "/metrics",
        "/models",
    } <= set(spec["paths"])


def test_recognize_answers_the_contract(client: TestClient, dataset: Path) -> None:
    path, _ = _videos(dataset)[0]
    resp = _post(client, path)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {
        "model",
        "family",
        "backend",
        "top5",
        "unknown",
        "frames",
        "clips",
        "duration_s",
        "timing_ms",
        "detail",
    }
    assert body["model"] == C3D and body["family"] == "c3d_vll" and body["backend"] == "onnxruntime"
    # Move4Digits videos: 32 frames at 25 fps -> two 16-frame clips, each one vote.
    assert body["frames"] == 32 and body["clips"] == 2
    assert body["duration_s"] == pytest.approx(32 / 25)
    assert len(body["top5"]) == 4 and body["unknown"] is False
    scores = [t["score"] for t in body["top5"]]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0)
    detail = body["detail"]
    assert detail["aggregator"] == "majority_vote" and len(detail["clip_predictions"]) == 2
    assert sum(detail["votes"].values()) == 2
    assert body["top5"][0]["label"] in detail["votes"]
    timing = body["timing_ms"]
    assert 0 < timing["decode"] < timing["total"] and 0 < timing["infer"] < timing["total"]


def test_ms3d_answer_carries_distances(client: TestClient, dataset: Path) -> None:
    path, _ = _videos(dataset)[0]
    body = _post(client, path, MS3D).json()
    detail = body["detail"]
    assert body["family"] == "ms3d" and detail["aggregator"] == "nearest_centre"
    dist = [d["distance"] for d in detail["distances"]]
    assert dist == sorted(dist) and len(dist) == 4
    # scores are exp(-distance), in the same order
    assert [t["label"] for t in body["top5"]] == [d["label"] for d in detail["distances"]]
    np.testing.assert_allclose(
        [t["score"] for t in body["top5"]], np.exp(-np.array(dist)), rtol=1e-5
    )
    assert body["unknown"] == (dist[0] >= detail["gamma"])


def test_service_equals_training_evaluation(
    torch_client: TestClient, master_store: Path, dataset: Path
) -> None:
    """The same bundle and videos give the ranking, rejection and accuracy evaluation gives."""
    videos = _videos(dataset)
    for name in (C3D, MS3D):
        bundle = load_bundle(master_store / name)
        net = bundle.build_model()
        centres = gamma = None
        if bundle.family == "ms3d":
            repo = Repository.load(bundle.file(REPOSITORY_FILE))
            centres, gamma = repo.centres_tensor(), repo.gamma
        summary, outcomes = evaluate_videos(
            net,
            videos,
            bundle.spec,
            len(bundle.labels),
            batch_size=16,
            centres=centres,
            gamma=gamma,
        )
        hits = 0
        for outcome in outcomes:
            body = _post(torch_client, outcome.path, name).json()
            assert body["backend"] == "torch"
            expected = [bundle.labels[i] for i in outcome.order[:5]]
            assert [t["label"] for t in body["top5"]] == expected, (name, outcome.path)
            assert body["unknown"] == outcome.unknown
            assert body["clips"] == outcome.inputs
            if bundle.family == "ms3d":
                assert body["detail"]["distances"][0]["distance"] == pytest.approx(
                    outcome.nearest, rel=1e-5
                )
            hits += body["top5"][0]["label"] == bundle.labels[outcome.label]
        assert hits / len(outcomes) == pytest.approx(summary["top1"])
    # The figure training.run stored in the bundle is the service's figure on its test split.
    c3d = load_bundle(master_store / C3D)
    test = load_dataset(dataset, split=1).test
    hits = sum(
        _post(torch_client, e.path, C3D).json()["top5"][0]["label"] == c3d.labels[e.label]
        for e in test
    )
    assert hits / len(test) == pytest.approx(c3d.manifest["metrics"]["top1"])


def test_torch_and_onnxruntime_give_the_same_top5(
    client: TestClient, torch_client: TestClient, dataset: Path
) -> None:
    for path, _ in _videos(dataset)[:8]:
        for name in (C3D, MS3D):
            ort = _post(client, path, name).json()
            ref = _post(torch_client, path, name).json()
            assert (ort["backend"], ref["backend"]) == ("onnxruntime", "torch")
            assert [t["label"] for t in ort["top5"]] == [t["label"] for t in ref["top5"]]
            np.testing.assert_allclose(
                [t["score"] for t in ort["top5"]], [t["score"] for t in ref["top5"]], atol=1e-4
            )
            assert ort["unknown"] == ref["unknown"]


def test_request_id_is_echoed_or_generated(
    client: TestClient, dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = _videos(dataset)[0]
    with caplog.at_level("INFO", logger="service.access"):
        resp = _post(client, path, headers={"X-Request-ID": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    assert any(
        "abc-123" in r.getMessage() and "/recognize" in r.getMessage() for r in caplog.records
    )
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32 and int(generated, 16) >= 0
    # Not a plain token: replaced, never echoed into headers or logs.
    odd = client.get("/healthz", headers={"X-Request-ID": "a b\tc"}).headers["x-request-id"]
    assert odd != "a b\tc" and len(odd) == 32
    # Errors carry it too.
    assert client.get("/nowhere", headers={"X-Request-ID": "e-1"}).headers["x-request-id"] == "e-1"


def test_metrics_count_requests_stages_and_models(client: TestClient, dataset: Path) -> None:
    path, _ = _videos(dataset)[0]
    assert _post(client, path).status_code == 200
    text = client.get("/metrics").text

    def value(line_start: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(line_start)]
        assert lines, line_start
        return float(lines[0].rsplit(" ", 1)[1])

    assert value('actrec_requests_total{method="POST",route="/recognize",status="200"}') >= 1
    assert value(f'actrec_decode_seconds_count{{model="{C3D}"}}') >= 1
    assert value(f'actrec_inference_seconds_count{{backend="onnxruntime",model="{C3D}"}}') >= 1
    assert value('actrec_request_seconds_count{route="/recognize"}') >= 1
    assert value("actrec_models_loaded") == 2
    assert value("actrec_queue_depth") == 0
    assert value(f'actrec_model_info{{backend="onnxruntime",family="ms3d",model="{MS3D}"}}') == 1
    # Unknown paths share one label, so scanners cannot blow up the series count.
    client.get("/scan/a1")
    client.get("/scan/b2")
    text = client.get("/metrics").text
    assert value('actrec_requests_total{method="GET",route="<unmatched>",status="404"}') >= 2
    assert "/scan/" not in text


# ----------------------------------------------------------------------------- bad input


def _png(width: int = 8, height: int = 8) -> bytes:
    """A valid RGB PNG, written by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _bad_inputs(tmp: Path) -> dict[str, tuple[bytes | None, dict, int, str]]:
    """name -> (file bytes or None for no file field, extra form data, status, code)."""
    good = tmp / "good.mp4"
    write_video(good, n=20)
    audio = tmp / "audio.m4a"
    write_audio_only(audio)
    long = tmp / "long.mp4"
    write_video(long, n=125, fps=25)  # 5 s, cap 4 s
    large = tmp / "large.mp4"
    write_video(large, n=4, height=480, width=640)  # 307200 px, cap 76800
    data = good.read_bytes()
    return {
        "zero_bytes": (b"", {}, 400, "empty_video"),
        "random_bytes": (np.random.default_rng(0).bytes(20_000), {}, 400, "not_a_video"),
        "truncated_mp4": (data[: len(data) // 2], {}, 400, "truncated_video"),
        "png": (_png(), {}, 400, "not_a_video"),
        "audio_only": (audio.read_bytes(), {}, 415, "no_video_stream"),
        "over_byte_cap": (b"\0" * (MAX_UPLOAD + 1), {}, 413, "upload_too_large"),
        "over_duration_cap": (long.read_bytes(), {}, 413, "video_too_large"),
        "over_resolution_cap": (large.read_bytes(), {}, 413, "video_too_large"),
        "missing_file_field": (None, {"model": C3D}, 422, "missing_file"),
        "unknown_model": (data, {"model": "no-such-model"}, 404, "unknown_model"),
    }


BAD = [
    "zero_bytes",
    "random_bytes",
    "truncated_mp4",
    "png",
    "audio_only",
    "over_byte_cap",
    "over_duration_cap",
    "over_resolution_cap",
    "missing_file_field",
    "unknown_model",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_upload_is_refused_cleanly(
    client: TestClient, uploads: Path, tmp_path: Path, dataset: Path, case: str
) -> None:
    content, data, status, code = _bad_inputs(tmp_path)[case]
    if content is None:
        # multipart with only a text field: python-multipart needs a file part to force it
        resp = client.post("/recognize", data=data, files={"other": ("x.txt", b"x")})
    else:
        resp = client.post(
            "/recognize", files={"file": ("upload.mp4", content, "video/mp4")}, data=data
        )
    _assert_error(resp, status, code)
    assert list(uploads.iterdir()) == []
    assert client.get("/healthz").status_code == 200
    assert _post(client, _videos(dataset)[0][0]).status_code == 200


def test_not_multipart_is_422(client: TestClient) -> None:
    _assert_error(
        client.post("/recognize", content=b"raw", headers={"content-type": "video/mp4"}),
        422,
        "invalid_parameters",
    )
    _assert_error(client.post("/recognize", json={"file": "x"}), 422, "invalid_parameters")


def test_unknown_path_and_method_are_json(client: TestClient) -> None:
    _assert_error(client.get("/nowhere"), 404, "not_found")
    _assert_error(client.get("/recognize"), 405, "method_not_allowed")


def _multipart(boundary: str, file_bytes: bytes, model: str | None = None) -> bytes:
    parts = []
    if model:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
            f"{model}\r\n".encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="v.mp4"\r\nContent-Type: video/mp4\r\n\r\n'.encode()
        + file_bytes
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def _asgi(
    app, body_chunks: list[bytes], headers: dict[str, str], *, disconnect_after: int | None = None
) -> tuple[int, dict, int]:
    """Drive the app's ASGI interface directly; returns (status, JSON body, chunks consumed)."""
    consumed = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal consumed
        limit = len(body_chunks) if disconnect_after is None else disconnect_after
        if consumed < limit:
            consumed += 1
            return {
                "type": "http.request",
                "body": body_chunks[consumed - 1],
                "more_body": consumed < len(body_chunks),
            }
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/recognize",
        "raw_path": b"/recognize",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body or b"{}"), consumed


def test_byte_cap_stops_reading_the_body(client: TestClient, uploads: Path) -> None:
    cap = MAX_UPLOAD
    boundary = "xYzBoundary"
    body = _multipart(boundary, b"\1" * (cap * 10))
    chunk = 16 * 1024
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    ctype = {"content-type": f"multipart/form-data; boundary={boundary}"}
    status, payload, consumed = _asgi(client.app, chunks, ctype)
    assert status == 413 and payload["error"]["code"] == "upload_too_large"
    # stopped one chunk past the cap, far before the end of the 2 MB body
    assert consumed * chunk <= cap + 2 * chunk < len(body) // 5
    # a declared Content-Length over the cap is refused before any byte is read
    status, payload, consumed = _asgi(
        client.app, chunks, {**ctype, "content-length": str(len(body))}
    )
    assert status == 413 and consumed == 0
    assert list(uploads.iterdir()) == []


def test_client_disconnect_mid_upload_leaves_no_file(
    client: TestClient, uploads: Path, dataset: Path
) -> None:
    boundary = "b0und"
    body = _multipart(boundary, _videos(dataset)[0][0].read_bytes())
    chunks = [body[i : i + 1024] for i in range(0, len(body), 1024)]
    status, payload, consumed = _asgi(
        client.app,
        chunks,
        {"content-type": f"multipart/form-data; boundary={boundary}"},
        disconnect_after=3,
    )
    assert consumed == 3 and status == 400 and payload["error"]["code"] == "client_disconnected"
    assert list(uploads.iterdir()) == []


# ----------------------------------------------------------------------------- load


class _Gate:
    """Hold a model's network calls until opened."""

    def __init__(self, model) -> None:
        self.model = model
        self.original = model.backend.forward
        self.open = threading.Event()
        self.entered = threading.Event()

        def forward(x):
            self.entered.set()
            self.open.wait(30)
            return self.original(x)

        model.backend.forward = forward

    def restore(self) -> None:
        self.open.set()
        self.model.backend.forward = self.original


def test_full_queue_answers_503_with_retry_after(
    master_store: Path, tmp_path: Path, dataset: Path
) -> None:
    app = create_app(_settings(master_store, tmp_path, queue_size=2, retry_after_s=7, warmup=False))
    video = _videos(dataset)[0][0]
    with TestClient(app) as c:
        state = app.state.service
        gate = _Gate(state.store.models[C3D])
        results: list[int] = []
        workers = [
            threading.Thread(target=lambda: results.append(_post(c, video).status_code))
            for _ in range(2)
        ]
        try:
            for w in workers:
                w.start()
            deadline = time.monotonic() + 20
            while state.queue.depth < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert state.queue.depth == 2
            for _ in range(3):
                resp = _post(c, video)
                _assert_error(resp, 503, "overloaded")
                assert resp.headers["retry-after"] == "7"
        finally:
            gate.restore()
            for w in workers:
                w.join(30)
        assert results == [200, 200]
        assert state.queue.depth == 0
        assert _post(c, video).status_code == 200
        assert 'actrec_rejected_total{reason="queue_full"} 3.0' in c.get("/metrics").text
    assert list(tmp_path.glob("actrec-upload-*")) == []


def test_request_timeout_answers_503_and_frees_the_slot(
    master_store: Path, tmp_path: Path, dataset: Path
) -> None:
    app = create_app(_settings(master_store, tmp_path, request_timeout_s=0.5, warmup=False))
    video = _videos(dataset)[0][0]
    with TestClient(app) as c:
        state = app.state.service
        gate = _Gate(state.store.models[C3D])
        try:
            _assert_error(_post(c, video), 503, "timeout")
            assert gate.entered.is_set()
            # the job still holds its place until its thread is done
            assert state.queue.depth == 1
        finally:
            gate.restore()
        deadline = time.monotonic() + 20
        while state.queue.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.queue.depth == 0
        assert _post(c, video).status_code == 200
    assert list(tmp_path.glob("actrec-upload-*")) == []


def test_readyz_is_503_until_models_are_loaded(
    master_store: Path, tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.store import ModelStore

    release = threading.Event()
    original = ModelStore.load_all

    def slow_load(self) -> None:
        release.wait(30)
        original(self)

    monkeypatch.setattr(ModelStore, "load_all", slow_load)
    app = create_app(_settings(master_store, tmp_path, load_in_background=True))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        resp = c.get("/readyz")
        _assert_error(resp, 503, "not_ready")
        assert "retry-after" in resp.headers
        _assert_error(_post(c, _videos(dataset)[0][0]), 503, "not_ready")
        release.set()
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/readyz").status_code == 200
        assert _post(c, _videos(dataset)[0][0]).status_code == 200


def test_a_bundle_failing_its_checksum_is_refused_whole(store: Path, tmp_path: Path) -> None:
    weights = store / MS3D / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with TestClient(create_app(_settings(store, tmp_path))) as c:
        body = c.get("/models").json()
        assert [m["name"] for m in body["models"]] == [C3D]
        assert "sha256" in body["failed"][MS3D]
        assert c.get("/readyz").status_code == 200  # the default model is fine
        _assert_error(
            c.post("/recognize", files={"file": ("v", b"x")}, data={"model": MS3D}),
            404,
            "unknown_model",
        )


# ----------------------------------------------------------------------------- enrolment


def _enrol(c: TestClient, label: str, *videos: Path, model: str = MS3D) -> httpx.Response:
    files = [("file", (p.name, p.read_bytes(), "video/mp4")) for p in videos]
    return c.post(f"/models/{model}/classes", data={"label": label}, files=files, headers=ADMIN)


def test_enrolment_adds_recognises_persists_and_deletes(store: Path, tmp_path: Path) -> None:
    uploads = tmp_path / "up"
    wave = tmp_path / "wave.mp4"
    write_video(wave, n=40, height=64, width=64)
    with TestClient(create_app(_settings(store, uploads))) as c:
        before = c.get(f"/models/{MS3D}/classes").json()
        assert [k["label"] for k in before["classes"]] == [
            "move_up",
            "move_down",
            "move_left",
            "move_right",
        ]
        walks = load_bundle(store / MS3D).spec.sampler_args()["walks"]
        resp = _enrol(c, "wave", wave)
        assert resp.status_code == 201, resp.text
        body = resp.json()
        assert body["created"] and body["videos"] == 1 and body["label"] == "wave"
        assert {"label": "wave", "count": walks} in body["classes"]
        answer = _post(c, wave, MS3D).json()
        assert answer["top5"][0]["label"] == "wave" and not answer["unknown"]
        # the same video again refines (here: keeps) the centre and doubles its count
        resp = _enrol(c, "wave", wave)
        assert resp.status_code == 200 and not resp.json()["created"]
        assert {"label": "wave", "count": 2 * walks} in resp.json()["classes"]
        assert "wave" in c.get("/models").json()["models"][1]["labels"]
    assert list(uploads.iterdir()) == []

    # a restart reads the edited repository (its checksum was recorded in the manifest)
    with TestClient(create_app(_settings(store, uploads))) as c:
        classes = c.get(f"/models/{MS3D}/classes").json()["classes"]
        assert {"label": "wave", "count": 2 * walks} in classes
        assert _post(c, wave, MS3D).json()["top5"][0]["label"] == "wave"
        resp = c.delete(f"/models/{MS3D}/classes/wave", headers=ADMIN)
        assert resp.status_code == 200
        assert "wave" not in [k["label"] for k in resp.json()["classes"]]
        _assert_error(c.delete(f"/models/{MS3D}/classes/wave", headers=ADMIN), 404, "unknown_class")
    with TestClient(create_app(_settings(store, uploads))) as c:
        assert len(c.get(f"/models/{MS3D}/classes").json()["classes"]) == 4


def test_concurrent_enrolments_are_serialised(store: Path, tmp_path: Path) -> None:
    videos = []
    for i in range(3):
        videos.append(tmp_path / f"v{i}.mp4")
        write_video(videos[-1], n=30 + 5 * i, height=64, width=64)
    with TestClient(create_app(_settings(store, tmp_path / "up", queue_size=4))) as c:
        codes: list[int] = []
        threads = [
            threading.Thread(
                target=lambda i=i: codes.append(_enrol(c, f"new{i}", videos[i]).status_code)
            )
            for i in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(codes) == [201, 201, 201]
        labels = [k["label"] for k in c.get(f"/models/{MS3D}/classes").json()["classes"]]
    # no lost update: every class is in the file a restart reads
    assert set(Repository.load(store / MS3D / REPOSITORY_FILE).names) == set(labels)
    assert {"new0", "new1", "new2"} <= set(labels) and len(labels) == 7


def test_enrolment_errors(store: Path, tmp_path: Path, dataset: Path) -> None:
    video = _videos(dataset)[0][0]
    with TestClient(create_app(_settings(store, tmp_path))) as c:
        _assert_error(_enrol(c, "x", video, model=C3D), 404, "no_repository")
        _assert_error(c.get(f"/models/{C3D}/classes"), 404, "no_repository")
        _assert_error(c.get("/models/nope/classes"), 404, "unknown_model")
        _assert_error(_enrol(c, "a/b", video), 422, "invalid_label")
        _assert_error(_enrol(c, "", video), 422, "invalid_label")
        _assert_error(
            c.post(
                f"/models/{MS3D}/classes",
                data={"label": "x"},
                files={"other": ("a", b"a")},
                headers=ADMIN,
            ),
            422,
            "missing_file",
        )
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"junk" * 100)
        _assert_error(_enrol(c, "x", video, junk), 400, "not_a_video")
        assert "x" not in [k["label"] for k in c.get(f"/models/{MS3D}/classes").json()["classes"]]
        for label in ["move_up", "move_down", "move_left"]:
            assert c.delete(f"/models/{MS3D}/classes/{label}", headers=ADMIN).status_code == 200
        _assert_error(
            c.delete(f"/models/{MS3D}/classes/move_right", headers=ADMIN), 409, "last_class"
        )
        assert [k["label"] for k in c.get(f"/models/{MS3D}/classes").json()["classes"]] == [
            "move_right"
        ]
    assert list(tmp_path.glob("actrec-upload-*")) == []


def test_unknown_beyond_gamma(store: Path, tmp_path: Path, dataset: Path) -> None:
    path = store / MS3D / REPOSITORY_FILE
    repo = Repository.load(path)
    repo.gamma = 1e-6  # every video is farther than this from every centre
    repo.save(path)
    add_bundle_file(load_bundle(store / MS3D, verify=False), REPOSITORY_FILE)
    with TestClient(create_app(_settings(store, tmp_path))) as c:
        body = _post(c, _videos(dataset)[0][0], MS3D).json()
        assert body["unknown"] is True and body["detail"]["gamma"] == pytest.approx(1e-6)
        assert len(body["top5"]) == 4  # the nearest classes are still reported


# ----------------------------------------------------------------------------- real server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_server_over_loopback(store: Path, tmp_path: Path, dataset: Path) -> None:
    port = _free_port()
    uploads = tmp_path / "up"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ACTREC_UPLOAD_DIR": str(uploads),
        "ACTREC_COMPUTE_THREADS": "1",
        "ACTREC_MAX_UPLOAD_BYTES": "100000",
    }
    cmd = [
        sys.executable,
        "-m",
        "service",
        "--store",
        str(store),
        "--port",
        str(port),
        "--default-model",
        MS3D,
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200, "server did not become ready"
        video = _videos(dataset)[0][0]
        with httpx.Client(base_url=base, timeout=30) as http:
            resp = http.post(
                "/recognize",
                files={"file": ("v.mp4", video.read_bytes())},
                headers={"X-Request-ID": "loopback-1"},
            )
            assert resp.status_code == 200 and resp.headers["x-request-id"] == "loopback-1"
            assert resp.json()["model"] == MS3D and resp.json()["backend"] == "onnxruntime"
            bad = http.post("/recognize", files={"file": ("v.mp4", b"not a video")})
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_a_video"
            big = http.post("/recognize", files={"file": ("v.mp4", b"\0" * 300_000)})
            assert big.status_code == 413
            assert http.get("/healthz").json() == {"status": "ok"}
            assert "actrec_requests_total" in http.get("/metrics").text
        assert list(uploads.iterdir()) == []
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "loopback-1 POST /recognize 200" in out


# ----------------------------------------------------------------------------- quick start


@pytest.mark.slow
def test_quickstart_prepares_once_then_only_serves(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import quickstart

    store = tmp_path / "store"
    train = [
        "--epochs",
        "1",
        "--workers",
        "0",
        "--threads",
        "2",
        "--progress",
        "false",
        "--limit-train",
        "4",
        "--limit-test",
        "2",
    ]
    (bundle,) = quickstart.prepare(
        dataset, store, families=["c3d_vll"], per_class=4, train_args=train
    )
    assert bundle == store / "c3d_vll-move4digits"
    loaded = load_bundle(bundle)
    assert loaded.family == "c3d_vll" and loaded.has("model.onnx")
    # the two stages of the demo recipe: classic look first, then fine-tuned on the varied look
    first = tmp_path / "store-classic" / "c3d_vll-move4digits"
    assert load_bundle(first).manifest["config"]["data"] == str(dataset)
    assert loaded.manifest["config"]["data"] == str(quickstart.varied_data(dataset))
    assert Path(loaded.manifest["training"]["init_from"]["bundle"]) == first
    stamp = (bundle / "weights.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError(f"retrained although the bundle exists: {args}")

    monkeypatch.setattr(quickstart.subprocess, "run", no_training)
    assert quickstart.prepare(dataset, store, families=["c3d_vll"]) == [bundle]
    assert (bundle / "weights.safetensors").stat().st_mtime_ns == stamp
    assert quickstart._sample_video(dataset).is_file()
