"""Haar cascade parameters: the figures behind HaarDetector's defaults (docs/DETECTORS.md,
"Haar parameters (why the defaults)" and "MediaPipe limits measured").

    python benchmarks/haar_params.py --1thread

Each row is a HaarDetector with its defaults except min_neighbors, with the (already
shrunk) gray image passed as is, through cv2.equalizeHist, or through CLAHE (clip 2, 8x8
tiles). The detector no longer equalises, so the script wraps its cascade to do it. Columns:

* FER: faces found (any box) among the first 200 of detector_framing.py's 400 random
  Training faces (seed 0), upscaled to 192 px and padded with 48 px of edge pixels.
* canvas: the astronaut's head (her 95 px face, as Haar boxes it) pasted centred on flat
  square canvases, backgrounds 90 and 200, sides 300, 400, 600, 800 and 1000 px (10 images);
  an image counts when a box is centred on her face.
* astronaut: boxes on the astronaut resized to 320, 400, 512, 640, 768 and 1024 px.
* photos: boxes on 19 other skimage.data photos (those that load offline, less the
  synthetic checkerboard and colorwheel), and how many of them fall on `coins`.

A second table pastes the head centred on gray (``--gray``, 128) canvases of 300 to 1200 px:
faces found by Haar's defaults, by Haar with equalizeHist, and by MediaPipe when it is
installed. Takes about 100 s on one busy core.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from skimage import data

from detector_framing import padded  # run from benchmarks/: the same framing
from ferlab import faces
from ferlab.config import DEFAULT_DATA
from ferlab.data import load_fer2013_csv

HEAD = np.s_[10:230, 110:340]  # astronaut head, 220x230, as in tests/test_faces.py
FACE = (70, 55, 90, 100)  # her face inside HEAD: hairline to chin, ear to ear
SIZES = (320, 400, 512, 640, 768, 1024)
PHOTOS = (
    "brick", "camera", "cat", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip
PREPS = {
    "none": None,
    "equalizeHist": cv2.equalizeHist,
    "CLAHE": cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply,
}
# (preprocessing, min_neighbors)
ROWS = (
    ("none", 5),
    ("none", 6),
    ("none", 7),
    ("equalizeHist", 5),
    ("equalizeHist", 6),
    ("CLAHE", 6),
)


class _Prepped:
    """The detector's cascade, fed a preprocessed gray image (after HaarDetector shrinks it)."""

    def __init__(self, cascade, prep):
        self.cascade, self.prep = cascade, prep

    def detectMultiScale(self, gray, *args, **kw):
        return self.cascade.detectMultiScale(self.prep(gray), *args, **kw)


def haar(prep: str = "none", **kw) -> faces.HaarDetector:
    det = faces.HaarDetector(**kw)
    if PREPS[prep] is not None:
        det.cascade = _Prepped(det.cascade, PREPS[prep])
    return det


def pasted(side: int, background: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The head centred on a flat square canvas, and where her face lies in it."""
    head = data.astronaut()[HEAD]
    canvas = np.full((side, side, 3), background, np.uint8)
    y, x = (side - head.shape[0]) // 2, (side - head.shape[1]) // 2
    canvas[y : y + head.shape[0], x : x + head.shape[1]] = head
    return canvas, (x + FACE[0], y + FACE[1], FACE[2], FACE[3])


def on_face(boxes: list[faces.Box], face: tuple[int, int, int, int]) -> int:
    fx, fy, fw, fh = face
    return sum(fx <= x + w / 2 <= fx + fw and fy <= y + h / 2 <= fy + fh for x, y, w, h in boxes)


def resized(img: np.ndarray, side: int) -> np.ndarray:
    interp = cv2.INTER_AREA if side < img.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(img, (side, side), interpolation=interp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--faces", type=int, default=200)
    p.add_argument("--canvases", type=int, nargs="+", default=[300, 400, 600, 800, 1000])
    p.add_argument("--gray", type=int, default=128, help="background of the second table")
    p.add_argument("--1thread", dest="one", action="store_true", help="cv2.setNumThreads(1)")
    p.add_argument("--data", default=DEFAULT_DATA)
    args = p.parse_args()
    if args.one:
        cv2.setNumThreads(1)
    start = time.perf_counter()
    d = load_fer2013_csv(args.data)
    idx = np.flatnonzero(d.usage == "Training")
    # the first faces of detector_framing.py's draw of 400
    fer = padded(d.images[np.random.default_rng(0).choice(idx, 400, replace=False)[: args.faces]])
    flat = [pasted(s, bg) for bg in (90, 200) for s in args.canvases]
    astronaut = [resized(data.astronaut(), s) for s in SIZES]
    photos = {name: getattr(data, name)() for name in PHOTOS}

    print(
        f"| preprocessing | min_neighbors | FER found /{len(fer)} | canvas face found "
        f"/{len(flat)} | astronaut boxes at {', '.join(map(str, SIZES))} px "
        f"| boxes on {len(photos)} photos (on coins) |\n|---|---|---|---|---|---|"
    )
    for prep, n in ROWS:
        det = haar(prep, min_neighbors=n)
        found = sum(bool(det.detect(im)) for im in fer)
        canvas = sum(on_face(det.detect(im), face) > 0 for im, face in flat)
        astro = [len(det.detect(im)) for im in astronaut]
        boxes = {name: len(det.detect(im)) for name, im in photos.items()}
        print(
            f"| {prep} | {n} | {found} | {canvas} | {' '.join(map(str, astro))} "
            f"| {sum(boxes.values())} ({boxes['coins']}) |",
            flush=True,
        )

    sides = (300, 400, 500, 600, 800, 1000, 1200)
    face_side = haar().detect(data.astronaut())[0][2]  # 95 px
    print(f"\nHead centred on gray ({args.gray}) canvases: faces found (+ other boxes)\n")
    print("| canvas | " + " | ".join(map(str, sides)) + " |")
    print("|---" * (len(sides) + 1) + "|")
    print("| face / image side | " + " | ".join(f"{face_side / s:.2f}" for s in sides) + " |")
    dets = {"haar": haar(), "haar + equalizeHist": haar("equalizeHist")}
    try:
        dets["mediapipe"] = faces.MediaPipeDetector()
    except ImportError:
        skipped = "\nmediapipe row skipped: mediapipe is not installed"
    else:
        skipped = ""
    for label, det in dets.items():
        cells = []
        for s in sides:
            im, face = pasted(s, args.gray)
            boxes = det.detect(im)
            hit = on_face(boxes, face)
            cells.append(f"{hit}" + (f" +{len(boxes) - hit}" if len(boxes) > hit else ""))
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(f"{skipped}\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
