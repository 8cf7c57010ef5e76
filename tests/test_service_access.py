"""The service against real traffic: access control (admin token, API keys), label rules,
slow and stalled uploads over raw sockets, and the drain on SIGTERM of a real server.

The shipped demo bundles serve (no training here); servers run in a thread (uvicorn) or, for
the drain, in a subprocess that is sent SIGTERM.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import Settings, create_app
from service.api.classes import valid_label
from service.errors import ApiError
from service.lifecycle import Drain
from service.quickstart import DEMO_BUNDLES, DEMO_VIDEOS

ROOT = Path(__file__).resolve().parents[1]
C3D, MS3D = "c3d_vll-move4digits", "ms3d-move4digits"
ADMIN = "s3cret-admin"
VIDEO = DEMO_VIDEOS / "move_up.mp4"
BOUNDARY = "actrec-test-boundary"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for name in (C3D, MS3D):
        shutil.copytree(DEMO_BUNDLES / name, root / name)
    return root


def _settings(store: Path, uploads: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        store=store,
        load_in_background=False,
        upload_dir=uploads,
        default_model=C3D,
        compute_threads=1,
        warmup=False,
    )
    values.update(overrides)
    return Settings(**values)


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code, body
    return body


def _recognize(c: TestClient | httpx.Client, **kwargs: Any) -> httpx.Response:
    return c.post("/recognize", files={"file": ("v.mp4", VIDEO.read_bytes())}, **kwargs)


def _enrol(c: TestClient, label: str, **kwargs: Any) -> httpx.Response:
    files = [("file", ("v.mp4", VIDEO.read_bytes(), "video/mp4"))]
    return c.post(f"/models/{MS3D}/classes", data={"label": label}, files=files, **kwargs)


def _no_uploads(uploads: Path) -> None:
    assert not uploads.exists() or list(uploads.iterdir()) == []


# ----------------------------------------------------------------------------- admin token


def test_admin_routes_are_disabled_without_a_token(store: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(store, tmp_path / "up"))) as c:
        for headers in ({}, _bearer("anything")):
            body = _error(_enrol(c, "wave", headers=headers), 403, "admin_disabled")
            assert "ACTREC_ADMIN_TOKEN" in body["error"]["message"]
            resp = c.delete(f"/models/{MS3D}/classes/move_up", headers=headers)
            _error(resp, 403, "admin_disabled")
        # reading the classes is not an admin route
        assert c.get(f"/models/{MS3D}/classes").status_code == 200
        assert len(c.get(f"/models/{MS3D}/classes").json()["classes"]) == 4
    _no_uploads(tmp_path / "up")


def test_admin_token_missing_wrong_and_right(store: Path, tmp_path: Path) -> None:
    uploads = tmp_path / "up"
    with TestClient(create_app(_settings(store, uploads, admin_token=ADMIN))) as c:
        missing = _enrol(c, "wave")
        _error(missing, 401, "unauthorized")
        assert missing.headers["www-authenticate"] == 'Bearer realm="actrec"'
        for wrong in (
            _bearer("s3cret-admi"),
            _bearer(ADMIN + "x"),
            _bearer(ADMIN.upper()),
            {"Authorization": f"Basic {ADMIN}"},
            {"Authorization": ADMIN},
        ):
            resp = _enrol(c, "wave", headers=wrong)
            _error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"].startswith('Bearer realm="actrec"')
            _error(c.delete(f"/models/{MS3D}/classes/move_up", headers=wrong), 401, "unauthorized")
        labels = [k["label"] for k in c.get(f"/models/{MS3D}/classes").json()["classes"]]
        assert labels == ["move_up", "move_down", "move_left", "move_right"]
        _no_uploads(uploads)  # refused before the body was read

        ok = _enrol(c, "wave", headers=_bearer(ADMIN))
        assert ok.status_code == 201, ok.text
        resp = c.delete(f"/models/{MS3D}/classes/wave", headers=_bearer(ADMIN))
        assert resp.status_code == 200
        assert "wave" not in [k["label"] for k in resp.json()["classes"]]
        # the admin token opens the admin routes only; the others stay open without keys
        assert _recognize(c).status_code == 200
    _no_uploads(uploads)


def test_a_read_only_store_refuses_class_changes_with_403(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = tmp_path / "up"
    with TestClient(create_app(_settings(store, uploads, admin_token=ADMIN))) as c:
        # a read-only mount: refused before the upload is read or embedded
        monkeypatch.setattr("service.store.writable", lambda _: False)
        body = _error(_enrol(c, "wave", headers=_bearer(ADMIN)), 403, "store_read_only")
        assert "read-only" in body["error"]["message"]
        resp = c.delete(f"/models/{MS3D}/classes/move_up", headers=_bearer(ADMIN))
        _error(resp, 403, "store_read_only")
        _no_uploads(uploads)
        # the write itself failing (permissions changed under a running server)
        monkeypatch.undo()

        def denied(self: Any, path: Any) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr("models.repository.Repository.save", denied)
        _error(_enrol(c, "wave", headers=_bearer(ADMIN)), 403, "store_read_only")
        labels = [k["label"] for k in c.get(f"/models/{MS3D}/classes").json()["classes"]]
        assert labels == ["move_up", "move_down", "move_left", "move_right"]
    _no_uploads(uploads)


# ----------------------------------------------------------------------------- API keys


def test_api_keys_off_leave_every_read_route_open(store: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(store, tmp_path / "up"))) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/models", f"/models/{MS3D}/classes"):
            assert c.get(path).status_code == 200, path
        assert _recognize(c).status_code == 200


def test_api_keys_protect_recognition_and_models(store: Path, tmp_path: Path) -> None:
    settings = _settings(store, tmp_path / "up", api_keys=" key-one , key-two ", admin_token=ADMIN)
    with TestClient(create_app(settings)) as c:
        for path in ("/models", f"/models/{MS3D}/classes"):
            resp = c.get(path)
            _error(resp, 401, "unauthorized")
            assert resp.headers["www-authenticate"] == 'Bearer realm="actrec"'
            _error(c.get(path, headers=_bearer("key-three")), 401, "unauthorized")
            assert c.get(path, headers=_bearer("key-two")).status_code == 200
        _error(_recognize(c), 401, "unauthorized")
        _error(_recognize(c, headers=_bearer("key-on")), 401, "unauthorized")
        _error(_recognize(c, headers=_bearer(ADMIN)), 401, "unauthorized")  # not a key
        answer = _recognize(c, headers=_bearer("key-one"))
        assert answer.status_code == 200 and answer.json()["top5"][0]["label"] == "move_up"
        # probes stay open, /metrics too unless asked
        for path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(path).status_code == 200, path
        # enrolment needs the admin token, not a key
        assert _enrol(c, "wave", headers=_bearer(ADMIN)).status_code == 201
        _error(_enrol(c, "wave2", headers=_bearer("key-one")), 401, "unauthorized")


def test_metrics_can_require_a_key(store: Path, tmp_path: Path) -> None:
    settings = _settings(store, tmp_path / "up", api_keys="k", metrics_require_key=True)
    with TestClient(create_app(settings)) as c:
        _error(c.get("/metrics"), 401, "unauthorized")
        assert c.get("/metrics", headers=_bearer("k")).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    # with no keys configured, the flag has nothing to check against: open
    settings = _settings(store, tmp_path / "up", metrics_require_key=True)
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 200


def test_api_keys_from_a_file_are_re_read_when_it_changes(store: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nfirst-key\n\nsecond-key\n")
    with TestClient(create_app(_settings(store, tmp_path / "up", api_keys=str(keys)))) as c:
        assert c.get("/models", headers=_bearer("second-key")).status_code == 200
        _error(c.get("/models", headers=_bearer("# one key per line")), 401, "unauthorized")
        keys.write_text("rotated-key\n")
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 10**9))
        _error(c.get("/models", headers=_bearer("first-key")), 401, "unauthorized")
        assert c.get("/models", headers=_bearer("rotated-key")).status_code == 200
        keys.unlink()  # unreadable: the last good keys stay (neither open nor locked out)
        assert c.get("/models", headers=_bearer("rotated-key")).status_code == 200
        _error(c.get("/models"), 401, "unauthorized")


@pytest.mark.parametrize("value", ["/no/such/keys.txt", "./missing-keys", " , ,"])
def test_unusable_api_keys_fail_at_startup(store: Path, tmp_path: Path, value: str) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    for given in (value, str(empty)):
        with pytest.raises(ValueError, match="api_keys"):
            create_app(_settings(store, tmp_path / "up", api_keys=given))


def test_openapi_declares_both_bearer_schemes(store: Path, tmp_path: Path) -> None:
    app = create_app(_settings(store, tmp_path / "up"))
    doc = TestClient(app).get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["adminToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["adminToken"]["description"],
    }
    assert schemes["apiKey"]["type"] == "http" and schemes["apiKey"]["scheme"] == "bearer"
    paths = doc["paths"]
    assert paths["/models/{name}/classes"]["post"]["security"] == [{"adminToken": []}]
    assert paths["/models/{name}/classes/{label}"]["delete"]["security"] == [{"adminToken": []}]
    assert paths["/models/{name}/classes"]["get"]["security"] == [{"apiKey": []}]
    assert paths["/recognize"]["post"]["security"] == [{"apiKey": []}]
    assert paths["/models"]["get"]["security"] == [{"apiKey": []}]
    assert paths["/metrics"]["get"]["security"] == [{"apiKey": []}]
    for probe in ("/healthz", "/readyz"):
        assert "security" not in paths[probe]["get"]
    for status in ("401", "403", "408"):
        assert status in paths["/models/{name}/classes"]["post"]["responses"]


# ----------------------------------------------------------------------------- labels


@pytest.mark.parametrize("label", [".", "..", " .. ", "a/b", "a\\b", "a\tb", "", "x" * 101])
def test_labels_that_cannot_be_addressed_are_refused(label: str) -> None:
    with pytest.raises(ApiError) as err:
        valid_label(label)
    assert (err.value.status, err.value.code) == (422, "invalid_label")


def test_accepted_labels_round_trip_through_the_delete_path(store: Path, tmp_path: Path) -> None:
    tricky = ["wave 2", "über-wave", "100%", "a?b#c", "...", "a+b=c&d", "x" * 100]
    with TestClient(create_app(_settings(store, tmp_path / "up", admin_token=ADMIN))) as c:
        for label in (".", ".."):
            _error(_enrol(c, label, headers=_bearer(ADMIN)), 422, "invalid_label")
        for label in tricky:
            assert valid_label(label) == label
            resp = _enrol(c, label, headers=_bearer(ADMIN))
            assert resp.status_code == 201, (label, resp.text)
            assert resp.json()["label"] == label
            path = f"/models/{MS3D}/classes/{quote(label, safe='')}"
            gone = c.delete(path, headers=_bearer(ADMIN))
            assert gone.status_code == 200, (label, gone.text)
            assert label not in [k["label"] for k in gone.json()["classes"]]
        assert len(c.get(f"/models/{MS3D}/classes").json()["classes"]) == 4


# ----------------------------------------------------------------------------- raw sockets


def _wait_while(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is false or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while condition() and time.monotonic() < deadline:
        time.sleep(0.02)


@contextmanager
def _serve(app: FastAPI) -> Iterator[int]:
    """``app`` under a real uvicorn on a free loopback port, in a thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(20)


def _body(video: bytes) -> bytes:
    part = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return part + video + f"\r\n--{BOUNDARY}--\r\n".encode()


def _head(length: int, path: str = "/recognize") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (or ``timeout``), and
    whether it closed it."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        pass
    return data, True


def _status_and_json(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


class _Trickler(threading.Thread):
    """A client that sends its headers and a little of its body, then one byte every
    ``every`` seconds (or nothing when ``every`` is None) until the server answers."""

    def __init__(self, port: int, every: float | None) -> None:
        super().__init__(daemon=True)
        body = _body(VIDEO.read_bytes())
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(_head(len(body)) + body[:400])
        self.rest = body[400:]
        self.every = every
        self.response = b""
        self.closed = False
        self.answered_after: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        sent = 0
        while not self.stop.is_set():
            readable, _, _ = select.select([self.sock], [], [], self.every or 0.2)
            if readable:
                self.answered_after = time.monotonic() - started
                self.response, self.closed = _read_response(self.sock)
                return
            if self.every is not None and sent < len(self.rest) - 1:
                try:
                    self.sock.send(self.rest[sent : sent + 1])
                except OSError:
                    return
                sent += 1

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        self.sock.close()


def test_tricklers_take_upload_slots_not_work_tickets(store: Path, tmp_path: Path) -> None:
    """More trickling clients than the work queue has tickets (but within the upload pool):
    a normal request is answered 200 at once, and no trickler holds a ticket."""
    uploads = tmp_path / "up"
    settings = _settings(
        store,
        uploads,
        queue_size=2,
        max_concurrent_uploads=4,
        upload_rate_grace_s=60,
        upload_idle_timeout_s=30,
    )
    app = create_app(settings)
    state = app.state.service
    with _serve(app) as port:
        tricklers = [_Trickler(port, every=0.2) for _ in range(3)]
        try:
            for t in tricklers:
                t.start()
            _wait_while(lambda: state.uploads.active < 3)
            assert state.uploads.active == 3 and state.queue.depth == 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                answer = _recognize(client)
                assert answer.status_code == 200, answer.text
                assert answer.json()["top5"][0]["label"] == "move_up"
            assert all(t.is_alive() and not t.response for t in tricklers)  # still trickling
            assert state.uploads.active == 3 and state.queue.depth == 0
        finally:
            for t in tricklers:
                t.close()
        _wait_while(lambda: state.uploads.active)
        assert state.uploads.active == 0
    _no_uploads(uploads)


def test_tricklers_filling_the_upload_pool_are_cut_and_a_normal_request_served(
    store: Path, tmp_path: Path
) -> None:
    """``max_concurrent_uploads`` tricklers take every upload slot; they fall below the
    minimum rate once the grace period is over and are answered 408 and disconnected; the
    normal request that waited for a slot meanwhile is answered 200."""
    uploads = tmp_path / "up"
    settings = _settings(
        store,
        uploads,
        queue_size=2,
        max_concurrent_uploads=4,
        upload_slot_wait_s=30,
        upload_min_rate_bps=500,
        upload_rate_grace_s=1.5,
        upload_idle_timeout_s=30,
    )
    app = create_app(settings)
    state = app.state.service
    with _serve(app) as port:
        tricklers = [_Trickler(port, every=0.1) for _ in range(4)]
        try:
            for t in tricklers:
                t.start()
            _wait_while(lambda: state.uploads.active < 4)
            assert state.uploads.active == 4
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                answer = _recognize(client)
                assert answer.status_code == 200, answer.text
            for t in tricklers:
                t.join(20)
                status, body = _status_and_json(t.response)
                assert (status, body["error"]["code"]) == (408, "upload_too_slow"), body
                assert t.closed, "the server must close a cut upload's connection"
                assert t.answered_after is not None and t.answered_after >= 1.5
        finally:
            for t in tricklers:
                t.close()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'actrec_rejected_total{reason="upload_too_slow"} 4.0' in metrics
    _no_uploads(uploads)


def test_a_stalled_upload_is_answered_408_and_its_temp_file_removed(
    store: Path, tmp_path: Path
) -> None:
    uploads = tmp_path / "up"
    app = create_app(_settings(store, uploads, upload_idle_timeout_s=1.0))
    state = app.state.service
    with _serve(app) as port:
        stalled = _Trickler(port, every=None)
        stalled.start()
        _wait_while(lambda: not list(uploads.glob("actrec-upload-*")))
        assert list(uploads.glob("actrec-upload-*")), "the upload should be spooling"
        stalled.join(20)
        status, body = _status_and_json(stalled.response)
        assert (status, body["error"]["code"]) == (408, "upload_timeout")
        assert stalled.closed
        assert stalled.answered_after is not None and stalled.answered_after >= 0.9
        stalled.close()
        assert state.uploads.active == 0 and state.queue.depth == 0
    _no_uploads(uploads)


def test_a_full_upload_pool_answers_503_after_the_wait(store: Path, tmp_path: Path) -> None:
    uploads = tmp_path / "up"
    settings = _settings(store, uploads, max_concurrent_uploads=1, upload_slot_wait_s=0.3)
    app = create_app(settings)
    with _serve(app) as port:
        holder = _Trickler(port, every=0.2)
        holder.start()
        try:
            _wait_while(lambda: app.state.service.uploads.active < 1)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                resp = _recognize(client)
                _error(resp, 503, "overloaded")
                assert "upload slots" in resp.json()["error"]["message"]
                assert resp.headers["retry-after"] == "2"
        finally:
            holder.close()
    _no_uploads(uploads)


# ----------------------------------------------------------------------------- drain


def test_drain_counts_requests_and_refuses_new_ones() -> None:
    drain = Drain()
    assert drain.enter() and drain.enter() and drain.in_flight == 2
    assert not drain.wait_idle(0.01)
    drain.begin()
    assert drain.draining and not drain.enter() and drain.in_flight == 2
    drain.leave()
    threading.Timer(0.05, drain.leave).start()
    assert drain.wait_idle(5) and drain.in_flight == 0


def test_draining_app_answers_503_but_keeps_its_probes(store: Path, tmp_path: Path) -> None:
    app = create_app(_settings(store, tmp_path / "up"))
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        app.state.service.drain.begin()
        resp = _recognize(c)
        _error(resp, 503, "shutting_down")
        assert resp.headers["retry-after"] == "2" and resp.headers["connection"] == "close"
        _error(c.get("/models"), 503, "shutting_down")
        _error(c.get("/readyz"), 503, "shutting_down")
        assert c.get("/healthz").status_code == 200
        assert 'actrec_rejected_total{reason="shutting_down"} 2.0' in c.get("/metrics").text


def _server(store: Path, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ACTREC_UPLOAD_DIR": str(tmp_path / "up"),
        "ACTREC_COMPUTE_THREADS": "1",
        **env,
    }
    cmd = [sys.executable, "-m", "service", "--store", str(store), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not become ready")


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_then_exits_0(store: Path, tmp_path: Path) -> None:
    shutil.rmtree(store / MS3D)
    proc, port = _server(store, tmp_path, ACTREC_SHUTDOWN_GRACE_S="30")
    try:
        body = _body(VIDEO.read_bytes())
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(_head(len(body)) + body[:1000])
        time.sleep(0.3)  # the request is in flight: its upload is half-way
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        _error(ready, 503, "shutting_down")
        late = httpx.post(
            f"http://127.0.0.1:{port}/recognize",
            files={"file": ("v.mp4", VIDEO.read_bytes())},
            timeout=10,
        )
        _error(late, 503, "shutting_down")
        assert late.headers["retry-after"] == "2"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        assert proc.poll() is None  # still draining: the first request is not done
        for i in range(1000, len(body), 2000):  # the rest of the upload, slowly
            sock.sendall(body[i : i + 2000])
            time.sleep(0.1)
        raw, closed = _read_response(sock)
        status, answer = _status_and_json(raw)
        assert status == 200, answer
        assert answer["top5"][0]["label"] == "move_up"
        sock.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert "draining (1 requests in flight" in log and "drained in" in log, log
    _no_uploads(tmp_path / "up")


@pytest.mark.slow
def test_sigterm_exits_0_after_the_grace_even_with_a_stuck_request(
    store: Path, tmp_path: Path
) -> None:
    shutil.rmtree(store / MS3D)
    proc, port = _server(
        store, tmp_path, ACTREC_SHUTDOWN_GRACE_S="1", ACTREC_UPLOAD_IDLE_TIMEOUT_S="300"
    )
    try:
        body = _body(VIDEO.read_bytes())
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(_head(len(body)) + body[:1000])  # and then nothing
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert 0.9 <= time.monotonic() - started < 15
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode() if proc.stdout else ""
    assert "shutdown_grace_s=1 s passed with 1 requests in flight" in log, log
    _no_uploads(tmp_path / "up")
