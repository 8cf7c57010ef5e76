"""``python -m service.batch`` on the shipped demo bundles: inputs of every kind, bad and
missing files as error lines, resuming after a killed run, JSONL and CSV, a pipe fed slowly,
URL sources (a local HTTP server) and equality with ``POST /recognize``."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi.testclient import TestClient
from media import frame_pattern, write_audio_only, write_video

from service import Settings, create_app
from service.batch.cli import main
from service.quickstart import DEMO_BUNDLES, FAMILIES
from training.synth import generate

ROOT = Path(__file__).resolve().parents[1]
C3D = "c3d_vll-move4digits"
LABELS = {"move_up", "move_down", "move_left", "move_right"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo bundles (a run elsewhere may be rewriting demo/bundles)."""
    out = tmp_path_factory.mktemp("batch-store")
    for family in FAMILIES:
        shutil.copytree(DEMO_BUNDLES / f"{family}-move4digits", out / f"{family}-move4digits")
    return out


@pytest.fixture(scope="module")
def c3d(store: Path) -> str:
    return str(store / C3D)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_path(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        assert record["path"] not in out, f"two lines for {record['path']}"
        out[record["path"]] = record
    return out


def _run(*args: str) -> int:
    return main(["--no-progress", *args])


def _untimed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "timing_ms"}


# ----------------------------------------------------------------------------- inputs


def test_inputs_of_every_kind(c3d: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    written = {
        "lib/a/x.mp4": 20,
        "lib/a/b/y.MKV": 24,  # extensions match in any case
        "lib/z.mov": 18,
        "single.mp4": 30,
        "clips/l1.mp4": 22,
        "clips/deep/l2.mp4": 26,
        "piped/s1.mp4": 28,
    }
    for name, n in written.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_video(tmp_path / name, n=n)
    (tmp_path / "lib" / "notes.txt").write_text("not a video, and not named on the command line")
    (tmp_path / "lists").mkdir()
    # Relative to the list's own folder; a folder line is walked; comments and blanks skipped.
    (tmp_path / "lists" / "set.lst").write_text("# clips\n../clips/l1.mp4\n\n../clips/deep\n")
    # Paths on standard input; single.mp4 again (one line per video however often named).
    monkeypatch.setattr(sys, "stdin", io.StringIO("piped/s1.mp4\nsingle.mp4\n"))
    out = tmp_path / "out.jsonl"
    assert _run("--model", c3d, "lib", "single.mp4", "lists/set.lst", "-", "--out", str(out)) == 0

    lines = _by_path(_lines(out))
    assert set(lines) == set(written)
    for name, record in lines.items():
        assert "error" not in record, record
        assert record["frames"] == written[name]
        assert record["model"] == C3D and record["family"] == "c3d_vll"
        assert {t["label"] for t in record["top5"]} == LABELS
        assert "timeline" not in record  # only with --timeline


def test_corrupt_and_missing_files_are_error_lines(c3d: str, tmp_path: Path) -> None:
    good = [write_video(tmp_path / f"ok{i}.mp4", n=20 + 4 * i) for i in range(3)]
    whole = tmp_path / "whole.mp4"
    write_video(whole, n=40)
    data = whole.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the moov atom is at the end
    (tmp_path / "noise.mp4").write_bytes(os.urandom(4096))
    write_audio_only(tmp_path / "audio.mp4")
    whole.unlink()
    names = ["ok0.mp4", "cut.mp4", "ok1.mp4", "noise.mp4", "missing.mp4", "audio.mp4", "ok2.mp4"]
    out = tmp_path / "out.jsonl"
    assert _run("--model", c3d, *[str(tmp_path / n) for n in names], "--out", str(out)) == 0

    lines = {Path(k).name: v for k, v in _by_path(_lines(out)).items()}
    assert set(lines) == set(names)
    codes = {n: r["error"]["code"] for n, r in lines.items() if "error" in r}
    # The service's codes (400 / 415), and not_found for a path that is not there.
    assert codes == {
        "cut.mp4": "truncated_video",
        "noise.mp4": "not_a_video",
        "missing.mp4": "not_found",
        "audio.mp4": "no_video_stream",
    }
    for name, record in lines.items():
        if name in codes:
            assert set(record) == {"path", "error"} and record["error"]["message"]
    for i, frames in enumerate(good):
        assert lines[f"ok{i}.mp4"]["frames"] == len(frames)
    # An error is an answer too: a rerun does not try those videos again.
    assert _run("--model", c3d, *[str(tmp_path / n) for n in names], "--out", str(out)) == 0
    assert len(_lines(out)) == len(names)


def test_the_service_caps_apply_but_not_its_upload_byte_cap(
    c3d: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_video(tmp_path / "short.mp4", n=20)  # 0.8 s
    write_video(tmp_path / "long.mp4", n=50)  # 2 s
    assert (tmp_path / "short.mp4").stat().st_size > 1000
    monkeypatch.setenv("ACTREC_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("ACTREC_MAX_DURATION_S", "1.5")
    out = tmp_path / "out.jsonl"
    assert _run("--model", c3d, str(tmp_path), "--out", str(out)) == 0
    lines = {Path(k).name: v for k, v in _by_path(_lines(out)).items()}
    assert lines["short.mp4"]["frames"] == 20  # bigger than an upload may be, answered
    assert lines["long.mp4"]["error"]["code"] == "video_too_large"  # the service's 413


def test_jsonl_and_csv_hold_the_same_answers(c3d: str, tmp_path: Path) -> None:
    videos = [tmp_path / f"v{i}.mp4" for i in range(3)]
    for i, path in enumerate(videos):
        write_video(path, n=32 + 16 * i)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    args = ["--model", c3d, "--timeline", *map(str, videos), str(tmp_path / "bad.mp4")]
    assert _run(*args, "--out", str(tmp_path / "out.jsonl")) == 0
    assert _run(*args, "--out", str(tmp_path / "out.csv")) == 0  # the format from the suffix

    jsonl = _by_path(_lines(tmp_path / "out.jsonl"))
    with open(tmp_path / "out.csv", newline="") as fh:
        rows = {row["path"]: row for row in csv.DictReader(fh)}
    assert set(rows) == set(jsonl)
    for key, record in jsonl.items():
        row = rows[key]
        if "error" in record:
            assert row["kind"] == "error"
            assert row["error_code"] == record["error"]["code"] == "not_a_video"
            continue
        assert row["kind"] == "result" and row["error_code"] == ""
        assert row["label"] == record["top5"][0]["label"]
        assert json.loads(row["top5"]) == record["top5"]
        assert json.loads(row["detail"]) == record["detail"]
        assert json.loads(row["timeline"]) == record["timeline"]
        assert int(row["frames"]) == record["frames"] and int(row["clips"]) == record["clips"]
        assert float(row["duration_s"]) == record["duration_s"]
        assert row["unknown"] == "false"
    # Resumed in its own format: nothing added, the header once.
    assert _run(*args, "--out", str(tmp_path / "out.csv")) == 0
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + len(jsonl)
    # A JSONL run cannot append to the CSV.
    assert _run(*args, "--format", "jsonl", "--out", str(tmp_path / "out.csv")) == 2


# ----------------------------------------------------------------------------- resume


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "service.batch", "--no-progress", *args]


@pytest.mark.slow
def test_resume_after_a_killed_run(c3d: str, tmp_path: Path) -> None:
    videos = []
    for i in range(16):
        videos.append(tmp_path / "in" / f"v{i:02d}.mp4")
        videos[-1].parent.mkdir(exist_ok=True)
        write_video(videos[-1], n=64 + i, height=64, width=64)
    out = tmp_path / "out.jsonl"
    args = _cli("--model", c3d, str(tmp_path / "in"), "--out", str(out), "--workers", "1")
    run = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and run.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert run.poll() is None, "the run ended before it could be killed"
        run.send_signal(signal.SIGKILL)
    finally:
        run.kill()
        run.wait()
    before = out.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    killed = [json.loads(line) for line in complete.splitlines()]
    assert 2 <= len(killed) < len(videos)
    # The worst a kill can do: a last line cut short (here made by hand).
    with open(out, "ab") as fh:
        fh.write(b'{"path": "in/v99.mp4", "model": "c3d')

    rerun = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(killed)} of {len(videos)} videos already answered" in rerun.stderr
    after = out.read_bytes()
    assert after.startswith(complete)  # the killed run's lines untouched
    lines = _by_path([json.loads(line) for line in after.splitlines()])  # no duplicate
    assert set(lines) == {str(p) for p in videos}
    assert all("error" not in r for r in lines.values())


# ----------------------------------------------------------------------------- live sources


def _write_stream(path: Path, n: int, fmt: str = "mpegts") -> None:
    """An H.264 stream in ``fmt`` with a keyframe a second, as a live encoder sends it."""
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "g": "25"}
        for img in frame_pattern(n, 64, 64):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# Writes the file in small pieces, paced: a live encoder. Its pipe is made small, so the pace
# holds from the moment the reader starts reading, whenever the reader is ready.
_SLOW_WRITER = """
import fcntl, os, sys, time
fcntl.fcntl(1, fcntl.F_SETPIPE_SZ, 4096)
data = open(sys.argv[1], "rb").read()
pieces = 40
for i in range(pieces):
    os.write(1, data[i * len(data) // pieces : (i + 1) * len(data) // pieces])
    time.sleep(0.15)
"""


@pytest.mark.slow
def test_a_pipe_fed_slowly_gives_segments_before_the_writer_ends(c3d: str, tmp_path: Path) -> None:
    n = 250
    stream = tmp_path / "live.ts"
    _write_stream(stream, n)
    assert hasattr(fcntl, "F_SETPIPE_SZ")
    writer = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(stream)], stdout=subprocess.PIPE
    )
    assert writer.stdout is not None
    batch = subprocess.Popen(
        _cli("--model", c3d, "--stdin-stream"),
        cwd=ROOT,
        stdin=writer.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer.stdout.close()  # the batch holds the read end
    lines, writer_running = [], []
    try:
        assert batch.stdout is not None
        for text in batch.stdout:
            lines.append(json.loads(text))
            writer_running.append(writer.poll() is None)
        batch.wait(timeout=120)
        writer.wait(timeout=10)
    finally:
        batch.kill()
        writer.kill()
    assert batch.returncode == 0 and writer.returncode == 0
    # Each segment's line was out while the writer was still writing, the first ones at least.
    assert writer_running[0] and writer_running[1]
    segments = [r["segment"] for r in lines[:-1]]
    assert all(r["path"] == "-" for r in lines) and all("segment" in r for r in lines[:-1])
    assert segments[0]["start_s"] == 0.0
    for before, after in zip(segments, segments[1:]):
        assert before["end_s"] == after["start_s"]
    assert segments[-1]["end_s"] == pytest.approx(n / 25)
    # A clean end: the whole stream's answer, the one the same bytes get as a file.
    result = lines[-1]
    assert "segment" not in result and "error" not in result
    assert result["frames"] == n and result["clips"] == len(segments) == n // 16
    out = tmp_path / "file.jsonl"
    assert _run("--model", c3d, str(stream), "--out", str(out)) == 0
    (as_file,) = _lines(out)
    for key in ("top5", "detail", "frames", "clips", "duration_s"):
        assert result[key] == as_file[key]


class _Server:
    """A local HTTP server of one stream: whole at ``/ok.mkv``, cut halfway with the
    connection dropped at ``/cut.mkv``."""

    def __init__(self, data: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                cut = self.path.startswith("/cut")
                self.send_response(200)
                self.send_header("Content-Type", "video/x-matroska")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                end = len(data) // 2 if cut else len(data)
                for i in range(0, end, 4096):
                    self.wfile.write(data[i : min(i + 4096, end)])
                    time.sleep(0.005)
                if cut:
                    self.connection.shutdown(2)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    _write_stream(tmp_path / "served.mkv", 100, fmt="matroska")
    srv = _Server((tmp_path / "served.mkv").read_bytes())
    yield srv
    srv.close()


def test_url_sources_and_a_stream_that_breaks(c3d: str, tmp_path: Path, server: _Server) -> None:
    ok, cut = f"{server.url}/ok.mkv", f"{server.url}/cut.mkv"
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{probe.getsockname()[1]}/nothing.mkv"
    out = tmp_path / "out.jsonl"
    status = _run("--model", c3d, ok, cut, refused, "--stream-timeout", "5", "--out", str(out))
    assert status == 1  # a source ended in an error
    records = _lines(out)
    final = {r["path"]: r for r in records if "segment" not in r}
    assert set(final) == {ok, cut, refused}
    assert final[ok]["frames"] == 100 and final[ok]["clips"] == 6
    assert len([r for r in records if r["path"] == ok and "segment" in r]) == 6
    assert final[cut]["error"]["code"] == "stream_broken"
    assert cut in final[cut]["error"]["message"]
    assert final[refused]["error"]["code"] == "source_unavailable"


# ----------------------------------------------------------------------------- the service


def _close(a: Any, b: Any, where: str = "") -> None:
    """Equal, floats within 1e-5 (inputs merged across videos run in other batch shapes)."""
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.slow
def test_batch_answers_equal_the_service_answers(store: Path, tmp_path: Path) -> None:
    data = generate(tmp_path / "m4d", classes="4", per_class=2, seed=11, progress=False)
    videos = sorted(data.glob("*/*.mp4"))
    assert len(videos) == 8
    settings = Settings(store=store, load_in_background=False, upload_dir=tmp_path)
    with TestClient(create_app(settings)) as client:
        for family in FAMILIES:
            name = f"{family}-move4digits"
            out = tmp_path / f"{family}.jsonl"
            status = _run("--model", str(store / name), str(data), "--timeline", "--out", str(out))
            assert status == 0
            batch = _by_path(_lines(out))
            assert set(batch) == {str(p) for p in videos}
            for video in videos:
                resp = client.post(
                    "/recognize",
                    files={"file": (video.name, video.read_bytes())},
                    data={"model": name, "timeline": "true"},
                )
                assert resp.status_code == 200, resp.text
                served = resp.json()
                line = batch[str(video)]
                assert line.pop("path") == str(video)
                assert set(line["timing_ms"]) == set(served["timing_ms"])
                _close(_untimed(line), _untimed(served), f"{name}:{video.name}")
