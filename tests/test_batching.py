"""Batching across requests: concurrent network calls of one model joined into one forward,
each caller getting its own rows; a lone caller waits for nothing; and the service's answers
are the same with batching on as off, under concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch import Tensor

from service.app import create_app
from service.batching import ForwardBatcher
from service.quickstart import DEMO_BUNDLES, DEMO_VIDEOS
from service.settings import Settings


class _Network:
    """A fake network: output row = 2 x input row (summed over the trailing dims); records
    the number of rows of every forward."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, x: Tensor) -> Tensor:
        with self.lock:
            self.batches.append(int(x.shape[0]))
        if self.fail:
            raise RuntimeError("out of memory")
        return 2 * x.flatten(1).sum(dim=1, keepdim=True)


def _concurrently(batcher: ForwardBatcher, inputs: list[Tensor]) -> list[Tensor | BaseException]:
    """Each input from its own thread, each thread in its own session; all sessions open
    before any call."""
    results: list[Tensor | BaseException | None] = [None] * len(inputs)
    opened = threading.Barrier(len(inputs))

    def work(i: int) -> None:
        with batcher.session():
            opened.wait()
            try:
                results[i] = batcher(inputs[i])
            except BaseException as err:
                results[i] = err

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def _rows(start: int, n: int, width: int = 3) -> Tensor:
    return torch.arange(start, start + n * width, dtype=torch.float32).view(n, width)


def test_concurrent_calls_share_one_forward_and_get_their_own_rows() -> None:
    net = _Network()
    seen: list[tuple[int, int]] = []
    batcher = ForwardBatcher(
        net, max_rows=64, max_delay_s=10.0, observe=lambda n, rows, _: seen.append((n, rows))
    )
    inputs = [_rows(100 * i, 2) for i in range(4)]
    outputs = _concurrently(batcher, inputs)
    for x, y in zip(inputs, outputs, strict=True):
        assert isinstance(y, Tensor)
        torch.testing.assert_close(y, 2 * x.sum(dim=1, keepdim=True))
    # every session had its call in, so the leader did not wait out its 10 s
    assert net.batches == [8] and seen == [(4, 8)]


def test_a_lone_call_waits_for_nothing() -> None:
    net = _Network()
    batcher = ForwardBatcher(net, max_rows=64, max_delay_s=30.0)
    started = time.perf_counter()
    with batcher.session():
        y = batcher(_rows(0, 3))
    assert time.perf_counter() - started < 10.0  # far below the 30 s it may wait
    torch.testing.assert_close(y, 2 * _rows(0, 3).sum(dim=1, keepdim=True))
    assert net.batches == [3]


def test_row_cap_and_shapes_split_the_batches() -> None:
    net = _Network()
    batcher = ForwardBatcher(net, max_rows=8, max_delay_s=10.0)
    # three calls of 4 rows: at most 8 rows a forward, so 8 + 4
    outputs = _concurrently(batcher, [_rows(10 * i, 4) for i in range(3)])
    assert sorted(net.batches) == [4, 8]
    assert all(isinstance(y, Tensor) and y.shape == (4, 1) for y in outputs)
    # another trailing shape never joins: two forwards of their own kinds
    net.batches.clear()
    outputs = _concurrently(batcher, [_rows(0, 2, width=3), _rows(0, 2, width=5)])
    assert sorted(net.batches) == [2, 2]
    torch.testing.assert_close(outputs[1], 2 * _rows(0, 2, width=5).sum(dim=1, keepdim=True))


def test_an_error_reaches_every_caller_of_the_batch_and_the_batcher_goes_on() -> None:
    net = _Network(fail=True)
    batcher = ForwardBatcher(net, max_rows=64, max_delay_s=10.0)
    outputs = _concurrently(batcher, [_rows(0, 1), _rows(5, 2)])
    assert all(isinstance(y, RuntimeError) and "out of memory" in str(y) for y in outputs)
    net.fail = False
    outputs = _concurrently(batcher, [_rows(0, 1), _rows(5, 2)])
    assert [y.shape for y in outputs if isinstance(y, Tensor)] == [(1, 1), (2, 1)]
    with pytest.raises(ValueError):
        ForwardBatcher(net, max_rows=0, max_delay_s=1.0)


# ----------------------------------------------------------------------------- the service

MODEL = "c3d_vll-move4digits"


def _answers(delay_ms: float, videos: list[Path], tmp_path: Path) -> tuple[list[dict], str]:
    settings = Settings(
        store=DEMO_BUNDLES,
        load_in_background=False,
        upload_dir=tmp_path / f"up{delay_ms}",
        default_model=MODEL,
        queue_size=len(videos),
        decode_workers=2,
        max_batch_delay_ms=delay_ms,
        compute_threads=2,
    )
    answers: list[dict | None] = [None] * len(videos)
    with TestClient(create_app(settings)) as client:

        def post(i: int) -> None:
            with videos[i].open("rb") as f:
                resp = client.post("/recognize", files={"file": (videos[i].name, f)})
            assert resp.status_code == 200, resp.text
            answers[i] = resp.json()

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(videos))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        metrics = client.get("/metrics").text
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None], metrics


def _metric(text: str, name: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith(f'{name}{{model="{MODEL}"}}'))
    return float(line.split()[-1])


@pytest.mark.slow
def test_service_answers_are_the_same_with_batching_across_requests(tmp_path: Path) -> None:
    videos = sorted(DEMO_VIDEOS.glob("*.mp4")) * 2  # 8 concurrent requests
    plain, plain_metrics = _answers(0.0, videos, tmp_path)
    batched, metrics = _answers(1000.0, videos, tmp_path)
    for a, b in zip(plain, batched, strict=True):
        assert [s["label"] for s in a["top5"]] == [s["label"] for s in b["top5"]]
        for x, y in zip(a["top5"], b["top5"], strict=True):
            assert abs(x["score"] - y["score"]) < 1e-4
    # some forwards joined several requests; batching off records none
    forwards = _metric(metrics, "actrec_batch_requests_count")
    joined = _metric(metrics, "actrec_batch_requests_sum")
    assert forwards > 0 and joined / forwards > 1.0
    assert "actrec_batch_requests_count{" not in plain_metrics
