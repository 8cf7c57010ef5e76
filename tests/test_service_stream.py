"""Long videos through the service: the streamed recognition path (models.stream), the
timeline, NDJSON streamed answers (in process, through uvicorn in a thread, and through the
real server in a subprocess), client disconnects, timeouts that stop the job, and videos
whose tail is damaged. The shipped demo bundles (copied into a temp store) answer."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from media import frame_pattern, write_video

from models.bundle import ONNX_EARLY_FILE, ONNX_LATE_FILE, REPOSITORY_FILE, load_bundle
from models.repository import Repository
from models.stream import TorchStages, recognize_video, stages_for
from service import Settings, create_app
from service.jobs import decode_limits
from service.quickstart import DEMO_BUNDLES

ROOT = Path(__file__).resolve().parents[1]
C3D, LSTM, MS3D, FULL = (
    f"{f}-move4digits" for f in ("c3d_vll", "attention_lstm", "ms3d", "full_video")
)
FAMILIES = [C3D, LSTM, MS3D, FULL]
NDJSON = "application/x-ndjson"
FPS = 25
LONG_FRAMES = 750  # 30 s: 46 c3d clips, 3 ms3d/full_video windows of 10 s
BATCH = 4  # clips per network call: several calls, so segments come out as the video is read


# ----------------------------------------------------------------------------- media


def _write_faststart(path: Path, n: int, size: int = 64) -> None:
    """H.264 in MP4 with the index (moov) first, as streaming-friendly MP4s are written: a
    file damaged past its start still probes, and fails only where the damage is."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        stream = c.add_stream("libx264", rate=Fraction(FPS))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        for img in frame_pattern(n, size, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("long-videos")
    out = {name: root / f"{name}.mp4" for name in ("long", "short", "faststart")}
    write_video(out["long"], n=LONG_FRAMES, height=64, width=64, fps=FPS)
    write_video(out["short"], n=40, height=64, width=64, fps=FPS)
    _write_faststart(out["faststart"], LONG_FRAMES)
    data = out["faststart"].read_bytes()
    cut = int(len(data) * 0.45)
    # Its second half overwritten with garbage: decodes ~250 frames, then fails.
    out["garbage_tail"] = root / "garbage_tail.mp4"
    out["garbage_tail"].write_bytes(data[:cut] + np.random.default_rng(0).bytes(len(data) - cut))
    # Cut short with its index first: probes, decodes the first part, then ends early.
    out["cut_tail"] = root / "cut_tail.mp4"
    out["cut_tail"].write_bytes(data[:cut])
    # Cut short with its index last: no index, so not even the probe passes.
    whole = out["long"].read_bytes()
    out["no_index"] = root / "no_index.mp4"
    out["no_index"].write_bytes(whole[: len(whole) // 2])
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo bundles (small, with model.onnx), copied: tests must not edit the tree."""
    root = tmp_path_factory.mktemp("demo-store")
    for name in FAMILIES:
        shutil.copytree(DEMO_BUNDLES / name, root / name)
    return root


def _settings(store: Path, uploads: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        store=store,
        admin_token="stream-admin",
        load_in_background=False,
        upload_dir=uploads,
        default_model=C3D,
        compute_threads=2,
        batch_size=BATCH,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stream-uploads")


@pytest.fixture(scope="module")
def client(store: Path, uploads: Path) -> Iterator[TestClient]:
    """Auto backend: ONNX Runtime (the demo bundles hold model.onnx)."""
    with TestClient(create_app(_settings(store, uploads))) as c:
        yield c


@pytest.fixture(scope="module")
def torch_client(store: Path, uploads: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(store, uploads, backend="torch"))) as c:
        yield c


def _post(
    client: TestClient | httpx.Client,
    video: Path | bytes,
    model: str | None = None,
    *,
    stream: bool = False,
    **fields: str,
) -> httpx.Response:
    content = video if isinstance(video, bytes) else video.read_bytes()
    data = dict(fields, **({"model": model} if model else {}))
    headers = {"Accept": NDJSON} if stream else {}
    return client.post("/recognize", files={"file": ("v.mp4", content)}, data=data, headers=headers)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def _without_timing(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "timing_ms"}


def _assert_error(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]


def _no_uploads_left(uploads: Path) -> None:
    assert list(uploads.glob("actrec-upload-*")) == []


def _wait_idle(depth: Callable[[], int], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while depth() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert depth() == 0, "the job kept its ticket"


# ----------------------------------------------------------------------------- timeline


def _assert_covers(timeline: list[dict[str, Any]], duration: float, labels: list[str]) -> None:
    assert timeline, "no segment"
    assert timeline[0]["start_s"] == 0.0
    assert timeline[-1]["end_s"] == pytest.approx(duration)
    for seg, after in zip(timeline, timeline[1:]):
        assert seg["end_s"] == pytest.approx(after["start_s"])  # contiguous, in time order
    for seg in timeline:
        assert set(seg) == {"start_s", "end_s", "top5", "unknown"}
        assert seg["start_s"] < seg["end_s"]
        scores = [t["score"] for t in seg["top5"]]
        assert scores == sorted(scores, reverse=True)
        assert {t["label"] for t in seg["top5"]} <= set(labels)
        assert len(seg["top5"]) == min(5, len(labels))


@pytest.mark.parametrize("name", FAMILIES)
def test_timeline_covers_the_video(client: TestClient, videos: dict[str, Path], name: str) -> None:
    plain = _post(client, videos["long"], name)
    assert plain.status_code == 200, plain.text
    assert "timeline" not in plain.json()  # only when asked: the plain answer is unchanged
    resp = _post(client, videos["long"], name, timeline="true")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    labels = client.get("/models").json()["models"][FAMILIES.index(name)]["labels"]
    _assert_covers(body["timeline"], body["duration_s"], labels)
    assert body["frames"] == LONG_FRAMES and body["duration_s"] == pytest.approx(30.0)
    # The timeline rides along; the answer itself is the plain one.
    assert _without_timing(body) == {**_without_timing(plain.json()), "timeline": body["timeline"]}
    n = len(body["timeline"])
    if name == C3D:
        assert n == body["clips"] == LONG_FRAMES // 16  # one segment per clip
        assert all(
            s["end_s"] - s["start_s"] == pytest.approx(16 / FPS) for s in body["timeline"][:-1]
        )
    elif name == LSTM:
        assert n == body["clips"] == LONG_FRAMES // 29  # 8-frame clips, frame step 4
    else:
        assert n == 3  # 10 s windows
        assert [s["start_s"] for s in body["timeline"]] == pytest.approx([0.0, 10.0, 20.0])
    assert body["unknown"] is False or name == MS3D


def test_window_s_sets_the_windows(client: TestClient, videos: dict[str, Path]) -> None:
    for name in (MS3D, FULL):
        body = _post(client, videos["long"], name, timeline="true", window_s="4").json()
        assert len(body["timeline"]) == math.ceil(30 / 4)
        assert [s["start_s"] for s in body["timeline"]] == pytest.approx(
            [4.0 * i for i in range(8)]
        )
    # clip families: a segment per clip, whatever window_s
    body = _post(client, videos["long"], C3D, timeline="true", window_s="4").json()
    assert len(body["timeline"]) == body["clips"]


def test_ms3d_segments_judge_unknown_by_their_own_distance(
    client: TestClient, store: Path, videos: dict[str, Path]
) -> None:
    gamma = Repository.load(store / MS3D / REPOSITORY_FILE).gamma
    body = _post(client, videos["long"], MS3D, timeline="true", window_s="5").json()
    for seg in body["timeline"]:
        nearest = -math.log(seg["top5"][0]["score"])  # score = exp(-distance)
        if abs(nearest - gamma) > 1e-4:
            assert seg["unknown"] == (nearest >= gamma)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeline", "yes"),
        ("timeline", "1"),
        ("timeline", ""),
        ("window_s", "0"),
        ("window_s", "-2"),
        ("window_s", "abc"),
        ("window_s", "nan"),
        ("window_s", "inf"),
        ("window_s", ""),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_timeline_or_window_is_422(
    client: TestClient, videos: dict[str, Path], uploads: Path, field: str, value: str, stream: bool
) -> None:
    resp = _post(client, videos["short"], MS3D, stream=stream, **{field: value})
    _assert_error(resp, 422, "invalid_parameters")
    assert field in resp.json()["error"]["message"]
    _no_uploads_left(uploads)


# ----------------------------------------------------------------------------- the path


@pytest.mark.parametrize("name", FAMILIES)
def test_the_service_answers_what_recognize_video_answers(
    torch_client: TestClient, store: Path, videos: dict[str, Path], name: str
) -> None:
    """The bundle's spec, centres and gamma, the clip cap and (full_video) the torch stages
    reach the streamed path: the answer and timeline are recognize_video's."""
    app = torch_client.app
    model = app.state.service.store.models[name]  # type: ignore[attr-defined]
    assert isinstance(model.backend.stages, TorchStages) == (name == FULL)
    bundle = load_bundle(store / name)
    judge: dict[str, Any] = {}
    if name == MS3D:
        repo = Repository.load(bundle.file(REPOSITORY_FILE))
        judge = {"centres": repo.centres_tensor(), "gamma": repo.gamma}
    net = bundle.build_model()
    want = recognize_video(
        videos["long"],
        bundle.spec,
        model.backend.forward,
        stages=stages_for(net),
        batch_size=BATCH,
        max_inputs=model.max_inputs,
        timeline=True,
        **judge,
    )
    body = _post(torch_client, videos["long"], name, timeline="true").json()
    assert body["backend"] == "torch" and body["clips"] == want.prediction.inputs
    order = want.prediction.scores.order.tolist()[:5]
    assert [t["label"] for t in body["top5"]] == [model.labels[i] for i in order]
    assert len(body["timeline"]) == len(want.timeline)
    for got, seg in zip(body["timeline"], want.timeline):
        assert (got["start_s"], got["end_s"]) == pytest.approx((seg.start_s, seg.end_s))
        assert got["top5"][0]["label"] == model.labels[seg.scores.label]
        assert got["unknown"] == seg.scores.unknown


def test_onnxruntime_stages_when_the_bundle_ships_them(client: TestClient) -> None:
    import export.onnx

    store = client.app.state.service.store  # type: ignore[attr-defined]
    for name, model in store.models.items():
        ships = model.bundle.has(ONNX_EARLY_FILE) and model.bundle.has(ONNX_LATE_FILE)
        expected = name == FULL and ships and hasattr(export.onnx, "OnnxStages")
        assert (model.backend.stages is not None) == expected, name


@pytest.mark.parametrize("name", FAMILIES)
def test_onnxruntime_and_torch_give_the_same_timeline(
    client: TestClient, torch_client: TestClient, videos: dict[str, Path], name: str
) -> None:
    ort = _post(client, videos["long"], name, timeline="true").json()
    ref = _post(torch_client, videos["long"], name, timeline="true").json()
    assert (ort["backend"], ref["backend"]) == ("onnxruntime", "torch")
    for got, want in [(ort, ref), *zip(ort["timeline"], ref["timeline"])]:
        assert [t["label"] for t in got["top5"]][:1] == [t["label"] for t in want["top5"]][:1]
        np.testing.assert_allclose(
            [t["score"] for t in got["top5"]], [t["score"] for t in want["top5"]], atol=1e-4
        )
        assert got["unknown"] == want["unknown"]
    assert len(ort["timeline"]) == len(ref["timeline"])


def test_every_network_call_runs_on_an_inference_thread(
    store: Path, tmp_path: Path, videos: dict[str, Path]
) -> None:
    app = create_app(_settings(store, tmp_path, backend="torch", warmup=False))
    with TestClient(app) as c:
        threads: set[str] = set()
        for name in (C3D, FULL):
            model = app.state.service.store.models[name]
            original_forward = model.backend.forward

            def forward(x, original=original_forward):
                threads.add(threading.current_thread().name)
                return original(x)

            model.backend.forward = forward
            stages = model.backend.stages
            if stages is not None:
                early, late = stages.early, stages.late

                def on_thread(fn):
                    def call(x):
                        threads.add(threading.current_thread().name)
                        return fn(x)

                    return call

                stages.early, stages.late = on_thread(early), on_thread(late)
            resp = _post(c, videos["long"], name)
            assert resp.status_code == 200, resp.text
            timing = resp.json()["timing_ms"]
            assert 0 < timing["decode"] and 0 < timing["infer"]
            assert timing["decode"] + timing["infer"] <= timing["total"]
        assert threads and all(t.startswith("actrec-infer") for t in threads), threads


def test_enrolment_embeds_through_the_streamed_path(
    store: Path, tmp_path: Path, videos: dict[str, Path]
) -> None:
    local = tmp_path / "store"
    shutil.copytree(store / MS3D, local / MS3D)
    with TestClient(create_app(_settings(local, tmp_path / "up", default_model=MS3D))) as c:
        files = [("file", ("a.mp4", videos["long"].read_bytes()))]
        auth = {"Authorization": "Bearer stream-admin"}
        resp = c.post(f"/models/{MS3D}/classes", data={"label": "long"}, files=files, headers=auth)
        assert resp.status_code == 201, resp.text
        walks = load_bundle(local / MS3D).spec.sampler_args()["walks"]
        assert {"label": "long", "count": walks} in resp.json()["classes"]
        assert _post(c, videos["long"], MS3D).json()["top5"][0]["label"] == "long"
    _no_uploads_left(tmp_path / "up")


# ----------------------------------------------------------------------------- streamed, in process


@pytest.mark.slow
def test_ndjson_answer_in_process(client: TestClient, videos: dict[str, Path]) -> None:
    for name in FAMILIES:
        resp = _post(client, videos["long"], name, stream=True)
        assert resp.status_code == 200 and resp.headers["content-type"] == NDJSON
        lines = _lines(resp.text)
        assert [set(line) for line in lines[:-1]] == [{"segment"}] * (len(lines) - 1)
        assert set(lines[-1]) == {"result"}
        result = lines[-1]["result"]
        # the streamed answer carries the timeline; its segments are the lines
        assert result["timeline"] == [line["segment"] for line in lines[:-1]]
        plain = _post(client, videos["long"], name, timeline="true").json()
        assert _without_timing(result) == _without_timing(plain)


def test_errors_before_the_first_line_are_json(
    client: TestClient, videos: dict[str, Path], uploads: Path
) -> None:
    _assert_error(_post(client, b"not a video" * 50, stream=True), 400, "not_a_video")
    _assert_error(_post(client, videos["no_index"], stream=True), 400, "truncated_video")
    _assert_error(_post(client, videos["short"], "nope", stream=True), 404, "unknown_model")
    resp = client.post("/recognize", files={"other": ("x", b"x")}, headers={"Accept": NDJSON})
    _assert_error(resp, 422, "missing_file")
    _no_uploads_left(uploads)


@pytest.mark.parametrize(
    ("video", "code"), [("garbage_tail", "corrupt_video"), ("cut_tail", "truncated_video")]
)
def test_a_damaged_tail_ends_the_stream_with_an_error_line(
    client: TestClient, videos: dict[str, Path], uploads: Path, video: str, code: str
) -> None:
    resp = _post(client, videos[video], C3D, stream=True)
    assert resp.status_code == 200
    lines = _lines(resp.text)
    assert len(lines) > 1 and all(set(line) == {"segment"} for line in lines[:-1])
    assert set(lines[-1]) == {"error"} and lines[-1]["error"]["code"] == code
    assert lines[-1]["error"]["message"]
    _no_uploads_left(uploads)
    # not streamed, the same video is the plain JSON error
    _assert_error(_post(client, videos[video], C3D), 400, code)
    assert client.app.state.service.queue.depth == 0  # type: ignore[attr-defined]


class _Gate:
    """Count a model's network calls; the ``block``-th one waits until opened."""

    def __init__(self, model: Any, block: int) -> None:
        self.model = model
        self.original = model.backend.forward
        self.calls = 0
        self.open = threading.Event()
        self.waiting = threading.Event()

        def forward(x):
            self.calls += 1
            if self.calls == block:
                self.waiting.set()
                self.open.wait(30)
            return self.original(x)

        model.backend.forward = forward

    def restore(self) -> None:
        self.open.set()
        self.model.backend.forward = self.original


def test_a_timed_out_request_stops_its_job(
    store: Path, tmp_path: Path, videos: dict[str, Path]
) -> None:
    app = create_app(_settings(store, tmp_path, request_timeout_s=0.5, warmup=False))
    with TestClient(app) as c:
        state = app.state.service
        gate = _Gate(state.store.models[C3D], block=1)
        try:
            _assert_error(_post(c, videos["long"]), 503, "timeout")
            assert gate.waiting.is_set()
            assert state.queue.depth == 1  # the job holds its ticket until it stops
        finally:
            gate.restore()
        _wait_idle(lambda: state.queue.depth)
        # stopped at its next chunk: far from the 12 calls of the whole video
        assert gate.calls <= 2
        assert _post(c, videos["short"]).status_code == 200
    _no_uploads_left(tmp_path)


def test_a_stream_without_progress_ends_with_a_timeout_line(
    store: Path, tmp_path: Path, videos: dict[str, Path]
) -> None:
    app = create_app(_settings(store, tmp_path, segment_timeout_s=0.5, warmup=False))
    with TestClient(app) as c:
        state = app.state.service
        gate = _Gate(state.store.models[C3D], block=2)  # stuck in its second network call
        try:
            resp = _post(c, videos["long"], stream=True)
        finally:
            gate.restore()
        lines = _lines(resp.text)
        assert resp.status_code == 200 and lines[0].keys() == {"segment"}
        assert lines[-1]["error"]["code"] == "timeout"
        _wait_idle(lambda: state.queue.depth)
        assert gate.calls <= 3
        assert 'actrec_rejected_total{reason="timeout"} 1.0' in c.get("/metrics").text
    _no_uploads_left(tmp_path)


def test_a_stream_that_keeps_decoding_is_not_cut(
    store: Path, tmp_path: Path, videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ms3d with one window: no line until the whole video is read, far longer than
    segment_timeout_s here; a job that is decoding is not stuck, so the stream goes on."""
    import models.stream

    original = models.stream.iter_video_chunks

    def slow_chunks(*args: Any, **kwargs: Any) -> Iterator[np.ndarray]:
        for chunk in original(*args, **kwargs):
            time.sleep(0.1)
            yield chunk

    monkeypatch.setattr(models.stream, "iter_video_chunks", slow_chunks)
    app = create_app(_settings(store, tmp_path, segment_timeout_s=0.5, warmup=False))
    with TestClient(app) as c:
        started = time.monotonic()
        resp = _post(c, videos["long"], MS3D, stream=True, window_s="1000")
        assert time.monotonic() - started > 1.0  # 12 chunks at 0.1 s before the first line
        lines = _lines(resp.text)
        assert [next(iter(line)) for line in lines] == ["segment", "result"]
    _no_uploads_left(tmp_path)


# ----------------------------------------------------------------------------- over loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Received:
    """NDJSON lines of a streamed answer with the time each arrived."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []
        self.at: list[float] = []

    def read(self, resp: httpx.Response, stop_after: int | None = None) -> None:
        for line in resp.iter_lines():
            if not line:
                continue
            self.lines.append(json.loads(line))
            self.at.append(time.monotonic())
            if stop_after is not None and len(self.lines) >= stop_after:
                return


def _stream(
    http: httpx.Client, video: Path, model: str, stop_after: int | None = None, **fields: str
) -> tuple[httpx.Response, _Received]:
    got = _Received()
    with http.stream(
        "POST",
        "/recognize",
        files={"file": ("v.mp4", video.read_bytes())},
        data={"model": model, **fields},
        headers={"Accept": NDJSON},
    ) as resp:
        if resp.status_code == 200:
            got.read(resp, stop_after)
        else:
            resp.read()
    return resp, got


@pytest.fixture
def threaded_server(store: Path, tmp_path: Path) -> Iterator[tuple[str, Any, Path]]:
    """uvicorn in a thread of this process over loopback (so tests can reach into the app):
    ``(base url, service state, upload dir)``; one admission slot."""
    import uvicorn

    uploads = tmp_path / "up"
    app = create_app(_settings(store, uploads, queue_size=1, warmup=False))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}", app.state.service, uploads
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_segments_arrive_while_the_job_runs_and_a_disconnect_stops_it(
    threaded_server: tuple[str, Any, Path], videos: dict[str, Path]
) -> None:
    base, state, uploads = threaded_server
    gate = _Gate(state.store.models[C3D], block=2)
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            with http.stream(
                "POST",
                "/recognize",
                files={"file": ("v.mp4", videos["long"].read_bytes())},
                headers={"Accept": NDJSON},
            ) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()  # kept: a dropped iterator closes the connection
                first = json.loads(next(lines))
                # the first clips' segments come while the job is held in its second call
                assert set(first) == {"segment"}
                assert gate.waiting.wait(10) and state.queue.depth == 1
            # The client has gone (the response is closed): the server sees it, stops the
            # answer and removes the upload while the job is still held; then let it go on.
            _wait_idle(lambda: len(list(uploads.glob("actrec-upload-*"))))
            assert state.queue.depth == 1
            gate.open.set()
            _wait_idle(lambda: state.queue.depth)
            assert gate.calls == 2  # stopped at its next chunk, not after 12 calls
            # the one slot is free again
            again = http.post("/recognize", files={"file": ("v.mp4", videos["short"].read_bytes())})
            assert again.status_code == 200, again.text
    finally:
        gate.restore()


@pytest.fixture(scope="module")
def real_server(
    store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """``python -m service`` in a subprocess on loopback, one admission slot:
    ``(base url, upload dir)``."""
    port = _free_port()
    uploads = tmp_path_factory.mktemp("real-up")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ACTREC_UPLOAD_DIR": str(uploads),
        "ACTREC_COMPUTE_THREADS": "1",
        "ACTREC_QUEUE_SIZE": "1",
        "ACTREC_BATCH_SIZE": str(BATCH),
    }
    cmd = [sys.executable, "-m", "service", "--store", str(store), "--port", str(port)]
    cmd += ["--default-model", C3D]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
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
        yield base, uploads
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        print(out[-5000:])


def _queue_depth(http: httpx.Client) -> int:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("actrec_queue_depth "):
            return int(float(line.split()[1]))
    raise AssertionError("no actrec_queue_depth")


@pytest.mark.slow
def test_ndjson_over_the_real_server(
    real_server: tuple[str, Path], videos: dict[str, Path]
) -> None:
    base, uploads = real_server
    with httpx.Client(base_url=base, timeout=60) as http:
        for name in (C3D, MS3D):
            resp, got = _stream(http, videos["long"], name)
            assert resp.status_code == 200 and resp.headers["content-type"] == NDJSON
            kinds = [next(iter(line)) for line in got.lines]
            assert kinds == ["segment"] * (len(kinds) - 1) + ["result"]
            result = got.lines[-1]["result"]
            segments = [line["segment"] for line in got.lines[:-1]]
            assert result["timeline"] == segments
            assert len(segments) == (LONG_FRAMES // 16 if name == C3D else 3)
            plain = http.post(
                "/recognize",
                files={"file": ("v.mp4", videos["long"].read_bytes())},
                data={"model": name, "timeline": "true"},
            )
            assert plain.status_code == 200
            assert _without_timing(result) == _without_timing(plain.json())
        _no_uploads_left(uploads)


@pytest.mark.slow
def test_a_client_leaving_mid_stream_frees_its_slot_on_the_real_server(
    real_server: tuple[str, Path], videos: dict[str, Path]
) -> None:
    base, uploads = real_server
    with httpx.Client(base_url=base, timeout=60) as http:
        resp, got = _stream(http, videos["long"], C3D, stop_after=2)
        assert resp.status_code == 200 and len(got.lines) == 2
        _wait_idle(lambda: _queue_depth(http))
        again = http.post("/recognize", files={"file": ("v.mp4", videos["short"].read_bytes())})
        assert again.status_code == 200, again.text  # queue_size 1: the slot came back
        _no_uploads_left(uploads)


@pytest.mark.slow
def test_a_damaged_tail_over_the_real_server(
    real_server: tuple[str, Path], videos: dict[str, Path]
) -> None:
    base, uploads = real_server
    with httpx.Client(base_url=base, timeout=60) as http:
        resp, got = _stream(http, videos["garbage_tail"], C3D)
        assert resp.status_code == 200
        assert len(got.lines) > 1 and set(got.lines[0]) == {"segment"}
        assert got.lines[-1]["error"]["code"] == "corrupt_video"
        _no_uploads_left(uploads)
        bad = http.post(
            "/recognize",
            files={"file": ("v.mp4", b"garbage" * 100)},
            headers={"Accept": NDJSON},
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_a_video"
        _wait_idle(lambda: _queue_depth(http))
        assert (
            http.post(
                "/recognize", files={"file": ("v.mp4", videos["short"].read_bytes())}
            ).status_code
            == 200
        )


# ----------------------------------------------------------------------------- limits


def test_a_model_that_holds_the_video_whole_gets_the_in_memory_frame_cap(
    store: Path, tmp_path: Path, videos: dict[str, Path]
) -> None:
    app = create_app(_settings(store, tmp_path, max_frames_in_memory=500, warmup=False))
    with TestClient(app) as c:
        full = app.state.service.store.models[FULL]
        streams = full.backend.stages is not None
        assert full.holds_whole_video is not streams
        assert not app.state.service.store.models[C3D].holds_whole_video
        # 750 frames: over the in-memory cap, but only a model that holds them whole cares
        assert _post(c, videos["long"], C3D).status_code == 200
        if streams:
            assert _post(c, videos["long"], FULL).status_code == 200
            full.backend.stages = None  # as a backend without stage graphs
        assert full.holds_whole_video
        _assert_error(_post(c, videos["long"], FULL), 413, "video_too_large")
        assert _post(c, videos["short"], FULL).status_code == 200
    _no_uploads_left(tmp_path)


def test_long_videos_are_admitted_by_default() -> None:
    s = Settings()
    assert s.max_duration_s == 4 * 3600 and s.max_frames is None
    assert s.segment_timeout_s > 0 and s.max_upload_bytes == 100_000_000
    limits = decode_limits(s)
    assert limits.max_frames is None and limits.max_duration_s == 14400
    assert decode_limits(Settings(max_frames=0)).max_frames is None  # 0: no cap either
    assert decode_limits(Settings(max_frames=500)).max_frames == 500
    assert s.max_frames_in_memory == 9000
