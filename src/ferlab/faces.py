"""Face detectors and FER-2013-style face crops.

Images are RGB uint8 ``(H, W, 3)`` or grayscale ``(H, W)`` arrays; a box is ``(x, y, w, h)``
in image pixels. Every detector returns boxes in the framing of OpenCV's Haar cascade, so one
:data:`MARGIN` turns a box from any of them into a FER-2013-like crop. Measurements behind
the constants below are in docs/DETECTORS.md.
"""

from __future__ import annotations

import os
from typing import Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]

DETECTORS = ("haar", "mediapipe", "dlib", "none")
CASCADE = "haarcascade_frontalface_default.xml"

# FER-2013 faces fill their frame. On 400 random Training faces (upscaled to 192 px and padded
# with 48 px of edge pixels, so that a face filling the frame can still be found) HaarDetector
# finds 299 with a median side of 0.969 of the frame (IQR 0.91-1.03), centred at (0.50, 0.50):
# margin = (1 / 0.969 - 1) / 2 = 0.016 per side. Unpadded, Haar finds only 224 faces, with a
# median of 0.839 (margin 0.10), and the same faces padded measure 0.958: the image edge, not
# the face, limits an unpadded box.
MARGIN = 0.02

# BlazeFace's box is tighter and lower than Haar's: on the 299 padded FER-2013 faces both find,
# Haar's side is 1.13 times BlazeFace's (median) and its centre 0.116 BlazeFace sides higher.
# Mapping BlazeFace boxes onto Haar's framing lets one MARGIN serve both backends.
MEDIAPIPE_SCALE = 1.13
MEDIAPIPE_SHIFT = 0.116  # upwards, in units of the BlazeFace box side

# dlib's HOG box is tighter and lower too: on the 267 padded FER-2013 faces both Haar and dlib
# find, Haar's side is 1.094 times dlib's (median) and its centre 0.097 dlib sides higher.
# dlib's sides come in steps of 1.2 (its image pyramid), so a single box can be ~10% off.
DLIB_SCALE = 1.09
DLIB_SHIFT = 0.097  # upwards, in units of the dlib box side


class FaceDetector(Protocol):
    """Anything with a ``name`` and ``detect(image) -> boxes``."""

    name: str

    def detect(self, image: np.ndarray) -> list[Box]:
        """Face boxes ``(x, y, w, h)``, sorted left to right. A box may reach past the image
        edge where the edge cuts the face: the crop pads there, and :func:`clip_box` gives
        the part inside the image."""
        ...


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale view of an RGB, RGBA or grayscale uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.size == 0:
        raise ValueError(f"image is empty, shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(image, code)
    raise ValueError(f"image must be (H, W) or (H, W, 3), got shape {image.shape}")


def _finish(boxes: list[tuple[float, float, float, float]], shape: tuple[int, ...]) -> list[Box]:
    """Round, drop boxes with nothing inside the image and sort left to right.

    Boxes are not clipped: a dlib or BlazeFace box mapped onto Haar's framing reaches past
    the edge of a face the edge cuts, and clipping it would move the crop's centre (17 px
    on a 96 px face in tests/test_faces.py)."""
    out = [(round(x), round(y), round(w), round(h)) for x, y, w, h in boxes]
    return sorted(b for b in out if clip_box(b, shape)[2])


def clip_box(box: Box, shape: tuple[int, ...]) -> Box:
    """The part of ``box`` inside an image of ``shape``; ``(x, y, 0, 0)`` if none is."""
    height, width = shape[:2]
    x, y, w, h = box
    x0, y0 = min(max(0, x), width), min(max(0, y), height)
    x1, y1 = max(min(width, x + w), x0), max(min(height, y + h), y0)
    if x1 == x0 or y1 == y0:
        return (x0, y0, 0, 0)
    return (x0, y0, x1 - x0, y1 - y0)


def _shrink(gray: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Shrink an image whose longer side exceeds ``max_side``; also return the scale used."""
    scale = min(1.0, max_side / max(gray.shape))
    if scale < 1.0:
        # an explicit size, each side at least 1: fx/fy round the short side of a strip
        # (1x5000) to 0 pixels, and cv2.resize then fails
        height, width = gray.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    return gray, scale


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (ships inside the opencv-python<5 wheels).

    Args:
        scale_factor: image pyramid step; of 400 FER-2013 faces 1.1 finds 75%, 1.05 finds
            82% in twice the time (and a false face on the test photo), 1.2 finds 64% in half.
        min_neighbors: overlapping hits needed to keep a box; higher drops false faces and
            real ones alike (6 finds 145 of 200 FER-2013 faces where 5 finds 150).
        min_face: smallest face side, as a fraction of the shorter image side.
        max_side: larger images are shrunk to this side before detection, for speed.
    """

    name = "haar"

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: float = 0.05,
        max_side: int = 640,
    ):
        # cv2.data is absent from opencv 5.x wheels, which no longer carry the cascades
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
        path = os.path.join(folder, CASCADE)
        if not folder or not os.path.isfile(path):
            raise RuntimeError(
                f"{CASCADE} not found (opencv-python {cv2.__version__}); the cascades ship "
                "only with opencv-python-headless<5: pip install 'opencv-python-headless<5'"
            )
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"{path}: OpenCV could not load the cascade")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = min_face
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Box]:
        gray = to_gray(image)
        gray, scale = _shrink(gray, self.max_side)
        # no histogram equalisation: it finds 2% more FER-2013 faces but loses a face set in
        # a large flat background, whose pixels take over the histogram (docs/DETECTORS.md)
        side = max(24, round(self.min_face * min(gray.shape)))  # 24: the cascade's window
        found = self.cascade.detectMultiScale(
            gray, self.scale_factor, self.min_neighbors, minSize=(side, side)
        )
        boxes = [(x / scale, y / scale, w / scale, h / scale) for x, y, w, h in found]
        return _finish(boxes, image.shape)


def _to_haar(
    x: float, y: float, w: float, h: float, scale: float, shift: float
) -> tuple[float, float, float, float]:
    """Map a box onto Haar's framing: move its centre up ``shift`` box sides, scale its sides."""
    cx, cy = x + w / 2, y + h / 2 - shift * h
    w, h = w * scale, h * scale
    return cx - w / 2, cy - h / 2, w, h


class MediaPipeDetector:
    """MediaPipe BlazeFace short-range model (optional extra: ``pip install ferlab[mediapipe]``).

    Needs ``mediapipe==0.10.21``, the last wheel that bundles the model, which pins numpy<2
    and supports Python 3.9-3.12 only (see docs/DETECTORS.md). The short-range model misses
    faces narrower than about a tenth of the image (a face far from the camera or in a group
    photo); Haar, with ``min_face=0.05``, finds those.

    Args:
        min_confidence: detection score threshold in 0..1.
    """

    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.5):
        try:  # imported here: mediapipe is an optional extra with a numpy<2 pin
            from mediapipe.python.solutions import face_detection
        except ImportError as e:
            raise ImportError(
                f"the 'mediapipe' face detector needs mediapipe==0.10.21 ({e}): "
                "pip install 'ferlab[mediapipe]' (Python <= 3.12, downgrades numpy to 1.x)"
            ) from e
        self._detector = face_detection.FaceDetection(
            model_selection=0, min_detection_confidence=min_confidence
        )

    def detect(self, image: np.ndarray) -> list[Box]:
        image = np.asarray(image)
        gray = to_gray(image)  # validates dtype and shape
        color = image.ndim == 3 and image.shape[2] >= 3
        rgb = image[:, :, :3] if color else cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
        result = self._detector.process(np.ascontiguousarray(rgb))
        height, width = gray.shape
        boxes = []
        for det in result.detections or ():
            rel = det.location_data.relative_bounding_box
            x, y = rel.xmin * width, rel.ymin * height
            w, h = rel.width * width, rel.height * height
            boxes.append(_to_haar(x, y, w, h, MEDIAPIPE_SCALE, MEDIAPIPE_SHIFT))
        return _finish(boxes, image.shape)


class DlibDetector:
    """dlib's HOG + linear SVM frontal face detector (optional extra: ``pip install ferlab[dlib]``).

    The model is compiled into dlib, so there is no weights file, and ``dlib-bin`` installs
    beside numpy 2. It works on grayscale and misses faces under about 60 px (after shrinking
    to ``max_side``) unless it upsamples, which is 4x slower and finds more false faces.

    Args:
        upsample: times the image is doubled before detection, to find smaller faces.
        max_side: larger images are shrunk to this side before detection, for speed.
    """

    name = "dlib"

    def __init__(self, upsample: int = 0, max_side: int = 640):
        try:  # imported here: dlib is an optional extra
            import dlib
        except ImportError as e:
            raise ImportError(
                f"the 'dlib' face detector needs dlib ({e}): pip install 'ferlab[dlib]'"
            ) from e
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Box]:
        gray = to_gray(image)
        gray, scale = _shrink(gray, self.max_side)
        boxes = []
        for r in self._detector(np.ascontiguousarray(gray), self.upsample):
            x, y, w, h = (v / scale for v in (r.left(), r.top(), r.width(), r.height()))
            boxes.append(_to_haar(x, y, w, h, DLIB_SCALE, DLIB_SHIFT))
        return _finish(boxes, image.shape)


class WholeImageDetector:
    """For inputs that are already face crops: one box, the image's centred square, which
    is how folder datasets crop images for training and ``ferlab evaluate``."""

    name = "none"

    def detect(self, image: np.ndarray) -> list[Box]:
        return [centre_square(np.asarray(image).shape)]


def centre_square(shape: tuple[int, ...]) -> Box:
    """The largest centred square of an image of ``shape`` (height, width, ...)."""
    height, width = shape[:2]
    side = min(width, height)
    return ((width - side) // 2, (height - side) // 2, side, side)


def crop_centre(image: np.ndarray, size: int = 48) -> np.ndarray:
    """The centre square as uint8 grayscale ``(size, size)``: how folder datasets are read for
    training and ``evaluate``, and how ``predict --no-detect`` crops, pixel for pixel."""
    return _crop(to_gray(image), centre_square(image.shape), 0.0, size)


def crop_margin(detector: str) -> float:
    """The margin to crop boxes of ``detector`` with: ready-made crops are used as they are,
    detected boxes get FER-2013's :data:`MARGIN`."""
    return 0.0 if detector == "none" else MARGIN


def list_detectors() -> list[str]:
    """Names accepted by :func:`create_detector`."""
    return list(DETECTORS)


def create_detector(name: str = "haar", **kw) -> FaceDetector:
    """Build a face detector by name: "haar", "mediapipe", "dlib" or "none".

    Args:
        name: detector name, see :func:`list_detectors`.
        **kw: passed to the detector class (e.g. ``min_neighbors=3`` for "haar").
    """
    if name == "haar":
        return HaarDetector(**kw)
    elif name == "mediapipe":
        return MediaPipeDetector(**kw)
    elif name == "dlib":
        return DlibDetector(**kw)
    elif name == "none":
        return WholeImageDetector(**kw)
    raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")


def _crop(gray: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    x, y, w, h = box
    height, width = gray.shape
    if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise ValueError(f"box {tuple(box)} is empty or outside the {width}x{height} image")
    # a square around the box centre: FER-2013 faces are square and centred
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    x1, y1 = x0 + side, y0 + side
    crop = gray[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if any(pad):  # edge pixels keep a face at the border where it was in the frame
        crop = cv2.copyMakeBorder(crop, *pad, cv2.BORDER_REPLICATE)
    # area averaging anti-aliases when shrinking; it only degrades to blocky when enlarging
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def crop_face(image: np.ndarray, box: Box, margin: float = MARGIN, size: int = 48) -> np.ndarray:
    """Crop one face the way FER-2013 frames it: uint8 grayscale ``(size, size)``.

    Args:
        image: RGB or grayscale uint8 image.
        box: ``(x, y, w, h)`` from a detector.
        margin: extra border on each side, as a fraction of the box side.
        size: output side in pixels.
    """
    return _crop(to_gray(image), box, margin, size)


def crop_faces(
    image: np.ndarray, boxes: list[Box], margin: float = MARGIN, size: int = 48
) -> np.ndarray:
    """Crop every box of one image: uint8 ``(N, size, size)``, ``(0, size, size)`` if none."""
    gray = to_gray(image)
    out = np.empty((len(boxes), size, size), dtype=np.uint8)
    for i, box in enumerate(boxes):
        out[i] = _crop(gray, box, margin, size)
    return out


def find_faces(
    detector: FaceDetector, image: np.ndarray, margin: float
) -> tuple[list[Box], np.ndarray]:
    """Detect and crop: the boxes clipped to the image (for reports and drawing) and the
    crops, taken from the boxes as detected (:func:`crop_faces`). An image the detector or
    OpenCV refuses raises one ValueError line."""
    try:
        boxes = list(detector.detect(image))
        crops = crop_faces(image, boxes, margin)
    except (ValueError, cv2.error) as e:
        message = " ".join(str(e).split())  # cv2.error spans several lines
        raise ValueError(f"face detection failed ({message})") from None
    return [clip_box(b, image.shape) for b in boxes], crops
