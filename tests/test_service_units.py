"""Service parts without a model: backend choice, the work queue, settings, the answer detail."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, cast

import pytest
import torch
from pydantic import ValidationError

from models.aggregators import majority_vote, nearest_centre
from models.bundle import Bundle
from models.pipeline import Prediction
from models.spec import VariantSpec
from service.__main__ import build_parser
from service.backends import BackendUnavailable, Offer, choose_backend, load_backend
from service.queue import QueueFull, WorkQueue
from service.settings import Settings
from service.store import Outcome, detail_of

ALL = Offer(onnx=True, plan=True, onnxruntime=True, tensorrt=True)


# ----------------------------------------------------------------------------- backends


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        (ALL, "tensorrt"),
        (Offer(onnx=True, plan=False, onnxruntime=True, tensorrt=True), "onnxruntime"),
        # a plan is useless without TensorRT (e.g. the same bundle on a CPU host)
        (Offer(onnx=True, plan=True, onnxruntime=True, tensorrt=False), "onnxruntime"),
        (Offer(onnx=True, plan=False, onnxruntime=False, tensorrt=False), "torch"),
        (Offer(onnx=False, plan=False, onnxruntime=True, tensorrt=False), "torch"),
    ],
)
def test_auto_prefers_tensorrt_then_onnxruntime_then_torch(offer: Offer, expected: str) -> None:
    assert choose_backend("auto", offer) == expected


def test_explicit_backend_is_honoured_or_refused_with_the_reason() -> None:
    assert choose_backend("torch", ALL) == "torch"
    assert choose_backend("onnxruntime", ALL) == "onnxruntime"
    assert choose_backend("tensorrt", ALL) == "tensorrt"
    cases = [
        (
            "onnxruntime",
            Offer(onnx=False, plan=False, onnxruntime=True, tensorrt=False),
            "export.onnx",
        ),
        (
            "onnxruntime",
            Offer(onnx=True, plan=False, onnxruntime=False, tensorrt=False),
            "not installed",
        ),
        ("tensorrt", Offer(onnx=True, plan=False, onnxruntime=True, tensorrt=True), "export.trt"),
        ("tensorrt", Offer(onnx=True, plan=True, onnxruntime=True, tensorrt=False), "CUDA"),
    ]
    for preference, offer, why in cases:
        with pytest.raises(BackendUnavailable, match=why):
            choose_backend(preference, offer)
    with pytest.raises(ValueError):
        choose_backend("tflite", ALL)


def test_tensorrt_request_without_tensorrt_fails_at_load(tmp_path) -> None:
    from service.backends import machine_offer

    class _FakeBundle:
        def has(self, name: str) -> bool:
            return name == "model.onnx"

    bundle = cast(Bundle, _FakeBundle())
    offer = machine_offer(bundle)
    assert offer.onnx and offer.onnxruntime
    if offer.tensorrt:
        pytest.skip("TensorRT is present here; the refusal path needs a machine without it")
    with pytest.raises(BackendUnavailable):
        load_backend(bundle, "tensorrt")


class _FakeEngine:
    """Stands in for export.trt_runtime.TrtEngine: doubles its input, refuses > 4 clips."""

    def __init__(self, bundle) -> None:
        self.bundle = bundle

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[0] > 4:
            raise ValueError("input axis 0 is 5, the engine takes 1..4")
        return inputs.double() * 2

    def describe(self) -> dict:
        return {"gpu": "fake", "plan": "model.fake.plan"}


def test_auto_loads_the_tensorrt_engine_when_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    import export.trt_runtime
    from service import backends
    from service.backends import InputTooLarge
    from service.errors import status_of

    monkeypatch.setattr(backends, "_tensorrt_available", lambda: True)
    monkeypatch.setattr(backends, "_plan_for_this_gpu", lambda bundle: True)
    monkeypatch.setattr(export.trt_runtime, "TrtEngine", _FakeEngine)

    class _Bundle:
        def has(self, name: str) -> bool:
            return name == "model.onnx"

    backend = load_backend(cast(Bundle, _Bundle()), "auto", device="cpu")
    assert backend.name == "tensorrt" and backend.info == {"gpu": "fake", "plan": "model.fake.plan"}
    out = backend.forward(torch.ones(2, 3))
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((2, 3), 2.0))
    # past the engine's profile: 413, not a server error
    with pytest.raises(InputTooLarge) as err:
        backend.forward(torch.ones(5, 3))
    assert (status_of(err.value), err.value.code) == (413, "video_too_large")


def _tensorrt_ready() -> bool:
    try:
        from export.trt_runtime import tensorrt_available
    except ImportError:
        return False
    return tensorrt_available()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_ready(), reason="needs TensorRT and a CUDA device")
def test_tensorrt_is_chosen_when_the_bundle_has_a_plan_for_this_gpu(tmp_path) -> None:
    from export.trt_runtime import plan_name
    from service.backends import machine_offer

    gpu = torch.cuda.get_device_name()

    class _FakeBundle:
        def has(self, name: str) -> bool:
            return name in {"model.onnx", plan_name(gpu)}

    offer = machine_offer(cast(Bundle, _FakeBundle()))
    assert offer.tensorrt and offer.plan
    assert choose_backend("auto", offer) == "tensorrt"


# ----------------------------------------------------------------------------- errors


def test_every_domain_error_has_one_status_and_code() -> None:
    from service.domain import ServiceError
    from service.errors import DOMAIN_STATUS, status_of

    def _subclasses(cls: type[ServiceError]) -> set[type[ServiceError]]:
        return {s for d in cls.__subclasses__() for s in {d, *_subclasses(d)}}

    answered = {cls.code: status_of(cls("x")) for cls in _subclasses(ServiceError)}
    assert _subclasses(ServiceError) <= set(DOMAIN_STATUS)
    assert answered == {
        "unknown_model": 404,
        "unknown_class": 404,
        "no_repository": 404,
        "last_class": 409,
        "empty_repository": 409,
        "store_read_only": 403,
        "video_too_large": 413,
        "backend_unavailable": 503,
    }


def test_video_errors_map_to_400_413_415() -> None:
    # The decoder's errors carry no HTTP; the service's one table gives their status.
    from service.errors import status_of
    from video import errors as v

    assert status_of(v.VideoLimitError("long")) == 413
    assert status_of(v.NoVideoStreamError("audio only")) == 415
    for cls in (v.EmptyVideoError, v.NotAVideoError, v.TruncatedVideoError, v.CorruptVideoError):
        assert status_of(cls("bad")) == 400


# ----------------------------------------------------------------------------- queue


def test_queue_admits_up_to_capacity_and_tickets_come_back() -> None:
    q = WorkQueue(capacity=2, decode_slots=1, infer_slots=1)
    a, b = q.reserve(), q.reserve()
    assert q.depth == 2
    with pytest.raises(QueueFull):
        q.reserve()
    a.release()
    a.release()  # idempotent
    assert q.depth == 1
    c = q.reserve()
    b.release()
    c.release()
    assert q.depth == 0
    q.shutdown()


def test_a_submitted_job_owns_its_ticket_until_it_finishes() -> None:
    q = WorkQueue(capacity=1, decode_slots=1, infer_slots=1)
    gate = threading.Event()

    async def scenario() -> int:
        ticket = q.reserve()
        future = q.submit(ticket, lambda: gate.wait(10) and 7)
        ticket.release()  # the route's finally: must not return a ticket the job holds
        assert q.depth == 1
        with pytest.raises(QueueFull):
            q.reserve()
        gate.set()
        return await future

    assert asyncio.run(scenario()) == 7
    deadline = time.monotonic() + 5
    while q.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.depth == 0
    q.shutdown()


def test_a_ticket_is_submitted_at_most_once_and_only_while_held() -> None:
    q = WorkQueue(capacity=1, decode_slots=1, infer_slots=1)

    async def scenario() -> None:
        ticket = q.reserve()
        await q.submit(ticket, lambda: None)
        with pytest.raises(ValueError):
            q.submit(ticket, lambda: None)  # the job has returned it already
        assert q.depth == 0

    asyncio.run(scenario())
    returned = q.reserve()
    returned.release()
    with pytest.raises(ValueError):
        q.submit(returned, lambda: None)
    assert q.depth == 0
    q.shutdown()


def test_slots_bound_concurrent_stages() -> None:
    q = WorkQueue(capacity=6, decode_slots=2, infer_slots=1)
    running = {"decode": 0, "infer": 0}
    peak = {"decode": 0, "infer": 0}
    lock = threading.Lock()

    def stage(name: str) -> str:
        with lock:
            running[name] += 1
            peak[name] = max(peak[name], running[name])
        time.sleep(0.02)
        with lock:
            running[name] -= 1
        return threading.current_thread().name

    def job() -> str:
        with q.decoding():
            stage("decode")
        return q.infer(stage, "infer")

    async def scenario() -> list[str]:
        return await asyncio.gather(*[q.submit(q.reserve(), job) for _ in range(6)])

    infer_threads = asyncio.run(scenario())
    assert peak == {"decode": 2, "infer": 1}
    # inference always ran on the one dedicated thread, never on the six job threads
    assert len(set(infer_threads)) == 1 and infer_threads[0].startswith("actrec-infer")
    q.shutdown()


# ----------------------------------------------------------------------------- settings


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTREC_QUEUE_SIZE", "3")
    monkeypatch.setenv("ACTREC_BACKEND", "torch")
    monkeypatch.setenv("ACTREC_MODEL_BACKENDS", '{"a": "onnxruntime"}')
    monkeypatch.setenv("ACTREC_MAX_UPLOAD_BYTES", "1234")
    s = Settings()
    assert (s.queue_size, s.backend, s.model_backends, s.max_upload_bytes) == (
        3,
        "torch",
        {"a": "onnxruntime"},
        1234,
    )
    # command-line values win over the environment
    args = build_parser().parse_args(["--store", "/x", "--port", "9001", "--backend", "auto"])
    s = Settings(**{k: v for k, v in vars(args).items() if v is not None})
    assert (str(s.store), s.port, s.backend, s.queue_size) == ("/x", 9001, "auto", 3)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("ACTREC_QUEUE_SIZE", "0"),
        ("ACTREC_BACKEND", "tflite"),
        ("ACTREC_MAX_UPLOAD_BYTES", "-1"),
        ("ACTREC_MODEL_BACKENDS", '{"a": "gpu"}'),
    ],
)
def test_bad_settings_are_refused(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_setting_is_refused() -> None:
    misspelt: dict[str, Any] = {"queue_sise": 3}
    with pytest.raises(ValidationError):
        Settings(**misspelt)


# ----------------------------------------------------------------------------- detail


def test_vote_detail_names_each_clip_and_counts_votes() -> None:
    # Three clips over classes (a, b, c): argmax b, b, a -> b has 2 votes, a 1, c none.
    logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 0.5], [3.0, 0.0, 0.0]])
    defaults = VariantSpec(
        family="c3d_vll", input_size=(8, 8), clip_len=4, aggregator="majority_vote"
    )
    outcome = Outcome(Prediction(majority_vote(logits), 3, logits), ["a", "b", "c"], None)
    assert detail_of(outcome, defaults).model_dump(exclude_unset=True) == {
        "aggregator": "majority_vote",
        "clip_predictions": ["b", "b", "a"],
        "votes": {"b": 2, "a": 1},
    }
    assert [label for label, _ in outcome.top()] == ["b", "a", "c"]
    assert [score for _, score in outcome.top()] == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_distance_detail_is_sorted_and_gamma_inf_is_null() -> None:
    # One walk at (1, 0); centres at distance 1 (0,0), 0 (1,0) and 2 (-1,0).
    emb = torch.tensor([[1.0, 0.0]])
    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    defaults = VariantSpec(
        family="ms3d",
        input_size=(8, 8),
        clip_len=4,
        aggregator="nearest_centre",
        output="embedding",
    )
    scores = nearest_centre(emb, centres, gamma=float("inf"))
    detail = detail_of(Outcome(Prediction(scores, 1, emb), ["x", "y", "z"], float("inf")), defaults)
    assert detail.model_dump(exclude_unset=True) == {
        "aggregator": "nearest_centre",
        "distances": [
            {"label": "y", "distance": 0.0},
            {"label": "x", "distance": 1.0},
            {"label": "z", "distance": 2.0},
        ],
        "gamma": None,
    }


# ----------------------------------------------------------------------------- streaming parts


@pytest.mark.parametrize(
    ("accept", "streamed"),
    [
        ("application/x-ndjson", True),
        ("application/json, application/x-ndjson;q=0.9", True),
        (" Application/X-NDJSON ", True),
        ("application/json", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_ndjson_is_asked_for_by_accept(accept: str, streamed: bool) -> None:
    from service.api.recognize import wants_ndjson

    assert wants_ndjson(accept) is streamed


def test_error_of_gives_the_answer_of_each_known_error() -> None:
    from service.errors import ApiError, error_of
    from service.store import UnknownModel
    from video.errors import CorruptVideoError

    assert error_of(CorruptVideoError("tail")) == (400, "corrupt_video", "tail")
    assert error_of(UnknownModel("x")) == (404, "unknown_model", "x")
    assert error_of(ApiError(503, "timeout", "slow")) == (503, "timeout", "slow")
    assert error_of(RuntimeError("bug")) is None


def test_a_job_gives_its_decode_slot_back_while_it_waits_for_the_network() -> None:
    q = WorkQueue(capacity=2, decode_slots=1, infer_slots=1)
    in_network = threading.Event()
    other_decoded = threading.Event()

    def streaming_job() -> bool:
        with q.decoding():
            with q.decode_paused():
                in_network.set()
                return other_decoded.wait(5)  # another video decodes meanwhile

    def other_job() -> bool:
        in_network.wait(5)
        with q.decoding():
            other_decoded.set()
        return True

    async def scenario() -> tuple[bool, bool]:
        return await asyncio.gather(
            q.submit(q.reserve(), streaming_job), q.submit(q.reserve(), other_job)
        )

    assert list(asyncio.run(scenario())) == [True, True]
    q.shutdown()


def test_settings_admit_long_videos_and_bound_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.jobs import decode_limits

    monkeypatch.setenv("ACTREC_MAX_FRAMES", "0")
    monkeypatch.setenv("ACTREC_SEGMENT_TIMEOUT_S", "30")
    s = Settings()
    assert (s.max_frames, s.segment_timeout_s, s.max_duration_s) == (0, 30.0, 14400.0)
    assert decode_limits(s).max_frames is None
    monkeypatch.setenv("ACTREC_SEGMENT_TIMEOUT_S", "0")
    with pytest.raises(ValidationError):
        Settings()
