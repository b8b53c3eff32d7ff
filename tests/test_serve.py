"""The HTTP service on real photos and faces: responses, batching, limits, errors, CLI."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import re
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from ferlab import EMOTIONS
from ferlab.predict import Predictor, iou
from ferlab.serve import create_app
from ferlab.serve.batching import MicroBatcher

HAAR_FACE = (177, 66, 95, 95)  # where Haar finds the astronaut's face


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(astronaut):
    from skimage import data

    x, y, w, h = HAAR_FACE
    return {
        "astronaut.png": encode(astronaut),
        "astronaut.jpg": encode(astronaut, "JPEG"),
        "coffee.png": encode(data.coffee()),  # a real photo without a face
        "face.png": encode(astronaut[y : y + h, x : x + w]),  # a real face crop
    }


@pytest.fixture
def client(tiny_model):
    with TestClient(create_app(tiny_model)) as c:
        yield c


def post(client, name: str, data: bytes, **params):
    return client.post("/v1/predict", params=params, files={"file": (name, data)})


def error(response, status: int) -> str:
    """The JSON error message of a response that must have ``status``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)"
    m = re.search(r"^" + pattern + r"$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_astronaut_one_face_same_json_as_predict(client, photos, tiny_model, astronaut):
    body = post(client, "astronaut.png", photos["astronaut.png"]).json()
    assert set(body) == {"path", "faces", "size", "model", "timing_ms"}
    assert body["path"] == "astronaut.png" and body["size"] == [512, 512]
    assert body["model"] == tiny_model.name
    assert set(body["timing_ms"]) == {"decode", "detect", "classify", "total"}
    [face] = body["faces"]
    assert iou(tuple(face["box"]), HAAR_FACE) > 0.8
    assert list(face["emotions"]) == list(EMOTIONS)
    assert sum(face["emotions"].values()) == pytest.approx(1, abs=1e-4)
    # the same numbers as `ferlab predict` on the same pixels
    [expected] = Predictor(tiny_model, "haar")(astronaut)
    assert face["box"] == expected.to_dict()["faces"][0]["box"]
    want = expected.to_dict()["faces"][0]["emotions"]
    assert face["emotions"] == pytest.approx(want, abs=1e-5)


def test_coffee_has_no_face_and_jpeg_works(client, photos):
    assert post(client, "coffee.png", photos["coffee.png"]).json()["faces"] == []
    [face] = post(client, "astronaut.jpg", photos["astronaut.jpg"]).json()["faces"]
    assert iou(tuple(face["box"]), HAAR_FACE) > 0.8


def test_top_k_and_no_detect_on_a_face_crop(client, photos):
    body = post(client, "face.png", photos["face.png"], no_detect="true", top_k=3).json()
    [face] = body["faces"]
    assert face["box"] == [0, 0, 95, 95]
    top = face["top"]
    assert len(top) == 3 and [t["probability"] for t in top] == sorted(
        (t["probability"] for t in top), reverse=True
    )
    assert top[0]["emotion"] == max(face["emotions"], key=face["emotions"].get)
    plain = post(client, "face.png", photos["face.png"], no_detect="true")
    assert plain.status_code == 200 and "top" not in plain.json()["faces"][0]


def test_json_base64_and_data_url(client, photos):
    b64 = base64.b64encode(photos["face.png"]).decode()
    plain = client.post("/v1/predict", json={"image": b64, "no_detect": True, "top_k": 2})
    doc = {"image": "data:image/png;base64," + b64, "no_detect": True}
    url = client.post("/v1/predict?no_detect=false", json=doc)
    assert plain.status_code == 200 and url.status_code == 200
    assert plain.json()["path"] is None and len(plain.json()["faces"][0]["top"]) == 2
    assert url.json()["faces"][0]["box"] == [0, 0, 95, 95]  # the body's option wins


def test_batch_keeps_order_and_reports_bad_items(client, photos):
    names = ["coffee.png", "astronaut.png", "face.png"]
    files = [("files", (n, photos[n])) for n in names] + [("files", ("notes.txt", b"hello"))]
    body = client.post("/v1/predict/batch", files=files).json()
    assert [r["path"] for r in body] == [*names, "notes.txt"]
    assert [len(r["faces"]) for r in body] == [0, 1, 1, 0]
    assert body[3]["status"] == 415 and "not a supported image" in body[3]["error"]
    images = [base64.b64encode(photos[n]).decode() for n in ("face.png", "coffee.png")]
    body = client.post("/v1/predict/batch", json={"images": images, "no_detect": True}).json()
    assert [len(r["faces"]) for r in body] == [1, 1]
    assert body[1]["faces"][0]["box"] == [100, 0, 400, 400]  # the centre square
    # a null item is refused by index: skipping it would shift later results onto it
    r = client.post("/v1/predict/batch", json={"images": [images[0], None, images[1]]})
    assert error(r, 422) == "images[1]: expected a base64 string, got null"


def test_models_health_ready_page_and_docs(client, tiny_model):
    info = client.get("/v1/models").json()
    assert info["name"] == "vggnet_s" and info["classes"] == list(EMOTIONS)
    assert info["input_size"] == [48, 48] and info["preprocess"]["normalize"] == "minmax"
    assert {"haar", "none"} <= set(info["detectors"]) and info["runtime"] == "torch"
    assert info["tta"] == "none"  # the views each result averages: this model's own
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model": "vggnet_s"}
    page = client.get("/")
    assert page.status_code == 200 and 'id="faces"' in page.text and "<script" in page.text
    assert "getUserMedia" in client.get("/static/app.js").text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]
    assert {"multipart/form-data", "application/json"} <= set(spec["requestBody"]["content"])


def test_ready_only_once_the_model_is_loaded(tiny_model, monkeypatch):
    from ferlab.serve import service

    release = threading.Event()

    def slow_load(model, runtime):
        release.wait(10)
        return tiny_model

    monkeypatch.setattr(service, "load_for_serving", slow_load)
    with TestClient(create_app("default")) as c:
        assert c.get("/healthz").status_code == 200
        for r in (c.get("/readyz"), c.post("/v1/predict", json={"image": ""})):
            assert "loading" in error(r, 503) and r.headers["retry-after"] == "2"  # the page polls
        assert "ferlab_model_ready 0" in c.get("/metrics").text
        release.set()
        wait_ready(c, 5)
        assert c.get("/readyz").json()["model"] == "vggnet_s"


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with TestClient(create_app(broken)) as c:
        for _ in range(100):
            if "failed" in c.get("/readyz").text:
                break
            time.sleep(0.05)
        r = c.get("/readyz")
        assert "broken.pt" in error(r, 503) and "retry-after" not in r.headers  # stays failed
        assert c.get("/healthz").status_code == 200


def test_with_a_key_readyz_keeps_the_load_error_for_key_holders(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with TestClient(create_app(broken, api_key="k")) as c:
        for _ in range(100):
            if "failed" in c.get("/readyz").text:
                break
            time.sleep(0.05)
        public = error(c.get("/readyz"), 503)  # probes need no key; server paths stay private
        assert public.startswith("the model failed to load") and "broken.pt" not in public
        assert "broken.pt" in error(c.get("/v1/models", headers={"X-API-Key": "k"}), 503)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"model": "missing.pt"}, "model missing.pt: no such checkpoint"),
        ({"model": "."}, r"model \.: no such checkpoint"),  # a folder without best.pt
        ({"model": "default", "runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
        ({"detector": "yolo"}, "unknown face detector 'yolo'"),
        # with workers, a bad limit used to pass here and crash every worker in a restart loop
        ({"model": "default", "max_batch": 0}, "max_batch must be a whole number at least 1"),
        ({"model": "default", "max_batch": 2.5}, "max_batch must be a whole number at least 1"),
        ({"detect_threads": 1.5}, "detect_threads must be a whole number at least 1, got 1.5"),
        ({"max_images": 2.5}, "max_images must be a whole number at least 1, got 2.5"),
        ({"model": "default", "batch_wait_ms": -1}, "batch_wait_ms must be at least 0, got -1"),
        ({"model": "default", "max_upload_mb": 0}, "max_upload_mb must be above 0, got 0"),
        ({"model": "default", "timeout_s": float("nan")}, "timeout_s must be above 0, got nan"),
        (  # a budget below one full batch request would refuse it even on an idle server
            {"model": "default", "max_pending_mb": 100},
            r"max_pending_mb must be at least the largest request, 426\.7 MB",
        ),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_settings_that_cannot_work_before_it_starts(
    settings, message, workers, monkeypatch, tmp_path
):
    import uvicorn

    from ferlab.serve import serve

    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: started.append(a))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        serve(workers=workers, **settings)
    assert started == []


def test_serve_refuses_a_port_it_cannot_listen_on(monkeypatch):
    """A taken port: uvicorn logged "address already in use" after our "serving on" and
    exited 3; port 99999 was a traceback; workers 0 served anyway."""
    import socket

    import uvicorn

    from ferlab.serve import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("the server started"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"^serve: cannot listen on 127.0.0.1:{port} \("):
            serve(port=port, model="default")
    with pytest.raises(ValueError, match=r"^serve: port must be in 0\.\.65535, got 99999$"):
        serve(port=99999, model="default")
    with pytest.raises(ValueError, match=r"^serve: workers must be at least 1, got 0$"):
        serve(workers=0, model="default")


def test_serve_with_workers_needs_a_model_it_can_name(tiny_model, monkeypatch):
    import uvicorn

    from ferlab.serve import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("the server started"))
    with pytest.raises(ValueError, match="workers > 1 load the model themselves"):
        serve(workers=2, model=tiny_model)


def wait_ready(client, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.05)


def test_model_by_path_run_by_onnx_runtime(tiny_model, photos, tmp_path):
    from ferlab.export import export_safetensors

    _, meta = export_safetensors(tiny_model, tmp_path / "tiny", fp16=False)
    with TestClient(create_app(str(meta), runtime="onnx")) as c:
        wait_ready(c)
        info = c.get("/v1/models").json()
        assert info["runtime"] == "onnx" and info["quantization"] is None
        onnx = post(c, "face.png", photos["face.png"], no_detect=1).json()["faces"][0]
    from ferlab.faces import crop_face

    crop = np.asarray(Image.open(io.BytesIO(photos["face.png"])))
    want = tiny_model.predict_proba(crop_face(crop, (0, 0, 95, 95), margin=0.0))
    got = [onnx["emotions"][e] for e in EMOTIONS]
    assert got == pytest.approx(list(want[0]), abs=1e-4)
    # an ensemble has no session of its own: its members' runtime is what it runs on
    from ferlab.ensemble import Ensemble
    from ferlab.export import export_onnx
    from ferlab.onnx_model import load_onnx

    member = load_onnx(export_onnx(tiny_model, tmp_path / "m.onnx"))
    with TestClient(create_app(Ensemble([member, member]))) as c:
        assert c.get("/v1/models").json()["runtime"] == "onnx"


def test_a_models_own_views_are_what_it_serves(tiny_model, photos, tmp_path):
    import copy

    from ferlab.export import export_safetensors
    from ferlab.faces import crop_face

    shifted = copy.copy(tiny_model)
    shifted.tta = "shift"
    _, meta = export_safetensors(shifted, tmp_path / "tiny", fp16=False)
    with TestClient(create_app(str(meta))) as c:
        wait_ready(c)
        assert c.get("/v1/models").json()["tta"] == "shift"
        face = post(c, "face.png", photos["face.png"], no_detect=1).json()["faces"][0]
    crop = crop_face(np.asarray(Image.open(io.BytesIO(photos["face.png"]))), (0, 0, 95, 95), 0.0)
    want, single = tiny_model.predict_proba(crop, tta="shift"), tiny_model.predict_proba(crop)
    got = np.array([face["emotions"][e] for e in EMOTIONS])
    # an untrained model: the views move its near-uniform answer by about 1e-4
    assert np.abs(got - want[0]).max() < 1e-6 < 1e-4 < np.abs(got - single[0]).max()


def test_models_endpoint_says_the_shipped_fast_model_is_int8():
    with TestClient(create_app("fast")) as c:
        wait_ready(c)
        info = c.get("/v1/models").json()
    assert info["runtime"] == "onnx" and info["quantization"].startswith("int8 static")


def test_uploads_over_a_megabyte_stay_in_memory(client, monkeypatch):
    import tempfile

    from starlette import formparsers

    class NoDisk(tempfile.SpooledTemporaryFile):
        def rollover(self):
            raise AssertionError("an upload was spooled to disk")

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", NoDisk)
    noise = np.random.default_rng(0).integers(0, 256, (900, 800, 3), dtype=np.uint8)
    data = encode(noise)
    assert len(data) > 2_000_000  # Starlette spools uploads over 1 MB to a file by default
    assert post(client, "noise.png", data).json()["faces"] == []


def test_metrics_count_requests_latency_and_faces(client, photos, caplog):
    before = client.get("/metrics").text
    with caplog.at_level(logging.INFO, logger="ferlab.serve.access"):
        post(client, "astronaut.png", photos["astronaut.png"])
        post(client, "notes.txt", b"hello")
    after = client.get("/metrics").text
    assert after.startswith("# HELP")
    ok = {"method": "POST", "path": "/v1/predict", "status": "200"}
    bad = {**ok, "status": "415"}
    assert (
        metric(after, "ferlab_http_requests_total", **ok)
        == metric(before, "ferlab_http_requests_total", **ok) + 1
    )
    assert metric(after, "ferlab_http_requests_total", **bad) == 1
    assert metric(after, "ferlab_faces_total") == metric(before, "ferlab_faces_total") + 1
    count = 'ferlab_http_request_duration_seconds_count{path="/v1/predict"}'
    assert float(after.split(count)[1].split()[0]) >= 2
    assert metric(after, "ferlab_batch_size_count") >= 1
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("access")]
    assert [(r["path"], r["status"], r["faces"]) for r in lines] == [
        ("/v1/predict", 200, 1),
        ("/v1/predict", 415, 0),
    ]
    assert all(r["method"] == "POST" and r["ms"] > 0 for r in lines)


async def _concurrent(app, files: list[bytes]) -> list:
    try:  # Starlette's TestClient moved to httpx2, the same API
        import httpx2 as httpx
    except ImportError:
        import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await asyncio.gather(
            *(c.post("/v1/predict?no_detect=1", files={"file": ("f.png", f)}) for f in files)
        )


@pytest.mark.parametrize("wait_ms", [50, 0])
def test_concurrent_requests_share_model_calls(tiny_model, photos, wait_ms):
    app = create_app(tiny_model, batch_wait_ms=wait_ms)
    responses = asyncio.run(_concurrent(app, [photos["face.png"]] * 8))
    assert [r.status_code for r in responses] == [200] * 8
    first = responses[0].json()["faces"][0]["emotions"]
    assert all(r.json()["faces"][0]["emotions"] == pytest.approx(first) for r in responses)
    text = TestClient(app).get("/metrics").text
    calls = metric(text, "ferlab_batch_size_count")
    assert metric(text, "ferlab_batch_size_sum") == 8
    if wait_ms:  # one model call, or a few, for 8 requests: a batch of more than one face
        assert calls < 8 and metric(text, "ferlab_batch_size_bucket", le="1") < calls
    else:
        assert calls == 8


def test_micro_batcher_routes_results_and_respects_max_batch(tiny_model):
    calls = []

    def predict(crops):
        calls.append(len(crops))
        return tiny_model.predict_proba(crops)

    faces = np.random.default_rng(0).integers(0, 256, (10, 48, 48), dtype=np.uint8)
    parts = [faces[:3], faces[3:4], faces[4:10]]

    async def run(batcher):
        return await asyncio.gather(*(batcher.classify(p) for p in parts))

    got = asyncio.run(run(MicroBatcher(predict, wait_ms=100, max_batch=64)))
    assert calls == [10]
    for part, probs in zip(parts, got, strict=True):
        np.testing.assert_allclose(probs, tiny_model.predict_proba(part), atol=1e-5)
    calls.clear()
    asyncio.run(run(MicroBatcher(predict, wait_ms=100, max_batch=4)))
    assert calls == [4, 6]  # closed as soon as it held 4 faces; the last request alone
    calls.clear()
    asyncio.run(run(MicroBatcher(predict, wait_ms=100, max_batch=6)))
    assert calls == [4, 6]  # 6 more faces would overfill the batch of 4: they start the next


def test_a_request_of_more_faces_than_max_batch_runs_in_passes_of_max_batch(tiny_model, photos):
    sizes: list[int] = []
    hook = tiny_model.model.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    images = [base64.b64encode(photos["face.png"]).decode()] * 5
    try:
        with TestClient(create_app(tiny_model, max_batch=2)) as c:
            body = c.post("/v1/predict/batch", json={"images": images, "no_detect": True}).json()
            text = c.get("/metrics").text
    finally:
        hook.remove()
    assert [len(r["faces"]) for r in body] == [1] * 5
    assert sizes == [2, 2, 1]
    # the batch-size histogram counts the passes, as the model ran them
    assert metric(text, "ferlab_batch_size_count") == 3
    assert metric(text, "ferlab_batch_size_bucket", le="1") == 1


def test_micro_batcher_passes_model_errors_to_every_request():
    def broken(crops):
        raise RuntimeError("out of memory")

    async def run():
        b = MicroBatcher(broken, wait_ms=20)
        crops = np.zeros((1, 48, 48), np.uint8)
        return await asyncio.gather(b.classify(crops), b.classify(crops), return_exceptions=True)

    assert [str(e) for e in asyncio.run(run())] == ["out of memory"] * 2


def test_too_large_in_bytes_and_pixels(tiny_model, photos):
    with TestClient(create_app(tiny_model, max_upload_mb=0.01, max_pixels=100_000)) as c:
        assert "over the limit" in error(post(c, "a.png", photos["astronaut.png"]), 413)
        big = np.random.default_rng(0).bytes(40_000)  # under the request limit, over the image's
        assert "bytes, over the limit of 10485" in error(post(c, "b.jpg", big), 413)
        chunks = iter([b"x" * 50_000] * 4)  # no Content-Length: counted as it streams in
        r = c.post("/v1/predict", content=chunks, headers={"content-type": "application/json"})
        assert "over the limit" in error(r, 413)
    with TestClient(create_app(tiny_model, max_pixels=100_000)) as c:
        assert "512x512 pixels" in error(post(c, "a.png", photos["astronaut.png"]), 413)


def test_too_many_images_is_413_for_multipart_as_for_json(tiny_model, photos):
    face = photos["face.png"]
    with TestClient(create_app(tiny_model, max_images=2)) as c:
        r = c.post("/v1/predict/batch", json={"images": [base64.b64encode(face).decode()] * 3})
        assert error(r, 413) == "3 images, over the limit of 2"
        # the multipart parser's own file limit once answered 400 "malformed multipart body"
        r = c.post("/v1/predict/batch", files=[("files", (f"{i}.png", face)) for i in range(3)])
        assert error(r, 413) == "3 images, over the limit of 2"
        r = c.post("/v1/predict/batch", files=[("files", (f"{i}.png", face)) for i in range(9)])
        assert error(r, 413) == "more than 3 images, over the limit of 2"
        r = c.post("/v1/predict", files=[("file", (f"{i}.png", face)) for i in range(9)])
        assert error(r, 413).endswith("over the limit of 1: use /v1/predict/batch for several")


def test_not_an_image_or_corrupt(client, photos):
    assert "not a supported image" in error(post(client, "notes.txt", b"hello, world"), 415)
    r = client.post("/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert "multipart/form-data" in error(r, 415)
    jpg = photos["astronaut.jpg"]
    assert "corrupt" in error(post(client, "cut.jpg", jpg[: len(jpg) // 2]), 422)
    png = photos["astronaut.png"]
    assert "corrupt" in error(post(client, "cut.png", png[: len(png) // 3]), 422)
    # the format when known (Pillow calls a PGM "PPM"), else none: never "corrupt the image"
    r = post(client, "bad.pgm", b"P5\n1 1\n70000\n\x00\x00")
    assert error(r, 422) == "corrupt PGM image (maxval must be greater than 0 and less than 65536)"
    r = post(client, "bad.bmp", b"BM" + bytes(60))
    assert error(r, 422) == "corrupt image (Unsupported BMP header type (0))"
    assert "empty" in error(post(client, "empty.png", b""), 422)
    assert "base64" in error(client.post("/v1/predict", json={"image": "not base64!"}), 422)
    assert "no image" in error(client.post("/v1/predict", json={"picture": "x"}), 422)
    # the message names the field this kind of request needs, and a batch's bad item
    r = client.post("/v1/predict", files={"image": ("a.png", png)})
    assert error(r, 422) == "no image in the request: expected a 'file' field"
    good = base64.b64encode(png).decode()
    r = client.post("/v1/predict/batch", json={"images": [good, "not base64!"]})
    assert error(r, 422) == "images[1]: image is not valid base64"
    r = client.post("/v1/predict", json={"image": good, "top-k": 3})
    assert "unknown option ['top-k']" in error(r, 422)
    r = client.post("/v1/predict", content=b"{", headers={"content-type": "application/json"})
    assert "not valid JSON" in error(r, 400)


def test_an_image_detection_refuses_fails_alone_in_a_batch(client, photos, monkeypatch):
    import cv2

    from ferlab import faces

    strip = encode(np.zeros((1, 5000, 3), np.uint8))
    files = [("files", ("astronaut.png", photos["astronaut.png"])), ("files", ("strip.png", strip))]
    # the strip once crashed cv2.resize: a 500 for the whole batch
    body = client.post("/v1/predict/batch", files=files).json()
    assert [(len(r["faces"]), r.get("error")) for r in body] == [(1, None), (0, None)]
    real = faces.crop_faces

    def crop_faces(image, boxes, margin):
        if image.shape[0] == 1:
            cv2.resize(image, None, fx=1e-4, fy=1e-4)  # cv2.error, a message of two lines
        return real(image, boxes, margin)

    monkeypatch.setattr(faces, "crop_faces", crop_faces)
    body = client.post("/v1/predict/batch", files=files).json()
    assert [r["path"] for r in body] == ["astronaut.png", "strip.png"]
    assert len(body[0]["faces"]) == 1 and body[1]["status"] == 422
    assert body[1]["error"].startswith("face detection failed (OpenCV")
    message = error(post(client, "strip.png", strip), 422)
    assert message == body[1]["error"] and "\n" not in message


def test_bad_options_and_unknown_paths_are_json(client, photos):
    assert "available" in error(post(client, "a.png", photos["face.png"], detector="yolo"), 422)
    assert "top_k" in error(post(client, "a.png", photos["face.png"], top_k=9), 422)
    b64 = base64.b64encode(photos["face.png"]).decode()
    for bad in (2.9, True, [], "", "2.5"):  # int() would have made a k of each
        r = client.post("/v1/predict", json={"image": b64, "no_detect": True, "top_k": bad})
        assert f"top_k must be an integer 0..7, got {bad!r}" == error(r, 422)
    r = client.post("/v1/predict", json={"image": b64, "no_detect": True, "top_k": "2"})
    assert len(r.json()["faces"][0]["top"]) == 2
    assert error(client.get("/v2/predict"), 404) == "Not Found"
    assert error(client.get("/v1/predict"), 405)


def test_api_key(tiny_model, photos):
    with TestClient(create_app(tiny_model, api_key="s3cret")) as c:
        assert "missing API key" in error(post(c, "f.png", photos["face.png"]), 401)
        assert "missing API key" in error(c.get("/v1/models"), 401)
        r = c.post("/v1/predict", files={"file": photos["face.png"]}, headers={"X-API-Key": "no"})
        assert "wrong API key" in error(r, 401)
        for headers in ({"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"}):
            r = c.post("/v1/predict", files={"file": photos["face.png"]}, headers=headers)
            assert r.status_code == 200, r.text
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    # behind a proxy at /fer (uvicorn --root-path), the key still guards /fer/v1/...
    app = create_app(tiny_model, api_key="s3cret")
    with TestClient(app, root_path="/fer") as c:
        assert "missing API key" in error(c.get("/fer/v1/models"), 401)
        r = c.get("/fer/v1/models", headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["name"] == "vggnet_s"
        assert c.get("/fer/healthz").status_code == 200
    assert 'path="/v1/models"' in TestClient(app).get("/metrics").text  # not counted as other


class SlowModel:
    """The tiny model, taking ``delay`` seconds per call (or failing)."""

    def __init__(self, model, delay: float = 0.0, fail: bool = False):
        self.model, self.delay, self.fail = model, delay, fail
        self.name, self.classes, self.preprocess = model.name, model.classes, model.preprocess

    def predict_proba(self, faces, batch_size=256, tta="none"):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("the model broke")
        return self.model.predict_proba(faces, batch_size, tta)


class BlockedModel(SlowModel):
    """The tiny model, held inside predict_proba until the test releases it."""

    def __init__(self, model):
        super().__init__(model)
        self.entered, self.release = threading.Event(), threading.Event()

    def predict_proba(self, faces, batch_size=256, tta="none"):
        self.entered.set()
        self.release.wait(30)
        return self.model.predict_proba(faces, batch_size, tta)


def test_timeout_504_while_health_still_answers(tiny_model, photos):
    model = BlockedModel(tiny_model)
    # the timeout must leave time to decode the crop and reach the (blocked) model
    app = create_app(model, timeout_s=3.0, batch_wait_ms=0)
    with TestClient(app) as c:
        done = {}
        thread = threading.Thread(
            target=lambda: done.update(r=post(c, "f.png", photos["face.png"], no_detect=True))
        )
        thread.start()
        try:
            assert model.entered.wait(30)
            # the model is still blocked: the event loop answers, so it runs elsewhere
            assert c.get("/healthz").status_code == 200 and not model.release.is_set()
            thread.join(30)
            assert "timeout" in error(done["r"], 504)
        finally:
            model.release.set()


def test_uploads_held_at_once_are_bounded_across_requests(tiny_model):
    # one request's body is capped by max_upload_mb; max_pending_mb caps the sum over the
    # requests in flight, so a burst of big uploads gets 503 instead of exhausting memory
    noise = np.random.default_rng(0).integers(0, 256, (290, 290, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    big = buf.getvalue()  # about 253 KB: more than half of the budget below
    model = BlockedModel(tiny_model)
    app = create_app(model, max_upload_mb=0.3, max_images=1, max_pending_mb=0.47)
    with TestClient(app) as c:
        first = {}
        thread = threading.Thread(
            target=lambda: first.update(r=post(c, "a.png", big, no_detect=True))
        )
        thread.start()
        try:
            assert model.entered.wait(30)  # the first request holds its bytes in the model
            assert "server busy" in error(post(c, "b.png", big, no_detect=True), 503)
        finally:
            model.release.set()
            thread.join(30)
        assert first["r"].status_code == 200
        assert app.state.service.pending.used == 0  # given back, the refused one's too
        assert post(c, "c.png", big, no_detect=True).status_code == 200


def test_model_crash_is_a_json_500(tiny_model, photos):
    with TestClient(
        create_app(SlowModel(tiny_model, fail=True)), raise_server_exceptions=False
    ) as c:
        assert "internal error" in error(post(c, "f.png", photos["face.png"]), 500)


def test_serve_command_passes_its_options(monkeypatch):
    from ferlab import cli, serve

    seen = {}
    monkeypatch.setattr(serve, "serve", lambda **kw: seen.update(kw))
    monkeypatch.setenv("FERLAB_API_KEY", "from-env")
    args = ["serve", "--model", "m.onnx", "--port", "9001", "--batch-wait-ms", "0"]
    args += ["--max-upload-mb", "2", "--workers", "2", "--root-path", "/fer"]
    r = CliRunner().invoke(cli.app, args)
    assert r.exit_code == 0, r.output
    assert seen == {
        "host": "127.0.0.1",
        "port": 9001,
        "workers": 2,
        "root_path": "/fer",
        "model": "m.onnx",
        "runtime": "torch",
        "detector": "haar",
        "batch_wait_ms": 0.0,
        "max_batch": 64,
        "max_upload_mb": 2.0,
        "max_pending_mb": None,
        "timeout_s": 30.0,
        "api_key": "from-env",
    }


@pytest.mark.parametrize("root_path", ["fer", "/fer/"])
def test_serve_refuses_a_root_path_that_is_not_a_prefix(root_path):
    from ferlab.serve import serve

    with pytest.raises(
        ValueError, match=f"--root-path: expected a path like /fer, got '{root_path}'"
    ):
        serve(root_path=root_path, model="no-such-model")  # refused before the model loads


def test_each_worker_process_takes_its_share_of_the_cores(monkeypatch):
    import os

    import cv2
    import torch

    from ferlab.serve import app as serve_app
    from ferlab.serve.app import SETTINGS_ENV, app_from_env

    # the access log's handler would outlive this test and hide records from caplog in others
    monkeypatch.setattr(serve_app, "configure_access_log", lambda: None)
    settings = {"workers": 2, "settings": {"model": "default", "detector": "none"}}
    monkeypatch.setenv(SETTINGS_ENV, json.dumps(settings))
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        app = app_from_env()
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (4, 4)
        assert app.state.service.source == "default" and app.state.service.detector == "none"
        app.state.service.close()
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def test_a_loaded_model_needs_no_shipped_weights(tiny_model, tmp_path, monkeypatch):
    from ferlab import classifier

    monkeypatch.setattr(classifier, "WEIGHTS", tmp_path)  # an install without weights/
    create_app(tiny_model).state.service.close()
    with pytest.raises(FileNotFoundError, match=r"model default: .*\(none installed\)"):
        create_app()
