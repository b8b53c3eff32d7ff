"""A run's metrics.csv: one row per epoch, rewritten atomically after each."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from .data import atomic_write_bytes

FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "images_per_s",
    "elapsed",  # wall seconds since the run began, validation included
]


def read_history(run_dir: str | Path) -> list[dict[str, str]]:
    """The rows of ``run_dir``/metrics.csv, or [] if there is none."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_history(run_dir: str | Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(FIELDS)] + [",".join(str(r.get(k, "")) for k in FIELDS) for r in rows]
    atomic_write_bytes(Path(run_dir) / "metrics.csv", ("\n".join(lines) + "\n").encode())
