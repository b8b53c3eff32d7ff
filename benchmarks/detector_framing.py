"""How detector boxes frame FER-2013 faces: the measurement behind faces.MARGIN and the
BlazeFace/dlib mapping constants (docs/DETECTORS.md).

    python benchmarks/detector_framing.py haar dlib          # mapped boxes
    python benchmarks/detector_framing.py --raw haar dlib    # dlib/BlazeFace boxes unmapped

400 random Training faces (seed 0), upscaled to 192 px and padded with 48 px of edge pixels
so a face filling its frame can still be found. Prints per detector: faces found, median box
side relative to the frame (with IQR), median centre, and the implied margin; for two
detectors, the median side ratio and vertical offset on faces both find.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from ferlab import faces
from ferlab.config import DEFAULT_DATA
from ferlab.data import load_fer2013_csv

S, P = 192, 48  # FER faces upscaled to S px, then padded with P px of edge pixels


def padded(images) -> list[np.ndarray]:
    """48x48 faces as a detector sees them here (also edge_crops.py and haar_params.py)."""
    return [
        cv2.copyMakeBorder(
            cv2.resize(f, (S, S), interpolation=cv2.INTER_CUBIC), P, P, P, P, cv2.BORDER_REPLICATE
        )
        for f in images
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("detectors", nargs="+")
    p.add_argument("--raw", action="store_true", help="turn off the BlazeFace and dlib mappings")
    p.add_argument("--data", default=DEFAULT_DATA)
    args = p.parse_args()
    if args.raw:
        faces.MEDIAPIPE_SCALE, faces.MEDIAPIPE_SHIFT = 1.0, 0.0
        faces.DLIB_SCALE, faces.DLIB_SHIFT = 1.0, 0.0
    d = load_fer2013_csv(args.data)
    idx = np.flatnonzero(d.usage == "Training")
    imgs = padded(d.images[np.random.default_rng(0).choice(idx, 400, replace=False)])
    res = {}
    for name in args.detectors:
        det, rows = faces.create_detector(name), []
        for im in imgs:
            b = det.detect(im)
            if b:
                x, y, w, h = max(b, key=lambda r: r[2] * r[3])
                rows.append(((w + h) / 2 / S, (x - P + w / 2) / S, (y - P + h / 2) / S))
            else:
                rows.append((np.nan,) * 3)
        r = res[name] = np.array(rows)
        ok = ~np.isnan(r[:, 0])
        rel = r[ok, 0]
        q1, q3 = np.percentile(rel, [25, 75])
        print(
            f"{name}: found {ok.sum()}/400, side {np.median(rel):.3f} (IQR {q1:.2f}-{q3:.2f}),"
            f" centre ({np.nanmedian(r[:, 1]):.2f}, {np.nanmedian(r[:, 2]):.2f}),"
            f" margin {np.median((1 / rel - 1) / 2):.3f}"
        )
    if len(res) == 2:
        a, b = res.values()
        ok = ~np.isnan(a[:, 0]) & ~np.isnan(b[:, 0])
        print(
            f"both: {ok.sum()}, side ratio {np.median(a[ok, 0] / b[ok, 0]):.3f}, "
            f"centre offset {np.median((b[ok, 2] - a[ok, 2]) / b[ok, 0]):.3f}"
        )


if __name__ == "__main__":
    main()
