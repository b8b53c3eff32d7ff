"""The web page in a real headless Chromium: a photo upload, and the webcam from a fake camera.

The server is the real one (uvicorn on 127.0.0.1, a free port) with the tiny model; Chromium
is Debian's (``apt-get install chromium``) driven by Playwright for Python. The webcam is a Y4M
video of real face frames that Chromium plays as its fake camera.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlab import EMOTIONS
from ferlab.annotate import COLORS
from ferlab.predict import iou
from ferlab.serve import create_app

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "no chromium binary on PATH (Debian: apt-get install chromium)", allow_module_level=True
    )

HAAR_FACE = (177, 66, 95, 95)  # where Haar finds the astronaut's face


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """A Y4M video (a text header, then raw I420 frames) from RGB frames of even size."""
    import cv2

    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


@contextlib.contextmanager
def serving(app, root_path: str = ""):
    """``app`` served by uvicorn in a background thread; yields its URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, root_path=root_path, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def server(tiny_model):
    with serving(create_app(tiny_model)) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory, astronaut):
    """Headless Chromium with a fresh profile and a fake camera showing the astronaut."""
    tmp = tmp_path_factory.mktemp("chromium")
    # 20 frames of a 320x240 window panning across her face: a real face, moving a little
    frames = [np.ascontiguousarray(astronaut[10:250, 60 + 2 * i : 380 + 2 * i]) for i in range(20)]
    video = write_y4m(tmp / "camera.y4m", frames)
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}",
    ]
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=args,
            accept_downloads=True,
            viewport={"width": 1200, "height": 900},
        )
        yield context
        context.close()


# wraps the page's fetch: counts its predict requests in window.predicts (a test may swap in
# a fresh object; a request counts in the one it started with), and holds the reply to a
# file named in window.slow for that many ms, as a slow server would
SLOW_PREDICT = """
window.predicts = { busy: 0, most: 0, done: 0 };
window.slow = {};
const realFetch = window.fetch;
window.fetch = async (url, options) => {
  if (!String(url).includes("v1/predict")) return realFetch(url, options);
  const counts = window.predicts;
  counts.most = Math.max(counts.most, ++counts.busy);
  try {
    const res = await realFetch(url, options);
    await new Promise((r) => setTimeout(r, window.slow[options.body.get("file").name] || 0));
    return res;
  } finally {
    counts.busy--;
    counts.done++;
  }
};
"""


def open_page(browser, server, init: str | None = None):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    if init:
        page.add_init_script(init)
    page.goto(server)
    page.wait_for_function("document.querySelector('#model-name').textContent.includes('vggnet_s')")
    return page, errors


def pixel(page, canvas: str, x: float, y: float) -> list[int]:
    js = "([id, x, y]) => Array.from(document.getElementById(id).getContext('2d')"
    js += ".getImageData(x, y, 1, 1).data.slice(0, 3))"
    return page.evaluate(js, [canvas, x, y])


def test_photo_upload_shows_box_label_and_bars(browser, server, astronaut, tmp_path):
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=92)
    page, errors = open_page(browser, server)
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("body[data-state=done]", timeout=20_000)
    faces = page.locator("#faces li")
    assert faces.count() == 1
    label = faces.first.get_attribute("data-label")
    assert label in EMOTIONS
    box = [int(v) for v in (faces.first.get_attribute("data-box") or "").split(",")]
    assert iou(tuple(box), HAAR_FACE) > 0.8  # type: ignore[arg-type]
    assert page.locator("#photo-canvas").get_attribute("data-boxes") == "1"
    # the box is drawn on the canvas in the colour of the top emotion
    x, y, _, h = box
    assert pixel(page, "photo-canvas", x, y + h * 0.6) == list(COLORS[label])
    # a bar per emotion whose widths are the probabilities
    bars = faces.first.locator(".bar")
    assert [bars.nth(i).get_attribute("data-emotion") for i in range(7)] == list(EMOTIONS)
    widths = page.eval_on_selector_all(
        "#faces li .fill", "els => els.map(e => parseFloat(e.style.width))"
    )
    assert sum(widths) == pytest.approx(100, abs=0.5)
    assert "1 face found" in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / "photo.png"), full_page=True)
    assert errors == []
    page.close()


def test_webcam_draws_live_boxes_chart_and_csv(browser, server, tmp_path):
    page, errors = open_page(browser, server)
    page.click("#mode-webcam")
    page.click("#webcam-start")
    page.wait_for_function(
        "Number(document.querySelector('#timeline-count').textContent) >= 4", timeout=30_000
    )
    assert int(page.locator("#overlay").get_attribute("data-boxes") or 0) >= 1
    assert page.locator("#faces li").count() >= 1
    assert int(page.locator("#timeline").get_attribute("data-points") or 0) >= 4
    page.screenshot(path=str(tmp_path / "webcam.png"), full_page=True)
    page.click("#webcam-stop")
    with page.expect_download() as download:
        page.click("#download-csv")
    assert download.value.suggested_filename == "ferlab-timeline.csv"
    rows = list(csv.reader(Path(download.value.path()).read_text().splitlines()))
    assert rows[0] == ["time_s", *EMOTIONS]
    values = np.array(rows[1:], dtype=float)
    assert len(values) >= 4 and np.all(np.diff(values[:, 0]) > 0)
    np.testing.assert_allclose(values[:, 1:].sum(1), 1, atol=2e-3)
    assert errors == []
    page.close()


def test_webcam_restarted_mid_frame_runs_one_loop_on_a_fresh_timeline(browser, server):
    page, errors = open_page(browser, server, init=SLOW_PREDICT)
    page.evaluate("window.slow['frame.jpg'] = 1000")
    page.click("#mode-webcam")
    page.click("#webcam-start")
    page.wait_for_function(
        "Number(document.querySelector('#timeline-count').textContent) >= 2", timeout=30_000
    )
    page.wait_for_function("window.predicts.busy === 1")  # Stop, Start with a frame in flight
    page.click("#webcam-stop")
    page.evaluate("window.predicts = { busy: 0, most: 0, done: 0 }")
    page.click("#webcam-start")
    page.wait_for_function("window.predicts.done >= 4", timeout=30_000)
    page.click("#webcam-stop")
    # the first session's loop once carried on beside the new one: two frames in flight
    assert page.evaluate("window.predicts.most") == 1
    # its points stayed, and times restarted at 0: the chart and the CSV went back in time
    with page.expect_download() as download:
        page.click("#download-csv")
    rows = list(csv.reader(Path(download.value.path()).read_text().splitlines()))
    times = np.array([float(row[0]) for row in rows[1:]])
    assert len(times) == int(page.inner_text("#timeline-count")) >= 2
    assert times[0] < 2 and np.all(np.diff(times) > 0)
    assert errors == []
    page.close()


def test_a_reply_to_an_earlier_photo_does_not_draw_over_a_later_one(
    browser, server, astronaut, tmp_path
):
    from skimage import data

    Image.fromarray(astronaut).save(tmp_path / "astronaut.jpg", quality=92)
    Image.fromarray(data.coffee()).save(tmp_path / "coffee.jpg", quality=92)
    page, errors = open_page(browser, server, init=SLOW_PREDICT)
    page.evaluate("window.slow['astronaut.jpg'] = 1500")  # her reply comes after the coffee's
    page.set_input_files("#file", str(tmp_path / "astronaut.jpg"))
    # her request must be in flight before the coffee is chosen: chosen while her photo is
    # still decoding, the page drops her before asking (right, but not the case under test)
    page.wait_for_function("window.predicts.busy === 1", timeout=20_000)
    page.set_input_files("#file", str(tmp_path / "coffee.jpg"))
    page.wait_for_function("window.predicts.done === 2", timeout=20_000)
    page.wait_for_timeout(300)  # time to draw the late reply, had it been drawn
    assert page.inner_text("#status").startswith("No face found in coffee.jpg")
    assert page.locator("#photo-canvas").get_attribute("data-boxes") == "0"
    assert page.locator("#faces li").count() == 0
    assert errors == []
    page.close()


def test_a_model_that_failed_to_load_is_shown_not_polled_forever(browser, monkeypatch):
    from ferlab.serve import service

    release = threading.Event()

    def failing_load(model, runtime):
        release.wait(20)
        raise ValueError("runs/x/best.pt: not a ferlab checkpoint")

    monkeypatch.setattr(service, "load_for_serving", failing_load)
    with serving(create_app("default")) as url:
        page = browser.new_page()
        asked: list[int] = []
        page.on("response", lambda r: asked.append(r.status) if "v1/models" in r.url else None)
        page.goto(url)
        deadline = time.monotonic() + 10
        while not asked and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert asked == [503]  # still loading: polled again in 2 s, no error shown
        assert page.evaluate("document.body.dataset.state") == "idle"
        release.set()
        # failed: the page once polled forever and showed nothing
        page.wait_for_selector("body[data-state=error]", timeout=10_000)
        assert "the model failed to load: ValueError: runs/x/best.pt" in page.inner_text("#status")
        polls = len(asked)
        page.wait_for_timeout(2500)
        assert len(asked) == polls
        page.close()


@contextlib.contextmanager
def stripping_proxy(upstream: str, prefix: str):
    """A reverse proxy, as nginx's ``location /fer/ { proxy_pass http://app/; }``: it serves
    ``prefix``/... from ``upstream``/... and 404s anything else; yields its URL."""
    import http.client
    import http.server
    from urllib.parse import urlsplit

    host = urlsplit(upstream).netloc

    class Handler(http.server.BaseHTTPRequestHandler):
        def forward(self) -> None:
            if not self.path.startswith(prefix + "/"):
                self.send_error(404)
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            conn = http.client.HTTPConnection(host, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request(self.command, self.path[len(prefix) :], body or None, headers)
            reply = conn.getresponse()
            data = reply.read()
            self.send_response(reply.status)
            for k, v in reply.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            conn.close()

        do_GET = do_POST = forward

        def log_message(self, *args) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{proxy.server_address[1]}"
    proxy.shutdown()
    thread.join(10)


def test_page_works_behind_a_proxy_prefix(browser, tiny_model, astronaut, tmp_path):
    # `ferlab serve --root-path /fer` behind a proxy that serves it at /fer/: the page's
    # script, style and API calls must go through /fer/ too (absolute /static, /v1 404 here)
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo, quality=92)
    with (
        serving(create_app(tiny_model), root_path="/fer") as app_url,
        stripping_proxy(app_url, "/fer") as url,
    ):
        page, errors = open_page(browser, f"{url}/fer/")
        assert page.evaluate("getComputedStyle(document.body).paddingBottom") == "24px"  # styled
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("body[data-state=done]", timeout=20_000)
        assert page.locator("#faces li").count() == 1
        assert errors == []
        page.close()
