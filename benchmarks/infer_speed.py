"""Inference speed: faces/s for 48x48 classification, ms per photo end to end.

    python benchmarks/infer_speed.py                      # the shipped model
    python benchmarks/infer_speed.py --model runs/x/best.pt --seconds 5

Classification: PyTorch (eager, fp32; channels_last as shipped, and NCHW) and ONNX Runtime,
batch 1 and 64, on random faces (speed does not depend on content), with the model's own
test-time augmentation (the shipped default's: shift, 10 views a face) and in one pass. End
to end: read nothing, detect + crop + classify a 512x512 real photo (scikit-image's
astronaut) with each detector that is installed.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ferlab import load_model
from ferlab.evaluate import predict_logits
from ferlab.export import export_onnx
from ferlab.faces import create_detector, list_detectors
from ferlab.media import demo_image
from ferlab.onnx_model import load_onnx
from ferlab.predict import Predictor


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0), n


class Contiguous:
    """``clf`` in the default NCHW layout: what the classifier's channels_last saves."""

    def __init__(self, clf):
        self.clf = clf
        self.model = copy.deepcopy(clf.model).to(memory_format=torch.contiguous_format)

    def predict_proba(self, faces: np.ndarray, batch_size: int, tta: str) -> torch.Tensor:
        x = torch.from_numpy(faces)
        return predict_logits(self.model, x, self.clf.preprocess, "cpu", batch_size, tta).softmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model path or shipped name [default: shipped]")
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    clf = load_model(args.model)
    # an .onnx model (the shipped `fast`) runs on ONNX Runtime only; others on both
    if clf.runtime == "onnx":
        runtimes = [("ONNX Runtime", clf)]
    else:
        onnx = load_onnx(export_onnx(clf, Path(tempfile.mkdtemp()) / "m.onnx"))
        runtimes = [("PyTorch", clf), ("PyTorch, NCHW", Contiguous(clf)), ("ONNX Runtime", onnx)]
    print(
        f"model {clf.name} ({args.model or 'shipped default'}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.machine()}, "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    own = getattr(clf, "tta", "none")
    print("\n| runtime | TTA | batch | faces/s |\n|---|---|---|---|")
    for name, m in runtimes:
        for tta in dict.fromkeys(["none"] if isinstance(m, Contiguous) else [own, "none"]):
            for batch in (1, 64):
                calls, _ = rate(
                    lambda m=m, b=batch, t=tta: m.predict_proba(faces[:b], batch_size=b, tta=t),
                    args.seconds,
                )
                print(f"| {name} | {tta} | {batch} | {calls * batch:,.0f} |", flush=True)
    photo = demo_image()
    e2e_runtime = runtimes[0][0]
    head = f"end to end ms/photo ({e2e_runtime}, {own} TTA)"
    print(f"\n| detector | detect ms/photo | {head} | faces found |")
    print("|---|---|---|---|")
    for det_name in list_detectors():
        try:
            det = create_detector(det_name)
        except (ImportError, ValueError) as e:
            print(f"| {det_name} | unavailable: {e} | | |")
            continue
        detect, _ = rate(lambda d=det: d.detect(photo), args.seconds)
        predictor = Predictor(clf, det)
        e2e, _ = rate(lambda pr=predictor: list(pr(photo)), args.seconds)
        found = len(next(iter(predictor(photo))).faces)
        print(f"| {det_name} | {1000 / detect:.1f} | {1000 / e2e:.1f} | {found} |", flush=True)


if __name__ == "__main__":
    main()
