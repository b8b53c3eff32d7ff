"""Face detector speed on a real photo (docs/DETECTORS.md).

    python benchmarks/detector_speed.py --1thread haar dlib dlib:upsample=1 mediapipe

Median of 30 calls after one warm-up, wall and CPU ms, on scikit-image's 512x512 astronaut
and a 1024x1024 upscale. ``name:key=value`` passes integer arguments to create_detector.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
from skimage import data

from ferlab.faces import create_detector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("detectors", nargs="+")
    p.add_argument("--1thread", dest="one", action="store_true", help="cv2.setNumThreads(1)")
    args = p.parse_args()
    if args.one:
        cv2.setNumThreads(1)
    img = data.astronaut()
    big = cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    print("| detector | image | wall ms | CPU ms | boxes |\n|---|---|---|---|---|")
    for spec in args.detectors:
        name, _, kw = spec.partition(":")
        kwargs = {k: int(v) for k, v in (a.split("=") for a in kw.split(",") if a)}
        detect = create_detector(name, **kwargs).detect
        for label, im in (("512", img), ("1024", big)):
            detect(im)
            wall, cpu = [], []
            for _ in range(30):
                t, c = time.perf_counter(), time.process_time()
                detect(im)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            print(
                f"| {spec} | {label} | {1000 * np.median(wall):.1f} | "
                f"{1000 * np.median(cpu):.1f} | {detect(im)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
