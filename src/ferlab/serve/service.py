"""The work behind the endpoints: load the model, find faces, classify them in micro-batches."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import POSITIVE, as_whole, at_least
from ..faces import FaceDetector, create_detector, crop_margin, find_faces, list_detectors
from ..media import MAX_PIXELS
from ..predict import Face, Prediction, ProbaModel
from .batching import MicroBatcher
from .inputs import ApiError, ByteBudget, Options, decode_image
from .metrics import Metrics

log = logging.getLogger(__name__)


def load_for_serving(model: str | Path | None = None, runtime: str = "torch") -> ProbaModel:
    """``load_model(model, runtime=runtime)``: PyTorch, or ONNX Runtime."""
    from ..classifier import load_model

    return load_model(model, runtime=runtime)


class SettingError(ValueError):
    """A numeric setting out of its range. ``setting`` is its Python name, so that a caller
    with other names for the settings (the CLI's options) can say it in its own words."""

    def __init__(self, setting: str, need: str, value: object):
        self.setting, self.need, self.value = setting, need, value
        super().__init__(self.named(setting))

    def named(self, name: str) -> str:
        return f"serve: {name} must be {self.need}, got {self.value}"


def check_settings(
    model: ProbaModel | str | Path | None = None,
    runtime: str = "torch",
    detector: str = "haar",
    **limits: float | None,
) -> None:
    """Fail at startup, not in the background load, on settings that cannot work: a server
    that starts and then reports "not ready" forever hides a typo from whoever started it,
    and with several workers a bad limit would crash and restart every worker in a loop.
    The defaults are :func:`~ferlab.serve.create_app`'s; a loaded model needs no check.
    ``limits``: any of :class:`Service`'s numeric settings."""
    from ..classifier import check_runtime, missing_model, model_file

    for name, value in limits.items():
        ok, need = _LIMITS[name]
        if value is not None and not ok(value):  # None: the setting's default
            raise SettingError(name, need, value)
    pending = limits.get("max_pending_mb")
    if pending is not None:  # an idle server must still take its largest valid request
        images, mb = limits.get("max_images") or 32, limits.get("max_upload_mb") or 10.0
        largest = body_bytes(int(images), int(mb * 2**20))
        if pending * 2**20 < largest:
            need = f"at least the largest request, {largest / 2**20:.1f} MB (base64-inflated)"
            raise SettingError("max_pending_mb", need, pending)
    check_runtime(runtime)
    if isinstance(model, str | Path | None) and not model_file(model).exists():
        raise missing_model(model or "default")
    create_detector(detector)  # unknown names and missing extras raise, with the fix


def body_bytes(images: int, max_bytes: int) -> int:
    """Most bytes a request with ``images`` images may send: base64-inflated, plus form
    overhead."""
    return images * max_bytes * 4 // 3 + 65536


_WHOLE = ((lambda v: (as_whole(v) or 0) >= 1), "a whole number at least 1")

# each numeric setting's test (NaN fails all) and what the error says it expects
_LIMITS = {
    "batch_wait_ms": at_least(0),
    "max_batch": _WHOLE,
    "max_upload_mb": POSITIVE,
    "max_pixels": at_least(1),
    "max_images": _WHOLE,
    "max_pending_mb": POSITIVE,
    "timeout_s": POSITIVE,
    "detect_threads": _WHOLE,
}


@functools.cache
def available_detectors() -> tuple[str, ...]:
    """The detectors of ``list_detectors()`` that can be built here (extras installed)."""
    names = []
    for name in list_detectors():
        try:
            create_detector(name)
        except (ImportError, RuntimeError) as e:
            log.debug("face detector %s unavailable: %s", name, e)  # an extra not installed
            continue
        names.append(name)
    return tuple(names)


@dataclass
class _Found:
    """One decoded image's faces, before classification."""

    size: tuple[int, int]  # width, height after EXIF rotation
    boxes: list[tuple[int, int, int, int]]
    crops: np.ndarray  # uint8 (N, 48, 48)
    decode_ms: float
    detect_ms: float


class Service:
    """Model, detectors, micro-batcher and limits shared by all requests of one app."""

    def __init__(
        self,
        model: ProbaModel | str | Path | None = None,
        runtime: str = "torch",
        detector: str = "haar",
        batch_wait_ms: float = 5.0,
        max_batch: int = 64,
        max_upload_mb: float = 10.0,
        max_pixels: int = MAX_PIXELS,
        max_images: int = 32,
        max_pending_mb: float | None = None,
        timeout_s: float = 30.0,
        detect_threads: int = 2,
    ):
        loaded = model is not None and not isinstance(model, str | Path)
        self.model: ProbaModel | None = model if loaded else None  # type: ignore[assignment]
        self.source: str | Path | None = None if loaded else model  # type: ignore[assignment]
        check_settings(
            model,
            runtime,
            detector,
            batch_wait_ms=batch_wait_ms,
            max_batch=max_batch,
            max_upload_mb=max_upload_mb,
            max_pixels=max_pixels,
            max_images=max_images,
            timeout_s=timeout_s,
            detect_threads=detect_threads,
            max_pending_mb=max_pending_mb,
        )
        self.runtime = runtime
        self.load_error: str | None = None
        self.detectors = list(available_detectors())
        self.detector = detector
        self.max_bytes = int(max_upload_mb * 2**20)
        self.max_pixels = max_pixels
        self.max_images = max_images
        largest = self.body_limit(batch=True)
        self.pending = ByteBudget(
            2 * largest if max_pending_mb is None else int(max_pending_mb * 2**20)
        )
        self.timeout_s = timeout_s
        self.metrics = Metrics()
        self.batcher = MicroBatcher(self._classify, batch_wait_ms, int(max_batch), self._on_batch)
        self.pool = ThreadPoolExecutor(detect_threads, thread_name_prefix="ferlab-detect")
        self._local = threading.local()  # detectors per thread: OpenCV's cascade is not reentrant

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """Load the model given by path or name (blocking; the app calls it in a thread)."""
        try:
            self.model = load_for_serving(self.source, self.runtime)
            log.info("model %s loaded (%s)", self.model.name, self.source or "shipped default")
        except Exception as e:  # /readyz reports it; the process stays up for /healthz
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load the model %s: %s", self.source, self.load_error)

    def body_limit(self, batch: bool) -> int:
        """Most bytes one request may send: its images, base64-inflated, plus form overhead."""
        return body_bytes(self.max_images if batch else 1, self.max_bytes)

    def info(self) -> dict[str, Any]:
        model = self.model
        assert model is not None
        spec = dict(getattr(model, "preprocess", {}))
        size = int(spec.get("size", 48))
        return {
            "name": model.name,
            "classes": list(model.classes),
            "input_size": [size, size],
            "preprocess": spec,
            "runtime": getattr(model, "runtime", "torch"),
            "tta": getattr(model, "tta", "none"),  # the views each face's result averages
            # an int8 export says so in its metadata (the shipped `fast`); float models: null
            "quantization": getattr(model, "meta", {}).get("quantization"),
            "detectors": self.detectors,
            "default_detector": self.detector,
            "batching": {"wait_ms": self.batcher.wait * 1000, "max_batch": self.batcher.max_batch},
            "limits": {
                "max_upload_bytes": self.max_bytes,
                "max_pixels": self.max_pixels,
                "max_images": self.max_images,
                "timeout_s": self.timeout_s,
            },
        }

    def _on_batch(self, size: int) -> None:
        self.metrics.observe_batch(size)

    def _classify(self, crops: np.ndarray) -> np.ndarray:
        assert self.model is not None
        # a single request of more faces than a batch holds goes in passes of max_batch
        return self.model.predict_proba(crops, batch_size=self.batcher.max_batch)

    def _detector(self, name: str) -> FaceDetector:
        cache = self._local.__dict__.setdefault("detectors", {})
        if name not in cache:
            cache[name] = create_detector(name)
        return cache[name]

    def _find(self, data: bytes, detector: str) -> _Found:
        """Decode, detect and crop one image (in a worker thread)."""
        t0 = time.perf_counter()
        rgb = decode_image(data, self.max_bytes, self.max_pixels)
        t1 = time.perf_counter()
        finder = self._detector(detector)
        try:
            boxes, crops = find_faces(finder, rgb, crop_margin(detector))
        except ValueError as e:  # this image's failure, not a 500 for the whole batch
            raise ApiError(422, str(e)) from None
        size = (rgb.shape[1], rgb.shape[0])
        return _Found(size, boxes, crops, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)

    async def predict(
        self, images: list[tuple[str | None, bytes]], opts: Options, t0: float
    ) -> list[dict[str, Any] | ApiError]:
        """A response record per image, or the ApiError that image raised, in order."""
        loop = asyncio.get_running_loop()
        found = await asyncio.gather(
            *(
                loop.run_in_executor(self.pool, self._find, data, opts.detector)
                for _, data in images
            ),
            return_exceptions=True,
        )
        for f in found:
            if not isinstance(f, _Found | ApiError):
                raise f  # a bug, not bad input: answered with 500
        ok = [f for f in found if isinstance(f, _Found)]
        t1 = time.perf_counter()
        crops = np.concatenate([f.crops for f in ok]) if ok else np.zeros((0, 48, 48), np.uint8)
        probs = await self.batcher.classify(crops)
        classify_ms = (time.perf_counter() - t1) * 1000
        out: list[dict[str, Any] | ApiError] = []
        start = 0
        for (name, _), f in zip(images, found, strict=True):
            if isinstance(f, _Found):
                faces = [Face(b, probs[start + i]) for i, b in enumerate(f.boxes)]
                start += len(f.boxes)
                out.append(self._record(name, f, faces, opts, classify_ms, t0))
            else:
                out.append(f)  # type: ignore[arg-type]
        return out

    def _record(
        self, name: str | None, f: _Found, faces: list[Face], opts: Options, ms: float, t0: float
    ) -> dict[str, Any]:
        assert self.model is not None
        record = Prediction(name, None, np.zeros((0, 0, 3), np.uint8), faces).to_dict()
        if opts.top_k:
            for face, d in zip(faces, record["faces"], strict=True):
                d["top"] = [
                    {"emotion": e, "probability": round(p, 6)} for e, p in face.top(opts.top_k)
                ]
        record["size"] = list(f.size)
        record["model"] = self.model.name
        record["timing_ms"] = {
            "decode": round(f.decode_ms, 2),
            "detect": round(f.detect_ms, 2),
            "classify": round(ms, 2),
            "total": round((time.perf_counter() - t0) * 1000, 2),
        }
        return record

    def close(self) -> None:
        self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
