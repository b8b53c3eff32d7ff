"""Training throughput (images/s) per model and numeric mode, in one run.

    python benchmarks/train_speed.py --models vggnet_s vgg19 --seconds 10 --repeats 3

Each step is what ``ferlab.train`` does per batch: uint8 batch -> float, batched
augmentation, forward, loss, backward, optimiser step. Modes: ``fp32`` (plain eager,
contiguous: the baseline), ``fp32+cl`` (channels_last), ``bf16+cl`` (bf16 autocast), and
``fp32+cl+compile`` and ``bf16+cl+compile`` (the model through ``torch.compile``; compile
time is not counted). With ``--repeats N`` the modes run in N interleaved rounds (fp32,
bf16, fp32, bf16, ...), so a slow minute of a shared VM hits every mode alike; the table
gives each mode's median and the speed-up's median and range over the rounds.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from ferlab.models import create_model
from ferlab.transforms import Augment, to_float

MODES = {  # name: (bf16 autocast, channels_last, torch.compile)
    "fp32": (False, False, False),
    "fp32+cl": (False, True, False),
    "bf16+cl": (True, True, False),
    "fp32+cl+compile": (False, True, True),
    "bf16+cl+compile": (True, True, True),
}


def images_per_second(name: str, mode: str, batch: int, seconds: float) -> float:
    bf16, cl, compiled = MODES[mode]
    torch.manual_seed(0)
    model = create_model(name).train()
    if cl:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    net = torch.compile(model) if compiled else model
    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (batch, 48, 48), dtype=torch.uint8)
    labels = torch.randint(0, 7, (batch,))
    aug = Augment(erase=0.5)

    def step() -> None:
        x = aug(to_float(faces), gen)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x).float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up: oneDNN picks its kernels, torch.compile compiles, on the first calls
    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vggnet_s", "vggnet", "vgg19"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds of every mode")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}, {platform.processor() or platform.machine()}"
    )
    print(
        "\n| model | batch | " + " | ".join(f"{m} img/s" for m in args.modes) + " | best / fp32 |"
    )
    print("|---|---|" + "---|" * (len(args.modes) + 1))
    for name in args.models:
        rounds = torch.tensor(
            [
                [images_per_second(name, m, args.batch, args.seconds) for m in args.modes]
                for _ in range(args.repeats)
            ]
        )
        speeds = rounds.median(0).values.tolist()  # the lower middle of an even count
        cells = " | ".join(f"{s:.0f}" for s in speeds)
        # the ratio needs the plain baseline, which is the first mode when it is measured
        ratio = "-"
        if args.modes[0] == "fp32":
            best = rounds[:, speeds.index(max(speeds))] / rounds[:, 0]  # per round
            ratio = f"{best.median():.2f}x"
            if args.repeats > 1:
                ratio += f" ({best.min():.2f}-{best.max():.2f})"
        print(f"| {name} | {args.batch} | {cells} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
