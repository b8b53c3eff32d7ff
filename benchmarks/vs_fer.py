"""ferlab against the `fer` package (PyPI), side by side: PrivateTest accuracy and faces/s.

`fer` is not a dependency of ferlab (it pulls TensorFlow). Give it its own environment:

    python3 -m venv .venv-fer
    .venv-fer/bin/pip install --no-deps fer
    .venv-fer/bin/pip install tensorflow-cpu "opencv-python-headless<5" requests pillow \\
        "setuptools<81" pandas
    python benchmarks/vs_fer.py --fer-python .venv-fer/bin/python --models default

Both sides get the same 3,589 PrivateTest faces (48x48). fer's accuracy is given twice: on the
face resized to 64x64 (what its classifier was trained on) and through its own
`detect_emotions(image, face_rectangles=[whole image])`, whose padding and offsets shrink the
face inside the input. Speed is classification only (no detection), at batch 64, with every
core: fer's Keras model called on a batch, fer's default quantised TFLite path (one face per
`invoke`, as fer runs it), and each ferlab model on PyTorch and on ONNX Runtime, with its own
test-time augmentation (the shipped default: shift, 10 views) and in one pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ferlab.config import DEFAULT_DATA

CHILD = r"""
import json, sys, time
import numpy as np
import cv2
from fer.fer import FER

faces, labels, seconds = np.load(sys.argv[1]), np.load(sys.argv[2]), float(sys.argv[3])
# (a) what fer's classifier was trained on: the 48x48 face resized to 64x64, in [-1, 1]
resized = np.stack([cv2.resize(f, (64, 64)) for f in faces]).astype(np.float32) / 127.5 - 1
# (b) what fer.detect_emotions feeds it when the whole 48x48 image is the face rectangle
# (padding, offsets, resize), captured from fer's own code
captured = []
fer = FER()
fer._classify_emotions = lambda g: captured.append(g[0]) or np.zeros((1, 7))
for f in faces:
    fer.detect_emotions(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR), face_rectangles=[(0, 0, 48, 48)])
pipeline = np.stack(captured)
out = {}
for name, tflite in (("fer (Keras)", False), ("fer (TFLite, its default)", True)):
    fer = FER(use_tflite=tflite)

    def accuracy(x):
        batches = [np.asarray(fer._classify_emotions(x[i : i + 64])) for i in range(0, len(x), 64)]
        return float((np.concatenate(batches).argmax(1) == labels).mean())  # FER-2013 order

    row = {"accuracy": accuracy(resized), "accuracy_detect_emotions": accuracy(pipeline)}
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        np.asarray(fer._classify_emotions(resized[:64]))
        n += 64
    out[name] = {**row, "faces_per_s": n / (time.perf_counter() - t0)}
print(json.dumps(out))
"""


def faces_per_s(fn: Callable[[np.ndarray], object], batch: np.ndarray, seconds: float) -> float:
    fn(batch)  # warm-up: lazy initialisation, oneDNN primitive caches
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def run_fer(python: str, faces: np.ndarray, labels: np.ndarray, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "faces.npy", faces)
        np.save(Path(tmp) / "labels.npy", labels)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        args = [python, "-c", CHILD, f"{tmp}/faces.npy", f"{tmp}/labels.npy", str(seconds)]
        r = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if r.returncode:
        raise SystemExit(f"fer failed ({python}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fer-python", help="Python of an environment with fer installed")
    ap.add_argument("--models", nargs="+", default=["default"], help="ferlab models (names/paths)")
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--limit", type=int, default=0, help="First N faces only (a smoke test)")
    args = ap.parse_args()

    import torch

    from ferlab import load_model
    from ferlab.evaluate import load_split

    torch.set_num_threads(os.cpu_count() or 1)
    test = load_split(args.data, "PrivateTest")
    faces, labels = test.images[: args.limit or None], test.labels[: args.limit or None]
    rows = {}
    if args.fer_python:
        rows.update(run_fer(args.fer_python, faces, labels, args.seconds))
    batch = faces[:64]
    for name in args.models:
        measured = set()
        for runtime in args.runtimes:
            clf = load_model(name, runtime=runtime)
            if clf.runtime in measured:  # an ONNX file (`fast` too) runs on ONNX Runtime only
                continue
            measured.add(clf.runtime)
            # the model's own views (the shipped default: shift TTA), then one pass
            for tta in dict.fromkeys([getattr(clf, "tta", "none"), "none"]):
                with torch.inference_mode():
                    probs = clf.predict_proba(faces, tta=tta)
                    speed = faces_per_s(
                        lambda b, c=clf, t=tta: c.predict_proba(b, tta=t), batch, args.seconds
                    )
                acc = float((probs.argmax(1) == labels).mean())
                views = "" if tta == "none" else f", {tta} TTA"
                row = {"accuracy": acc, "faces_per_s": speed}
                rows[f"ferlab {name} ({clf.runtime}{views})"] = row

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, batch 64")
    print(
        "| model | PrivateTest accuracy | through fer.detect_emotions | "
        "faces/s (batch 64, classification only) |"
    )
    print("|---|---|---|---|")
    for name, r in rows.items():
        via = f"{r['accuracy_detect_emotions']:.2%}" if "accuracy_detect_emotions" in r else "-"
        print(f"| {name} | {r['accuracy']:.2%} | {via} | {r['faces_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
