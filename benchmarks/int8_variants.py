"""int8 quantisation variants of a float ONNX model: PublicTest accuracy, agreement, speed.

    python benchmarks/int8_variants.py --model runs/fast-fp32.onnx

ONNX Runtime's static quantisation (QDQ, per-channel weights, min-max calibration on the
stratified training faces of ``ferlab export --int8``, in whole batches of 64: 512 of its 513)
with one option changed per row, then ``ferlab``'s own ``quantize_onnx`` on all 513 (what
``export --int8`` ships). On x86 CPUs without VNNI the u8 x s8 kernel adds pairs of products
in 16 bits and saturates with 8-bit weights; the rows show what each way around that costs.
Speed: batch 64, every core, random faces.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import numpy as np

from ferlab.config import DEFAULT_DATA
from vs_fer import faces_per_s  # the same timer as the side-by-side run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="A float .onnx written by ferlab export")
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()

    import torch
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from ferlab.data import stratified_subset
    from ferlab.evaluate import load_split
    from ferlab.export import calibration_reader, prepare_for_quantization, quantize_onnx
    from ferlab.onnx_model import load_onnx

    torch.set_num_threads(os.cpu_count() or 1)
    train = load_split(args.data, "Training")
    calib = stratified_subset(train, 512 / len(train), seed=0).images
    public = load_split(args.data, "PublicTest")

    with tempfile.TemporaryDirectory() as tmp:
        pre = f"{tmp}/pre.onnx"
        first_conv = prepare_for_quantization(args.model, pre)
        variants = {
            "u8 x s8, 8-bit weights": {},
            "s8 x s8": {"activation_type": QuantType.QInt8},
            "u8 x u8": {"weight_type": QuantType.QUInt8},
            "u8 x s8, 7-bit weights": {"reduce_range": True},
            "7-bit, percentile calibration": {
                "reduce_range": True,
                "calibrate_method": CalibrationMethod.Percentile,
            },
            "7-bit, entropy calibration": {
                "reduce_range": True,
                "calibrate_method": CalibrationMethod.Entropy,
            },
            "7-bit, input convolution float": {
                "reduce_range": True,
                "nodes_to_exclude": [first_conv],
            },
        }
        # whole batches: the histogram calibrators (percentile, entropy) need equal ones
        whole = calib[: len(calib) // 64 * 64]
        base = {
            "quant_format": QuantFormat.QDQ,
            "per_channel": True,
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
        }
        models = {"fp32": load_onnx(args.model)}
        for i, (name, options) in enumerate(variants.items()):
            out = f"{tmp}/{i}.onnx"
            quantize_static(pre, out, calibration_reader(whole), **(base | options))
            models[name] = load_onnx(out)
        shipped = quantize_onnx(args.model, f"{tmp}/ferlab.onnx", calib)
        models["ferlab export --int8"] = load_onnx(shipped)

        reference = models["fp32"].predict(public.images)
        batch = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print("| variant | PublicTest | top class as fp32 | faces/s (batch 64) |")
        print("|---|---|---|---|")
        for name, clf in models.items():
            pred = clf.predict(public.images)
            acc, agree = (pred == public.labels).mean(), (pred == reference).mean()
            speed = faces_per_s(clf.predict_proba, batch, args.seconds)
            print(f"| {name} | {acc:.2%} | {agree:.1%} | {speed:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
