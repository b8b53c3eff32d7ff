"""Wall time for a run to first reach given validation accuracies, from its metrics.csv.

    python benchmarks/time_to_accuracy.py runs/vggnet_s --targets 0.65 0.70

``elapsed`` counts training, validation and the time between epochs since the run began; a
resumed run's clock continues from its last row, so time spent stopped is not counted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ferlab.history import read_history


def time_to(rows: list[dict[str, str]], target: float) -> tuple[int, float] | None:
    """(epoch, elapsed seconds) of the first row with val_acc >= target, else None."""
    for r in rows:
        if float(r["val_acc"]) >= target:
            return int(r["epoch"]), float(r["elapsed"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", type=Path, help="Run directory (holds metrics.csv)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.65, 0.70])
    args = p.parse_args()
    rows = read_history(args.run)
    if not rows:
        raise SystemExit(f"{args.run}: no metrics.csv rows (not a run directory?)")
    if rows and not rows[0].get("elapsed"):
        raise SystemExit(f"{args.run}/metrics.csv: no elapsed column (an older run)")
    best = max(float(r["val_acc"]) for r in rows)
    print(f"{args.run}: {len(rows)} epochs, best val_acc {best:.2%}")
    print("| target | epoch | wall time |")
    print("|---|---|---|")
    for t in args.targets:
        hit = time_to(rows, t)
        cell = f"{hit[0]} | {hit[1] / 60:.1f} min" if hit else "not reached | -"
        print(f"| {t:.0%} | {cell} |")


if __name__ == "__main__":
    main()
