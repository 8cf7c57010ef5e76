"""The web page at ``/`` in a real headless Chromium, against the real app served by uvicorn
over loopback: choose a model, upload a video through the page's file input, and the page
shows what ``POST /recognize`` answers for the same video (top-5, timeline segments); a file
that is not a video, dropped on the drop zone, shows the server's error; the API-key prompt;
the ms3d class form (a wrong admin token shows 401, the right one enrols and removes).

The browser is Debian's ``chromium`` driven by Playwright (never ``playwright install``,
which downloads a browser). Without either the tests skip, unless ``ACTREC_REQUIRE_BROWSER=1``
(set by ``.ci/run``), where they fail. ``ACTREC_WEB_SCREENSHOT=docs/web_page.png`` also
saves the screenshot of the README.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import httpx
import numpy as np
import pytest
import uvicorn
from media import write_video
from pydantic import SecretStr

from service import Settings, create_app
from service.quickstart import DEMO_BUNDLES, DEMO_VIDEOS

if TYPE_CHECKING:  # imported for real only once the browser tests know they can run
    from playwright.sync_api import Browser, ConsoleMessage, Page

C3D, MS3D = "c3d_vll-move4digits", "ms3d-move4digits"
API_KEY = "page-key"
ADMIN = "page-admin"
CHROMIUM = Path(os.environ.get("ACTREC_CHROMIUM", "/usr/bin/chromium"))
# The demo videos, joined: a 6 s video whose clips change class (12 c3d_vll clips).
STORY = ["move_up", "move_left", "move_up", "move_down", "move_right", "move_up"]
TIMEOUT_MS = 30_000  # a shared 2-core machine can be slow


# ----------------------------------------------------------------------------- fixtures


def _need_browser() -> None:
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "playwright is not installed (pip install -e '.[dev]')"
    if why is None and not CHROMIUM.exists():
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if why is not None:
        if os.environ.get("ACTREC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test must run here: {why}")
        pytest.skip(why)


def _decoded(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("page-videos")
    story = root / "story.mp4"
    write_video(story, np.concatenate([_decoded(DEMO_VIDEOS / f"{n}.mp4") for n in STORY]))
    notes = root / "notes.txt"
    notes.write_text("these are notes, not a video\n" * 20)
    return {"story": story, "notes": notes, "up": DEMO_VIDEOS / "move_up.mp4"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app over two demo bundles (copied: enrolment writes the bundle), with an API key
    and an admin token, in uvicorn on a thread; its base URL."""
    root = tmp_path_factory.mktemp("page-store")
    for name in (C3D, MS3D):
        shutil.copytree(DEMO_BUNDLES / name, root / "store" / name)
    settings = Settings(
        store=root / "store",
        upload_dir=root / "uploads",
        default_model=C3D,
        load_in_background=False,
        warmup=False,
        compute_threads=2,
        batch_size=4,  # several network calls per video: segments stream in several lines
        api_keys=SecretStr(API_KEY),
        admin_token=SecretStr(ADMIN),
    )
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    """The API itself, with the key: what the page must show."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server, headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


class _Console:
    """Script errors and console errors of a page (a CSP violation is one), except failed
    loads: the page's own 4xx answers are logged as those, and are expected here."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(f"pageerror: {err}"))
        page.on("console", self._message)

    def _message(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)


def _open(browser: Browser, server: str, *, key: bool = True) -> tuple[Page, _Console]:
    """A fresh page at ``/`` (its own context: nothing kept between tests); with ``key`` the
    tab's session storage holds the API key, as if "Remember in this tab" had been ticked."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    if key:
        context.add_init_script(f"sessionStorage.setItem('actrec.apiKey', {json.dumps(API_KEY)})")
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = _Console(page)
    page.goto(server + "/")
    return page, console


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    page, console = _open(browser, server)
    yield page
    page.context.close()
    assert console.errors == []


def _choose(page: Page, model: str) -> None:
    page.locator(f'#model option[value="{model}"]').wait_for(state="attached")
    page.select_option("#model", model)


def _recognise(page: Page, model: str, video: Path) -> None:
    _choose(page, model)
    page.set_input_files("#video-file", str(video))
    page.click("#recognise-btn")


def _expected(api: httpx.Client, model: str, video: Path) -> dict[str, Any]:
    resp = api.post(
        "/recognize",
        files={"file": (video.name, video.read_bytes())},
        data={"model": model, "timeline": "true"},
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


# ----------------------------------------------------------------------------- tests


def test_page_and_assets_are_served_with_a_strict_policy(server: str) -> None:
    with httpx.Client(base_url=server) as http:  # no key: the page itself is public
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script type="module" src="/static/app.js">' in page.text
        assert http.get("/", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
        for name, media in (("app.js", "text/javascript"), ("app.css", "text/css")):
            asset = http.get(f"/static/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(media)
            assert asset.headers["x-content-type-options"] == "nosniff"
        for missing in ("index.html", "web.py", "..%2Fapi%2Fweb.py"):
            assert http.get(f"/static/{missing}").json()["error"]["code"] == "not_found"
        paths = http.get("/openapi.json").json()["paths"]
        assert "/" not in paths and not any(p.startswith("/static") for p in paths)


@pytest.mark.slow
def test_recognition_shows_the_api_answer_and_its_streamed_timeline(
    page: Page, api: httpx.Client, videos: dict[str, Path]
) -> None:
    expected = _expected(api, C3D, videos["story"])
    timeline = expected["timeline"]
    assert len(timeline) == 2 * len(STORY)  # two 16-frame clips per demo video

    with page.expect_response("**/recognize") as answer:
        _recognise(page, C3D, videos["story"])
    assert answer.value.headers["content-type"].startswith("application/x-ndjson")
    page.locator("#results.done").wait_for()

    top5 = page.locator("#top5 li")
    assert top5.evaluate_all("els => els.map(e => e.dataset.label)") == [
        s["label"] for s in expected["top5"]
    ]
    assert top5.locator(".t5-score").all_inner_texts() == [
        f"{s['score']:.3f}" for s in expected["top5"]
    ]
    segments = page.locator("#timeline .segment")
    assert segments.evaluate_all("els => els.map(e => e.dataset.label)") == [
        s["top5"][0]["label"] for s in timeline
    ]
    legend = page.locator("#legend").inner_text()
    assert all(s["top5"][0]["label"] in legend for s in timeline)
    backend = page.locator('#details dd[data-field="backend"]').inner_text()
    assert backend.startswith(expected["backend"])
    assert "Done" in page.locator("#status").inner_text()

    # Hover, then the keyboard: the tip tells the segment's time range and scores.
    third = timeline[2]
    segments.nth(2).hover()
    tip = page.locator("#segment-tip")
    tip.wait_for(state="visible")
    assert f"{third['start_s']:.2f} s – {third['end_s']:.2f} s" in tip.inner_text()
    assert third["top5"][0]["label"] in tip.inner_text()
    segments.nth(0).focus()
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    assert f"{timeline[1]['start_s']:.2f} s –" in tip.inner_text()

    if shot := os.environ.get("ACTREC_WEB_SCREENSHOT"):
        page.set_viewport_size({"width": 1280, "height": 940})
        page.wait_for_function("document.getElementById('preview').readyState >= 4")
        segments.nth(4).click()  # seeks the preview there: a frame and the playhead show
        page.wait_for_function(
            "() => { const v = document.getElementById('preview');"
            " return !v.seeking && v.currentTime > 0; }"
        )
        tip.wait_for(state="visible")
        page.screenshot(path=shot)

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    assert page.locator("#timeline").bounding_box()["width"] <= 375  # type: ignore[index]
    if shot := os.environ.get("ACTREC_WEB_SCREENSHOT_PHONE"):
        page.screenshot(path=shot, full_page=True)


@pytest.mark.slow
def test_a_file_that_is_not_a_video_shows_the_servers_error(
    page: Page, api: httpx.Client, videos: dict[str, Path]
) -> None:
    notes = videos["notes"]
    resp = api.post("/recognize", files={"file": (notes.name, notes.read_bytes())})
    assert resp.status_code == 400
    error = resp.json()["error"]

    # Dropped on the zone this time (the other tests pick through the file input).
    _choose(page, C3D)
    dropped = page.evaluate_handle(
        "([name, text]) => { const dt = new DataTransfer();"
        " dt.items.add(new File([text], name, {type: 'text/plain'})); return dt; }",
        [notes.name, notes.read_text()],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    assert page.locator("#file-info").inner_text().startswith(notes.name)
    page.click("#recognise-btn")
    alert = page.locator("#error[role=alert]")
    alert.wait_for(state="visible")
    assert alert.locator(".error-message").inner_text() == error["message"]
    assert alert.locator(".error-code").inner_text() == f"400 {error['code']}"
    assert page.locator("#results").is_hidden()  # no empty result panel
    assert page.locator("#recognise-btn").is_enabled()  # ready for the next try


@pytest.mark.slow
def test_without_the_api_key_the_page_asks_for_it(browser: Browser, server: str) -> None:
    page, console = _open(browser, server, key=False)
    try:
        alert = page.locator("#error")
        alert.wait_for(state="visible")
        assert "401 unauthorized" in alert.inner_text()
        assert "API key" in alert.locator(".error-hint").inner_text()
        assert page.locator("#key-panel").get_attribute("open") is not None
        assert page.evaluate("document.activeElement.id") == "api-key"

        page.fill("#api-key", API_KEY)
        page.keyboard.press("Enter")
        page.locator(f'#model option[value="{C3D}"]').wait_for(state="attached")
        assert page.locator("#model").is_enabled() and alert.is_hidden()
        assert page.locator("#key-state").inner_text() == "set"
        # Not ticked "remember": the key stays in the page's memory only.
        assert page.evaluate("sessionStorage.getItem('actrec.apiKey')") is None
        assert console.errors == []
    finally:
        page.context.close()


@pytest.mark.slow
def test_ms3d_classes_wrong_admin_token_is_401_and_the_right_one_enrols(
    page: Page, api: httpx.Client, videos: dict[str, Path]
) -> None:
    path = f"/models/{MS3D}/classes"
    before = [c["label"] for c in api.get(path).json()["classes"]]
    refused = api.post(
        path,
        data={"label": "wave"},
        files={"file": ("up.mp4", videos["up"].read_bytes())},
        headers={"Authorization": "Bearer wrong"},
    )
    assert refused.status_code == 401

    assert page.locator("#enrol-panel").is_hidden()  # c3d_vll is the default model
    _choose(page, MS3D)
    rows = page.locator("#classes tbody tr")
    rows.first.wait_for()
    assert rows.evaluate_all("els => els.map(e => e.dataset.label)") == before

    page.fill("#enrol-label", "wave")
    page.set_input_files("#enrol-files", [str(videos["up"]), str(videos["story"])])
    page.fill("#admin-token", "wrong")
    page.click("#enrol-btn")
    alert = page.locator("#enrol-error")
    alert.wait_for(state="visible")
    assert alert.locator(".error-code").inner_text() == "401 unauthorized"
    assert alert.locator(".error-message").inner_text() == refused.json()["error"]["message"]
    assert "admin token" in alert.locator(".error-hint").inner_text()
    assert [c["label"] for c in api.get(path).json()["classes"]] == before

    page.fill("#admin-token", ADMIN)
    page.click("#enrol-btn")
    page.locator('#classes tbody tr[data-label="wave"]').wait_for()
    assert "Added class “wave” from 2 videos." in page.locator("#enrol-status").inner_text()
    assert alert.is_hidden()
    assert [c["label"] for c in api.get(path).json()["classes"]] == [*before, "wave"]

    page.click('button[aria-label="Remove class wave"]')
    page.locator('#classes tbody tr[data-label="wave"]').wait_for(state="detached")
    assert [c["label"] for c in api.get(path).json()["classes"]] == before
