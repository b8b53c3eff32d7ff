"""Faces cut by the image edge: crop from the box as detected, or from the box clipped to the
image? (docs/DETECTORS.md; ferlab crops from the box as detected since session 13.)

    python benchmarks/edge_crops.py dlib --cut 0 0.15 0.3

PublicTest faces (seed 0), upscaled to 192 px and padded with 48 px of edge pixels, as in
detector_framing.py. ``--cut f`` then cuts the padding and a fraction ``f`` of the face off
the left side (``0``: the padding only, so the face fills the image). For each face whose box
in the cut image reaches past its edge, it prints how far the box centre sits from the centre
of the box found in the uncut image (in face sides), as detected and clipped, and the top-1
accuracy of the shipped default model on the crops of each, and on the uncut image's crop.
"""

from __future__ import annotations

import argparse

import numpy as np

import ferlab
from detector_framing import P, S, padded  # run from benchmarks/: the same framing
from ferlab import faces
from ferlab.config import DEFAULT_DATA
from ferlab.data import load_fer2013_csv


def _centre(box: faces.Box) -> np.ndarray:
    x, y, w, h = box
    return np.array([x + w / 2, y + h / 2])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("detector")
    p.add_argument("--cut", type=float, nargs="+", default=[0.0, 0.15, 0.3])
    p.add_argument("--faces", type=int, default=1200)
    p.add_argument("--data", default=DEFAULT_DATA)
    args = p.parse_args()
    d = load_fer2013_csv(args.data)
    idx = np.flatnonzero(d.usage == "PublicTest")
    pick = np.random.default_rng(0).choice(idx, min(args.faces, len(idx)), replace=False)
    model, det = ferlab.load_model(), faces.create_detector(args.detector)
    margin = faces.crop_margin(args.detector)
    framed = padded(d.images[pick])
    found = [det.detect(im) for im in framed]
    print(
        "| cut | faces found | boxes past the edge | centre offset, as detected | clipped "
        "| accuracy, as detected | clipped | uncut image |\n|---|---|---|---|---|---|---|---|"
    )
    for cut in args.cut:
        # cut 0 takes the padding off all four sides; otherwise only the left side is cut
        top, left = (P, P) if cut == 0 else (0, P + round(cut * S))
        rows, n = [], 0
        for im, ref, label in zip(framed, found, d.labels[pick], strict=True):
            part = im[P : P + S, P : P + S] if cut == 0 else im[:, left:]
            part = np.ascontiguousarray(part)
            boxes = det.detect(part)
            if not boxes or not ref:
                continue
            n += 1
            box = max(boxes, key=lambda b: b[2] * b[3])
            clipped = faces.clip_box(box, part.shape)
            if box == clipped:
                continue
            truth = max(ref, key=lambda b: b[2] * b[3])
            want = _centre(truth) - [left, top]
            crops = np.stack(
                [
                    faces.crop_face(part, box, margin),
                    faces.crop_face(part, clipped, margin),
                    faces.crop_face(im, truth, margin),
                ]
            )
            right = model.predict_proba(crops).argmax(1) == label
            off = [np.hypot(*(_centre(b) - want)) / truth[2] for b in (box, clipped)]
            rows.append([*off, *right])
        r = np.array(rows, float).reshape(-1, 5)
        print(
            f"| {cut:g} | {n} | {len(r)} | {np.median(r[:, 0]):.3f} | {np.median(r[:, 1]):.3f} "
            + "".join(f"| {100 * r[:, k].mean():.1f}% " for k in (2, 3, 4))
            + "|"
        )


if __name__ == "__main__":
    main()
