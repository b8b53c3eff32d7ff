"""The HTTP service: ``create_app(model)`` is a FastAPI app with /v1/predict and a web page.

uvicorn's worker runs    ->  ObserveMiddleware (API key, metrics, access log)
the routes below         ->  inputs.read_upload (in memory, limits)
                         ->  Service.predict: decode + detect in threads, then
                             MicroBatcher.classify: one model call for concurrent requests
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from ..distributed import threads_per_worker
from ..media import MAX_PIXELS
from ..predict import ProbaModel
from .inputs import ApiError, parse_options, read_upload
from .metrics import ObserveMiddleware, configure_access_log, route_path
from .service import Service, check_settings

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SETTINGS_ENV = "FERLAB_SERVE_SETTINGS"  # create_app kwargs (JSON) for uvicorn worker processes

_OPTIONS: dict[str, dict[str, Any]] = {
    "detector": {"type": "string", "description": "face detector (GET /v1/models lists them)"},
    "no_detect": {"type": "boolean", "description": "the image already is a face crop"},
    "top_k": {"type": "integer", "minimum": 0, "maximum": 7, "description": "add a 'top' list"},
}


def _body(field: str, many: bool) -> dict[str, Any]:
    """OpenAPI request body: multipart upload or JSON with base64, as the routes read them."""
    binary: dict[str, Any] = {"type": "string", "format": "binary"}
    b64: dict[str, Any] = {"type": "string", "description": "base64 or a data: URL"}
    if many:
        binary, b64 = {"type": "array", "items": binary}, {"type": "array", "items": b64}
    key = "images" if many else "image"
    form = {"type": "object", "properties": {field: binary, **_OPTIONS}, "required": [field]}
    doc = {"type": "object", "properties": {key: b64, **_OPTIONS}, "required": [key]}
    content = {"multipart/form-data": {"schema": form}, "application/json": {"schema": doc}}
    return {"requestBody": {"required": True, "content": content}}


def create_app(
    model: ProbaModel | str | Path | None = None,
    detector: str = "haar",
    batch_wait_ms: float = 5.0,
    max_batch: int = 64,
    max_upload_mb: float = 10.0,
    max_pixels: int = MAX_PIXELS,
    max_images: int = 32,
    max_pending_mb: float | None = None,
    timeout_s: float = 30.0,
    api_key: str | None = None,
    runtime: str = "torch",
    detect_threads: int = 2,
) -> FastAPI:
    """The ferlab HTTP service and web page.

    Args:
        model: a loaded model (anything with ``predict_proba``, ``name``, ``classes``), or a
            path or shipped name loaded in the background at startup (None: the shipped
            model); /readyz answers 503 until it is loaded.
        detector: default face detector; requests may choose another available one.
        batch_wait_ms: how long a model call waits for faces from concurrent requests; 0 off.
        max_batch: faces per model call, at most.
        max_upload_mb: largest image accepted (413 above).
        max_pixels: largest image accepted in pixels, width x height (413 above).
        max_images: most images in one batch request.
        max_pending_mb: request bodies held in memory at once, all requests together
            (503 above); None: twice the largest batch request.
        timeout_s: a request still unanswered after this gets 504.
        api_key: when set, /v1/ requests need ``X-API-Key: <key>`` or a Bearer token.
        runtime: "torch" or "onnx", for a model given by path or name.
        detect_threads: threads decoding images and detecting faces.
    """
    svc = Service(
        model,
        runtime=runtime,
        detector=detector,
        batch_wait_ms=batch_wait_ms,
        max_batch=max_batch,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        max_images=max_images,
        max_pending_mb=max_pending_mb,
        timeout_s=timeout_s,
        detect_threads=detect_threads,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # load in a thread: the server answers /healthz (and /readyz 503) meanwhile
        loading = None if svc.ready else asyncio.create_task(asyncio.to_thread(svc.load))
        yield
        if loading is not None:
            loading.cancel()
        svc.close()

    app = FastAPI(
        title="ferlab",
        summary="Facial expression recognition: faces and 7 emotion probabilities per image.",
        lifespan=lifespan,
    )
    app.state.service = svc
    _error_handlers(app)
    _routes(app, svc, api_key)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    routes = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(
        ObserveMiddleware, metrics=svc.metrics, routes=routes, check_key=_key_check(api_key)
    )
    return app


def _routes(app: FastAPI, svc: Service, api_key: str | None) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded (503 before)")
    async def readyz() -> JSONResponse:
        if svc.model is None:  # open to probes: the load error's paths only behind the key
            public = not api_key or not svc.load_error
            message = _not_ready(svc) if public else _FAILED + " (details at /v1/models)"
            return JSONResponse({"error": message}, 503, headers=_retry(svc))
        return JSONResponse({"status": "ready", "model": svc.model.name})

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        text = svc.metrics.render(svc.ready)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", summary="The model, its classes and preprocessing; detectors")
    async def models() -> dict[str, Any]:
        _require_ready(svc)
        return svc.info()

    query: dict[str, Any] = {
        "detector": Query(None, description=_OPTIONS["detector"]["description"]),
        "no_detect": Query(None, description=_OPTIONS["no_detect"]["description"]),
        "top_k": Query(None, ge=0, le=7, description=_OPTIONS["top_k"]["description"]),
    }

    @app.post(
        "/v1/predict", summary="Faces and emotions in one image", openapi_extra=_body("file", False)
    )
    async def predict(
        request: Request,
        detector: str | None = query["detector"],
        no_detect: bool | None = query["no_detect"],
        top_k: int | None = query["top_k"],
    ) -> JSONResponse:
        opts = {"detector": detector, "no_detect": no_detect, "top_k": top_k}
        return await _predict(request, svc, False, opts)

    @app.post(
        "/v1/predict/batch",
        summary="Several images, answered in order",
        openapi_extra=_body("files", True),
    )
    async def predict_batch(
        request: Request,
        detector: str | None = query["detector"],
        no_detect: bool | None = query["no_detect"],
        top_k: int | None = query["top_k"],
    ) -> JSONResponse:
        opts = {"detector": detector, "no_detect": no_detect, "top_k": top_k}
        return await _predict(request, svc, True, opts)


async def _predict(request: Request, svc: Service, batch: bool, query: dict) -> JSONResponse:
    _require_ready(svc)
    t0 = time.perf_counter()

    async def work() -> tuple[list, list]:
        with svc.pending.hold() as take:  # the body's bytes count until its answer is ready
            upload = await read_upload(request, batch, svc.body_limit(batch), svc.max_images, take)
            given = {k: v for k, v in query.items() if v is not None}
            opts = parse_options({**given, **upload.fields}, svc.detector, svc.detectors)
            return upload.images, await svc.predict(upload.images, opts, t0)

    try:
        images, results = await asyncio.wait_for(work(), svc.timeout_s)
    except TimeoutError:
        raise ApiError(
            504, f"no answer within the request timeout of {svc.timeout_s:g} s"
        ) from None
    request.state.faces = sum(len(r["faces"]) for r in results if isinstance(r, dict))
    if not batch:
        if isinstance(results[0], ApiError):
            raise results[0]
        return JSONResponse(results[0])
    return JSONResponse(
        [
            r if isinstance(r, dict) else {**_failed(name), "error": r.message, "status": r.status}
            for (name, _), r in zip(images, results, strict=True)
        ]
    )


def _failed(name: str | None) -> dict[str, Any]:
    """A batch item whose image could not be read: the shape of ``ferlab predict`` errors."""
    return {"path": name, "faces": []}


_FAILED = "the model failed to load"


def _not_ready(svc: Service) -> str:
    if svc.load_error:
        return f"{_FAILED}: {svc.load_error}"
    return "the model is still loading; retry shortly"


def _retry(svc: Service) -> dict[str, str] | None:
    """While the model loads, 503s say when to ask again (a load error stays: no header)."""
    return None if svc.load_error else {"Retry-After": "2"}


def _require_ready(svc: Service) -> None:
    if svc.model is None:
        raise ApiError(503, _not_ready(svc), _retry(svc))


def _key_check(api_key: str | None):
    """None, or a function: scope -> None (let through) or a 401 response for /v1/ requests."""
    if not api_key:
        return None
    expected = api_key.encode()

    def check(scope: dict) -> Response | None:
        if not route_path(scope).startswith("/v1/"):
            return None
        headers = Headers(scope=scope)
        bearer = headers.get("authorization", "")
        given = headers.get("x-api-key") or (bearer[7:] if bearer[:7].lower() == "bearer " else "")
        if given and hmac.compare_digest(given.encode(), expected):
            return None
        what = "wrong API key" if given else "missing API key"
        return JSONResponse(
            {"error": f"{what}: send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"},
            401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    return check


def _error_handlers(app: FastAPI) -> None:
    """Every error is JSON: ``{"error": "<message>"}``."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "; ".join(parts)}, 422)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the log"}, 500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    root_path: str = "",
    **settings: Any,
) -> None:
    """Run the service with uvicorn until interrupted.

    Args:
        host: interface to listen on; 127.0.0.1 keeps it private to this machine.
        port: TCP port.
        workers: uvicorn worker processes, each with its own model and its share of the CPUs.
        root_path: the prefix a reverse proxy serves the app under (``/fer``), stripped by
            the proxy; the page's links are relative, so they follow it.
        **settings: keyword arguments of :func:`create_app` (``model`` as a path or name).
    """
    import uvicorn

    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise ValueError(f"--root-path: expected a path like /fer, got {root_path!r}")
    if workers < 1:
        raise ValueError(f"serve: workers must be at least 1, got {workers}")
    if workers > 1:  # the workers build the app: what cannot work must stop us here, not each
        if not isinstance(settings.get("model"), str | Path | None):
            raise ValueError("serve: workers > 1 load the model themselves; pass a path or name")
        check_settings(**{k: v for k, v in settings.items() if k != "api_key"})
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}
        os.environ[SETTINGS_ENV] = json.dumps({"workers": workers, "settings": settings})
        target: Any = f"{__name__}:app_from_env"
        options: dict[str, Any] = {"factory": True, "workers": workers}
    else:
        target, options = create_app(**settings), {}  # create_app refuses what cannot work
    _check_listen(host, port)  # last: a bad setting is the error to see first
    configure_access_log()
    log.info("serving on http://%s:%d/ (API docs at /docs)", host, port)
    uvicorn.run(target, host=host, port=port, root_path=root_path, access_log=False, **options)


def _check_listen(host: str, port: int) -> None:
    """Fail with one line on a port out of range or taken: uvicorn printed a traceback for
    the first and, for the second, logged its error after ours and exited 3 with workers
    loading the model meanwhile."""
    if not 0 <= port <= 65535:
        raise ValueError(f"serve: port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as e:  # socket.gaierror too: an unknown host name
        raise ValueError(f"serve: cannot listen on {host}:{port} ({e.strerror or e})") from None


def app_from_env() -> FastAPI:
    """The app of one uvicorn worker process, configured by :func:`serve` with workers > 1."""
    import cv2
    import torch

    config = json.loads(os.environ[SETTINGS_ENV])
    # each worker gets its share of the cores, or N workers x all cores thrash each other
    # (torch's share also sizes ONNX Runtime sessions; OpenCV's detectors have their own pool)
    share = threads_per_worker(config["workers"])
    torch.set_num_threads(share)
    cv2.setNumThreads(share)
    configure_access_log()
    return create_app(**config["settings"])
