"""Accuracy of one model under each test-time augmentation, on the selection split.

    python benchmarks/tta.py default
    python benchmarks/tta.py runs/vggnet_s --threads 2

Rows: no TTA, ``flip``, ``shift`` (the library's modes) and, for comparison, a ten-crop
(corners, centre and their mirrors) of crops of the model's training crop side (``crop``), or
of 44x44 crops for full-face training, which the library does not offer because it scored
below flip on PublicTest for full-face training. For a crop-trained model the library's
modes run on centre crops, and ``shift`` moves that window by 2 pixels. PublicTest only: the
choice is made there, and PrivateTest is read once per finished model elsewhere.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F

from ferlab import load_model
from ferlab.config import DEFAULT_DATA
from ferlab.evaluate import load_split, predict_logits
from ferlab.transforms import to_input


@torch.no_grad()
def ten_crop_logp(model, faces: torch.Tensor, spec: dict, size: int = 44) -> torch.Tensor:
    x = to_input(faces, spec)
    d = 48 - size
    corners = [(0, 0), (0, d), (d, 0), (d, d), (d // 2, d // 2)]
    views = [x[..., a : a + size, b : b + size] for a, b in corners]
    views += [v.flip(-1) for v in views]
    return sum(F.log_softmax(model(v).float(), 1) for v in views) / len(views)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("model", help="Shipped name or checkpoint/run directory (PyTorch)")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clf = load_model(args.model)
    if not hasattr(clf, "model"):  # ten-crop runs the network on crops itself
        sys.exit(f"{args.model}: not a single PyTorch network (ten-crop runs the network itself)")
    part = load_split(args.data, "PublicTest")
    faces = torch.from_numpy(part.images)

    def accuracy(logits: torch.Tensor) -> float:
        return float(np.mean(logits.argmax(1).numpy() == part.labels))

    print(f"{args.model} on PublicTest ({len(faces)} faces)")
    print("| TTA | views | accuracy |")
    print("|---|---|---|")
    for tta, views in (("none", 1), ("flip", 2), ("shift", 10)):
        logits = predict_logits(clf.model, faces, clf.preprocess, tta=tta)
        print(f"| {tta} | {views} | {accuracy(logits):.2%} |")
    model, side = clf.model.eval(), clf.preprocess.get("crop") or 44
    crops = torch.cat(
        [
            ten_crop_logp(model, faces[i : i + 512], clf.preprocess, side)
            for i in range(0, len(faces), 512)
        ]
    )
    print(f"| ten-crop {side} (not offered) | 10 | {accuracy(crops):.2%} |")


if __name__ == "__main__":
    main()
