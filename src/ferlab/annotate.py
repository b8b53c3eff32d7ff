"""Draw faces on images: a box, the top emotion and a bar per emotion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .data import EMOTIONS

if TYPE_CHECKING:
    from .predict import Face

# one colour per emotion (RGB), shared by boxes, bars and plots
COLORS = {
    "angry": (220, 50, 47),
    "disgust": (133, 153, 0),
    "fear": (108, 113, 196),
    "happy": (255, 193, 7),
    "sad": (38, 139, 210),
    "surprise": (211, 54, 130),
    "neutral": (160, 160, 160),
}


MIN_SIDE = 240  # px: the label and the 7 bars of one face fit an image this small
MAX_SIDE = 4096  # px: enlarged no further (JPEG's limit is 65,500)


def draw_faces(image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of the RGB ``image`` with each face annotated.

    An image whose short side is under ``MIN_SIDE`` (a 48x48 crop, a small video) is first
    enlarged by a whole factor, pixels repeated, so that its labels and bars are readable.
    """
    import cv2

    h, w = image.shape[:2]
    k = -(-MIN_SIDE // max(min(h, w), 1)) if min(h, w) < MIN_SIDE else 1
    k = max(1, min(k, MAX_SIDE // max(h, w)))  # a 4x1200 banner must not become 240x72000
    out = np.ascontiguousarray(image.copy() if k == 1 else image.repeat(k, 0).repeat(k, 1))
    h, w = out.shape[:2]
    scale = max(0.4, min(w, h) / 900)  # text and lines grow with the image
    thick = max(1, round(2 * scale))
    for face in faces:
        x, y, bw, bh = (v * k for v in face.box)
        color = COLORS[face.label]
        cv2.rectangle(out, (x, y), (x + bw, y + bh), color, thick)
        text = f"{face.label} {face.confidence:.0%}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        inside = False
        if y - th - 8 > 0:  # above the box
            ty = y - 4
        elif y + bh + th + base + 2 <= h:  # below it
            ty = y + bh + th + 4
        else:  # a box the image's height (every --no-detect crop): inside it, at its top
            ty, inside = max(y, 0) + th + 4, True
        label_end = ty + base - 2  # the label's bottom edge
        cv2.rectangle(out, (x, ty - th - 4), (x + tw + 4, label_end), color, -1)
        cv2.putText(
            out,
            text,
            (x + 2, ty - 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thick,
            cv2.LINE_AA,
        )
        bars_x = x + bw + 4 if x + bw + 4 + 110 * scale < w else max(0, x - 114 * scale)
        # the bars' rows start at the box's top, moved up to fit in the image, and below
        # the label where they would cover it (a label inside the box, bars over the box)
        bars_y = max(0, min(y, h - len(EMOTIONS) * _row(scale)))
        if inside and bars_x < x + tw + 4:
            bars_y = max(bars_y, label_end + 1)
        _bars(out, face, bars_x, bars_y, scale)
    return out


def _row(scale: float) -> int:
    """The height of one probability bar."""
    return max(8, round(14 * scale))


def _bars(out: np.ndarray, face: Face, x0: float, y0: int, scale: float) -> None:
    import cv2

    row = _row(scale)
    width = round(60 * scale)
    fs = 0.35 * scale * 1.4
    for i, name in enumerate(EMOTIONS):
        y = int(y0 + i * row)
        if y + row > out.shape[0]:
            break
        p = float(face.probs[i])
        cv2.rectangle(out, (int(x0), y + 2), (int(x0) + width, y + row - 2), (40, 40, 40), -1)
        cv2.rectangle(out, (int(x0), y + 2), (int(x0 + width * p), y + row - 2), COLORS[name], -1)
        cv2.putText(
            out,
            f"{name[:3]} {p:.2f}",
            (int(x0) + width + 3, y + row - 3),
            cv2.FONT_HERSHEY_SIMPLEX,
            fs,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
