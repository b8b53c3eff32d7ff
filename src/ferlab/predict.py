"""Predictor: faces and their 7 emotion probabilities in photos, folders, videos and arrays.

``Predictor(model, detector)(source)`` yields one :class:`Prediction` per image or video frame.
Faces from several images or frames are classified together in batches; videos are streamed
frame by frame so memory stays flat.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .data import EMOTIONS, atomic_write_bytes
from .faces import FaceDetector, create_detector, crop_margin, find_faces
from .media import FILE_KINDS, VIDEO_SUFFIXES, as_rgb, iter_sources, read_rgb
from .transforms import check_tta

MAX_PENDING_BYTES = 256_000_000  # decoded images held while a batch of faces fills up
Box = tuple[int, int, int, int]


class ProbaModel(Protocol):
    classes: tuple[str, ...]
    name: str

    def predict_proba(
        self, faces: np.ndarray, batch_size: int = ..., tta: str | None = ...
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class Face:
    box: Box  # x, y, w, h in image pixels
    probs: np.ndarray  # (7,), EMOTIONS order

    @property
    def label(self) -> str:
        return EMOTIONS[int(np.argmax(self.probs))]

    @property
    def confidence(self) -> float:
        return float(np.max(self.probs))

    def top(self, k: int = 7) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs)[:k]
        return [(EMOTIONS[i], float(self.probs[i])) for i in order]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of the `fer` package: ``{"box": [x, y, w, h], "emotions": {...}}``."""
        return {
            "box": [int(v) for v in self.box],
            "emotions": {e: round(float(p), 6) for e, p in zip(EMOTIONS, self.probs, strict=True)},
        }


JPEG_MAX_SIDE = 65_500


@dataclass
class Prediction:
    path: str | None
    frame: int | None
    image: np.ndarray  # RGB uint8 (H, W, 3)
    faces: list[Face] = field(default_factory=list)
    time: float | None = None  # seconds from the start, for video frames
    error: str | None = None  # set when the source could not be read; faces is then empty
    fps: float | None = None  # frame rate of the source video

    @classmethod
    def failed(cls, path: str | Path, error: str) -> Prediction:
        """The record of a source that could not be read: no image, no faces."""
        return cls(str(path), None, np.zeros((0, 0, 3), np.uint8), error=error)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "faces": [f.to_dict() for f in self.faces]}
        if self.frame is not None:
            d.update(frame=self.frame, time=self.time)
        if self.error:
            d["error"] = self.error
        return d

    def plot(self) -> np.ndarray:
        """The image with boxes, labels and probability bars drawn (RGB uint8)."""
        from .annotate import draw_faces

        return draw_faces(self.image, self.faces)

    def save(self, path: str | Path) -> Path:
        """Write the annotated image (JPEG, or PNG by suffix) atomically."""
        path = Path(path)
        buf = io.BytesIO()
        fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
        im = Image.fromarray(self.plot())
        if fmt == "JPEG":  # a 66,000-px panorama: shrunk to JPEG's largest side
            im.thumbnail((JPEG_MAX_SIDE, JPEG_MAX_SIDE))
        try:
            im.save(buf, format=fmt, quality=92)
        except (OSError, ValueError) as e:
            raise OSError(f"{path}: cannot write the annotated image ({e})") from None
        atomic_write_bytes(path, buf.getvalue())
        return path


def _frames(source: Any, every: int, skip: Path | None = None) -> Iterator[Prediction]:
    """Yield empty Predictions (image, path, frame, time) for every image or frame."""
    for item in iter_sources(source, skip):
        if isinstance(item, np.ndarray):
            yield Prediction(None, None, as_rgb(item))
        elif item.is_dir():  # a wrong folder must not pass for a run that found no faces
            kinds = " ".join(FILE_KINDS)
            yield Prediction.failed(item, f"{item}: no images or videos found ({kinds})")
        elif item.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(item, every)
        else:
            try:
                yield Prediction(str(item), None, read_rgb(item))
            except ValueError as e:
                yield Prediction.failed(item, str(e))


def _video_frames(path: Path, every: int) -> Iterator[Prediction]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        yield Prediction.failed(path, f"{path}: not a readable video")
        return
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    index = 0
    try:
        while True:
            ok = cap.grab()  # grab without decoding: skipped frames cost little
            if not ok:
                break
            if index % every == 0:
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                t = index / fps if fps > 0 else None
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                yield Prediction(str(path), index, rgb, time=t, fps=fps / every if fps else None)
            index += 1
    finally:
        cap.release()
    if index == 0:
        yield Prediction.failed(path, f"{path}: no frames could be decoded")


def _undetectable(pred: Prediction, error: Exception) -> Prediction:
    """The failed record of an image or frame that detection or cropping refused: like an
    unreadable file, it fails alone and the run keeps every other result."""
    where = pred.path or "array"
    if pred.frame is not None:
        where += f" frame {pred.frame}"
    empty = np.zeros((0, 0, 3), np.uint8)
    return replace(pred, image=empty, error=f"{where}: {error}")


def iou(a: Box, b: Box) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union else 0.0


class Predictor:
    """Detect faces and classify their expressions.

    Args:
        model: a Classifier or OnnxClassifier (anything with ``predict_proba``); None loads the
            model shipped with ferlab.
        detector: a FaceDetector or a name from ``ferlab.faces.list_detectors()``; "none" treats
            every image as one face crop.
        batch_size: faces classified per call of the model (across images and frames).
        tta: "none", "flip" (average with the mirror image) or "shift" (10 views); None keeps
            the model's own (none, or the one an ensemble was calibrated with).
    """

    def __init__(
        self,
        model: ProbaModel | None = None,
        detector: FaceDetector | str = "haar",
        batch_size: int = 64,
        tta: str | None = None,
    ):
        if model is None:
            from .classifier import load_model

            model = load_model()
        self.model = model
        self.detector = create_detector(detector) if isinstance(detector, str) else detector
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        check_tta(tta)  # refused before any file is read; None stays the model's own
        self.tta = tta
        self.margin = crop_margin(self.detector.name)

    def __call__(
        self, source: Any, every: int = 1, smooth: float = 0.0, skip: str | Path | None = None
    ) -> Iterator[Prediction]:
        """Yield a Prediction per image or frame of ``source`` (path, folder, video, array,
        or a list of these). ``every``: keep every k-th video frame. ``smooth`` in [0, 1):
        exponential smoothing of each face's probabilities across video frames. ``skip``:
        a folder (the run's output folder) whose files are left out of expanded folders.
        Bad arguments raise here, at the call, before any file is read."""
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if not 0 <= smooth < 1:
            raise ValueError(f"smooth must be in [0, 1), got {smooth}")
        return self._run(source, every, smooth, None if skip is None else Path(skip))

    def _run(
        self, source: Any, every: int, smooth: float, skip: Path | None = None
    ) -> Iterator[Prediction]:
        pending: list[tuple[Prediction, list[Box], np.ndarray]] = []
        n_faces = held = 0
        previous: dict[str, list[Face]] = {}
        for pred in _frames(source, every, skip):
            boxes: list[Box] = []
            crops = np.zeros((0, 48, 48), np.uint8)
            if pred.error is None:
                try:
                    boxes, crops = find_faces(self.detector, pred.image, self.margin)
                except ValueError as e:
                    pred = _undetectable(pred, e)
            pending.append((pred, boxes, crops))
            n_faces += len(boxes)
            held += pred.image.nbytes
            # pending images are held until their batch is classified: bound faces, frames
            # (a faceless video) and bytes (64 photos of 12 MP would be 2.3 GB)
            if (
                n_faces >= self.batch_size
                or len(pending) >= self.batch_size
                or held >= MAX_PENDING_BYTES
            ):
                yield from self._flush(pending, smooth, previous)
                pending, n_faces, held = [], 0, 0
        yield from self._flush(pending, smooth, previous)

    def _flush(
        self, pending, smooth: float, previous: dict[str, list[Face]]
    ) -> Iterator[Prediction]:
        if not pending:
            return
        crops = np.concatenate([c for _, _, c in pending])
        probs = (
            self.model.predict_proba(crops, batch_size=self.batch_size, tta=self.tta)
            if len(crops)
            else np.zeros((0, len(EMOTIONS)), np.float32)
        )
        i = 0
        for pred, boxes, _ in pending:
            faces = [Face(b, probs[i + j]) for j, b in enumerate(boxes)]
            i += len(boxes)
            if smooth and pred.frame is not None:
                faces = _smooth(faces, previous.get(pred.path or "", []), smooth)
                previous[pred.path or ""] = faces
            pred.faces = faces
            yield pred


def _smooth(faces: list[Face], before: list[Face], alpha: float) -> list[Face]:
    """Blend each face with the best-overlapping face of the previous kept frame."""
    out = []
    for f in faces:
        match = max(before, key=lambda b: iou(f.box, b.box), default=None)
        if match is not None and iou(f.box, match.box) > 0.3:
            probs = alpha * match.probs + (1 - alpha) * f.probs
            out.append(Face(f.box, (probs / probs.sum()).astype(np.float32)))
        else:
            out.append(f)
    return out
